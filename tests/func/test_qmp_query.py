"""QMP queries and objects through a real socket: query-named-block-nodes
(QEMU's BlockDeviceInfo, flat and nested), x-debug-query-block-graph,
query-block-exports, block-export-add's errors and IOThread choice,
object-add / object-del / query-iothreads — each with QEMU's error
wording — and, where qemu-storage-daemon is installed, the same key sets
as its replies."""

import json
import os
import shutil
import subprocess

from common import (MiB, FuseTestCase, is_mounted, read_file, require_tool,
                    run_diskstack, run_qemu_img, wait_for, write_at)
from test_qmp import QmpClient, QmpHelpers

SIZE = 4 * MiB

# BlockDeviceInfo members qemu-storage-daemon 7.2 reports for every node
BLOCK_DEVICE_INFO_KEYS = {
    'file', 'node-name', 'ro', 'drv', 'backing_file_depth', 'encrypted',
    'detect_zeroes', 'bps', 'bps_rd', 'bps_wr', 'iops', 'iops_rd', 'iops_wr',
    'image', 'write_threshold', 'cache',
}


class QmpQuery(QmpHelpers, FuseTestCase):

    def error(self, reply):
        self.assertIn('error', reply)
        self.assertEqual(reply['error']['class'], 'GenericError', reply)
        return reply['error']['desc']

    def qcow2_chain(self, subdir='.'):
        os.makedirs(self.path(subdir), exist_ok=True)
        base = os.path.normpath(self.path(os.path.join(subdir, 'base.qcow2')))
        top = os.path.normpath(self.path(os.path.join(subdir, 'top.qcow2')))
        run_qemu_img('create', '-q', '-f', 'qcow2', base, str(SIZE))
        run_qemu_img('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F',
                     'qcow2', top)
        return base, top

    def mountpoint(self, name):
        mp = self.path(name)
        open(mp, 'w').close()
        return mp

    # ---------------------------------------------------------- nodes

    def test_named_block_nodes_qcow2_chain(self):
        require_tool(self, 'qemu-img')
        base, top = self.qcow2_chain()
        d = self.start()
        c = QmpClient(self.sock).negotiate()
        r = c.cmd('blockdev-add', {'driver': 'qcow2', 'node-name': 'top',
                                   'file': {'driver': 'file', 'node-name': 'top-f',
                                            'filename': top,
                                            'cache': {'direct': False}},
                                   'detect-zeroes': 'on'})
        self.assertEqual(r, {'return': {}}, r)
        nested = {n['node-name']: n for n in
                  c.cmd('query-named-block-nodes')['return']}
        flat = {n['node-name']: n for n in
                c.cmd('query-named-block-nodes', {'flat': True})['return']}
        self.assertEqual(set(nested), set(flat))
        self.assertIn('top-f', nested)
        t = nested['top']
        self.assertLessEqual(BLOCK_DEVICE_INFO_KEYS, set(t))
        self.assertEqual(t['drv'], 'qcow2')
        self.assertEqual(t['file'], top)
        self.assertFalse(t['ro'])
        self.assertEqual(t['detect_zeroes'], 'on')
        self.assertEqual(t['backing_file'], base)
        self.assertEqual(t['backing_file_depth'], 1)
        self.assertEqual(flat['top']['backing_file_depth'], 0)
        self.assertEqual(t['cache'], {'writeback': True, 'direct': False,
                                      'no-flush': False})
        for k in ('bps', 'bps_rd', 'bps_wr', 'iops', 'iops_rd', 'iops_wr',
                  'write_threshold'):
            self.assertEqual(t[k], 0, k)
        self.assertFalse(t['encrypted'])
        img = t['image']
        self.assertEqual(img['filename'], top)
        self.assertEqual(img['format'], 'qcow2')
        self.assertEqual(img['virtual-size'], SIZE)
        self.assertEqual(img['cluster-size'], 65536)
        self.assertEqual(img['backing-filename'], 'base.qcow2')
        self.assertEqual(img['full-backing-filename'], base)
        self.assertEqual(img['backing-filename-format'], 'qcow2')
        self.assertFalse(img['dirty-flag'])
        self.assertEqual(img['format-specific']['type'], 'qcow2')
        self.assertGreater(img['actual-size'], 0)
        # flat=false nests the backing chain; flat=true leaves it out
        self.assertEqual(img['backing-image']['filename'], base)
        self.assertEqual(img['backing-image']['format'], 'qcow2')
        self.assertNotIn('backing-image', img['backing-image'])
        self.assertNotIn('backing-image', flat['top']['image'])
        # the image part is the same object `img info --output=json` prints
        # (img info opens the chain itself, so the daemon must let go first)
        info_keys = set(img) - {'backing-image'}
        file_node = nested['top-f']
        self.assertEqual(file_node['drv'], 'file')
        self.assertEqual(file_node['image']['format'], 'file')
        self.assertEqual(file_node['backing_file_depth'], 0)
        self.assertEqual(c.cmd('blockdev-del', {'node-name': 'top'}), {'return': {}})
        self.quit(d, c)
        out = run_diskstack(['img', 'info', '--output=json', top])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(set(json.loads(out.stdout)), info_keys)

    def test_block_graph(self):
        d = self.start()
        img = self.image(size=SIZE)
        c = QmpClient(self.sock).negotiate()
        self.add_raw(c, img)
        mp = self.mountpoint('export.img')
        r = c.cmd('block-export-add', {'type': 'fuse', 'id': 'e0',
                                       'node-name': 'disk', 'mountpoint': mp,
                                       'writable': True})
        self.assertEqual(r, {'return': {}}, r)
        g = c.cmd('x-debug-query-block-graph')['return']
        self.assertEqual(set(g), {'nodes', 'edges'})
        by_id = {n['id']: n for n in g['nodes']}
        self.assertEqual(len(by_id), len(g['nodes']), 'ids are unique')
        names = {(n['type'], n['name']) for n in g['nodes']}
        self.assertEqual(names, {('block-driver', 'disk'), ('block-driver', 'f0'),
                                 ('block-backend', 'e0')})
        edges = {(by_id[e['parent']]['name'], by_id[e['child']]['name']): e
                 for e in g['edges']}
        self.assertEqual(set(edges), {('e0', 'disk'), ('disk', 'f0')})
        self.assertEqual(edges[('disk', 'f0')]['name'], 'file')
        root = edges[('e0', 'disk')]
        self.assertEqual(root['name'], 'root')
        self.assertIn('write', root['perm'])
        self.assertIn('consistent-read', root['perm'])
        known = {'consistent-read', 'write', 'write-unchanged', 'resize'}
        for e in g['edges']:
            self.assertLessEqual(set(e['perm']) | set(e['shared-perm']), known, e)
        self.assertEqual(c.cmd('block-export-del', {'id': 'e0'}), {'return': {}})
        g = c.cmd('x-debug-query-block-graph')['return']
        self.assertEqual(len(g['edges']), 1)
        self.assertNotIn('error', c.cmd('x-debug-query-block-graph', {}))
        self.assertIn('error', c.cmd('x-debug-query-block-graph', {'x': 1}))
        self.quit(d, c)

    # ---------------------------------------------------------- exports

    def test_export_errors_and_query(self):
        d = self.start()
        img = self.image(size=SIZE)
        write_at(img, 0, b'exp!')
        c = QmpClient(self.sock).negotiate()
        self.add_raw(c, img)
        mp = self.mountpoint('export.img')
        os.mkdir(self.path('dir'))
        base = {'type': 'fuse', 'node-name': 'disk'}

        def add(**kw):
            args = dict(base)
            args.update(kw)
            return c.cmd('block-export-add', args)

        r = add(id='e0', mountpoint=mp, iothread='iothread0')
        self.assertEqual(r, {'return': {}}, r)
        wait_for(lambda: is_mounted(mp), lambda: 'export not mounted')
        self.assertEqual(read_file(mp)[:4], b'exp!')
        self.assertEqual(c.cmd('query-block-exports')['return'],
                         [{'type': 'fuse', 'id': 'e0', 'node-name': 'disk',
                           'shutting-down': False, 'x-diskstack-io-status': 'ok'}])
        other = self.mountpoint('other.img')
        cases = [
            (dict(id='e0', mountpoint=other), "Block export id 'e0' is already in use"),
            (dict(id='e1', mountpoint=other, **{'node-name': 'nope'}),
             "Cannot find device='' nor node-name='nope'"),
            (dict(id='e1', mountpoint=other, iothread='nope'),
             'iothread "nope" not found'),
            (dict(id='e1', mountpoint=other, iothread=['iothread0', 'nope']),
             'iothread "nope" not found'),
            (dict(id='e1', mountpoint=mp), "There already is a FUSE export on '%s'" % mp),
            (dict(id='e1', mountpoint=self.path('missing')),
             "Failed to stat '%s': No such file or directory" % self.path('missing')),
            (dict(id='e1', mountpoint=self.path('dir')),
             "'%s' is not a regular file" % self.path('dir')),
            (dict(id='e1', mountpoint=other, **{'fixed-iothread': 'yes'}),
             "Invalid parameter type for 'fixed-iothread', expected: boolean"),
            (dict(id='e1', mountpoint=other, iothread=5),
             "Invalid parameter type for 'iothread', expected: string or array of strings"),
            (dict(id='e1', mountpoint=other, bogus=1), "Parameter 'bogus' is unexpected"),
            (dict(id='e1'), "Parameter 'mountpoint' is missing"),
        ]
        for args, desc in cases:
            self.assertEqual(self.error(add(**args)), desc, args)
        self.assertEqual([e['id'] for e in c.cmd('query-block-exports')['return']],
                         ['e0'])
        # fixed-iothread is accepted (our exports never move between threads)
        r = add(id='e1', mountpoint=other, iothread=['iothread0'],
                **{'fixed-iothread': True})
        self.assertEqual(r, {'return': {}}, r)
        self.assertEqual(sorted(e['id'] for e in c.cmd('query-block-exports')['return']),
                         ['e0', 'e1'])
        for e in ('e0', 'e1'):
            self.assertEqual(c.cmd('block-export-del', {'id': e}), {'return': {}})
        self.assertEqual(self.error(c.cmd('block-export-del', {'id': 'e0'})),
                         "Export 'e0' is not found")
        self.quit(d, c)

    # ---------------------------------------------------------- objects

    def test_iothread_objects(self):
        d = self.start()
        c = QmpClient(self.sock).negotiate()
        before = c.cmd('query-iothreads')['return']
        self.assertEqual([t['id'] for t in before], ['iothread0'])
        t0 = before[0]
        self.assertEqual(set(t0), {'id', 'thread-id', 'poll-max-ns', 'poll-grow',
                                   'poll-shrink', 'aio-max-batch'})
        self.assertTrue(os.path.isdir('/proc/%d/task/%d' % (d.pid, t0['thread-id'])))
        self.assertEqual((t0['poll-max-ns'], t0['poll-grow'], t0['poll-shrink'],
                          t0['aio-max-batch']), (32768, 0, 0, 0))
        ok = c.cmd('object-add', {'qom-type': 'iothread', 'id': 'io1',
                                  'poll-max-ns': 1000, 'poll-grow': 2,
                                  'poll-shrink': 3, 'aio-max-batch': 4})
        self.assertEqual(ok, {'return': {}})
        io1 = [t for t in c.cmd('query-iothreads')['return'] if t['id'] == 'io1'][0]
        self.assertEqual((io1['poll-max-ns'], io1['poll-grow'], io1['poll-shrink'],
                          io1['aio-max-batch']), (1000, 2, 3, 4))
        with open('/proc/%d/task/%d/comm' % (d.pid, io1['thread-id'])) as f:
            self.assertEqual(f.read().strip(), 'io1')
        cases = [
            ({'qom-type': 'nope', 'id': 'x'},
             "Parameter 'qom-type' does not accept value 'nope'"),
            ({'id': 'x'}, "Parameter 'qom-type' is missing"),
            ({'qom-type': 1, 'id': 'x'},
             "Invalid parameter type for 'qom-type', expected: string"),
            ({'qom-type': 'iothread'}, "Parameter 'id' is missing"),
            ({'qom-type': 'iothread', 'id': 'x', 'bogus': 1},
             "Parameter 'bogus' is unexpected"),
            ({'qom-type': 'iothread', 'id': 'x', 'poll-max-ns': 'x'},
             "Invalid parameter type for 'poll-max-ns', expected: integer"),
            ({'qom-type': 'iothread', 'id': 'x', 'poll-grow': -1},
             'poll-grow value must be in range [0, 9223372036854775807]'),
            ({'qom-type': 'iothread', 'id': 'io1'},
             "attempt to add duplicate property 'io1' to object (type 'container')"),
            ({'qom-type': 'iothread', 'id': 'iothread0'},
             "attempt to add duplicate property 'iothread0' to object (type 'container')"),
        ]
        for args, desc in cases:
            self.assertEqual(self.error(c.cmd('object-add', args)), desc, args)
        self.assertEqual(self.error(c.cmd('object-del', {'id': 'nope'})),
                         "object 'nope' not found")
        self.assertEqual(self.error(c.cmd('object-del', {})),
                         "Parameter 'id' is missing")
        # an IOThread an export runs in cannot go
        img = self.image(size=SIZE)
        self.add_raw(c, img)
        mp = self.mountpoint('export.img')
        r = c.cmd('block-export-add', {'type': 'fuse', 'id': 'e0', 'node-name': 'disk',
                                       'mountpoint': mp, 'iothread': 'io1'})
        self.assertEqual(r, {'return': {}}, r)
        self.assertEqual(self.error(c.cmd('object-del', {'id': 'io1'})),
                         "object 'io1' is in use, can not be deleted")
        self.assertEqual(c.cmd('object-del', {'id': 'iothread0'}), {'return': {}})
        self.assertEqual(c.cmd('block-export-del', {'id': 'e0'}), {'return': {}})
        self.assertEqual(c.cmd('object-del', {'id': 'io1'}), {'return': {}})
        self.assertEqual(c.cmd('query-iothreads')['return'], [])
        self.assertFalse(os.path.exists('/proc/%d/task/%d' % (d.pid, io1['thread-id'])))
        # runtime-added IOThreads are stopped at quit too
        for i in range(2):
            self.assertEqual(c.cmd('object-add', {'qom-type': 'iothread',
                                                  'id': 'late%d' % i}), {'return': {}})
        self.quit(d, c)

    def test_quiet_client_does_not_stall_events(self):
        """A client that never reads its events: the others still get theirs
        and their replies while exports come and go."""
        d = self.start()
        img = self.image(size=SIZE)
        silent = QmpClient(self.sock).negotiate()
        c = QmpClient(self.sock).negotiate()
        self.add_raw(c, img)
        mp = self.mountpoint('export.img')
        for i in range(5):
            r = c.cmd('block-export-add', {'type': 'fuse', 'id': 'e%d' % i,
                                           'node-name': 'disk', 'mountpoint': mp})
            self.assertEqual(r, {'return': {}}, r)
            self.assertEqual(c.cmd('block-export-del', {'id': 'e%d' % i}),
                             {'return': {}})
            self.assertEqual(c.event('BLOCK_EXPORT_DELETED')['data'], {'id': 'e%d' % i})
        silent.close()
        self.quit(d, c)

    # ---------------------------------------------------------- vs qsd

    def test_same_keys_as_qemu_storage_daemon(self):
        if not shutil.which('qemu-storage-daemon'):
            self.skipTest('no qemu-storage-daemon')
        require_tool(self, 'qemu-img')
        chains = [self.qcow2_chain('ours'), self.qcow2_chain('qsd')]
        qsock = self.path('qsd.sock')
        q = subprocess.Popen(['qemu-storage-daemon', '--chardev',
                              'socket,path=%s,server=on,wait=off,id=m' % qsock,
                              '--monitor', 'chardev=m,mode=control',
                              '--object', 'iothread,id=iothread0'],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: os.path.exists(qsock), lambda: 'no qsd socket')
            d = self.start()
            ours, theirs = QmpClient(self.sock).negotiate(), QmpClient(qsock).negotiate()
            replies = []
            for c, (base, top) in zip((ours, theirs), chains):
                r = c.cmd('blockdev-add', {'driver': 'qcow2', 'node-name': 'top',
                                           'file': {'driver': 'file',
                                                    'node-name': 'top-f',
                                                    'filename': top}})
                self.assertEqual(r, {'return': {}}, r)
                nodes = {n['node-name']: n for n in
                         c.cmd('query-named-block-nodes')['return']}
                graph = c.cmd('x-debug-query-block-graph')['return']
                errs = [c.cmd('object-add', {'qom-type': 'nope', 'id': 'x'}),
                        c.cmd('object-add', {'qom-type': 'iothread'}),
                        c.cmd('object-add', {'qom-type': 'iothread', 'id': 'iothread0'}),
                        c.cmd('object-del', {'id': 'nope'}),
                        c.cmd('block-export-add', {'type': 'fuse', 'id': 'x',
                                                   'node-name': 'nope',
                                                   'mountpoint': top})]
                replies.append((nodes, graph, errs))
            (n1, g1, e1), (n2, g2, e2) = replies
            t1, t2 = n1['top'], n2['top']
            self.assertEqual(set(t1), set(t2))
            self.assertEqual(set(t1['image']), set(t2['image']))
            self.assertEqual(set(t1['image']['backing-image']),
                             set(t2['image']['backing-image']))
            for k in ('backing_file_depth', 'cache', 'drv', 'ro',
                      'detect_zeroes', 'encrypted'):
                self.assertEqual(t1[k], t2[k], k)
            self.assertEqual(t1['backing_file'], chains[0][0])
            self.assertEqual(t2['backing_file'], chains[1][0])
            for k in ('backing-filename', 'format', 'virtual-size', 'cluster-size',
                      'format-specific'):
                self.assertEqual(t1['image'][k], t2['image'][k], k)
            self.assertEqual(set(n1['top-f']), set(n2['top-f']))
            self.assertEqual(set(g1), set(g2))
            self.assertEqual(set(g1['nodes'][0]), set(g2['nodes'][0]))
            self.assertEqual(set(g1['edges'][0]), set(g2['edges'][0]))
            self.assertEqual(e1, e2)
            theirs.cmd('quit')
            self.quit(d, ours)
        finally:
            q.kill()
            q.wait()
