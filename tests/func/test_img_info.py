"""`diskstack img create|info|map|resize|snapshot` with qemu-img as the
oracle: images made here are read right by qemu-img and vice versa, and the
JSON of info/map matches field by field."""

import json
import os

from imgcase import MiB, ImgTestCase

INFO_KEYS = ('filename', 'format', 'virtual-size', 'dirty-flag', 'cluster-size',
             'backing-filename', 'full-backing-filename',
             'backing-filename-format', 'format-specific')
SNAP_KEYS = ('id', 'name', 'vm-state-size', 'date-sec', 'date-nsec',
             'vm-clock-sec', 'vm-clock-nsec', 'icount')


class ImgInfo(ImgTestCase):

    def assertSameInfo(self, ours, theirs):
        for k in INFO_KEYS:
            self.assertEqual(ours.get(k), theirs.get(k), 'info field %r' % k)
        self.assertEqual(len(ours.get('snapshots', [])),
                         len(theirs.get('snapshots', [])), 'snapshot count')
        for a, b in zip(ours.get('snapshots', []), theirs.get('snapshots', [])):
            for k in SNAP_KEYS:
                self.assertEqual(a.get(k), b.get(k), 'snapshot field %r' % k)
        # actual-size: both stat the same file, allow for our own open's
        # effect on nothing (same bytes on disk)
        self.assertEqual(ours['actual-size'], theirs['actual-size'])

    def test_create_qcow2_options_info_matches(self):
        cases = [
            ('a.qcow2', '64M', []),
            ('b.qcow2', '1G', ['-o', 'cluster_size=4k,refcount_bits=32']),
            ('c.qcow2', '10G', ['-o', 'compression_type=zstd,lazy_refcounts=on']),
            ('d.qcow2', '3M', ['-o', 'compat=0.10']),
            ('e.qcow2', '1.5G', ['-o', 'cluster_size=2M']),
        ]
        for name, size, opts in cases:
            with self.subTest(image=name):
                self.ok(self.img('create', '-q', '-f', 'qcow2', *opts, name, size),
                        'create ' + name)
                self.assertEqual(self.qimg('check', name).returncode, 0)
                ours, theirs = self.both_json('info', name)
                self.assertSameInfo(ours, theirs)
                h_ours, h_theirs = self.both('info', name)
                self.assertEqual(h_ours, h_theirs)

    def test_create_raw_and_sizes(self):
        out = self.ok(self.img('create', '-f', 'raw', 'r.raw', '1.5M'), 'create')
        self.assertIn("Formatting 'r.raw', fmt=raw size=1572864", out)
        self.assertEqual(os.path.getsize(self.path('r.raw')), 1572864)
        self.ok(self.img('create', '-q', '-f', 'raw', '-o', 'preallocation=full',
                         'f.raw', '256k'), 'create full')
        st = os.stat(self.path('f.raw'))
        self.assertGreaterEqual(st.st_blocks * 512, 256 * 1024)
        ours, theirs = self.both_json('info', '-f', 'raw', 'r.raw')
        self.assertSameInfo(ours, theirs)
        for bad in ('12Q', 'x', '1.3', '1e400'):
            r = self.img('create', '-f', 'raw', 'bad.raw', bad)
            self.assertEqual(r.returncode, 1, bad)
            self.assertEqual(len(r.stderr.decode().strip().splitlines()), 1)
            self.assertFalse(os.path.exists(self.path('bad.raw')))

    def test_backing_chain(self):
        self.ok(self.img('create', '-q', '-f', 'raw', 'base.raw', '8M'), 'base')
        r = self.img('create', '-f', 'qcow2', '-b', 'base.raw', 'x.qcow2')
        self.assertEqual(r.returncode, 1, 'backing without -F is refused')
        self.ok(self.img('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw',
                         'mid.qcow2'), 'mid')
        self.ok(self.img('create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F',
                         'qcow2', 'top.qcow2', '16M'), 'top')
        ours, theirs = self.both_json('info', 'mid.qcow2')
        self.assertEqual(ours['virtual-size'], 8 * MiB)
        self.assertSameInfo(ours, theirs)
        ours, theirs = self.both_json('info', '--backing-chain', 'top.qcow2')
        self.assertEqual(len(ours), 3)
        for a, b in zip(ours, theirs):
            self.assertSameInfo(a, b)
        h_ours, h_theirs = self.both('info', '--backing-chain', 'top.qcow2')
        self.assertEqual(h_ours, h_theirs)

    def test_map_matches_qemu(self):
        self.ok(self.img('create', '-q', '-f', 'raw', 'base.raw', '16M'), 'base')
        with open(self.path('base.raw'), 'r+b') as f:
            f.seek(2 * MiB)
            f.write(b'\x55' * 192 * 1024)
        self.ok(self.img('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw',
                         'top.qcow2'), 'top')
        self.qio(self.path('top.qcow2'), 'write -P 0x11 0 128k',
                 'write -z 1M 256k', 'write -P 0x22 2M 64k',
                 'write -c -P 0x33 8M 128k', 'discard 2M 64k')
        self.ok(self.img('create', '-q', '-f', 'qcow2', 'alone.qcow2', '4M'), 'alone')
        self.qio(self.path('alone.qcow2'), 'write -P 1 1M 64k', 'write -z 2M 64k')
        for name in ('top.qcow2', 'alone.qcow2', 'base.raw'):
            with self.subTest(image=name):
                fmt = ['-f', 'raw'] if name.endswith('.raw') else []
                ours, theirs = self.both('map', '--output', 'json', *fmt, name)
                self.assertEqual(json.loads(ours), json.loads(theirs))
                self.assertEqual(ours, theirs)
                # human: a table of host offsets; compressed clusters have
                # none, and both refuse such an image with exit 1
                ours = self.img('map', *fmt, name)
                theirs = self.qimg('map', *fmt, name)
                self.assertEqual(ours.returncode, theirs.returncode)
                self.assertEqual(ours.stdout, theirs.stdout)
        self.assertEqual(self.img('map', 'top.qcow2').returncode, 1)

    def test_resize(self):
        self.ok(self.img('create', '-q', '-f', 'qcow2', 'r.qcow2', '4M'), 'create')
        self.qio(self.path('r.qcow2'), 'write -P 7 3M 64k')
        self.assertIn('Image resized.', self.ok(self.img('resize', 'r.qcow2', '+4M'),
                                                'grow'))
        self.assertEqual(json.loads(self.qimg('info', '--output', 'json', 'r.qcow2')
                                    .stdout)['virtual-size'], 8 * MiB)
        r = self.img('resize', 'r.qcow2', '-6M')
        self.assertEqual(r.returncode, 1, 'shrink without --shrink')
        self.assertIn(b'--shrink', r.stderr)
        self.ok(self.img('resize', '--shrink', 'r.qcow2', '-4M'), 'shrink')
        self.assertEqual(self.qimg('check', 'r.qcow2').returncode, 0)
        self.qio(self.path('r.qcow2'), 'read -P 7 3M 64k')
        self.ok(self.img('create', '-q', '-f', 'raw', 'r.raw', '1M'), 'raw')
        self.ok(self.img('resize', '-f', 'raw', 'r.raw', '3M'), 'raw grow')
        self.assertEqual(os.path.getsize(self.path('r.raw')), 3 * MiB)
        self.assertEqual(self.img('resize', 'r.raw', 'junk').returncode, 1)

    def test_snapshots_interoperate(self):
        self.ok(self.img('create', '-q', '-f', 'qcow2', 's.qcow2', '8M'), 'create')
        p = self.path('s.qcow2')
        self.qio(p, 'write -P 0xaa 0 128k')
        self.ok(self.img('snapshot', '-c', 'ours', 's.qcow2'), 'snapshot -c')
        self.qio(p, 'write -P 0xbb 0 64k')
        self.ok(self.qimg('snapshot', '-c', 'theirs', 's.qcow2'), 'qemu snapshot')
        self.qio(p, 'write -P 0xcc 0 64k')
        ours, theirs = self.both('snapshot', '-l', 's.qcow2')
        self.assertEqual(ours, theirs)
        self.assertIn('ours', ours)
        self.assertIn('theirs', ours)
        ours, theirs = self.both_json('info', 's.qcow2')
        self.assertSameInfo(ours, theirs)
        # apply ours: back to 0xaa
        self.ok(self.img('snapshot', '-a', 'ours', 's.qcow2'), 'apply ours')
        self.qio(p, 'read -P 0xaa 0 128k')
        self.ok(self.img('snapshot', '-a', 'theirs', 's.qcow2'), 'apply theirs')
        self.qio(p, 'read -P 0xbb 0 64k', 'read -P 0xaa 64k 64k')
        self.ok(self.img('snapshot', '-d', 'theirs', 's.qcow2'), 'delete')
        self.assertNotIn(b'theirs', self.qimg('snapshot', '-l', 's.qcow2').stdout)
        self.assertEqual(self.qimg('check', 's.qcow2').returncode, 0)
        r = self.img('snapshot', '-a', 'nosuch', 's.qcow2')
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.decode().strip().splitlines()), 1, r.stderr)

    def test_help_and_usage(self):
        for sub in ('create', 'info', 'check', 'map', 'resize', 'snapshot'):
            with self.subTest(sub=sub):
                r = self.img(sub, '--help')
                self.assertEqual(r.returncode, 0)
                self.assertIn(b'Usage: diskstack img ' + sub.encode(), r.stdout)
        self.assertEqual(self.img('info').returncode, 2)
        self.assertEqual(self.img('info', '--output', 'xml', 'x').returncode, 2)
        r = self.img('info', 'missing.qcow2')
        self.assertEqual(r.returncode, 1)
        self.assertIn(b'missing.qcow2', r.stderr)
        self.assertEqual(len(r.stderr.decode().strip().splitlines()), 1)
        self.assertEqual(self.img('nosuch').returncode, 2)

    def test_image_in_use(self):
        """An image a qemu-storage-daemon holds for writing: create refuses
        it untouched, info needs -U (as qemu-img), snapshot -c refuses."""
        import shutil
        import subprocess
        import time
        if shutil.which('qemu-storage-daemon') is None:
            self.skipTest('qemu-storage-daemon not installed')
        self.ok(self.img('create', '-q', '-f', 'qcow2', 'u.qcow2', '8M'), 'create')
        self.qio(self.path('u.qcow2'), 'write -P 5 0 64k')
        before = open(self.path('u.qcow2'), 'rb').read()
        sock = self.path('nbd.sock')
        qsd = subprocess.Popen(
            ['qemu-storage-daemon', '--blockdev',
             'driver=file,node-name=f,filename=' + self.path('u.qcow2'),
             '--blockdev', 'driver=qcow2,node-name=q,file=f',
             '--nbd-server', 'addr.type=unix,addr.path=' + sock,
             '--export', 'type=nbd,id=e,node-name=q,writable=on'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(qsd.wait)
        self.addCleanup(qsd.terminate)
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):     # the socket exists once it serves
            self.assertIsNone(qsd.poll(), 'qemu-storage-daemon exited')
            self.assertLess(time.monotonic(), deadline, 'no NBD socket')
            time.sleep(0.01)
        for args in (('create', '-q', '-f', 'raw', 'u.qcow2', '1M'),
                     ('create', '-q', '-f', 'qcow2', 'u.qcow2', '1M'),
                     ('snapshot', '-c', 's', 'u.qcow2'),
                     ('info', 'u.qcow2')):
            with self.subTest(args=args):
                r = self.img(*args)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn(b'lock', r.stderr)
                self.assertEqual(len(r.stderr.decode().strip().splitlines()), 1)
        self.assertEqual(open(self.path('u.qcow2'), 'rb').read(), before)
        info = json.loads(self.ok(self.img('info', '-U', '--output', 'json',
                                           'u.qcow2'), 'info -U'))
        self.assertEqual(info['virtual-size'], 8 * MiB)

    def test_create_qcow2_preallocation(self):
        for mode in ('metadata', 'falloc', 'full'):
            with self.subTest(mode=mode):
                name = 'p-%s.qcow2' % mode
                self.ok(self.img('create', '-q', '-f', 'qcow2', '-o',
                                 'preallocation=%s,cluster_size=4k' % mode,
                                 name, '5M'), 'create ' + mode)
                r = self.qimg('check', '--output', 'json', name)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                c = json.loads(r.stdout)
                self.assertEqual(c['allocated-clusters'], c['total-clusters'])
                m = json.loads(self.qimg('map', '--output', 'json', name).stdout)
                self.assertTrue(all(e['data'] and e['present'] for e in m), m)
                self.assertEqual(sum(e['length'] for e in m), 5 * MiB)
                r = self.qimg('compare', '-f', 'qcow2', '-F', 'raw', name,
                              self.make_zero_raw(5 * MiB))
                self.assertEqual(r.returncode, 0, r.stdout)
                used = os.stat(self.path(name)).st_blocks * 512
                if mode == 'metadata':
                    self.assertLess(used, MiB, 'metadata stays sparse')
                else:
                    self.assertGreaterEqual(used, 5 * MiB, mode + ' allocates')

    def make_zero_raw(self, size):
        p = self.path('zero.raw')
        with open(p, 'wb') as f:
            f.truncate(size)
        return p
