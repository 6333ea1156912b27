"""`diskstack mount` of qcow2 images, with qemu-img as the oracle: images
qemu-img writes read back right, and what diskstack writes passes
`qemu-img check` and converts back to the reference."""

import os
import random

from common import (MiB, FuseTestCase, random_bytes, random_io_workers,
                    read_file, require_tool, run_qemu_img)

SIZE = 32 * MiB


class Qcow2(FuseTestCase):

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')

    def qcow2_from(self, reference, name='disk.qcow2'):
        """A qcow2 image (made by qemu-img) with the reference's content."""
        raw = self.path('seed.raw')
        with open(raw, 'wb') as f:
            f.write(reference)
        path = self.path(name)
        r = run_qemu_img('convert', '-f', 'raw', '-O', 'qcow2', raw, path)
        self.assertEqual(r.returncode, 0, r.stderr)
        os.unlink(raw)
        return path

    def assertQcow2Equals(self, path, reference):
        r = run_qemu_img('check', '-f', 'qcow2', path)
        self.assertEqual(r.returncode, 0, 'qemu-img check: %s%s' % (
            r.stdout.decode(errors='replace'), r.stderr.decode(errors='replace')))
        out = self.path('check.raw')
        r = run_qemu_img('convert', '-f', 'qcow2', '-O', 'raw', path, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertBytesEqual(read_file(out), bytes(reference), 'qcow2 content')

    def seeded_reference(self, seed):
        rng = random.Random(seed)
        reference = bytearray(SIZE)
        for off in (0, 3 * MiB + 4096, 20 * MiB):
            reference[off:off + 256 * 1024] = random_bytes(rng, 256 * 1024)
        return reference

    def test_reads_what_qemu_img_wrote(self):
        reference = self.seeded_reference(31)
        img = self.qcow2_from(reference)
        d = self.mount(img, opts=['-f', 'qcow2', '--read-only'])
        self.assertEqual(os.stat(d.mountpoint).st_size, SIZE)
        self.assertBytesEqual(read_file(d.mountpoint), bytes(reference), 'FUSE file')

    def test_format_is_probed(self):
        """Without -f a qcow2 image is recognised, not exported as raw."""
        reference = self.seeded_reference(32)
        img = self.qcow2_from(reference)
        d = self.mount(img, opts=['--read-only'])
        self.assertEqual(os.stat(d.mountpoint).st_size, SIZE,
                         'the virtual size, not the file size')
        self.assertBytesEqual(read_file(d.mountpoint), bytes(reference), 'FUSE file')

    def test_random_writes_pass_qemu_img_check(self):
        reference = self.seeded_reference(33)
        img = self.qcow2_from(reference)
        d = self.mount(img, opts=['-f', 'qcow2'])
        errors = random_io_workers(d.mountpoint, reference, 8, 32, seed=34)
        self.assertEqual(errors, [], 'random I/O: %s' % '; '.join(errors[:5]))
        self.assertBytesEqual(read_file(d.mountpoint), bytes(reference), 'FUSE file')
        self.stop_cleanly(d)
        self.assertQcow2Equals(img, reference)
