"""qcow2 interop through `diskstack mount` (issue 3), qemu-img as the oracle.

Reading: images that qemu-img / qemu-io write — cluster sizes 512 B, 64 KiB
and 2 MiB; refcount widths 1, 16 and 64 bits; zlib and zstd compressed
clusters from `qemu-img convert -c`; internal snapshots; a three-deep backing
chain; lazy refcounts left dirty by a qemu-io that aborted mid-session — are
mounted and the FUSE file is compared byte for byte with `qemu-img convert
-O raw` (and, where the content is known, with the reference it was made
from).

Writing: 8 threads of random writes through the FUSE file, then discards
(fallocate punch hole) and zero writes (fallocate zero range), all mirrored
in a reference; after unmount `qemu-img check` must report no errors and no
leaks and `qemu-img compare` against the reference must say identical.  The
same after writes on both sides of an internal snapshot (`diskstack img
snapshot -c`, then reverted with `qemu-img snapshot -a`) and after growing the
image through the FUSE file (`--growable`, truncate).
"""

import os
import random
import resource
import subprocess
import zlib

from common import (MiB, FuseTestCase, run_diskstack, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
                    FALLOC_FL_ZERO_RANGE, fallocate, random_bytes,
                    random_io_workers, read_file, require_tool, run_qemu_img)

KiB = 1024


def no_core_dump():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Qcow2Interop(FuseTestCase):

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')
        require_tool(self, 'qemu-io')

    # ------------------------------------------------------------ helpers

    def qemu_img(self, *args):
        r = run_qemu_img(*args)
        self.assertEqual(r.returncode, 0, 'qemu-img %s: %s' % (
            ' '.join(args), r.stderr.decode(errors='replace')))
        return r

    def qemu_io(self, image, *cmds, fmt='qcow2', expect_rc=0):
        args = ['qemu-io', '-f', fmt]
        for c in cmds:
            args += ['-c', c]
        r = subprocess.run(args + [image], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60,
                           preexec_fn=no_core_dump)
        self.assertEqual(r.returncode, expect_rc, 'qemu-io %s: %s' % (
            cmds, r.stderr.decode(errors='replace')))

    def create(self, name, size, **opts):
        path = self.path(name)
        o = ','.join('%s=%s' % kv for kv in opts.items())
        args = ['create', '-q', '-f', 'qcow2'] + (['-o', o] if o else []) + [path, str(size)]
        self.qemu_img(*args)
        return path

    def qemu_raw(self, image):
        out = self.path('oracle.raw')
        self.qemu_img('convert', '-O', 'raw', image, out)
        data = read_file(out)
        os.unlink(out)
        return data

    def assertMountReads(self, image, expected=None, opts=('--read-only',)):
        """Mounts image and compares the FUSE file with qemu-img's reading
        (and with `expected` when given); returns the daemon."""
        oracle = self.qemu_raw(image)
        if expected is not None:
            self.assertBytesEqual(oracle, bytes(expected), 'qemu-img vs reference')
        d = self.mount(image, opts=['-f', 'qcow2'] + list(opts))
        self.assertEqual(os.stat(d.mountpoint).st_size, len(oracle))
        self.assertBytesEqual(read_file(d.mountpoint), oracle, 'FUSE file vs qemu-img')
        return d

    def fill(self, image, size, seed, fmt='qcow2'):
        """Writes a few patterns, a zero write and a discard with qemu-io;
        returns the reference content."""
        rng = random.Random(seed)
        ref = bytearray(size)
        cmds = []
        for _ in range(6):
            length = rng.choice([512, 4 * KiB, 100 * KiB, 1 * MiB + 512])
            off = rng.randrange(0, size - length) // 512 * 512
            pat = rng.randrange(1, 256)
            cmds.append('write -P %d %d %d' % (pat, off, length))
            ref[off:off + length] = bytes([pat]) * length
        off = rng.randrange(0, size - 256 * KiB) // 512 * 512
        cmds.append('write -z %d %d' % (off, 256 * KiB))
        ref[off:off + 256 * KiB] = bytes(256 * KiB)
        self.qemu_io(image, *cmds, fmt=fmt)
        return ref

    def assertCheckedAndEqual(self, image, reference):
        r = run_qemu_img('check', '-f', 'qcow2', image)
        out = r.stdout.decode(errors='replace') + r.stderr.decode(errors='replace')
        self.assertEqual(r.returncode, 0, 'qemu-img check (errors or leaks): ' + out)
        ref = self.path('reference.raw')
        with open(ref, 'wb') as f:
            f.write(reference)
        r = run_qemu_img('compare', '-f', 'qcow2', '-F', 'raw', image, ref)
        self.assertEqual(r.returncode, 0, 'qemu-img compare: %s%s' % (
            r.stdout.decode(errors='replace'), r.stderr.decode(errors='replace')))

    # ------------------------------------------------------------ reading

    def read_matrix(self, size, **opts):
        img = self.create('disk.qcow2', size, **opts)
        ref = self.fill(img, size, seed=zlib.crc32(repr(sorted(opts.items())).encode()))
        self.assertMountReads(img, ref)

    def test_read_cluster_512(self):
        self.read_matrix(8 * MiB, cluster_size=512)

    def test_read_cluster_64k(self):
        self.read_matrix(32 * MiB, cluster_size=65536)

    def test_read_cluster_2m(self):
        self.read_matrix(32 * MiB, cluster_size=2 * MiB)

    def test_read_refcount_bits_1(self):
        self.read_matrix(16 * MiB, refcount_bits=1, cluster_size=4096)

    def test_read_refcount_bits_16(self):
        self.read_matrix(16 * MiB, refcount_bits=16)

    def test_read_refcount_bits_64(self):
        self.read_matrix(16 * MiB, refcount_bits=64, cluster_size=4096)

    def compressed(self, ctype):
        rng = random.Random(7)
        size = 8 * MiB
        ref = bytearray(size)
        for i in range(0, size, 64 * KiB):       # compressible text + holes
            if rng.random() < 0.7:
                word = ('cluster %d %s ' % (i, ctype)).encode()
                ref[i:i + 64 * KiB] = (word * (64 * KiB // len(word) + 1))[:64 * KiB]
        ref[3 * MiB:3 * MiB + 64 * KiB] = random_bytes(rng, 64 * KiB)  # incompressible
        raw = self.path('src.raw')
        with open(raw, 'wb') as f:
            f.write(ref)
        img = self.path('disk.qcow2')
        self.qemu_img('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o',
                      'compression_type=%s' % ctype, raw, img)
        info = self.qemu_img('info', img).stdout.decode()
        self.assertIn('compression type: %s' % ctype, info)
        self.assertMountReads(img, ref)

    def test_read_compressed_zlib(self):
        self.compressed('zlib')

    def test_read_compressed_zstd(self):
        self.compressed('zstd')

    def test_read_internal_snapshots(self):
        size = 8 * MiB
        img = self.create('disk.qcow2', size, cluster_size=4096)
        first = self.fill(img, size, seed=11)
        self.qemu_img('snapshot', '-c', 'one', img)
        self.qemu_io(img, 'write -P 0xee 0 2M', 'write -z 4M 1M')
        self.qemu_img('snapshot', '-c', 'two', img)
        self.qemu_io(img, 'discard 1M 2M', 'write -P 0x31 6M 64k')
        # the active layer shares clusters with both snapshots
        d = self.assertMountReads(img)
        self.stop_cleanly(d)
        # and a snapshot qemu-img applies reads back as it was taken
        self.qemu_img('snapshot', '-a', 'one', img)
        self.assertMountReads(img, first)

    def test_read_backing_chain_three_deep(self):
        size = 16 * MiB
        base = self.create('base.qcow2', size, cluster_size=65536)
        ref = self.fill(base, size, seed=21)
        mid = self.create('mid.qcow2', size, backing_file='base.qcow2',
                          backing_fmt='qcow2', cluster_size=4096)
        self.qemu_io(mid, 'write -P 0x42 1M 300k', 'write -z 5M 64k')
        ref[1 * MiB:1 * MiB + 300 * KiB] = b'\x42' * (300 * KiB)
        ref[5 * MiB:5 * MiB + 64 * KiB] = bytes(64 * KiB)
        top = self.create('top.qcow2', size, backing_file='mid.qcow2',
                          backing_fmt='qcow2', cluster_size=512)
        self.qemu_io(top, 'write -P 0x43 1100k 8k', 'discard 12M 1M')
        ref[1100 * KiB:1108 * KiB] = b'\x43' * (8 * KiB)
        ref[12 * MiB:13 * MiB] = bytes(MiB)
        self.assertMountReads(top, ref)

    def test_read_dirty_lazy_refcounts(self):
        """qemu-io writes with lazy refcounts and aborts: the dirty bit stays
        set and the refcounts are stale.  diskstack repairs them when it opens
        the image read-write; the content and `qemu-img check` are right."""
        size = 8 * MiB
        img = self.create('disk.qcow2', size, cluster_size=4096, lazy_refcounts='on')
        self.qemu_io(img, 'write -P 0x11 0 64k', 'write -P 0x22 3M 200k', 'abort',
                     expect_rc=-6)
        with open(img, 'rb') as f:
            f.seek(72)
            self.assertEqual(int.from_bytes(f.read(8), 'big') & 1, 1, 'dirty bit set')
        ref = bytearray(size)
        ref[0:64 * KiB] = b'\x11' * (64 * KiB)
        ref[3 * MiB:3 * MiB + 200 * KiB] = b'\x22' * (200 * KiB)
        d = self.assertMountReads(img, ref, opts=())
        self.stop_cleanly(d)
        with open(img, 'rb') as f:
            f.seek(72)
            self.assertEqual(int.from_bytes(f.read(8), 'big') & 1, 0, 'dirty bit cleared')
        self.assertCheckedAndEqual(img, ref)

    # ------------------------------------------------------------ writing

    def write_matrix(self, size, backing=False, **opts):
        rng = random.Random(size ^ len(opts))
        if backing:
            base = self.create('base.qcow2', size, cluster_size=65536)
            ref = self.fill(base, size, seed=5)
            img = self.create('disk.qcow2', size, backing_file='base.qcow2',
                              backing_fmt='qcow2', **opts)
        else:
            img = self.create('disk.qcow2', size, **opts)
            ref = self.fill(img, size, seed=6)
        d = self.mount(img, opts=['-f', 'qcow2'])
        errors = random_io_workers(d.mountpoint, ref, 8, 24, seed=9,
                                   max_size=256 * KiB)
        self.assertEqual(errors, [], 'random I/O: %s' % '; '.join(errors[:5]))
        fd = os.open(d.mountpoint, os.O_RDWR)
        try:
            for i in range(12):
                length = rng.choice([512, 4 * KiB, 64 * KiB, 300 * KiB, MiB])
                off = rng.randrange(0, size - length) // 512 * 512
                mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE if i % 2 else \
                    FALLOC_FL_ZERO_RANGE
                fallocate(fd, mode, off, length)
                ref[off:off + length] = bytes(length)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.assertBytesEqual(read_file(d.mountpoint), bytes(ref), 'FUSE file')
        self.stop_cleanly(d)
        self.assertCheckedAndEqual(img, ref)

    def test_write_cluster_64k(self):
        self.write_matrix(32 * MiB, cluster_size=65536)

    def test_write_cluster_512_refcount_1(self):
        self.write_matrix(4 * MiB, cluster_size=512, refcount_bits=1)

    def test_write_cluster_2m_refcount_64(self):
        self.write_matrix(32 * MiB, cluster_size=2 * MiB, refcount_bits=64)

    def test_write_over_backing_file(self):
        self.write_matrix(16 * MiB, backing=True, cluster_size=4096)

    def test_write_compressed_image(self):
        """Overwrites into compressed clusters (zstd) free them right."""
        rng = random.Random(3)
        size = 8 * MiB
        ref = bytearray(size)
        for i in range(0, size, 64 * KiB):
            ref[i:i + 64 * KiB] = (b'compress me %d ' % i) * 4096
        ref = ref[:size]
        raw = self.path('src.raw')
        with open(raw, 'wb') as f:
            f.write(ref)
        img = self.path('disk.qcow2')
        self.qemu_img('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o',
                      'compression_type=zstd', raw, img)
        d = self.mount(img, opts=['-f', 'qcow2'])
        errors = random_io_workers(d.mountpoint, ref, 8, 16, seed=rng.randrange(99),
                                   max_size=128 * KiB)
        self.assertEqual(errors, [], 'random I/O: %s' % '; '.join(errors[:5]))
        self.stop_cleanly(d)
        self.assertCheckedAndEqual(img, ref)

    def random_writes(self, mountpoint, ref, seed):
        errors = random_io_workers(mountpoint, ref, 8, 16, seed=seed,
                                   max_size=128 * KiB)
        self.assertEqual(errors, [], 'random I/O: %s' % '; '.join(errors[:5]))

    def test_write_around_internal_snapshot(self):
        """Writes, a snapshot diskstack takes, more writes (over clusters the
        snapshot shares): both states check clean and read back."""
        size = 8 * MiB
        img = self.create('disk.qcow2', size, cluster_size=4096)
        ref = self.fill(img, size, seed=12)
        d = self.mount(img, opts=['-f', 'qcow2'])
        self.random_writes(d.mountpoint, ref, 13)
        self.stop_cleanly(d)
        r = run_diskstack(['img', 'snapshot', '-c', 'snap1', img])
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors='replace'))
        at_snapshot = bytes(ref)
        d = self.mount(img, opts=['-f', 'qcow2'])
        self.random_writes(d.mountpoint, ref, 14)
        self.stop_cleanly(d)
        self.assertCheckedAndEqual(img, ref)
        self.qemu_img('snapshot', '-a', 'snap1', img)
        self.assertCheckedAndEqual(img, at_snapshot)

    def test_write_after_growing(self):
        """Growing through the FUSE file (--growable): the new tail reads as
        zeroes, takes writes, and the image checks clean at the new size."""
        size = 4 * MiB
        img = self.create('disk.qcow2', size, cluster_size=65536)
        ref = self.fill(img, size, seed=15)
        d = self.mount(img, opts=['-f', 'qcow2', '--growable'])
        os.truncate(d.mountpoint, 3 * size)
        ref += bytes(2 * size)
        self.assertEqual(os.stat(d.mountpoint).st_size, 3 * size)
        self.random_writes(d.mountpoint, ref, 16)
        self.assertBytesEqual(read_file(d.mountpoint), bytes(ref), 'FUSE file')
        self.stop_cleanly(d)
        info = self.qemu_img('info', '--output=json', img).stdout.decode()
        self.assertIn('"virtual-size": %d' % (3 * size), info)
        self.assertCheckedAndEqual(img, ref)
