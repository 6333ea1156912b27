"""Reads and writes through a real FUSE mount, checked against a reference."""

import mmap
import os
import random

from common import (MiB, FuseTestCase, fuse_fds, mount_entry, pread_all,
                    thread_switches, wait_for, pwrite_all, random_bytes,
                    random_io_workers, read_file)

SIZE = 32 * MiB


class RandomIO(FuseTestCase):

    def check_random_io(self, opts, seed, nthreads=8, ops=48, queues=None):
        rng = random.Random(seed)
        # Start from a non-trivial image: some data, some holes.
        start = {o: random_bytes(rng, 256 * 1024) for o in (0, 5 * MiB, 17 * MiB + 512)}
        image = self.image(size=SIZE, data=start)
        reference = bytearray(read_file(image))
        d = self.mount(image, opts=opts)
        if queues:
            # Multiqueue: one cloned /dev/fuse fd per IOThread.  The clones
            # may be made just after the mount appears: wait for them.
            wait_for(lambda: fuse_fds(d.pid) >= queues,
                     lambda: '%d /dev/fuse fds in the daemon, want %d'
                     % (fuse_fds(d.pid), queues))
            before = thread_switches(d.pid)

        errors = random_io_workers(d.mountpoint, reference, nthreads, ops, seed)
        self.assertEqual(errors, [], 'random I/O: %s' % '; '.join(errors[:5]))
        if queues:
            # Several threads did the serving, not one thread for all.
            after = thread_switches(d.pid)
            busy = [t for t in after if after[t] - before.get(t, 0) >= 10]
            self.assertGreaterEqual(len(busy), 2, 'threads that served requests: '
                                    'before %s, after %s' % (before, after))

        self.assertEqual(os.stat(d.mountpoint).st_size, SIZE)
        self.assertBytesEqual(read_file(d.mountpoint), bytes(reference),
                              'whole FUSE file after random I/O')
        self.stop_cleanly(d)
        self.assertBytesEqual(read_file(image), bytes(reference),
                              'image after unmount')

    def test_eight_threads_random_pread_pwrite(self):
        self.check_random_io([], seed=1)

    def test_iothreads_4_serves_eight_threads(self):
        self.check_random_io(['--iothreads', '4'], seed=2, queues=4)

    def test_iothreads_1(self):
        self.check_random_io(['--iothreads', '1'], seed=3, ops=24)


class SmallIO(FuseTestCase):

    def test_unaligned_bytes(self):
        """Byte-granular requests, like a shell's `echo > file`."""
        image = self.image(size=4 * MiB)
        reference = bytearray(4 * MiB)
        d = self.mount(image)
        rng = random.Random(7)
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            for _ in range(200):
                length = rng.randrange(1, 5000)
                offset = rng.randrange(4 * MiB - length)
                data = random_bytes(rng, length)
                pwrite_all(fd, data, offset)
                reference[offset:offset + length] = data
                o2 = rng.randrange(4 * MiB - 7000)
                l2 = rng.randrange(1, 7000)
                self.assertBytesEqual(pread_all(fd, l2, o2),
                                      bytes(reference[o2:o2 + l2]),
                                      'read %d@%d' % (l2, o2))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stop_cleanly(d)
        self.assertBytesEqual(read_file(image), bytes(reference), 'image')

    def test_read_past_end(self):
        image = self.image(size=MiB, data={MiB - 512: b'\xab' * 512})
        d = self.mount(image)
        fd = os.open(d.mountpoint, os.O_RDONLY)
        try:
            self.assertEqual(os.pread(fd, 4096, MiB - 512), b'\xab' * 512)
            self.assertEqual(os.pread(fd, 4096, MiB), b'')
            self.assertEqual(os.pread(fd, 4096, 2 * MiB), b'')
        finally:
            os.close(fd)

    def test_o_direct_open(self):
        """The export uses direct I/O, so O_DIRECT opens must work."""
        image = self.image(size=4 * MiB)
        d = self.mount(image)
        fd = os.open(d.mountpoint, os.O_RDWR | os.O_DIRECT)
        # O_DIRECT wants aligned buffers; anonymous mmap is page aligned.
        wbuf, rbuf = mmap.mmap(-1, 64 * 1024), mmap.mmap(-1, 64 * 1024)
        try:
            pattern = random_bytes(random.Random(3), 64 * 1024)
            wbuf[:] = pattern
            self.assertEqual(os.pwritev(fd, [wbuf], MiB), 64 * 1024)
            os.fsync(fd)
            self.assertEqual(os.preadv(fd, [rbuf], MiB), 64 * 1024)
            self.assertEqual(bytes(rbuf), pattern)
        finally:
            os.close(fd)
            wbuf.close()
            rbuf.close()
        self.stop_cleanly(d)
        with open(image, 'rb') as f:
            f.seek(MiB)
            self.assertEqual(f.read(64 * 1024), pattern)

    def test_mmap_read(self):
        """FUSE_DIRECT_IO_ALLOW_MMAP: the file can still be mmapped."""
        image = self.image(size=MiB, data={4096: b'mapped!'})
        d = self.mount(image)
        with open(d.mountpoint, 'rb') as f:
            with mmap.mmap(f.fileno(), MiB, prot=mmap.PROT_READ) as m:
                self.assertEqual(m[4096:4103], b'mapped!')

    def test_fsync_and_statfs(self):
        image = self.image(size=MiB)
        d = self.mount(image)
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            pwrite_all(fd, b'x' * 4096, 0)
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        st = os.statvfs(d.mountpoint)
        self.assertGreater(st.f_bsize, 0)
        self.assertEqual(read_file(image)[:4096], b'x' * 4096,
                         'fsync returned but the image does not have the data')


class Options(FuseTestCase):

    def test_allow_other(self):
        image = self.image(size=MiB)
        d = self.mount(image, opts=['--allow-other'])
        entry = mount_entry(d.mountpoint)
        self.assertIn('allow_other', entry['superopts'],
                      'mount options: %s' % entry['superopts'])
        self.assertEqual(entry['fstype'].split('.')[0], 'fuse')
