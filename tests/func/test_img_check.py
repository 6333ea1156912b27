"""`diskstack img check` against `qemu-img check`: the same counts on clean
and damaged images, the same exit codes, and -r repairs so that qemu-img
agrees the image is clean afterwards."""

import os

from imgcase import MiB, ImgTestCase

CHECK_KEYS = ('check-errors', 'corruptions', 'leaks', 'image-end-offset',
              'total-clusters', 'allocated-clusters', 'fragmented-clusters',
              'compressed-clusters', 'format', 'filename')


class ImgCheck(ImgTestCase):

    def populated(self, name='d.qcow2'):
        """A qcow2 image with data, zeroes, compressed data and a snapshot,
        written by qemu-io (so the check is judged on qemu's layout)."""
        p = self.path(name)
        self.ok(self.img('create', '-q', '-f', 'qcow2', name, '16M'), 'create')
        self.qio(p, 'write -P 0x11 0 192k', 'write -z 1M 128k',
                 'write -P 0x22 5M 64k', 'write -c -P 0x33 8M 128k')
        self.ok(self.qimg('snapshot', '-c', 'before', name), 'qemu snapshot')
        self.qio(p, 'write -P 0x44 64k 64k')
        return name

    def assertSameCheck(self, name, exit_code):
        ours = self.img('check', '--output', 'json', name)
        theirs = self.qimg('check', '--output', 'json', name)
        self.assertEqual(ours.returncode, exit_code, ours.stderr)
        self.assertEqual(theirs.returncode, exit_code, theirs.stderr)
        import json
        a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
        for k in CHECK_KEYS:
            self.assertEqual(a.get(k), b.get(k), 'check field %r: %s vs qemu %s'
                             % (k, a, b))
        return a

    def test_clean_images_agree(self):
        self.ok(self.img('create', '-q', '-f', 'qcow2', 'empty.qcow2', '1G'), 'create')
        self.assertSameCheck('empty.qcow2', 0)
        name = self.populated()
        r = self.assertSameCheck(name, 0)
        self.assertGreater(r['allocated-clusters'], 0)
        self.assertGreater(r['compressed-clusters'], 0)
        ours, theirs = self.both('check', name)
        self.assertEqual(ours, theirs)

    def leaky(self, name, n_leaks=2):
        """A populated image with n clusters past the end marked in use."""
        self.populated(name)
        p = self.path(name)
        cs, _ = self.qcow2_layout(p)
        end = os.path.getsize(p) // cs
        with open(p, 'r+b') as f:
            f.truncate((end + n_leaks) * cs)
        for c in range(end, end + n_leaks):
            self.set_refcount(p, c, 1)
        return name

    def test_leaks_counted_and_repaired(self):
        name = self.leaky('leak.qcow2', 3)
        r = self.assertSameCheck(name, 3)
        self.assertEqual(r['leaks'], 3)
        human = self.img('check', name)
        self.assertIn(b'3 leaked clusters were found', human.stdout)
        self.assertIn(b'Leaked cluster', human.stderr)
        rep = self.img('check', '-r', 'leaks', name)
        self.assertEqual(rep.returncode, 0, rep.stdout + rep.stderr)
        self.assertIn(b'3 leaked clusters', rep.stdout)
        self.assertSameCheck(name, 0)

    def test_leak_repair_json_counts(self):
        name = self.leaky('leak2.qcow2', 1)
        rep = self.img('check', '-r', 'leaks', '--output', 'json', name)
        self.assertEqual(rep.returncode, 0, rep.stderr)
        import json
        self.assertEqual(json.loads(rep.stdout).get('leaks-fixed'), 1)

    def test_corruption_counted_and_repaired(self):
        name = self.populated('bad.qcow2')
        p = self.path(name)
        cs, _ = self.qcow2_layout(p)
        # the last cluster holds guest data: claim it is free
        last = os.path.getsize(p) // cs - 1
        self.assertEqual(self.get_refcount(p, last), 1)
        self.set_refcount(p, last, 0)
        r = self.assertSameCheck(name, 2)
        self.assertGreaterEqual(r['corruptions'], 1)
        rep = self.img('check', '-r', 'leaks', name)
        self.assertEqual(rep.returncode, 2, 'leaks-only repair leaves corruption')
        rep = self.img('check', '-r', 'all', name)
        self.assertEqual(rep.returncode, 0, rep.stdout + rep.stderr)
        self.assertEqual(self.get_refcount(p, last), 1)
        self.assertSameCheck(name, 0)

    def test_errors(self):
        r = self.img('check', 'missing.qcow2')
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.decode().strip().splitlines()), 1, r.stderr)
        self.assertIn(b'missing.qcow2', r.stderr)
        with open(self.path('r.raw'), 'wb') as f:
            f.truncate(MiB)
        r = self.img('check', '-f', 'raw', 'r.raw')
        self.assertEqual(r.returncode, 1)
        self.assertIn(b'does not support checks', r.stderr)
        self.assertEqual(self.img('check', '-r', 'some', 'r.raw').returncode, 2)
        self.assertEqual(self.img('check', '--help').returncode, 0)

    def test_crashed_lazy_refcounts_image(self):
        """qemu-io aborts (SIGABRT, no cleanup) after an allocating write to
        an image with lazy refcounts: the refcounts on disk lag behind the
        L2 tables, and both checkers must say so the same way."""
        self.ok(self.img('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on',
                         'z.qcow2', '8M'), 'create')
        import subprocess
        r = subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 1 0 256k',
                            '-c', 'abort', self.path('z.qcow2')],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertNotEqual(r.returncode, 0, 'qemu-io should have aborted')
        ours, theirs = self.both_json('info', 'z.qcow2')
        self.assertTrue(ours['dirty-flag'])
        self.assertEqual(ours['dirty-flag'], theirs['dirty-flag'])
        r = self.assertSameCheck('z.qcow2', 2)
        self.assertGreater(r['corruptions'], 0)
        rep = self.img('check', '-r', 'all', 'z.qcow2')
        self.assertEqual(rep.returncode, 0, rep.stdout + rep.stderr)
        self.assertSameCheck('z.qcow2', 0)
        self.qio(self.path('z.qcow2'), 'read -P 1 0 256k')

    def test_small_clusters_and_refcount_widths(self):
        """512-byte clusters (many L2 tables, compressed runs spanning them)
        and refcounts of 1, 8 and 64 bits count like qemu-img."""
        for bits in (1, 8, 64):
            with self.subTest(refcount_bits=bits):
                name = 'w%d.qcow2' % bits
                r = self.qimg('create', '-q', '-f', 'qcow2', '-o',
                              'refcount_bits=%d,cluster_size=512' % bits, name, '4M')
                self.assertEqual(r.returncode, 0, r.stderr)
                self.qio(self.path(name), 'write -P 1 0 1M',
                         'write -c -P 2 2M 64k', 'write -P 3 3M 8k')
                self.assertSameCheck(name, 0)
