"""fallocate on the FUSE file: punch hole and zero range reach the image as
holes (or unwritten extents); plain allocation is a no-op inside the file;
every other mode is EOPNOTSUPP."""

import errno
import os
import random

from common import (FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE,
                    FALLOC_FL_KEEP_SIZE,
                    FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, MiB,
                    FuseTestCase, fallocate, pread_all, random_bytes, read_file,
                    written_extents)

SIZE = 8 * MiB


class Fallocate(FuseTestCase):

    def setUp(self):
        super().setUp()
        rng = random.Random(11)
        self.content = bytearray(random_bytes(rng, SIZE))
        self.img = self.image(size=SIZE)
        with open(self.img, 'r+b') as f:
            f.write(self.content)
            os.fsync(f.fileno())
        self.d = self.mount(self.img)
        self.fd = os.open(self.d.mountpoint, os.O_RDWR)
        self.addCleanup(self.close_fd)

    def close_fd(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def assertImageHole(self, offset, length, freed):
        """No written block of the image lies in [offset, offset+length):
        a hole (punch) or unwritten extents (ZERO_RANGE keeps the space
        allocated).  With `freed`, st_blocks shows the space given back."""
        end = offset + length
        overlap = [(s, e) for s, e in written_extents(self.img) if s < end and e > offset]
        self.assertEqual(overlap, [], 'image has written blocks in [%d, %d)' % (offset, end))
        if freed:
            self.assertLessEqual(os.stat(self.img).st_blocks * 512, SIZE - length)

    def check_zeroed(self, mode, offset, length):
        fallocate(self.fd, mode, offset, length)
        self.content[offset:offset + length] = bytes(length)
        self.assertEqual(pread_all(self.fd, length, offset), bytes(length),
                         'read after fallocate mode 0x%x' % mode)
        self.assertEqual(os.fstat(self.fd).st_size, SIZE, 'size changed')
        # Neighbours untouched.
        self.assertBytesEqual(pread_all(self.fd, SIZE, 0), bytes(self.content),
                              'whole file after fallocate')
        os.fsync(self.fd)
        self.assertImageHole(offset, length, mode & FALLOC_FL_PUNCH_HOLE)

    def test_punch_hole(self):
        self.check_zeroed(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB, 2 * MiB)

    def test_zero_range(self):
        self.check_zeroed(FALLOC_FL_ZERO_RANGE, 4 * MiB, MiB)

    def test_zero_range_keep_size(self):
        self.check_zeroed(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 2 * MiB, MiB)

    def test_unaligned_punch_zeroes_exact_range(self):
        offset, length = MiB + 1000, 70000
        fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        self.content[offset:offset + length] = bytes(length)
        self.assertBytesEqual(pread_all(self.fd, SIZE, 0), bytes(self.content),
                              'whole file after unaligned punch')

    def test_other_modes_eopnotsupp(self):
        for mode in (FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE,
                     FALLOC_FL_PUNCH_HOLE):         # punch without KEEP_SIZE
            with self.assertRaises(OSError, msg='mode 0x%x' % mode) as cm:
                fallocate(self.fd, mode, 0, MiB)
            self.assertEqual(cm.exception.errno, errno.EOPNOTSUPP,
                             'mode 0x%x: %s' % (mode, cm.exception))
        self.assertBytesEqual(pread_all(self.fd, SIZE, 0), bytes(self.content),
                              'content after refused fallocate')

    def test_allocate_within_size_changes_nothing(self):
        """Mode 0 (plain allocation) inside the file is a no-op that
        succeeds (posix_fallocate users); past the end of a fixed-size
        export it fails and the size stays."""
        fallocate(self.fd, 0, MiB, MiB)
        fallocate(self.fd, FALLOC_FL_KEEP_SIZE, 0, SIZE)
        self.assertBytesEqual(pread_all(self.fd, SIZE, 0), bytes(self.content),
                              'content after mode-0 fallocate')
        with self.assertRaises(OSError):
            fallocate(self.fd, 0, SIZE - 4096, 2 * MiB)
        self.assertEqual(os.fstat(self.fd).st_size, SIZE)
        self.assertEqual(os.stat(self.img).st_size, SIZE)

    def test_image_after_unmount(self):
        fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, MiB)
        fallocate(self.fd, FALLOC_FL_ZERO_RANGE, 6 * MiB, 512 * 1024)
        self.content[0:MiB] = bytes(MiB)
        self.content[6 * MiB:6 * MiB + 512 * 1024] = bytes(512 * 1024)
        self.close_fd()
        self.stop_cleanly(self.d)
        self.assertBytesEqual(read_file(self.img), bytes(self.content), 'image')
