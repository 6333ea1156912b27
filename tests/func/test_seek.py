"""lseek SEEK_DATA / SEEK_HOLE on the FUSE file match the image's own layout."""

import errno
import os

from common import (SEEK_DATA, SEEK_HOLE, MiB, FuseTestCase, data_segments,
                    pwrite_all)

SIZE = 64 * MiB
DATA = {0: 64 * 1024, MiB: 4096, 3 * MiB: 2 * MiB, 10 * MiB + 8192: 12288,
        SIZE - 4096: 4096}


def seek(fd, offset, whence):
    try:
        return os.lseek(fd, offset, whence)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return 'ENXIO'
        raise


class SeekDataHole(FuseTestCase):

    def make_image(self, layout):
        return self.image(size=SIZE, data={o: b'\x5a' * n for o, n in layout.items()})

    def probes(self, segments):
        points = {0, SIZE - 1, SIZE // 2}
        for start, end in segments:
            for b in (start, end, (start + end) // 2):
                points.update(p for p in (b - 1, b, b + 1) if 0 <= p < SIZE)
        return sorted(points)

    def compare_layout(self, image, mountpoint):
        ifd = os.open(image, os.O_RDONLY)
        ffd = os.open(mountpoint, os.O_RDONLY)
        try:
            segs = data_segments(ifd, SIZE)
            self.assertEqual(data_segments(ffd, SIZE), segs,
                             'data extents of the FUSE file vs the image')
            for p in self.probes(segs):
                for whence, name in ((SEEK_DATA, 'SEEK_DATA'), (SEEK_HOLE, 'SEEK_HOLE')):
                    self.assertEqual(seek(ffd, p, whence), seek(ifd, p, whence),
                                     '%s from %d' % (name, p))
            for whence in (SEEK_DATA, SEEK_HOLE):
                self.assertEqual(seek(ffd, SIZE, whence), 'ENXIO',
                                 'seek %d from EOF' % whence)
        finally:
            os.close(ifd)
            os.close(ffd)
        return segs

    def test_sparse_image_layout(self):
        image = self.make_image(DATA)
        d = self.mount(image)
        segs = self.compare_layout(image, d.mountpoint)
        self.assertGreaterEqual(len(segs), 4, 'the image should be sparse: %s' % segs)

    def test_layout_after_write_into_hole(self):
        image = self.make_image(DATA)
        d = self.mount(image)
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            pwrite_all(fd, b'\x01' * 8192, 20 * MiB)
            os.fsync(fd)
            self.assertEqual(seek(fd, 16 * MiB, SEEK_DATA), 20 * MiB)
        finally:
            os.close(fd)
        self.compare_layout(image, d.mountpoint)

    def test_fully_allocated(self):
        image = self.make_image({0: SIZE})
        d = self.mount(image)
        fd = os.open(d.mountpoint, os.O_RDONLY)
        try:
            self.assertEqual(seek(fd, 12345, SEEK_DATA), 12345)
            self.assertEqual(seek(fd, 12345, SEEK_HOLE), SIZE)
        finally:
            os.close(fd)

    def test_empty_image(self):
        image = self.image(size=SIZE)
        d = self.mount(image)
        fd = os.open(d.mountpoint, os.O_RDONLY)
        try:
            self.assertEqual(seek(fd, 0, SEEK_DATA), 'ENXIO')
            self.assertEqual(seek(fd, 0, SEEK_HOLE), 0)
        finally:
            os.close(fd)
