"""`diskstack img convert | compare | rebase`, with qemu-img as the oracle.

Images are built with qemu-img and qemu-io (data, zero writes, backing
chains); what diskstack writes is judged by `qemu-img compare`, `qemu-img
check` and `qemu-img info`, and compare's verdicts and messages are checked
against `qemu-img compare` on the same pairs of images.
"""

import json
import os
import random
import shutil
import tempfile
import unittest

from common import (FuseTestCase, MiB, diskstack_bin, first_difference,
                    read_file, require_tool, run_diskstack, run_qemu_img)

SIZE = 16 * MiB


def qemu_io(path, fmt, *cmds):
    import subprocess
    args = ['qemu-io', '-f', fmt]
    for c in cmds:
        args += ['-c', c]
    r = subprocess.run(args + [path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    if r.returncode != 0 or b'error' in r.stdout.lower():
        raise AssertionError('qemu-io %s failed: %s %s' % (cmds, r.stdout, r.stderr))


class ImgConvert(unittest.TestCase):

    def setUp(self):
        require_tool(self, 'qemu-img')
        require_tool(self, 'qemu-io')
        if not os.access(diskstack_bin(), os.X_OK):
            self.fail('diskstack binary not found at %s' % diskstack_bin())
        parent = os.environ.get('DISKSTACK_TEST_TMP') or None
        self.tmp = tempfile.mkdtemp(prefix='ds-img2-', dir=parent)
        self.addCleanup(shutil.rmtree, self.tmp, True)

    # ------------------------------------------------------------ helpers

    def path(self, name):
        return os.path.join(self.tmp, name)

    def img(self, *args, ok=True):
        r = run_diskstack(['img'] + list(args), timeout=120)
        if ok:
            self.assertEqual(r.returncode, 0, 'diskstack img %s: %s' % (
                ' '.join(args), r.stderr.decode(errors='replace')))
        return r

    def qimg(self, *args, ok=True):
        r = run_qemu_img(*args)
        if ok:
            self.assertEqual(r.returncode, 0, 'qemu-img %s: %s' % (
                ' '.join(args), r.stderr.decode(errors='replace')))
        return r

    def info(self, path):
        return json.loads(self.qimg('info', '--output', 'json', path).stdout)

    def assertSame(self, a, b, msg=''):
        r = self.qimg('compare', a, b, ok=False)
        self.assertEqual(r.returncode, 0, '%s: qemu-img compare %s %s: %s %s' % (
            msg, a, b, r.stdout.decode(), r.stderr.decode()))

    def assertCheckClean(self, path):
        r = self.qimg('check', '--output', 'json', path, ok=False)
        self.assertEqual(r.returncode, 0, 'qemu-img check %s: %s %s' % (
            path, r.stdout.decode(), r.stderr.decode()))
        report = json.loads(r.stdout)
        self.assertEqual(report.get('corruptions', 0), 0)
        self.assertEqual(report.get('leaks', 0), 0)

    def raw_with_data(self, name, extents, size=SIZE, seed=1):
        """A sparse raw image with random data at the (offset, length)s."""
        rng = random.Random(seed)
        path = self.path(name)
        with open(path, 'wb') as f:
            f.truncate(size)
            for off, length in extents:
                f.seek(off)
                f.write(rng.randbytes(length))
        return path

    def chain3(self):
        """base <- mid <- top (qcow2, 64k clusters), each layer writing some
        data, the top zeroing a range of the base and a partial cluster."""
        base, mid, top = self.path('base.qcow2'), self.path('mid.qcow2'), self.path('top.qcow2')
        self.qimg('create', '-f', 'qcow2', base, str(SIZE))
        qemu_io(base, 'qcow2', 'write -P 0x11 0 4M', 'write -P 0x12 8M 1M')
        self.qimg('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', mid)
        qemu_io(mid, 'qcow2', 'write -P 0x21 1M 512k', 'write -P 0x22 12M 100k')
        self.qimg('create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top)
        qemu_io(top, 'qcow2', 'write -P 0x31 3M 4k', 'write -z 2M 512k',
                'write -P 0x32 15M 1M')
        return base, mid, top

    # ------------------------------------------------------------ convert

    def test_convert_raw_to_qcow2_sparse(self):
        src = self.raw_with_data('src.raw', [(0, 65536), (5 * MiB + 1000, 300000),
                                             (SIZE - 4096, 4096)])
        dst = self.path('dst.qcow2')
        self.img('convert', '-f', 'raw', '-O', 'qcow2', src, dst)
        self.assertSame(src, dst)
        self.assertCheckClean(dst)
        info = self.info(dst)
        self.assertEqual(info['format'], 'qcow2')
        self.assertEqual(info['virtual-size'], SIZE)
        self.assertLess(info['actual-size'], 2 * MiB, 'a mostly empty image stays small')

    def test_convert_chain_to_raw(self):
        _, _, top = self.chain3()
        ours, ref = self.path('ours.raw'), self.path('ref.raw')
        self.img('convert', '-O', 'raw', top, ours)
        self.qimg('convert', '-O', 'raw', top, ref)
        self.assertIsNone(first_difference(read_file(ours), read_file(ref)))
        st = os.stat(ours)
        self.assertEqual(st.st_size, SIZE)
        self.assertLess(st.st_blocks * 512, 8 * MiB, 'raw output stays sparse')

    def test_convert_chain_to_qcow2(self):
        _, _, top = self.chain3()
        dst = self.path('flat.qcow2')
        self.img('convert', '-p', '-O', 'qcow2', '-o', 'cluster_size=4k', top, dst)
        self.assertSame(top, dst)
        self.assertCheckClean(dst)
        info = self.info(dst)
        self.assertEqual(info['cluster-size'], 4096)
        self.assertNotIn('backing-filename', info)

    def test_convert_with_backing(self):
        _, mid, top = self.chain3()
        dst = self.path('newtop.qcow2')
        self.img('convert', '-O', 'qcow2', '-B', 'mid.qcow2', '-F', 'qcow2', top, dst)
        info = self.info(dst)
        self.assertEqual(info['backing-filename'], 'mid.qcow2')
        self.assertEqual(info['backing-filename-format'], 'qcow2')
        self.assertSame(top, dst)
        self.assertCheckClean(dst)
        self.assertLess(info['actual-size'], 3 * MiB, 'only the top layer is copied')

    def test_convert_with_backing_small_zero_cluster(self):
        """-B: a 4k zero cluster of the source inside a 64k target cluster
        whose other bytes come from the backing must not zero them."""
        base, top = self.path('b.qcow2'), self.path('t.qcow2')
        self.qimg('create', '-f', 'qcow2', base, str(SIZE))
        qemu_io(base, 'qcow2', 'write -P 0x11 0 1M')
        self.qimg('create', '-f', 'qcow2', '-o', 'cluster_size=4k',
                  '-b', 'b.qcow2', '-F', 'qcow2', top)
        qemu_io(top, 'qcow2', 'write -z 8k 4k', 'write -P 0x22 200k 4k')
        dst = self.path('d.qcow2')
        self.img('convert', '-O', 'qcow2', '-B', 'b.qcow2', '-F', 'qcow2', top, dst)
        self.assertSame(top, dst)
        self.assertCheckClean(dst)

    def test_convert_compressed_is_zstd(self):
        rng = random.Random(7)
        src = self.path('src.raw')
        with open(src, 'wb') as f:
            f.truncate(SIZE)
            f.write(b'compressible text, ' * (4 * MiB // 19))
            f.seek(10 * MiB)
            f.write(rng.randbytes(256 * 1024))      # does not compress
        dst = self.path('c.qcow2')
        self.img('convert', '-c', '-O', 'qcow2', src, dst)
        info = self.info(dst)
        self.assertEqual(info['format-specific']['data']['compression-type'], 'zstd')
        self.assertSame(src, dst)
        self.assertCheckClean(dst)
        self.assertLess(os.stat(dst).st_size, 2 * MiB, 'the text compressed')
        back = self.path('back.raw')
        self.img('convert', '-O', 'raw', dst, back)
        self.assertIsNone(first_difference(read_file(back), read_file(src)))
        z = self.path('z.qcow2')
        self.img('convert', '-c', '-o', 'compression_type=zlib', '-O', 'qcow2', src, z)
        self.assertEqual(self.info(z)['format-specific']['data']['compression-type'], 'zlib')
        self.assertSame(src, z, 'zlib')
        self.assertCheckClean(z)

    def test_convert_reads_qemu_zlib_compressed(self):
        src = self.raw_with_data('src.raw', [(0, MiB), (7 * MiB, 3 * MiB)], seed=3)
        with open(src, 'r+b') as f:
            f.seek(2 * MiB)
            f.write(b'zlib likes repetition ' * 100000)
        z = self.path('z.qcow2')
        self.qimg('convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zlib', src, z)
        out = self.path('out.raw')
        self.img('convert', '-O', 'raw', z, out)
        self.assertIsNone(first_difference(read_file(out), read_file(src)))

    def test_convert_concatenates_sources(self):
        a = self.raw_with_data('a.raw', [(0, 4096)], size=MiB + 512, seed=4)
        b = self.raw_with_data('b.raw', [(512, 70000)], size=2 * MiB, seed=5)
        ours, ref = self.path('ours.qcow2'), self.path('ref.raw')
        self.img('convert', '-f', 'raw', '-O', 'qcow2', a, b, ours)
        self.qimg('convert', '-f', 'raw', '-O', 'raw', a, b, ref)
        self.assertSame(ours, ref)
        self.assertCheckClean(ours)

    def test_convert_unaligned_size_like_qemu_img(self):
        """A source whose size is not a whole number of sectors (or clusters)
        with data in its last partial cluster; an empty source in the list."""
        size = 5 * MiB + 12345
        src = self.raw_with_data('odd.raw', [(100000, 200000), (size - 2345, 2000)],
                                 size=size, seed=11)
        empty = self.path('empty.raw')
        open(empty, 'wb').close()
        ref = self.path('ref.raw')
        self.qimg('convert', '-f', 'raw', '-O', 'raw', src, ref)
        for name, args in (('o.raw', ['-O', 'raw']), ('o.qcow2', ['-O', 'qcow2']),
                           ('c.qcow2', ['-c', '-O', 'qcow2'])):
            out = self.path(name)
            self.img('convert', '-f', 'raw', *args, empty, src, empty, out)
            self.assertEqual(self.info(out)['virtual-size'], os.stat(ref).st_size)
            self.assertSame(ref, out, name)
            if name.endswith('qcow2'):
                self.assertCheckClean(out)

    def test_convert_into_existing_target(self):
        """-n: zero ranges of the source overwrite the target's old data."""
        src = self.raw_with_data('src.raw', [(MiB, 100000)], seed=12)
        for fmt in ('raw', 'qcow2'):
            dst = self.path('old.' + fmt)
            self.qimg('create', '-f', fmt, dst, str(SIZE + MiB))
            qemu_io(dst, fmt, 'write -P 0xee 0 %d' % (SIZE + MiB))
            self.img('convert', '-n', '-f', 'raw', '-O', fmt, src, dst)
            expected = self.path('expected.raw')
            shutil.copy(src, expected)
            with open(expected, 'r+b') as f:       # the target keeps its tail
                f.seek(SIZE)
                f.write(b'\xee' * MiB)
            self.assertSame(expected, dst, fmt)
            small = self.path('small.' + fmt)
            self.qimg('create', '-f', fmt, small, str(SIZE // 2))
            r = self.img('convert', '-n', '-O', fmt, src, small, ok=False)
            self.assertEqual(r.returncode, 1)
            self.assertIn(b'smaller than the source', r.stderr)

    def test_convert_sparse_size_zero_allocates_everything(self):
        src = self.raw_with_data('src.raw', [(0, 4096)], size=4 * MiB)
        dst = self.path('full.raw')
        self.img('convert', '-S', '0', '-O', 'raw', src, dst)
        self.assertIsNone(first_difference(read_file(dst), read_file(src)))
        self.assertGreaterEqual(os.stat(dst).st_blocks * 512, 4 * MiB)

    def test_convert_errors(self):
        src = self.raw_with_data('src.raw', [(0, 4096)])
        r = self.img('convert', self.path('missing.raw'), self.path('x.raw'), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b'missing.raw', r.stderr)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        r = self.img('convert', '-c', '-O', 'raw', src, self.path('x.raw'), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b'Compression not supported', r.stderr)
        r = self.img('convert', '-O', 'qcow2', '-o', 'bogus=1', src, self.path('x'), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"Invalid parameter 'bogus'", r.stderr)
        self.assertFalse(os.path.exists(self.path('x')))
        for sub in ('convert', 'compare', 'rebase'):
            r = self.img(sub, '--help')
            self.assertIn(b'Usage: diskstack img ' + sub.encode(), r.stdout)

    # ------------------------------------------------------------ compare

    def both_compare(self, *args):
        """(exit code, stdout lines) of qemu-img and diskstack compare."""
        q = run_qemu_img('compare', *args)
        d = self.img('compare', *args, ok=False)
        return ((q.returncode, q.stdout.decode().splitlines()),
                (d.returncode, d.stdout.decode().splitlines()))

    def test_compare_verdicts_match_qemu_img(self):
        a = self.raw_with_data('a.raw', [(MiB, 100000)], seed=9)
        q = self.path('a.qcow2')
        self.qimg('convert', '-O', 'qcow2', a, q)
        b = self.path('b.raw')
        shutil.copy(a, b)
        with open(b, 'r+b') as f:          # one byte differs
            f.seek(MiB + 70001)
            f.write(b'\xff' if read_file(a)[MiB + 70001] != 0xff else b'\x00')
        zero_tail = self.path('tail0.raw')
        shutil.copy(a, zero_tail)
        with open(zero_tail, 'r+b') as f:
            f.truncate(SIZE + MiB)
        data_tail = self.path('tail1.raw')
        shutil.copy(zero_tail, data_tail)
        with open(data_tail, 'r+b') as f:
            f.seek(SIZE + 4097)
            f.write(b'x')
        empty = self.path('empty.qcow2')
        self.qimg('create', '-f', 'qcow2', empty, str(SIZE))
        sparse = self.path('sparse.raw')
        with open(sparse, 'wb') as f:
            f.truncate(SIZE)
        cases = [
            ((a, q), 0), ((q, a), 0), ((a, b), 1), ((q, b), 1),
            ((a, zero_tail), 0), ((zero_tail, q), 0), ((a, data_tail), 1),
            (('-s', a, zero_tail), 1), ((empty, sparse), 0), ((empty, a), 1),
            (('-f', 'raw', '-F', 'qcow2', a, q), 0),
        ]
        for args, want in cases:
            theirs, ours = self.both_compare(*args)
            self.assertEqual(theirs[0], want, 'qemu-img compare %s' % (args,))
            self.assertEqual(ours, theirs, 'compare %s' % (args,))

    def test_compare_chain(self):
        _, _, top = self.chain3()
        flat = self.path('flat.raw')
        self.qimg('convert', '-O', 'raw', top, flat)
        theirs, ours = self.both_compare(top, flat)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours[0], 0)
        qemu_io(flat, 'raw', 'write -P 0x77 2M 1')     # inside the zeroed range
        theirs, ours = self.both_compare(top, flat)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours, (1, ['Content mismatch at offset 2097152!']))

    def test_compare_errors(self):
        a = self.raw_with_data('a.raw', [(0, 512)])
        r = self.img('compare', a, self.path('nope.raw'), ok=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b'nope.raw', r.stderr)
        r = self.img('compare', '-q', a, a)
        self.assertEqual(r.stdout, b'')

    # ------------------------------------------------------------ rebase

    def rebase_setup(self):
        """old base, new base with different content, overlay on the old."""
        old, new, ov = self.path('old.qcow2'), self.path('new.qcow2'), self.path('ov.qcow2')
        self.qimg('create', '-f', 'qcow2', old, str(SIZE))
        qemu_io(old, 'qcow2', 'write -P 0x41 0 2M', 'write -P 0x42 6M 64k',
                'write -P 0x43 10M 1000')
        self.qimg('create', '-f', 'qcow2', new, str(SIZE))
        qemu_io(new, 'qcow2', 'write -P 0x41 0 1M', 'write -P 0x51 1M 1M',
                'write -P 0x52 12M 512k')
        self.qimg('create', '-f', 'qcow2', '-b', 'old.qcow2', '-F', 'qcow2', ov)
        qemu_io(ov, 'qcow2', 'write -P 0x61 1536k 4k', 'write -P 0x62 14M 64k')
        ref = self.path('ref.raw')
        self.qimg('convert', '-O', 'raw', ov, ref)
        return old, new, ov, ref

    def test_rebase_safe_keeps_content(self):
        old, new, ov, ref = self.rebase_setup()
        self.img('rebase', '-b', 'new.qcow2', '-F', 'qcow2', ov)
        info = self.info(ov)
        self.assertEqual(info['backing-filename'], 'new.qcow2')
        self.assertEqual(info['backing-filename-format'], 'qcow2')
        self.assertSame(ov, ref, 'after rebase')
        self.assertCheckClean(ov)
        os.unlink(old)                      # no longer needed
        self.assertSame(ov, ref, 'without the old base')

    def test_rebase_remove_backing(self):
        old, new, ov, ref = self.rebase_setup()
        self.img('rebase', '-p', '-b', '', ov)
        info = self.info(ov)
        self.assertNotIn('backing-filename', info)
        os.unlink(old)
        self.assertSame(ov, ref)
        self.assertCheckClean(ov)

    def test_rebase_unsafe_only_rewrites_header(self):
        old, new, ov, ref = self.rebase_setup()
        before = self.info(ov)['actual-size']
        os.rename(old, self.path('gone.qcow2'))     # -u must not need it
        self.img('rebase', '-u', '-b', 'new.qcow2', '-F', 'qcow2', ov)
        info = self.info(ov)
        self.assertEqual(info['backing-filename'], 'new.qcow2')
        self.assertEqual(info['actual-size'], before, 'no data copied')
        self.assertCheckClean(ov)
        expected = self.path('expected.raw')
        self.qimg('rebase', '-u', '-b', 'new.qcow2', '-F', 'qcow2', ov)
        self.qimg('convert', '-O', 'raw', ov, expected)
        self.assertSame(ov, expected)

    def test_rebase_preserves_compression_type(self):
        old, new, ov, ref = self.rebase_setup()
        z = self.path('z.qcow2')
        self.qimg('create', '-f', 'qcow2', '-o', 'compression_type=zstd',
                  '-b', 'old.qcow2', '-F', 'qcow2', z)
        self.img('rebase', '-b', 'new.qcow2', '-F', 'qcow2', z)
        info = self.info(z)
        self.assertEqual(info['format-specific']['data']['compression-type'], 'zstd')
        self.assertSame(z, old)
        self.assertCheckClean(z)

    def test_rebase_errors(self):
        old, new, ov, ref = self.rebase_setup()
        r = self.img('rebase', '-b', 'new.qcow2', ov, ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b'backing format must be specified', r.stderr)
        r = self.img('rebase', '-b', 'missing.qcow2', '-F', 'qcow2', ov, ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b'missing.qcow2', r.stderr)
        self.assertEqual(self.info(ov)['backing-filename'], 'old.qcow2')
        raw = self.raw_with_data('r.raw', [(0, 512)])
        r = self.img('rebase', '-f', 'raw', '-b', 'new.qcow2', '-F', 'qcow2', raw, ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b'r.raw', r.stderr)


class ImgConvertInUse(FuseTestCase):
    """A target another process holds open is refused before it is touched."""

    def test_convert_refuses_a_mounted_target(self):
        require_tool(self, 'qemu-img')
        target = self.path('busy.qcow2')
        run_qemu_img('create', '-f', 'qcow2', target, str(MiB))
        src = self.path('src.raw')
        with open(src, 'wb') as f:
            f.write(b'\x5a' * MiB)
        before = read_file(target)
        d = self.mount(target, opts=['-f', 'qcow2'])
        for fmt in ('qcow2', 'raw'):
            r = run_diskstack(['img', 'convert', '-O', fmt, src, target])
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(b'busy.qcow2', r.stderr)
            self.assertIn(b'lock', r.stderr)
        self.stop_cleanly(d)
        self.assertEqual(read_file(target), before, 'the image was not touched')


if __name__ == '__main__':
    unittest.main()
