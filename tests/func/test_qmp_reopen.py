"""blockdev-reopen through real QMP and FUSE exports: read-only toggles under
an export (with QEMU's image locks following), backing changed live under a
reader that checks every byte, backing: null, file changed live, cache.direct
and detect-zeroes, new qcow2 cache sizes, a dirty image repaired on going
read-write, auto-read-only, every refusal with the graph unchanged afterwards, a
multi-node reopen rolled back, and the same error script against
qemu-storage-daemon where it is installed."""

import errno
import json
import os
import shutil
import subprocess
import threading

from common import (MiB, Daemon, FuseTestCase, diskstack_bin, is_mounted,
                    pread_all, wait_for)
from qmp import QmpClient

SIZE = 4 * MiB
TIMEOUT = 15.0
CHUNK = 64 * 1024


def run(*args):
    """Runs a tool (qemu-img, qemu-io) and fails the test if it fails."""
    r = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    if r.returncode != 0:
        raise AssertionError('%s: exit %d: %s' % (' '.join(args), r.returncode,
                                                  r.stderr.decode(errors='replace')))
    return r


def pattern(seed, size):
    """Deterministic, position-dependent bytes (a wrong offset shows)."""
    block = bytes((seed * 7 + i) & 0xff for i in range(251))
    return (block * (size // len(block) + 1))[:size]


def qcow2_def(node, fnode, path, **extra):
    d = {'driver': 'qcow2', 'node-name': node, 'file': fnode}
    d.update(extra)
    return d


class ReopenBase(FuseTestCase):

    def start_daemon(self):
        self.sock = self.path('qmp.sock')
        d = self.serve(['--qmp', self.sock, '--iothreads', '2'],
                       self.path('unused'), wait=False)
        wait_for(lambda: os.path.exists(self.sock) or d.proc.poll() is not None,
                 lambda: 'no QMP socket: ' + d.describe())
        self.assertIsNone(d.proc.poll(), d.describe())
        self.daemon = d
        self.qmp = QmpClient(self.sock).negotiate()
        self.addCleanup(self.qmp.close)
        return self.qmp

    def ok(self, name, args=None):
        r = self.qmp.cmd(name, args)
        self.assertEqual(r, {'return': {}}, '%s %s' % (name, json.dumps(args)))

    def error(self, name, args, desc=None):
        r = self.qmp.cmd(name, args)
        self.assertIn('error', r, '%s %s succeeded' % (name, json.dumps(args)))
        self.assertEqual(r['error']['class'], 'GenericError', r)
        if desc is not None:
            self.assertEqual(r['error']['desc'], desc, json.dumps(args))
        return r['error']['desc']

    def reopen(self, *defs):
        self.ok('blockdev-reopen', {'options': list(defs)})

    def reopen_error(self, defs, desc=None):
        return self.error('blockdev-reopen', {'options': list(defs)}, desc)

    def add_file(self, node, path, **extra):
        d = {'driver': 'file', 'node-name': node, 'filename': path}
        d.update(extra)
        self.ok('blockdev-add', d)

    def add_qcow2(self, node, fnode, path, **extra):
        self.add_file(fnode, path, **{k: v for k, v in extra.items()
                                      if k == 'read-only'})
        self.ok('blockdev-add', qcow2_def(node, fnode, path, **extra))

    def nodes(self):
        r = self.qmp.cmd('query-named-block-nodes', {'flat': True})
        return {n['node-name']: n for n in r['return']}

    def node(self, name):
        return self.nodes()[name]

    def export(self, node, writable, name='e0', mnt=None):
        mnt = mnt or self.path(name + '.img')
        open(mnt, 'a').close()
        self.ok('block-export-add', {'type': 'fuse', 'id': name, 'node-name': node,
                                     'mountpoint': mnt, 'writable': writable})
        self.assertTrue(is_mounted(mnt))
        self.addCleanup(lambda: is_mounted(mnt) and
                        subprocess.run(['fusermount3', '-u', '-z', mnt]))
        return mnt

    def unexport(self, name='e0'):
        self.ok('block-export-del', {'id': name})

    def quit(self):
        self.assertEqual(self.qmp.cmd('quit'), {'return': {}})
        self.assertEqual(self.daemon.wait_exit(), 0, self.daemon.describe())

    def qcow2_image(self, name, backing=None, data=None):
        p = self.path(name)
        args = ['create', '-q', '-f', 'qcow2']
        if backing:
            args += ['-b', backing, '-F', 'qcow2']
        run('qemu-img', *(args + [p, str(SIZE)]))
        for off, b in (data or {}).items():
            run('qemu-io', '-f', 'qcow2', '-c',
                'write -P %d %d %d' % (b, off, CHUNK), p)
        return p

    def assertCheckClean(self, *paths):
        for p in paths:
            r = subprocess.run(['qemu-img', 'check', '-q', p],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.assertEqual(r.returncode, 0, '%s: %s%s' % (p, r.stdout, r.stderr))


class ReadOnly(ReopenBase):

    def qemu_img_info_works(self, path):
        """qemu-img info without -U: refused while a writer holds the image."""
        r = subprocess.run(['qemu-img', 'info', path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        return r.returncode == 0

    def test_read_only_toggle_under_export(self):
        img = self.qcow2_image('disk.qcow2')
        self.start_daemon()
        self.add_qcow2('disk', 'f0', img)
        mnt = self.export('disk', writable=True)
        with open(mnt, 'r+b', buffering=0) as f:
            f.write(pattern(1, CHUNK))
        # A writer above: refused, nothing changes, writes go on.
        before = self.nodes()
        self.reopen_error([qcow2_def('disk', 'f0', img, **{'read-only': True})],
                          "Read-only block node 'disk' cannot support "
                          "read-write users")
        self.reopen_error([{'driver': 'file', 'node-name': 'f0', 'filename': img,
                            'read-only': True}],
                          "Read-only block node 'f0' cannot support "
                          "read-write users")
        self.assertEqual(self.nodes(), before)
        with open(mnt, 'r+b', buffering=0) as f:
            f.seek(CHUNK)
            f.write(pattern(2, CHUNK))
        self.assertFalse(self.qemu_img_info_works(img), 'write lock not held')
        self.unexport()

        # Both nodes read-only at once: the write lock byte goes away.
        self.reopen(qcow2_def('disk', 'f0', img, **{'read-only': True}),
                    {'driver': 'file', 'node-name': 'f0', 'filename': img,
                     'read-only': True})
        self.assertTrue(self.node('disk')['ro'])
        self.assertTrue(self.node('f0')['ro'])
        self.assertTrue(self.qemu_img_info_works(img), 'write lock still held')
        self.error('block-export-add', {'type': 'fuse', 'id': 'e1', 'node-name': 'disk',
                                        'mountpoint': mnt, 'writable': True})
        mnt = self.export('disk', writable=False)
        with open(mnt, 'rb', buffering=0) as f:
            self.assertEqual(pread_all(f.fileno(), 2 * CHUNK, 0),
                             pattern(1, CHUNK) + pattern(2, CHUNK))
        with self.assertRaises(OSError) as cm:
            open(mnt, 'r+b', buffering=0)
        self.assertEqual(cm.exception.errno, errno.EROFS)
        # qcow2 read-write over a read-only file: QEMU's message.
        self.reopen_error([qcow2_def('disk', 'f0', img)], 'Block node is read-only')

        # Back to read-write under the (reading) export, children first.
        self.reopen({'driver': 'file', 'node-name': 'f0', 'filename': img},
                    qcow2_def('disk', 'f0', img))
        self.assertFalse(self.node('disk')['ro'])
        self.assertFalse(self.qemu_img_info_works(img), 'write lock not re-taken')
        with open(mnt, 'rb', buffering=0) as f:
            self.assertEqual(pread_all(f.fileno(), CHUNK, CHUNK), pattern(2, CHUNK))
        self.unexport()
        mnt = self.export('disk', writable=True)
        with open(mnt, 'r+b', buffering=0) as f:
            f.seek(2 * CHUNK)
            f.write(pattern(3, CHUNK))
        self.unexport()
        self.quit()
        self.assertCheckClean(img)
        run('qemu-img', 'convert', '-O', 'raw', img, self.path('out.raw'))
        with open(self.path('out.raw'), 'rb') as f:
            self.assertEqual(f.read(3 * CHUNK),
                             pattern(1, CHUNK) + pattern(2, CHUNK) + pattern(3, CHUNK))

    def test_dirty_image_repaired_when_going_read_write(self):
        """Opened read-only, a dirty image (lazy refcounts, writer killed) is
        left alone; going read-write repairs it as opening it would."""
        img = self.path('dirty.qcow2')
        run('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on',
            img, str(SIZE))
        subprocess.run(['qemu-io', '-c', 'write -P 7 0 %d' % CHUNK, '-c', 'abort',
                        img], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        info = json.loads(run('qemu-img', 'info', '--output=json', img).stdout)
        self.assertTrue(info.get('dirty-flag'), 'qemu-io left no dirty image')
        self.start_daemon()
        self.add_qcow2('disk', 'f0', img, **{'read-only': True})
        self.reopen({'driver': 'file', 'node-name': 'f0', 'filename': img},
                    qcow2_def('disk', 'f0', img))
        mnt = self.export('disk', writable=True)
        with open(mnt, 'r+b', buffering=0) as f:
            self.assertEqual(pread_all(f.fileno(), CHUNK, 0), bytes([7]) * CHUNK)
            f.seek(CHUNK)
            f.write(pattern(6, CHUNK))
        self.unexport()
        self.quit()
        self.assertCheckClean(img)
        info = json.loads(run('qemu-img', 'info', '--output=json', img).stdout)
        self.assertFalse(info.get('dirty-flag'))

    def test_auto_read_only(self):
        """On a read-only file system, read-write fails (QEMU's message),
        and with auto-read-only the node quietly stays read-only — until the
        file system is writable again.  (QEMU reports such a node as
        read-write and fails its first writer instead.)"""
        d = self.path('ro')
        os.mkdir(d)
        img = os.path.join(d, 'disk.raw')
        with open(img, 'wb') as f:
            f.truncate(SIZE)
        if subprocess.run(['mount', '--bind', d, d]).returncode != 0:
            self.skipTest('cannot bind-mount')
        self.addCleanup(lambda: subprocess.run(['umount', '-l', d]))
        if subprocess.run(['mount', '-o', 'remount,bind,ro', d]).returncode != 0:
            self.skipTest('cannot remount read-only')
        self.start_daemon()
        self.add_file('f0', img, **{'read-only': True})
        rw = {'driver': 'file', 'node-name': 'f0', 'filename': img}
        self.reopen_error([rw], "Could not open '%s': Read-only file system" % img)
        self.assertTrue(self.node('f0')['ro'])
        self.reopen(dict(rw, **{'auto-read-only': True}))
        self.assertTrue(self.node('f0')['ro'])
        run('mount', '-o', 'remount,bind,rw', d)
        self.reopen(dict(rw, **{'auto-read-only': True}))
        self.assertFalse(self.node('f0')['ro'])
        self.quit()

    def test_nested_file_follows_parent(self):
        """A file node the qcow2 node created itself is carried along."""
        img = self.qcow2_image('disk.qcow2')
        self.start_daemon()
        nested = {'driver': 'file', 'filename': img, 'node-name': 'nf'}
        self.ok('blockdev-add', {'driver': 'qcow2', 'node-name': 'disk',
                                 'file': nested, 'read-only': True})
        self.assertTrue(self.node('nf')['ro'])
        self.reopen({'driver': 'qcow2', 'node-name': 'disk', 'file': 'nf'})
        self.assertFalse(self.node('disk')['ro'])
        self.assertFalse(self.node('nf')['ro'])
        self.reopen({'driver': 'qcow2', 'node-name': 'disk', 'read-only': True,
                     'file': nested})
        self.assertTrue(self.node('nf')['ro'])
        self.reopen_error([{'driver': 'qcow2', 'node-name': 'disk',
                            'file': dict(nested, **{'node-name': 'other'})}],
                          "Cannot change the option 'node-name'")
        self.quit()
        self.assertCheckClean(img)


class LiveChanges(ReopenBase):

    def chain(self):
        """base.qcow2 (data) and an identical copy, top.qcow2 over base."""
        base = self.qcow2_image('base.qcow2', data={0: 0x11, 5 * CHUNK: 0x22,
                                                    40 * CHUNK: 0x33})
        copy = self.path('copy.qcow2')
        shutil.copyfile(base, copy)
        top = self.qcow2_image('top.qcow2', backing=base, data={5 * CHUNK: 0x44})
        return base, copy, top

    def expected(self):
        data = bytearray(SIZE)
        for off, b in ((0, 0x11), (5 * CHUNK, 0x44), (40 * CHUNK, 0x33)):
            data[off:off + CHUNK] = bytes([b]) * CHUNK
        return bytes(data)

    def open_chain(self, base, copy, top):
        self.add_qcow2('base', 'fb', base, **{'read-only': True})
        self.add_qcow2('copy', 'fc', copy, **{'read-only': True})
        self.add_file('ft', top)
        self.ok('blockdev-add', qcow2_def('top', 'ft', top, backing='base'))

    def test_change_backing_under_reader(self):
        """20 reopens alternately change top's backing between two nodes of
        the same content and switch O_DIRECT on ft, while a reader checks
        every byte it reads and a writer rewrites a region of its own."""
        base, copy, top = self.chain()
        self.start_daemon()
        self.open_chain(base, copy, top)
        mnt = self.export('top', writable=True)
        want = self.expected()
        wfirst, wlast = 48, 56               # the writer's chunks
        stop = threading.Event()
        errors, reads, gens = [], [0], {}

        def reader():
            fd = os.open(mnt, os.O_RDONLY)
            off = 0
            try:
                while not stop.is_set():
                    if wfirst * CHUNK <= off < wlast * CHUNK:
                        off = wlast * CHUNK
                    got = os.pread(fd, 4 * CHUNK, off)
                    if not got or got != want[off:off + len(got)]:
                        errors.append('offset %d: wrong data' % off)
                        return
                    reads[0] += 1
                    off = (off + 4 * CHUNK) % SIZE
            except OSError as e:
                errors.append('read at %d: %s' % (off, e))
            finally:
                os.close(fd)

        def writer():
            fd = os.open(mnt, os.O_RDWR)
            gen = 0
            try:
                while not stop.is_set():
                    gen += 1
                    for k in range(wfirst, wlast):
                        os.pwrite(fd, pattern(gen + k, CHUNK), k * CHUNK)
                        gens[k] = gen
            except OSError as e:
                errors.append('write: %s' % e)
            finally:
                os.close(fd)

        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: reads[0] > 0 or errors, lambda: 'reader never read')
            for i in range(20):
                seen = reads[0]
                if i % 2 == 0:
                    new = 'copy' if i % 4 == 0 else 'base'
                    self.reopen(qcow2_def('top', 'ft', top, backing=new))
                else:
                    self.reopen({'driver': 'file', 'node-name': 'ft',
                                 'filename': top, 'cache': {'direct': i % 4 == 1}})
                # the reader keeps going between changes
                wait_for(lambda: reads[0] > seen or errors,
                         lambda: 'reader stalled after reopen %d' % i)
        finally:
            stop.set()
            for t in threads:
                t.join(TIMEOUT)
        self.assertEqual(errors, [])
        self.assertTrue(gens, 'the writer never completed a write')
        self.assertEqual(self.node('top')['backing_file'], base)
        self.assertFalse(self.node('ft')['cache']['direct'])
        for k, gen in gens.items():
            want = want[:k * CHUNK] + pattern(gen + k, CHUNK) + want[(k + 1) * CHUNK:]

        # backing: null — what top does not hold now reads as zeroes.
        self.reopen(qcow2_def('top', 'ft', top, backing=None))
        self.assertNotIn('backing_file', self.node('top'))
        with open(mnt, 'rb', buffering=0) as f:
            self.assertEqual(pread_all(f.fileno(), CHUNK, 0), bytes(CHUNK))
            self.assertEqual(pread_all(f.fileno(), CHUNK, 5 * CHUNK),
                             bytes([0x44]) * CHUNK)
        # and back
        self.reopen(qcow2_def('top', 'ft', top, backing='copy'))
        with open(mnt, 'rb', buffering=0) as f:
            self.assertBytesEqual(pread_all(f.fileno(), SIZE, 0), want,
                                  'content after the changes')
        self.unexport()
        self.quit()
        self.assertCheckClean(base, copy, top)

    def test_change_file(self):
        base, copy, top = self.chain()
        self.start_daemon()
        self.open_chain(base, copy, top)
        top2 = self.path('top2.qcow2')
        shutil.copyfile(top, top2)
        self.add_file('ft2', top2)
        mnt = self.export('top', writable=True)
        self.reopen(qcow2_def('top', 'ft2', top, backing='base'))
        self.assertEqual(self.node('top')['file'], top2)
        with open(mnt, 'r+b', buffering=0) as f:
            f.seek(20 * CHUNK)
            f.write(pattern(9, CHUNK))
            self.assertEqual(pread_all(f.fileno(), SIZE, 0)[:6 * CHUNK],
                             self.expected()[:6 * CHUNK])
        # the old file node is free again: a protocol node's own state is fixed
        self.reopen_error([{'driver': 'file', 'node-name': 'ft2', 'filename': top}],
                          "Cannot change the option 'filename'")
        # the old file is used by nobody now; the new one is
        self.error('blockdev-del', {'node-name': 'ft2'})
        self.ok('blockdev-del', {'node-name': 'ft'})
        self.unexport()
        self.quit()
        self.assertCheckClean(top, top2)
        # the write went to top2, not to top
        for img, want in ((top2, pattern(9, CHUNK)), (top, bytes(CHUNK))):
            out = self.path('out.raw')
            run('qemu-img', 'convert', '-O', 'raw', img, out)
            with open(out, 'rb') as f:
                f.seek(20 * CHUNK)
                self.assertEqual(f.read(CHUNK), want, img)

    def test_cache_direct_and_detect_zeroes(self):
        img = self.qcow2_image('disk.qcow2')
        self.start_daemon()
        self.add_qcow2('disk', 'f0', img)
        mnt = self.export('disk', writable=True)
        self.reopen({'driver': 'file', 'node-name': 'f0', 'filename': img,
                     'cache': {'direct': True}})
        self.assertTrue(self.node('f0')['cache']['direct'])
        with open(mnt, 'r+b', buffering=0) as f:
            f.seek(3)                     # unaligned: O_DIRECT below must cope
            f.write(pattern(5, 10000))
            self.assertEqual(pread_all(f.fileno(), 10000, 3), pattern(5, 10000))
        self.reopen(qcow2_def('disk', 'f0', img, **{'detect-zeroes': 'on',
                                                    'discard': 'unmap'}))
        self.assertEqual(self.node('disk')['detect_zeroes'], 'on')
        # new (tiny) metadata caches under I/O: the old ones are written back
        self.reopen(qcow2_def('disk', 'f0', img, **{'l2-cache-size': 4096,
                                                    'refcount-cache-size': 4096}))
        with open(mnt, 'r+b', buffering=0) as f:
            for k in range(256 * 1024, SIZE, 256 * 1024):
                f.seek(k)
                f.write(pattern(k // 4096, 4096))
            for k in range(256 * 1024, SIZE, 256 * 1024):
                self.assertEqual(pread_all(f.fileno(), 4096, k),
                                 pattern(k // 4096, 4096))
        # absent options go back to their defaults
        self.reopen({'driver': 'file', 'node-name': 'f0', 'filename': img})
        self.assertFalse(self.node('f0')['cache']['direct'])
        self.reopen(qcow2_def('disk', 'f0', img))
        self.assertEqual(self.node('disk')['detect_zeroes'], 'off')
        with open(mnt, 'rb', buffering=0) as f:
            self.assertEqual(pread_all(f.fileno(), 10000, 3), pattern(5, 10000))
        self.unexport()
        self.quit()
        self.assertCheckClean(img)


class Refusals(ReopenBase):
    """Every refusal leaves query-named-block-nodes exactly as it was."""

    def setup_graph(self, base, base2, top, raw):
        self.add_qcow2('base', 'fb', base)
        self.add_qcow2('base2', 'fb2', base2)
        self.add_file('ft', top)
        self.ok('blockdev-add', qcow2_def('top', 'ft', top, backing='base'))
        self.add_file('fr', raw)
        self.ok('blockdev-add', {'driver': 'raw', 'node-name': 'raw', 'file': 'fr'})

    def images(self):
        base = self.qcow2_image('base.qcow2')
        base2 = self.qcow2_image('base2.qcow2')
        top = self.qcow2_image('top.qcow2', backing=base)
        raw = self.path('r.raw')
        with open(raw, 'wb') as f:
            f.truncate(SIZE)
        return base, base2, top, raw

    def cases(self, base, top):
        t = lambda **kw: qcow2_def('top', 'ft', top, **dict({'backing': 'base'}, **kw))
        ft = {'driver': 'file', 'node-name': 'ft', 'filename': top}
        raw = {'driver': 'raw', 'node-name': 'raw', 'file': 'fr'}
        return [
            ('unknown node', [dict(raw, **{'node-name': 'nope'})],
             "Failed to find node with node-name='nope'"),
            ('no node-name', [{'driver': 'raw', 'file': 'fr'}],
             'node-name not specified'),
            ('unknown option', [t(), dict(raw, bogus=1)],
             "Parameter 'options[1].bogus' is unexpected"),
            ('wrong type', [t(**{'read-only': 'yes'})],
             "Invalid parameter type for 'options[0].read-only', expected: boolean"),
            ('fixed filename', [dict(ft, filename=base)],
             "Cannot change the option 'filename'"),
            ('fixed locking', [dict(ft, locking='off')],
             "Cannot change the option 'locking'"),
            ('fixed aio', [dict(ft, aio='io_uring')],
             "Cannot change the option 'aio'"),
            ('fixed force-share', [t(**{'force-share': True, 'read-only': True})],
             "Cannot change the option 'force-share'"),
            ('backing missing', [qcow2_def('top', 'ft', top)],
             "backing is missing for 'top'"),
            ('loop on itself', [t(backing='top')],
             "Making 'top' a backing child of 'top' would create a cycle"),
            ('loop through the chain',
             [qcow2_def('base', 'fb', base, backing='top')],
             "Making 'top' a backing child of 'base' would create a cycle"),
            ('writer below a reader', [dict(ft, **{'read-only': True})],
             "Read-only block node 'ft' cannot support read-write users"),
            ('nested child created elsewhere',
             [dict(raw, file={'driver': 'file', 'filename': top})],
             "Cannot change the option 'file.driver'"),
        ]

    def test_refusals_leave_graph_unchanged(self):
        base, base2, top, raw = self.images()
        self.start_daemon()
        self.setup_graph(base, base2, top, raw)
        before = self.nodes()
        for what, defs, desc in self.cases(base, top):
            with self.subTest(what):
                self.reopen_error(defs, desc)
                self.assertEqual(self.nodes(), before, what)
        extra = [
            ('listed twice', [qcow2_def('top', 'ft', top, backing='base2'),
                              qcow2_def('top', 'ft', top, backing='base')],
             "Node 'top' is listed more than once"),
            ('fixed window', [{'driver': 'raw', 'node-name': 'raw', 'file': 'fr',
                               'offset': 512}],
             "Cannot change the option 'offset'"),
            ('fixed driver', [{'driver': 'raw', 'node-name': 'top', 'file': 'ft'}],
             "Cannot change the option 'driver'"),
            ('unknown backing', [qcow2_def('top', 'ft', top, backing='nope')], None),
            ('file shared with another format',
             [qcow2_def('top', 'fb2', top, backing='base')], None),
        ]
        for what, defs, desc in extra:
            with self.subTest(what):
                self.reopen_error(defs, desc)
                self.assertEqual(self.nodes(), before, what)
        # a list with nothing in it changes nothing (qsd 7.2 aborts on it)
        self.reopen()
        self.assertEqual(self.nodes(), before)
        self.quit()
        self.assertCheckClean(base, base2, top)

    def test_multi_node_rollback(self):
        base, base2, top, raw = self.images()
        self.start_daemon()
        self.setup_graph(base, base2, top, raw)
        mnt = self.export('top', writable=True)
        before = self.nodes()
        ft = {'driver': 'file', 'node-name': 'ft', 'filename': top}
        # The second fails while checking: nothing was touched.
        self.reopen_error([qcow2_def('top', 'ft', top, backing='base2'),
                           {'driver': 'raw', 'node-name': 'raw', 'file': 'fr',
                            'offset': 512}], "Cannot change the option 'offset'")
        self.assertEqual(self.nodes(), before)
        # The second fails on permissions, after the first changed its edge
        # and the file node prepared a new fd: all rolled back.
        self.reopen_error([qcow2_def('top', 'ft', top, backing='base2'),
                           dict(ft, **{'read-only': True, 'cache': {'direct': True}})],
                          "Read-only block node 'ft' cannot support read-write users")
        self.assertEqual(self.nodes(), before)
        self.assertEqual(self.node('top')['backing_file'], base)
        # A loop made by two entries together is found on the live graph.
        self.reopen_error([qcow2_def('base2', 'fb2', base2, backing='top'),
                           qcow2_def('top', 'ft', top, backing='base2')],
                          "Making 'base2' a backing child of 'top' would create "
                          "a cycle")
        self.assertEqual(self.nodes(), before)
        with open(mnt, 'r+b', buffering=0) as f:
            f.write(pattern(4, CHUNK))
            self.assertEqual(pread_all(f.fileno(), CHUNK, 0), pattern(4, CHUNK))
        # And both at once when both are fine.
        self.reopen(qcow2_def('top', 'ft', top, backing='base2'),
                    {'driver': 'raw', 'node-name': 'raw', 'file': 'fr',
                     'detect-zeroes': 'on'})
        self.assertEqual(self.node('top')['backing_file'], base2)
        self.assertEqual(self.node('raw')['detect_zeroes'], 'on')
        self.unexport()
        self.quit()
        self.assertCheckClean(base, base2, top)

    def test_same_replies_as_qemu_storage_daemon(self):
        qsd = shutil.which('qemu-storage-daemon')
        if not qsd:
            self.skipTest('qemu-storage-daemon not installed')
        base, base2, top, raw = self.images()
        replies = {}
        for who in ('qsd', 'diskstack'):
            sock = self.path(who + '.sock')
            if who == 'qsd':
                args = [qsd, '--chardev', 'socket,path=%s,server=on,wait=off,id=m'
                        % sock, '--monitor', 'chardev=m']
            else:
                args = [diskstack_bin(), 'serve', '--qmp', sock, '--iothreads', '1']
            d = Daemon(args, self.path('unused'), self.tmp, name=who)
            self.daemons.append(d)
            d.start(wait_mounted=False)
            wait_for(lambda: os.path.exists(sock) or d.proc.poll() is not None,
                     lambda: 'no QMP socket: ' + d.describe())
            self.qmp = QmpClient(sock).negotiate()
            self.setup_graph(base, base2, top, raw)
            replies[who] = [self.qmp.cmd('blockdev-reopen', {'options': defs})
                            for _, defs, _ in self.cases(base, top)]
            self.assertEqual(self.qmp.cmd('quit'), {'return': {}})
            self.qmp.close()
            d.wait_exit()
        for (what, _, _), q, ds in zip(self.cases(base, top), replies['qsd'],
                                       replies['diskstack']):
            self.assertEqual(ds, q, what)
