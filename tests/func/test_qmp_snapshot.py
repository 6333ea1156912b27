"""QMP snapshot commands over the real socket, with the top of each chain
exported through a real FUSE mount: blockdev-snapshot, blockdev-snapshot-sync,
blockdev-snapshot-internal-sync, blockdev-snapshot-delete-internal-sync,
transaction, block_resize, change-backing-file.

Replies and messages are qemu-storage-daemon 7.2's.  Every refused command
must leave the graph exactly as it was (the node list and, where the daemon
has it, x-debug-query-block-graph, compared before and after) and leave no
overlay file behind.  qemu-img is the oracle for the images."""

import json
import os
import random
import threading
import time
import unittest

from common import (MiB, FuseTestCase, is_mounted, pread_all, pwrite_all,
                    read_file, require_tool, run_qemu_img, wait_for)
from test_qmp import QmpClient

SIZE = 4 * MiB
BLOCK = 4096


def qemu_img_json(*args):
    r = run_qemu_img(*args)
    if r.returncode != 0:
        raise AssertionError('qemu-img %s: %s' % (' '.join(args), r.stderr.decode()))
    return json.loads(r.stdout)


class SnapshotCase(FuseTestCase):
    """A daemon with a QMP socket; disks are qcow2 images exported writable."""

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')
        self.sock = self.path('qmp.sock')
        self.d = self.serve(['--qmp', self.sock, '--iothreads', '2'],
                            self.path('unused'), wait=False)
        # the socket file appears at bind(), connections work after listen()
        wait_for(lambda: self.connect() or self.d.proc.poll() is not None,
                 lambda: 'no QMP socket: ' + self.d.describe())
        self.assertIsNone(self.d.proc.poll(), self.d.describe())
        self.c.negotiate()
        self.addCleanup(self.c.close)

    def connect(self):
        try:
            self.c = QmpClient(self.sock)
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False

    def ok(self, cmd, args=None):
        r = self.c.cmd(cmd, args)
        self.assertIn('return', r, '%s %s: %s\n%s' % (cmd, args, r, self.d.stderr()))
        return r['return']

    def qcow2(self, name, size=SIZE, backing=None):
        p = self.path(name)
        args = ['create', '-q', '-f', 'qcow2']
        if backing:
            args += ['-b', backing, '-F', 'qcow2']
        r = run_qemu_img(*(args + [p, str(size)]))
        self.assertEqual(r.returncode, 0, r.stderr)
        return p

    def add_disk(self, node, img, backing=False):
        """blockdev-add qcow2 `node` on file `node`-f; backing from the header
        unless backing is None (backing: null)."""
        d = {'driver': 'qcow2', 'node-name': node,
             'file': {'driver': 'file', 'node-name': node + '-f', 'filename': img}}
        if backing is None:
            d['backing'] = None
        self.ok('blockdev-add', d)

    def export(self, node, name):
        mp = self.path(name)
        open(mp, 'w').close()
        self.ok('block-export-add', {'type': 'fuse', 'id': 'e-' + node, 'node-name': node,
                                     'mountpoint': mp, 'writable': True})
        return mp

    def graph(self):
        """What must not change when a command is refused."""
        nodes = self.ok('query-named-block-nodes')
        for n in nodes:
            # How long an image file is and how much of it is allocated is
            # not the graph: an internal snapshot taken and deleted again by
            # an aborted transaction leaves freed clusters at the end, as in
            # QEMU.
            n.get('image', {}).pop('actual-size', None)
            if n.get('drv') == 'file':
                n.get('image', {}).pop('virtual-size', None)
        state = [sorted(nodes, key=lambda n: n['node-name'])]
        if self.has_command('x-debug-query-block-graph'):
            state.append(self.ok('x-debug-query-block-graph'))
        return state

    def has_command(self, name):
        if not hasattr(self, '_commands'):
            self._commands = {c['name'] for c in self.ok('query-commands')}
        return name in self._commands

    def refused(self, cmd, args, desc, cls='GenericError'):
        """cmd fails with exactly desc and changes nothing."""
        before = self.graph()
        files = set(os.listdir(self.tmp))
        r = self.c.cmd(cmd, args)
        self.assertEqual(r.get('error'), {'class': cls, 'desc': desc},
                         '%s %s: %s' % (cmd, args, r))
        self.assertEqual(self.graph(), before, '%s %s changed the graph' % (cmd, args))
        self.assertEqual(set(os.listdir(self.tmp)), files,
                         '%s %s left files behind' % (cmd, args))

    def backing_chain(self, img):
        info = qemu_img_json('info', '-U', '--output=json', '--backing-chain', img)
        return [(i['filename'], i.get('backing-filename')) for i in info]

    def check_clean(self, img):
        r = run_qemu_img('check', '-U', img)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())

    def raw_of(self, img):
        """The guest-visible content of an image chain (qemu-img)."""
        out = img + '.raw'
        r = run_qemu_img('convert', '-U', '-O', 'raw', img, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, 'rb') as f:
            return f.read()

    def save(self, data, name='expected.raw'):
        p = self.path(name)
        with open(p, 'wb') as f:
            f.write(data)
        return p

    def quit(self):
        self.assertEqual(self.c.cmd('quit'), {'return': {}})
        self.assertEqual(self.d.wait_exit(), 0, self.d.describe())


class ExternalSnapshot(SnapshotCase):

    def test_blockdev_snapshot_and_errors(self):
        base = self.qcow2('base.qcow2')
        self.add_disk('disk', base)
        mp = self.export('disk', 'disk.img')
        pwrite_all_path(mp, b'A' * BLOCK, 0)
        ov = self.qcow2('ov.qcow2', backing=base)
        self.add_disk('ov', ov, backing=None)
        self.add_disk('ovb', self.qcow2('ovb.qcow2', backing=self.qcow2('b2.qcow2')))
        self.ok('blockdev-add', {'driver': 'raw', 'node-name': 'rawn', 'file': {
            'driver': 'file', 'filename': self.image('r.raw', SIZE)}})
        self.qcow2('used.qcow2')
        self.add_disk('used', self.path('used.qcow2'), backing=None)
        self.export('used', 'used.img')

        msg = "Cannot find device='%s' nor node-name='%s'"
        self.refused('blockdev-snapshot', {'node': 'nope', 'overlay': 'ov'},
                     msg % ('nope', 'nope'))
        self.refused('blockdev-snapshot', {'node': 'disk', 'overlay': 'nope'},
                     msg % ('nope', 'nope'))
        self.refused('blockdev-snapshot', {'node': 'disk', 'overlay': 'ovb'},
                     'The overlay already has a backing image')
        self.refused('blockdev-snapshot', {'node': 'disk', 'overlay': 'used'},
                     'The overlay is already in use')
        self.refused('blockdev-snapshot', {'node': 'disk', 'overlay': 'rawn'},
                     'The overlay does not support backing images')
        self.refused('blockdev-snapshot', {'node': 'ov', 'overlay': 'ov'},
                     "Making 'ov' a backing child of 'ov' would create a cycle")
        self.refused('blockdev-snapshot', {'node': 'disk'},
                     "Parameter 'overlay' is missing")
        self.refused('blockdev-snapshot', {'node': 'disk', 'overlay': 'ov', 'x': 1},
                     "Parameter 'x' is unexpected")
        self.refused('blockdev-snapshot', {'node': 1, 'overlay': 'ov'},
                     "Invalid parameter type for 'node', expected: string")

        self.assertEqual(self.ok('blockdev-snapshot', {'node': 'disk', 'overlay': 'ov'}), {})
        pwrite_all_path(mp, b'B' * BLOCK, BLOCK)
        self.refused('blockdev-snapshot', {'node': 'disk', 'overlay': 'ovb'},
                     "Node 'disk' is busy: node is used as backing hd of 'ov'")
        self.refused('blockdev-del', {'node-name': 'disk'},
                     "Node 'disk' is in use by node 'ov'")
        data = read_file(mp)
        self.assertEqual(data[:2 * BLOCK], b'A' * BLOCK + b'B' * BLOCK)
        self.quit()
        self.check_clean(ov)
        self.check_clean(base)
        self.assertEqual(self.backing_chain(ov), [(ov, base), (base, None)])
        old = self.raw_of(base)
        self.assertEqual(old[:2 * BLOCK], b'A' * BLOCK + bytes(BLOCK),
                         'the old image holds the content at the snapshot')
        self.assertEqual(self.raw_of(ov)[:len(data)], data)

    def test_snapshot_sync_and_errors(self):
        base = self.qcow2('base.qcow2')
        self.add_disk('disk', base)
        mp = self.export('disk', 'disk.img')
        pwrite_all_path(mp, b'a' * BLOCK, 0)
        s1 = self.path('s1.qcow2')
        msg = "Cannot find device='%s' nor node-name='%s'"
        self.refused('blockdev-snapshot-sync', {'device': 'disk', 'snapshot-file': s1,
                                                'snapshot-node-name': 's1'},
                     msg % ('disk', ''))
        self.refused('blockdev-snapshot-sync', {'node-name': 'nope', 'snapshot-file': s1},
                     msg % ('', 'nope'))
        self.refused('blockdev-snapshot-sync', {'snapshot-file': s1}, msg % ('', ''))
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': s1},
                     'New overlay node-name missing')
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': s1,
                                                'snapshot-node-name': 'disk-f'},
                     'New overlay node-name already in use')
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': s1,
                                                'snapshot-node-name': 's1',
                                                'format': 'vmdk2'},
                     "Unknown file format 'vmdk2'")
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': s1,
                                                'snapshot-node-name': 's1', 'format': 'raw'},
                     "Backing file not supported for file format 'raw'")
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': s1,
                                                'snapshot-node-name': 's1',
                                                'mode': 'existing'},
                     "Could not open '%s': No such file or directory" % s1)
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': s1,
                                                'mode': 'bogus'},
                     "Parameter 'mode' does not accept value 'bogus'")
        # the file is created, then the name is refused: it goes again
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': s1,
                                                'snapshot-node-name': 'bad name'},
                     "Invalid node-name: 'bad name'")
        nodir = self.path('nodir/x.qcow2')
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': nodir,
                                                'snapshot-node-name': 's1'},
                     "Could not create '%s': No such file or directory" % nodir)

        self.assertEqual(self.ok('blockdev-snapshot-sync', {
            'node-name': 'disk', 'snapshot-file': s1, 'snapshot-node-name': 's1'}), {})
        pwrite_all_path(mp, b'b' * BLOCK, BLOCK)
        # as in QEMU, the old top is reopened read-only: its image is no
        # longer locked for writing, qemu-img opens it without -U
        ro = {n['node-name']: n['ro'] for n in self.ok('query-named-block-nodes')}
        self.assertEqual((ro['disk'], ro['s1']), (True, False))
        r = run_qemu_img('info', base)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.refused('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file':
                                                self.path('s2.qcow2'),
                                                'snapshot-node-name': 's2'},
                     "Node 'disk' is busy: node is used as backing hd of 's1'")
        # mode existing: an image made by qemu-img, opened as it is
        s2 = self.qcow2('s2.qcow2', backing=s1)
        self.assertEqual(self.ok('blockdev-snapshot-sync', {
            'node-name': 's1', 'snapshot-file': s2, 'snapshot-node-name': 's2',
            'mode': 'existing', 'format': 'qcow2'}), {})
        pwrite_all_path(mp, b'c' * BLOCK, 2 * BLOCK)
        data = read_file(mp)
        self.assertEqual(data[:3 * BLOCK], b'a' * BLOCK + b'b' * BLOCK + b'c' * BLOCK)
        names = {n['node-name'] for n in self.ok('query-named-block-nodes')}
        self.assertTrue({'disk', 's1', 's2'} <= names, names)
        self.quit()
        self.assertEqual(self.backing_chain(s2), [(s2, s1), (s1, base), (base, None)])
        info = qemu_img_json('info', '--output=json', s1)
        self.assertEqual(info['backing-filename-format'], 'qcow2')
        self.assertEqual(info['virtual-size'], SIZE)
        for img in (base, s1, s2):
            self.check_clean(img)
        r = run_qemu_img('compare', '-f', 'qcow2', '-F', 'raw', s2, self.save(data))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_sync_overlay_belongs_to_its_parents(self):
        """As in qemu-storage-daemon: the overlay blockdev-snapshot-sync
        opens is not the monitor's.  Without a user it goes at once (the old
        top stays, read-only); under an export it lives as long as the
        export and blockdev-del refuses it."""
        base = self.qcow2('base.qcow2')
        self.add_disk('disk', base)
        self.ok('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-node-name': 's1',
                                           'snapshot-file': self.path('s1.qcow2')})
        ro = {n['node-name']: n['ro'] for n in self.ok('query-named-block-nodes')}
        self.assertEqual(ro, {'disk': True, 'disk-f': True})
        self.assertEqual(self.ok('blockdev-del', {'node-name': 'disk'}), {})

        other = self.qcow2('other.qcow2')
        self.add_disk('other', other)
        self.export('other', 'other.img')
        self.ok('blockdev-snapshot-sync', {'node-name': 'other', 'snapshot-node-name': 's2',
                                           'snapshot-file': self.path('s2.qcow2')})
        self.refused('blockdev-del', {'node-name': 's2'},
                     "Node 's2' is not owned by the monitor")
        self.ok('block-export-del', {'id': 'e-other'})
        self.c.event('BLOCK_EXPORT_DELETED')
        names = {n['node-name'] for n in self.ok('query-named-block-nodes')}
        self.assertEqual(names, {'other', 'other-f'})
        self.quit()
        self.assertEqual(self.backing_chain(self.path('s2.qcow2')),
                         [(self.path('s2.qcow2'), other), (other, None)])

    def test_snapshot_under_concurrent_writes(self):
        """Old image == exactly the writes completed before the command;
        writes issued after its reply are only in the overlay."""
        base = self.qcow2('base.qcow2')
        self.add_disk('disk', base)
        mp = self.export('disk', 'disk.img')
        writers = [Writer(mp, i, 4) for i in range(4)]
        for w in writers:
            w.start()
        for w in writers:
            w.wait_writes(50)
        before = [w.completed_snapshot() for w in writers]
        sent = time.monotonic()
        self.ok('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-node-name':
                                           'top', 'snapshot-file': self.path('top.qcow2')})
        replied = time.monotonic()
        for w in writers:
            w.wait_writes_after(replied, 50)
            w.stop()
        for w in writers:
            w.join()
            self.assertEqual(w.errors, [])
        final = read_file(mp)
        self.quit()

        old = self.raw_of(base)
        for w in writers:
            for blk in w.blocks:
                got = old[blk * BLOCK:(blk + 1) * BLOCK]
                ok = w.allowed_old_content(blk, before[w.idx], sent, replied)
                self.assertIn(got, ok, 'writer %d block %d: %r not in %d choices'
                              % (w.idx, blk, got[:16], len(ok)))
        expect = bytearray(SIZE)
        for w in writers:
            for blk in w.blocks:
                expect[blk * BLOCK:(blk + 1) * BLOCK] = w.last_value(blk)
        self.assertEqual(final, bytes(expect), 'the mount has every write')
        top = self.path('top.qcow2')
        self.check_clean(base)
        self.check_clean(top)
        r = run_qemu_img('compare', '-f', 'qcow2', '-F', 'raw', top, self.save(final))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


def pwrite_all_path(path, data, offset):
    fd = os.open(path, os.O_WRONLY)
    try:
        pwrite_all(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


class Writer(threading.Thread):
    """Writes 4 KiB blocks of its own (block % 4 == idx among the first 64)
    over and over, each write a new value; records when each started and
    completed."""

    def __init__(self, path, idx, nwriters):
        super().__init__(daemon=True)
        self.path, self.idx = path, idx
        self.blocks = [b for b in range(64) if b % nwriters == idx]
        self.history = {b: [] for b in self.blocks}   # (start, end, data)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.stopping = False
        self.errors = []
        self.count = 0

    def run(self):
        rng = random.Random(self.idx)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            seq = 0
            while not self.stopping:
                blk = rng.choice(self.blocks)
                seq += 1
                data = (b'%02d:%06d:' % (self.idx, seq)).ljust(BLOCK, b'.')
                start = time.monotonic()
                pwrite_all(fd, data, blk * BLOCK)
                end = time.monotonic()
                with self.cond:
                    self.history[blk].append((start, end, data))
                    self.count += 1
                    self.cond.notify_all()
        except OSError as e:
            self.errors.append(str(e))
        finally:
            os.close(fd)
            with self.cond:
                self.stopping = True
                self.cond.notify_all()

    def wait_writes(self, n):
        with self.cond:
            target = self.count + n
            ok = self.cond.wait_for(lambda: self.count >= target or self.stopping, 15)
        assert ok and not self.errors, self.errors

    def wait_writes_after(self, t, n):
        """Waits until n writes that started after t completed."""
        def after():
            return sum(1 for h in self.history.values() for s, _, _ in h if s > t) >= n
        with self.cond:
            ok = self.cond.wait_for(lambda: after() or self.stopping, 15)
        assert ok and not self.errors, self.errors

    def completed_snapshot(self):
        with self.lock:
            return {b: len(h) for b, h in self.history.items()}

    def stop(self):
        self.stopping = True

    def last_value(self, blk):
        h = self.history[blk]
        return h[-1][2] if h else bytes(BLOCK)

    def allowed_old_content(self, blk, completed_before, sent, replied):
        """The last write completed before the command was sent, or any
        write that overlapped the command; never one issued after the reply."""
        h = self.history[blk]
        n = completed_before[blk]
        choices = [h[n - 1][2] if n else bytes(BLOCK)]
        choices += [d for s, _, d in h[n:] if s <= replied]
        return choices


class InternalSnapshot(SnapshotCase):

    def test_internal_create_delete_and_errors(self):
        img = self.qcow2('disk.qcow2')
        self.add_disk('disk', img)
        mp = self.export('disk', 'disk.img')
        self.ok('blockdev-add', {'driver': 'raw', 'node-name': 'rawn', 'file': {
            'driver': 'file', 'filename': self.image('r.raw', SIZE)}})
        pwrite_all_path(mp, b'1' * BLOCK, 0)
        self.assertEqual(self.ok('blockdev-snapshot-internal-sync',
                                 {'device': 'disk', 'name': 'snap1'}), {})
        pwrite_all_path(mp, b'2' * BLOCK, 0)
        self.assertEqual(self.ok('blockdev-snapshot-internal-sync',
                                 {'device': 'disk', 'name': 'snap2'}), {})
        self.refused('blockdev-snapshot-internal-sync', {'device': 'disk', 'name': 'snap1'},
                     "Snapshot with name 'snap1' already exists on device 'disk'")
        self.refused('blockdev-snapshot-internal-sync', {'device': 'disk', 'name': ''},
                     'Name is empty')
        self.refused('blockdev-snapshot-internal-sync', {'device': 'nope', 'name': 'x'},
                     "Cannot find device='nope' nor node-name='nope'")
        self.refused('blockdev-snapshot-internal-sync', {'device': 'rawn', 'name': 'x'},
                     "Block format 'raw' used by device 'rawn' does not support "
                     "internal snapshots")
        self.refused('blockdev-snapshot-internal-sync', {'device': 'disk-f', 'name': 'x'},
                     'Need a root block node')
        self.refused('blockdev-snapshot-internal-sync', {'device': 'disk'},
                     "Parameter 'name' is missing")

        self.refused('blockdev-snapshot-delete-internal-sync', {'device': 'disk'},
                     'Name or id must be provided')
        self.refused('blockdev-snapshot-delete-internal-sync',
                     {'device': 'disk', 'name': 'nope'},
                     "Snapshot with id 'null' and name 'nope' does not exist on device 'disk'")
        self.refused('blockdev-snapshot-delete-internal-sync',
                     {'device': 'disk', 'id': '1', 'name': 'snap2'},
                     "Snapshot with id '1' and name 'snap2' does not exist on device 'disk'")
        self.refused('blockdev-snapshot-delete-internal-sync',
                     {'device': 'rawn', 'name': 'x'},
                     'Failed to get a snapshot list: Operation not supported')
        self.refused('blockdev-snapshot-delete-internal-sync',
                     {'device': 'nope', 'name': 'x'},
                     "Cannot find device='nope' nor node-name='nope'")

        info = self.ok('blockdev-snapshot-delete-internal-sync',
                       {'device': 'disk', 'name': 'snap1'})
        self.assertEqual(set(info), {'id', 'name', 'vm-state-size', 'date-sec', 'date-nsec',
                                     'vm-clock-sec', 'vm-clock-nsec'})
        self.assertEqual((info['id'], info['name']), ('1', 'snap1'))
        self.assertLessEqual(abs(info['date-sec'] - time.time()), 60)
        info = self.ok('blockdev-snapshot-delete-internal-sync', {'device': 'disk', 'id': '2'})
        self.assertEqual((info['id'], info['name']), ('2', 'snap2'))
        self.refused('blockdev-snapshot-delete-internal-sync', {'device': 'disk', 'id': '2'},
                     "Snapshot with id '2' and name 'null' does not exist on device 'disk'")
        self.assertEqual(self.ok('blockdev-snapshot-internal-sync',
                                 {'device': 'disk', 'name': 'keep'}), {})
        self.quit()
        self.check_clean(img)
        snaps = qemu_img_json('info', '--output=json', img).get('snapshots', [])
        self.assertEqual([s['name'] for s in snaps], ['keep'])


class Transaction(SnapshotCase):

    def two_disks(self):
        disks = []
        for n in ('d1', 'd2'):
            img = self.qcow2(n + '.qcow2')
            self.add_disk(n, img)
            mp = self.export(n, n + '.img')
            pwrite_all_path(mp, n.encode() * (BLOCK // 2), 0)
            disks.append((img, mp))
        return disks

    def actions(self, *extra):
        return [{'type': 'blockdev-snapshot-sync', 'data': {
                    'node-name': n, 'snapshot-file': self.path(n + '-top.qcow2'),
                    'snapshot-node-name': n + '-top'}} for n in ('d1', 'd2')] + \
               [{'type': 'blockdev-snapshot-internal-sync',
                 'data': {'device': 'd1', 'name': 'at-once'}}] + list(extra)

    def test_abort_changes_nothing(self):
        disks = self.two_disks()
        self.refused('transaction', {'actions': self.actions({'type': 'abort', 'data': {}})},
                     'Transaction aborted using Abort action')
        # a failure in the last action undoes the first ones too
        self.refused('transaction', {'actions': self.actions(
            {'type': 'blockdev-snapshot', 'data': {'node': 'd2', 'overlay': 'nope'}})},
            "Cannot find device='nope' nor node-name='nope'")
        self.refused('transaction', {'actions': self.actions(
            {'type': 'blockdev-snapshot-internal-sync',
             'data': {'device': 'd1', 'name': 'at-once'}})},
            "Snapshot with name 'at-once' already exists on device 'd1'")
        # two overlays on one node: the second finds it busy, as in QEMU
        twice = [{'type': 'blockdev-snapshot-sync', 'data': {
            'node-name': 'd1', 'snapshot-file': self.path(n + '.qcow2'),
            'snapshot-node-name': n}} for n in ('o1', 'o2')]
        self.refused('transaction', {'actions': twice},
                     "Node 'd1' is busy: node is used as backing hd of 'o1'")
        for img, mp in disks:
            pwrite_all_path(mp, b'x' * BLOCK, BLOCK)
        self.quit()
        for img, _ in disks:
            self.check_clean(img)
            self.assertNotIn('snapshots', qemu_img_json('info', '--output=json', img))
            self.assertEqual(qemu_img_json('info', '--output=json', img)
                             .get('backing-filename'), None)
            self.assertEqual(self.raw_of(img)[BLOCK:2 * BLOCK],
                             b'x' * BLOCK, 'writes after the abort went to the old top')

    def test_argument_errors(self):
        self.two_disks()
        self.refused('transaction', {'actions': [{'type': 'abort'}]},
                     "Parameter 'actions[0].data' is missing")
        self.refused('transaction', {'actions': [{'data': {}}]},
                     "Parameter 'actions[0].type' is missing")
        self.refused('transaction', {'actions': [{'type': 'bogus', 'data': {}}]},
                     "Parameter 'type' does not accept value 'bogus'")
        self.refused('transaction', {'actions': [
            {'type': 'abort', 'data': {}},
            {'type': 'blockdev-snapshot', 'data': {'node': 'd1'}}]},
            "Parameter 'actions[1].data.overlay' is missing")
        self.refused('transaction', {'actions': [
            {'type': 'blockdev-snapshot-sync', 'data': {
                'node-name': 'd1', 'snapshot-file': 'x', 'mode': 'bogus'}}]},
            "Parameter 'mode' does not accept value 'bogus'")
        self.refused('transaction', {'actions': [{'type': 'abort', 'data': {}}],
                                     'properties': {'x': 1}},
                     "Parameter 'properties.x' is unexpected")
        self.refused('transaction', {'actions': [{'type': 'abort', 'data': {}}],
                                     'properties': {'completion-mode': 'bogus'}},
                     "Parameter 'completion-mode' does not accept value 'bogus'")
        self.refused('transaction', {'actions': [5]},
                     "Invalid parameter type for 'actions[0]', expected: object")
        self.assertEqual(self.ok('transaction', {'actions': []}), {})
        self.quit()

    def test_two_disks_at_one_instant(self):
        disks = self.two_disks()
        self.assertEqual(self.ok('transaction', {'actions': self.actions(),
                                                 'properties': {'completion-mode':
                                                                'grouped'}}), {})
        for img, mp in disks:
            pwrite_all_path(mp, b'y' * BLOCK, BLOCK)
        self.quit()
        for n, (img, _) in zip(('d1', 'd2'), disks):
            top = self.path(n + '-top.qcow2')
            self.assertEqual(self.backing_chain(top), [(top, img), (img, None)])
            self.check_clean(top)
            self.check_clean(img)
            self.assertEqual(self.raw_of(img)[BLOCK:2 * BLOCK],
                             bytes(BLOCK), 'the old image ends at the instant')
        snaps = qemu_img_json('info', '--output=json', disks[0][0])['snapshots']
        self.assertEqual([s['name'] for s in snaps], ['at-once'])


class ResizeAndBackingFile(SnapshotCase):

    def test_block_resize(self):
        img = self.qcow2('disk.qcow2')
        self.add_disk('disk', img)
        self.assertEqual(self.ok('block_resize', {'node-name': 'disk', 'size': 2 * SIZE}), {})
        sizes = {n['node-name']: n['image']['virtual-size']
                 for n in self.ok('query-named-block-nodes')}
        self.assertEqual(sizes['disk'], 2 * SIZE)
        base = self.qcow2('base.qcow2')
        self.add_disk('over', self.qcow2('over.qcow2', backing=base))
        self.refused('block_resize', {'node-name': self.backing_of('over'), 'size': SIZE},
                     "Device '%s' is in use" % self.backing_of('over'))
        self.refused('block_resize', {'device': 'disk', 'size': SIZE},
                     "Cannot find device='disk' nor node-name=''")
        self.refused('block_resize', {'node-name': 'nope', 'size': SIZE},
                     "Cannot find device='' nor node-name='nope'")
        self.refused('block_resize', {'node-name': 'disk', 'size': -1},
                     "Parameter 'size' expects a >0 size")
        self.refused('block_resize', {'node-name': 'disk'}, "Parameter 'size' is missing")
        self.refused('block_resize', {'node-name': 'disk', 'size': 1000},
                     'The new size must be a multiple of 512')
        self.quit()
        self.check_clean(img)
        self.assertEqual(qemu_img_json('info', '--output=json', img)['virtual-size'],
                         2 * SIZE)

    def backing_of(self, node):
        """The node name of node's backing (opened from its header)."""
        for n in self.ok('query-named-block-nodes'):
            if n['node-name'] not in ('disk', 'disk-f', 'over', 'over-f') and \
                    n['drv'] == 'qcow2':
                return n['node-name']
        self.fail('no backing node of ' + node)

    def test_block_resize_exported(self):
        """As in QEMU, whose exports share every permission: the node under
        a FUSE export is resized and the mounted file follows."""
        img = self.qcow2('disk.qcow2')
        self.add_disk('disk', img)
        mp = self.export('disk', 'disk.img')
        self.assertEqual(os.stat(mp).st_size, SIZE)    # now in the kernel's cache
        self.assertEqual(self.ok('block_resize', {'node-name': 'disk', 'size': 2 * SIZE}), {})
        # the export drops the kernel's cached size: a plain stat sees it
        self.assertEqual(os.stat(mp).st_size, 2 * SIZE)
        self.assertEqual(statx_size(mp), 2 * SIZE)
        pwrite_all_path(mp, b'z' * BLOCK, 2 * SIZE - BLOCK)
        self.quit()
        self.check_clean(img)
        self.assertEqual(self.raw_of(img)[-BLOCK:], b'z' * BLOCK)

    def test_change_backing_file(self):
        base = self.qcow2('base.qcow2')
        img = self.qcow2('disk.qcow2', backing=base)
        self.add_disk('disk', img)
        self.export('disk', 'disk.img')
        other = self.qcow2('other.qcow2')
        self.add_disk('other', other)
        self.assertEqual(self.ok('change-backing-file', {
            'device': 'disk', 'image-node-name': 'disk',
            'backing-file': 'renamed.qcow2'}), {})
        self.assertEqual(qemu_img_json('info', '-U', '--output=json', img)
                         ['backing-filename'], 'renamed.qcow2')
        self.refused('change-backing-file', {'device': 'nope', 'image-node-name': 'disk',
                                             'backing-file': 'x'},
                     "Cannot find device='nope' nor node-name='nope'")
        self.refused('change-backing-file', {'device': 'disk', 'image-node-name': 'nope',
                                             'backing-file': 'x'},
                     "Cannot find device='' nor node-name='nope'")
        self.refused('change-backing-file', {'device': 'disk-f', 'image-node-name': 'disk',
                                             'backing-file': 'x'},
                     'Need a root block node')
        self.refused('change-backing-file', {'device': 'disk', 'image-node-name': 'other',
                                             'backing-file': 'x'},
                     'not allowing backing file change on an image without a backing file')
        self.refused('change-backing-file', {'device': 'other', 'image-node-name': 'disk',
                                             'backing-file': 'x'},
                     "'other' and image file are not in the same chain")
        self.assertEqual(self.ok('change-backing-file', {
            'device': 'disk', 'image-node-name': 'disk', 'backing-file': base}), {})
        # an image below the top, read-only since the snapshot: reopened
        # read-write for the change and read-only again, as in QEMU
        top = self.path('top.qcow2')
        self.ok('blockdev-snapshot-sync', {'node-name': 'disk', 'snapshot-file': top,
                                           'snapshot-node-name': 'top'})
        self.assertEqual(self.ok('change-backing-file', {
            'device': 'top', 'image-node-name': 'disk', 'backing-file': 'again.qcow2'}), {})
        ro = {n['node-name']: n['ro'] for n in self.ok('query-named-block-nodes')}
        self.assertTrue(ro['disk'])
        self.assertEqual(qemu_img_json('info', '-U', '--output=json', img)
                         ['backing-filename'], 'again.qcow2')
        self.assertEqual(self.ok('change-backing-file', {
            'device': 'top', 'image-node-name': 'disk', 'backing-file': base}), {})
        self.quit()
        self.assertEqual(self.backing_chain(top), [(top, img), (img, base), (base, None)])
        self.check_clean(img)


def statx_size(path):
    """The size with AT_STATX_FORCE_SYNC: FUSE asks the daemon again instead
    of answering from its attribute cache."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    AT_FDCWD, AT_STATX_FORCE_SYNC, STATX_SIZE = -100, 0x2000, 0x200
    if libc.statx(AT_FDCWD, path.encode(), AT_STATX_FORCE_SYNC, STATX_SIZE, buf) != 0:
        raise OSError(ctypes.get_errno(), 'statx ' + path)
    return int.from_bytes(buf.raw[40:48], 'little')      # stx_size
