"""Shared base of the `diskstack img` tests (test_img_*.py): a private temp
dir, diskstack and qemu-img runners, and qcow2 header/refcount patching for
making damaged images by hand.  No FUSE needed: img commands are offline."""

import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

from common import MiB, diskstack_bin, require_tool, run_qemu_img  # noqa: F401

TIMEOUT = 60


class ImgTestCase(unittest.TestCase):

    def setUp(self):
        require_tool(self, 'qemu-img')
        if not os.access(diskstack_bin(), os.X_OK):
            self.fail('diskstack binary not found at %s' % diskstack_bin())
        parent = os.environ.get('DISKSTACK_TEST_TMP') or None
        self.tmp = tempfile.mkdtemp(prefix='ds-img-', dir=parent)
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def img(self, *args):
        """Runs `diskstack img ARGS` in the temp dir."""
        return subprocess.run([diskstack_bin(), 'img'] + list(args),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=TIMEOUT,
                              cwd=self.tmp)

    def qimg(self, *args):
        return subprocess.run(['qemu-img'] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=TIMEOUT,
                              cwd=self.tmp)

    def qio(self, image, *cmds, fmt='qcow2'):
        args = ['qemu-io', '-f', fmt]
        for c in cmds:
            args += ['-c', c]
        r = subprocess.run(args + [image], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=TIMEOUT, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(b'error', r.stdout.lower(), r.stdout)

    def ok(self, r, what):
        self.assertEqual(r.returncode, 0, '%s: exit %d, stderr %r' % (
            what, r.returncode, r.stderr.decode(errors='replace')))
        return r.stdout.decode()

    def both(self, *args):
        """Runs the same img subcommand with diskstack and qemu-img; both
        must succeed; returns the two stdouts."""
        ours = self.ok(self.img(*args), 'diskstack img ' + ' '.join(args))
        theirs = self.ok(self.qimg(*args), 'qemu-img ' + ' '.join(args))
        return ours, theirs

    def both_json(self, *args):
        ours, theirs = self.both(*(list(args[:1]) + ['--output', 'json'] +
                                   list(args[1:])))
        return json.loads(ours), json.loads(theirs)

    # -- qcow2 patching, for images damaged on purpose

    def qcow2_layout(self, path):
        with open(path, 'rb') as f:
            h = f.read(104)
        cs = 1 << struct.unpack('>I', h[20:24])[0]
        rt = struct.unpack('>Q', h[48:56])[0]
        order = struct.unpack('>I', h[96:100])[0]
        self.assertEqual(order, 4, 'patching assumes 16-bit refcounts')
        with open(path, 'rb') as f:
            f.seek(rt)
            rb = struct.unpack('>Q', f.read(8))[0] & ~0x1ff
        return cs, rb

    def set_refcount(self, path, cluster, value):
        cs, rb = self.qcow2_layout(path)
        self.assertLess(cluster, cs // 2, 'cluster outside the first refblock')
        with open(path, 'r+b') as f:
            f.seek(rb + 2 * cluster)
            f.write(struct.pack('>H', value))

    def get_refcount(self, path, cluster):
        cs, rb = self.qcow2_layout(path)
        with open(path, 'rb') as f:
            f.seek(rb + 2 * cluster)
            return struct.unpack('>H', f.read(2))[0]
