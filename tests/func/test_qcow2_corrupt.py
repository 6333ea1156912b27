"""Corrupt qcow2 images are refused: `diskstack mount` of each image that
tests/corrupt/make.py generates must exit with status 1 and one error line
naming the structure at fault and its offset (the words cases.json lists),
without a crash or sanitizer report, without mounting, and without writing a
single byte of the image.  Read-write and read-only opens both refuse."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from common import (FuseTestCase, diskstack_bin, is_mounted, nonempty_lines,
                    require_tool, MOUNT_TIMEOUT)

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE = os.path.join(HERE, '..', 'corrupt', 'make.py')
CRASH_WORDS = ('AddressSanitizer', 'runtime error', 'Assertion', 'Segmentation')


def case_names():
    """The case names, read from make.py without running qemu-img."""
    sys.path.insert(0, os.path.dirname(MAKE))
    try:
        import make
        return sorted(make.CASES)
    finally:
        sys.path.pop(0)


class Qcow2Corrupt(FuseTestCase):

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')
        require_tool(self, 'qemu-io')

    def generate(self):
        out = self.path('corrupt')
        r = subprocess.run([sys.executable, MAKE, out], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors='replace'))
        with open(os.path.join(out, 'cases.json')) as f:
            return out, json.load(f)

    def refused(self, image, words, opts):
        mnt = self.path('disk.img')
        with open(image, 'rb') as f:
            before = f.read()
        args = [diskstack_bin(), 'mount', '-f', 'qcow2'] + opts + [image, mnt]
        try:
            r = subprocess.run(args, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=MOUNT_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired:
            subprocess.run(['fusermount3', '-u', mnt], stderr=subprocess.DEVNULL)
            self.fail('%s %s was not refused: it mounted' % (image, opts))
        err = r.stderr.decode(errors='replace')
        what = '%s %s' % (os.path.basename(image), ' '.join(opts))
        self.assertEqual(r.returncode, 1, '%s: exit %d, stderr %r'
                         % (what, r.returncode, err))
        for w in CRASH_WORDS:
            self.assertNotIn(w, err, '%s: %s' % (what, err))
        lines = nonempty_lines(err)
        self.assertEqual(len(lines), 1, '%s: want one error line, got %r' % (what, err))
        for w in words:
            self.assertIn(w, lines[0], '%s: the message must say %r' % (what, w))
        self.assertFalse(is_mounted(mnt), what + ': left mounted')
        self.assertFalse(os.path.exists(mnt), what + ': left the mountpoint file')
        with open(image, 'rb') as f:
            self.assertTrue(f.read() == before, what + ': the image was modified')

    def check_case(self, name):
        out, cases = self.generate()
        case = cases[name]
        image = os.path.join(out, name + '.qcow2')
        self.refused(image, case['expect'], [])
        self.refused(image, case['expect'], ['--read-only'])


    def test_snapshot_refuses_l2_entry_past_eof(self):
        """Found by tests/fuzz: an L2 entry past the end of the file (beyond
        the virtual size, so no read sees it) made snapshot creation grow
        the file to hundreds of GiB.  Now the snapshot fails naming the
        entry and the file keeps its size."""
        img = self.path('disk.qcow2')
        r = subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
                            'cluster_size=4096', img, '32K'])
        self.assertEqual(r.returncode, 0)
        r = subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 1 0 8k', img],
                           stdout=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0)
        with open(img, 'r+b') as f:
            f.seek(40)
            l1 = int.from_bytes(f.read(8), 'big')
            f.seek(l1)
            l2 = int.from_bytes(f.read(8), 'big') & 0x00fffffffffffe00
            f.seek(l2 + 37 * 8)
            f.write((0x8000000200000000).to_bytes(8, 'big'))
        size = os.path.getsize(img)
        r = subprocess.run([diskstack_bin(), 'img', 'snapshot', '-c', 's1', img],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=MOUNT_TIMEOUT)
        err = r.stderr.decode(errors='replace')
        self.assertNotEqual(r.returncode, 0, err)
        self.assertIn('L2 entry 37 of the table at 0x%x' % l2, err)
        self.assertIn('past the end of the file', err)
        for w in CRASH_WORDS:
            self.assertNotIn(w, err)
        self.assertLess(os.path.getsize(img), size + 1024 * 1024, 'the file grew')


def _make_test(name):
    def test(self):
        self.check_case(name)
    test.__doc__ = 'corrupt image %s is refused' % name
    return test


for _name in case_names():
    setattr(Qcow2Corrupt, 'test_' + _name.replace('-', '_'), _make_test(_name))
