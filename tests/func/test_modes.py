"""Mount modes: --read-only refuses every change; --growable lets truncate
grow the file and the image; a plain mount keeps its size."""

import errno
import os

from common import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MiB,
                    FuseTestCase, fallocate, pread_all, pwrite_all, read_file,
                    require_tool, run_qemu_img)

REFUSED = (errno.EROFS, errno.EACCES)


class ReadOnly(FuseTestCase):

    def setUp(self):
        super().setUp()
        self.img = self.image(size=4 * MiB, data={8192: b'read me' * 100})
        self.before = read_file(self.img)
        self.d = self.mount(self.img, opts=['--read-only'])

    def assertRefused(self, fn, what):
        with self.assertRaises(OSError, msg=what) as cm:
            fn()
        self.assertIn(cm.exception.errno, REFUSED,
                      '%s: expected EROFS or EACCES, got %s' % (what, cm.exception))

    def test_reads_work(self):
        fd = os.open(self.d.mountpoint, os.O_RDONLY)
        try:
            self.assertEqual(pread_all(fd, 700, 8192), b'read me' * 100)
        finally:
            os.close(fd)
        self.assertBytesEqual(read_file(self.d.mountpoint), self.before, 'content')

    def test_writes_refused(self):
        try:
            fd = os.open(self.d.mountpoint, os.O_RDWR)
        except OSError as e:
            # Refusing at open is fine.
            self.assertIn(e.errno, REFUSED, 'open O_RDWR: %s' % e)
        else:
            try:
                self.assertRefused(lambda: os.pwrite(fd, b'x' * 4096, 0), 'pwrite')
                self.assertRefused(lambda: fallocate(
                    fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8192, 4096),
                    'punch hole')
            finally:
                os.close(fd)
        self.assertRefused(lambda: os.truncate(self.d.mountpoint, 8 * MiB), 'truncate')
        self.stop_cleanly(self.d)
        self.assertBytesEqual(read_file(self.img), self.before, 'image')

    def test_qemu_img_info_works_while_mounted_read_only(self):
        require_tool(self, 'qemu-img')
        r = run_qemu_img('info', '-f', 'raw', self.img)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors='replace'))


class Growable(FuseTestCase):

    def test_truncate_grows_file_and_image(self):
        img = self.image(size=4 * MiB, data={0: b'head' * 1024})
        d = self.mount(img, opts=['--growable'])
        os.truncate(d.mountpoint, 12 * MiB)
        self.assertEqual(os.stat(d.mountpoint).st_size, 12 * MiB)
        self.assertEqual(os.stat(img).st_size, 12 * MiB, 'image did not grow')
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            self.assertEqual(pread_all(fd, 8 * MiB, 4 * MiB), bytes(8 * MiB),
                             'grown area must read as zeroes')
            pwrite_all(fd, b'tail' * 1024, 12 * MiB - 4096)
            self.assertEqual(pread_all(fd, 4096, 0), b'head' * 1024)
        finally:
            os.close(fd)
        self.stop_cleanly(d)
        data = read_file(img)
        self.assertEqual(len(data), 12 * MiB)
        self.assertEqual(data[:4096], b'head' * 1024)
        self.assertEqual(data[-4096:], b'tail' * 1024)

    def test_ftruncate_through_open_fd(self):
        img = self.image(size=MiB)
        d = self.mount(img, opts=['--growable'])
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            os.ftruncate(fd, 3 * MiB)
            self.assertEqual(os.fstat(fd).st_size, 3 * MiB)
        finally:
            os.close(fd)
        self.stop_cleanly(d)
        self.assertEqual(os.stat(img).st_size, 3 * MiB)


    def test_write_past_end_grows(self):
        img = self.image(size=MiB)
        d = self.mount(img, opts=['--growable'])
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            pwrite_all(fd, b'grown' * 1000, 2 * MiB)
            self.assertEqual(os.fstat(fd).st_size, 2 * MiB + 5000)
            self.assertEqual(pread_all(fd, MiB, MiB), bytes(MiB), 'gap reads as zeroes')
        finally:
            os.close(fd)
        self.stop_cleanly(d)
        data = read_file(img)
        self.assertEqual(len(data), 2 * MiB + 5000)
        self.assertEqual(data[2 * MiB:], b'grown' * 1000)


class FixedSize(FuseTestCase):

    def test_truncate_refused_without_growable(self):
        img = self.image(size=4 * MiB)
        d = self.mount(img)
        with self.assertRaises(OSError):
            os.truncate(d.mountpoint, 8 * MiB)
        self.assertEqual(os.stat(d.mountpoint).st_size, 4 * MiB)
        self.assertEqual(os.stat(img).st_size, 4 * MiB)

    def test_write_past_end_does_not_grow(self):
        img = self.image(size=MiB)
        d = self.mount(img)
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            try:
                n = os.pwrite(fd, b'x' * 4096, MiB)
            except OSError:
                n = 0
            self.assertEqual(n, 0, 'a write at EOF of a fixed-size export')
        finally:
            os.close(fd)
        self.assertEqual(os.stat(img).st_size, MiB)
