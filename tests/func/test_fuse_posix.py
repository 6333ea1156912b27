"""The FUSE export behaves like a regular file (issue 6, hostile input):
the same operations are applied to the exported file and to a regular file
with the same content, and return values, errno, size and content must
match — reads at, past and straddling the end, zero-length requests, odd
offsets and lengths, and writes crossing the end of a growable export.

Where a fixed-size export must differ from a regular file (it cannot grow),
the documented behaviour is asserted instead (diskstack-fuse(7), growable):
a write crossing the end is short, one starting at or after the end fails
with ENOSPC; the size never changes.
"""

import errno
import os
import random

from common import (MiB, FuseTestCase, random_bytes, run_qemu_img,
                    require_tool)

# Not a multiple of 512 or 4096: the end of the disk falls inside a block.
RAW_SIZE = MiB + 1234
QCOW2_SIZE = MiB        # qcow2 sizes are whole sectors

# (length, offset) relative to the size S: reads and writes at odd places.
def odd_requests(size):
    return [(0, 0), (0, 7), (0, size - 1), (1, 0), (1, 1), (1, size - 1),
            (511, 3), (511, size - 511), (512, 511), (4097, 4095),
            (4097, 12345), (4096, size - 4096), (65537, 99999),
            (size, 0), (size - 3, 3)]


def past_end_requests(size):
    """Requests touching the end: at it, straddling it, past it."""
    return [(0, size), (0, size + 4096), (1, size), (4096, size),
            (4096, size + 1), (4096, size + 10 * MiB), (4096, size - 100),
            (4097, size - 1), (2 * size, 0), (1, 1 << 40)]


def outcome(fn):
    """What a system call did: ('ok', value) or ('errno', name)."""
    try:
        return ('ok', fn())
    except OSError as e:
        return ('errno', errno.errorcode.get(e.errno, e.errno))


class Twins:
    """The exported file and a reference regular file, opened alike."""

    def __init__(self, test, export, reference):
        self.test = test
        self.fds = [os.open(export, os.O_RDWR), os.open(reference, os.O_RDWR)]
        test.addCleanup(lambda: [os.close(fd) for fd in self.fds])

    def both(self, what, fn):
        """Applies fn(fd) to both files; their outcomes must be equal."""
        got, want = (outcome(lambda: fn(fd)) for fd in self.fds)
        self.test.assertEqual(got, want, '%s: export vs regular file' % what)
        return got

    def pread(self, length, offset):
        return self.both('pread %d@%d' % (length, offset),
                         lambda fd: os.pread(fd, length, offset))

    def pwrite(self, data, offset):
        return self.both('pwrite %d@%d' % (len(data), offset),
                         lambda fd: os.pwrite(fd, data, offset))

    def export_only(self, fn):
        return outcome(lambda: fn(self.fds[0]))

    def reference_only(self, fn):
        return outcome(lambda: fn(self.fds[1]))

    def assert_same_file(self, what):
        sizes = [os.fstat(fd).st_size for fd in self.fds]
        self.test.assertEqual(sizes[0], sizes[1], '%s: size' % what)
        self.test.assertEqual(
            [os.lseek(fd, 0, os.SEEK_END) for fd in self.fds], sizes,
            '%s: SEEK_END' % what)
        contents = [os.pread(fd, sizes[1] + 1, 0) for fd in self.fds]
        self.test.assertBytesEqual(contents[0], contents[1], '%s: content' % what)


class FusePosix(FuseTestCase):

    def twins(self, size, fmt='raw', growable=False, direct_io=True):
        """A mounted export of `size` bytes and a regular file with the same
        content (random for raw, zeroes for a fresh qcow2).  direct_io=False
        exports through the kernel's page cache (serve, export option
        direct-io=off)."""
        rng = random.Random(size)
        self.ntwins = getattr(self, 'ntwins', 0) + 1
        name = lambda n: self.path('%d-%s' % (self.ntwins, n))
        ref = name('reference')
        if fmt == 'raw':
            content = random_bytes(rng, size)
            img = name('disk.raw')
            with open(img, 'wb') as f:
                f.write(content)
        else:
            require_tool(self, 'qemu-img')
            content = bytes(size)
            img = name('disk.qcow2')
            r = run_qemu_img('create', '-f', 'qcow2', img, str(size))
            self.assertEqual(r.returncode, 0, r.stderr)
        with open(ref, 'wb') as f:
            f.write(content)
        mp = name('disk.img')
        if direct_io:
            opts = ['-f', fmt] + (['--growable'] if growable else [])
            d = self.mount(img, mountpoint=mp, opts=opts)
        else:
            open(mp, 'w').close()
            d = self.serve([
                '--blockdev', 'driver=file,node-name=f0,filename=' + img,
                '--blockdev', 'driver=%s,node-name=disk,file=f0' % fmt,
                '--export', 'type=fuse,id=e0,node-name=disk,mountpoint=%s,'
                'writable=on,growable=%s,direct-io=off'
                % (mp, 'on' if growable else 'off')], mp)
        t = Twins(self, d.mountpoint, ref)
        t.assert_same_file('as mounted')
        return t

    def reads_like_a_file(self, t, size):
        for length, offset in odd_requests(size) + past_end_requests(size):
            t.pread(length, offset)
        t.both('pread at a negative offset', lambda fd: os.pread(fd, 1, -1))

    def writes_inside_like_a_file(self, t, size):
        rng = random.Random(1)
        for length, offset in odd_requests(size):
            t.pwrite(random_bytes(rng, length), offset)
            t.pread(length + 2, max(offset - 1, 0))
        t.both('pwrite at a negative offset', lambda fd: os.pwrite(fd, b'x', -1))
        t.assert_same_file('after writes inside')

    def test_raw_reads(self):
        self.reads_like_a_file(self.twins(RAW_SIZE), RAW_SIZE)

    def test_qcow2_reads(self):
        self.reads_like_a_file(self.twins(QCOW2_SIZE, 'qcow2'), QCOW2_SIZE)

    def test_raw_writes_inside(self):
        t = self.twins(RAW_SIZE)
        self.writes_inside_like_a_file(t, RAW_SIZE)

    def test_qcow2_writes_inside(self):
        t = self.twins(QCOW2_SIZE, 'qcow2')
        self.writes_inside_like_a_file(t, QCOW2_SIZE)

    def test_page_cache_reads_and_writes_inside(self):
        t = self.twins(RAW_SIZE, direct_io=False)
        self.reads_like_a_file(t, RAW_SIZE)
        self.writes_inside_like_a_file(t, RAW_SIZE)

    def test_zero_length_writes_at_and_past_end(self):
        """A zero-length write changes nothing anywhere, also on a
        fixed-size export (a regular file does not grow from it either)."""
        for direct_io in (True, False):
            with self.subTest(direct_io=direct_io):
                self.zero_length_writes(direct_io)

    def zero_length_writes(self, direct_io):
        t = self.twins(RAW_SIZE, direct_io=direct_io)
        for offset in (0, 1, RAW_SIZE, RAW_SIZE + 1, RAW_SIZE + 10 * MiB):
            self.assertEqual(t.pwrite(b'', offset), ('ok', 0))
        t.assert_same_file('after zero-length writes')

    def test_fixed_size_write_across_end(self):
        """Documented difference: a fixed-size export cannot grow.  A write
        crossing the end is short (the part inside is written); one at or
        past the end fails with ENOSPC, as on a full block device."""
        for direct_io in (True, False):
            with self.subTest(direct_io=direct_io):
                self.fixed_size_write_across_end(direct_io)

    def fixed_size_write_across_end(self, direct_io):
        t = self.twins(RAW_SIZE, direct_io=direct_io)
        rng = random.Random(2)
        for length, offset in ((4096, RAW_SIZE - 100), (1, RAW_SIZE - 1),
                               (4097, RAW_SIZE - 4096)):
            data = random_bytes(rng, length)
            inside = min(length, RAW_SIZE - offset)
            self.assertEqual(t.export_only(lambda fd: os.pwrite(fd, data, offset)),
                             ('ok', inside))
            t.reference_only(lambda fd: os.pwrite(fd, data[:inside], offset))
            t.assert_same_file('after a write across the end at %d' % offset)
        for offset in (RAW_SIZE, RAW_SIZE + 1, RAW_SIZE + MiB):
            self.assertEqual(t.export_only(lambda fd: os.pwrite(fd, b'abc', offset)),
                             ('errno', 'ENOSPC'))
        t.assert_same_file('after writes past the end')

    def check_growable(self, fmt, size, direct_io=True):
        t = self.twins(size, fmt, growable=True, direct_io=direct_io)
        rng = random.Random(3)
        end = size
        for length, offset in ((4096, end - 100), (1, end + 4096 - 100),
                               (511, end + 4096 - 99 + 5000),
                               (4097, end + 3 * MiB + 1)):
            t.pwrite(random_bytes(rng, length), offset)
            t.assert_same_file('after growing write %d@%d' % (length, offset))
        self.reads_like_a_file(t, os.fstat(t.fds[1]).st_size)

    def test_raw_growable_write_across_and_past_end(self):
        self.check_growable('raw', RAW_SIZE)

    def test_page_cache_growable_write_across_and_past_end(self):
        self.check_growable('raw', RAW_SIZE, direct_io=False)

    def test_qcow2_growable_write_across_and_past_end(self):
        self.check_growable('qcow2', QCOW2_SIZE)
