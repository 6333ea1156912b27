"""The probing guard: a raw image that was *probed* (no -f) must not be
turned into something that probes as another format by a write to its first
sector.  With an explicit `-f raw` the user has said what it is, so the same
write is allowed."""

import errno
import os

from common import (MiB, FuseTestCase, pread_all, pwrite_all, read_file,
                    require_tool, run_qemu_img)


class ProbingGuard(FuseTestCase):

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')
        q = self.path('real.qcow2')
        r = run_qemu_img('create', '-q', '-f', 'qcow2', q, '16M')
        self.assertEqual(r.returncode, 0, r.stderr)
        # A plausible header: the first sector of a real qcow2 image.
        self.header = read_file(q)[:512]
        self.assertEqual(self.header[:4], b'QFI\xfb')
        self.img = self.image(size=4 * MiB, data={0: b'boot' * 128})

    def open_mount(self, opts=()):
        self.d = self.mount(self.img, opts=opts)
        fd = os.open(self.d.mountpoint, os.O_RDWR)
        self.addCleanup(os.close, fd)
        return fd

    def assertEperm(self, fd, data, offset, what):
        with self.assertRaises(OSError, msg=what) as cm:
            pwrite_all(fd, data, offset)
        self.assertEqual(cm.exception.errno, errno.EPERM,
                         '%s: expected EPERM, got %s' % (what, cm.exception))

    def test_qcow2_header_on_sector_0_refused(self):
        fd = self.open_mount()
        self.assertEperm(fd, self.header, 0, 'qcow2 header, 512 bytes')
        self.assertEperm(fd, self.header + bytes(65536 - 512), 0,
                         'qcow2 header at the start of a 64 KiB write')
        self.assertEqual(pread_all(fd, 512, 0), b'boot' * 128)
        self.assertEqual(read_file(self.img)[:512], b'boot' * 128)

    def test_magic_completing_a_header_refused(self):
        """Writing only the magic over a sector that already holds the rest
        of a qcow2 header would make the image probe as qcow2 too."""
        fd = self.open_mount()
        pwrite_all(fd, b'\0\0\0\0' + self.header[4:], 0)
        self.assertEperm(fd, b'QFI\xfb', 0, 'the 4-byte magic')
        self.assertEqual(pread_all(fd, 4, 0), b'\0\0\0\0')

    def test_ordinary_writes_allowed(self):
        fd = self.open_mount()
        pwrite_all(fd, b'\x55' * 512, 0)
        pwrite_all(fd, self.header, 4096)     # not the first sector
        self.assertEqual(pread_all(fd, 512, 0), b'\x55' * 512)
        self.assertEqual(pread_all(fd, 512, 4096), self.header)

    def test_explicit_format_allows_it(self):
        fd = self.open_mount(opts=['-f', 'raw'])
        pwrite_all(fd, self.header, 0)
        self.assertEqual(pread_all(fd, 512, 0), self.header)
