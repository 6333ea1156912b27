"""Differential test: one QMP script run against qemu-storage-daemon and
against `diskstack serve`, compared command by command.

Both daemons start with a node and an export on the command line.  The
script then builds a qcow2 chain over QMP, exports it through FUSE, writes
through the mount, takes external snapshots (blockdev-snapshot-sync, and
blockdev-snapshot of an overlay added with backing: null), internal
snapshots (create, delete, in transactions: one rolled back, one of two
disks at once), changes the backing of the top node live (blockdev-reopen:
to an identical-content node, to none, back), writes a backing file name
(change-backing-file), resizes, queries (query-named-block-nodes,
x-debug-query-block-graph, query-block-exports), adds and deletes an
IOThread and a throttle group (qom-get/qom-set of its limits), and tears
everything down, with error cases in between
(unknown nodes, duplicate names, missing, mistyped and unexpected
arguments, nodes in use, impossible snapshots).

DISKSTACK_DIFF_SELFTEST=1 runs the script against qemu-storage-daemon twice:
the comparison must then find nothing.

What must match (a "difference", which fails the test):
  - success or error for every command; for errors, the error class;
  - reply shapes: the keys both sides return must have the same JSON types,
    recursively; diskstack must not return keys QEMU does not know (except
    x-diskstack-*), and must return every key QEMU's schema makes mandatory
    (MANDATORY below, from qapi/block-core.json and block-export.json);
  - x-debug-query-block-graph: the same nodes and edges, by name;
  - events (name and shape), data read back through the mount, file sizes;
  - the resulting images: qemu-img compare of every layer's chain,
    qemu-img info --backing-chain (formats, sizes, backing file names,
    internal snapshot names), qemu-img check.
What is only listed for humans (a "note"): different error descriptions,
optional keys QEMU returns and diskstack does not, the permissions on graph
edges, the length of lists of plain values (the greeting's capabilities).

A command diskstack does not have (CommandNotFound) is reported as "not
implemented in diskstack" and fails the test: this is the acceptance test of
issue 4.  The whole test is skipped only when qemu-storage-daemon is not
installed.
"""

import hashlib
import json
import mmap
import os
import re
import shutil
import socket
import time

from common import (MiB, Daemon, FuseTestCase, diskstack_bin, force_unmount,
                    is_mounted, run_qemu_img, wait_for)
from qmp import TIMEOUT as QMP_TIMEOUT, QmpClient

TIMEOUT = 15.0
SIZE = 16 * MiB


# ---------------------------------------------------------------- QMP client

class QmpConn(QmpClient):
    """qmp.py's client, with a wait for an event that gives up (None)."""

    def wait_event(self, name, timeout=TIMEOUT):
        """Returns (and removes) the first event called name; waits on the
        socket for it if it has not arrived yet."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get('event') == name:
                    self.events.remove(e)
                    return e
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.events.append(self.recv())
            except socket.timeout:
                return None
            finally:
                self.sock.settimeout(QMP_TIMEOUT)    # qmp.py's default


# ---------------------------------------------------------------- the script
#
# A step is a QMP command (Cmd), an action through the mount (Io), or a
# check of an event (Event).  Strings in arguments may contain {D}: the
# target's directory.  `expect` is what qemu-storage-daemon does ('ok' or
# 'error'): a sanity check of the script itself.

class Cmd:
    def __init__(self, name, args=None, expect='ok', label=None):
        self.name, self.args, self.expect = name, args, expect
        self.label = label or name


class Io:
    def __init__(self, label, fn):
        self.label, self.fn = label, fn


class Event:
    def __init__(self, name):
        self.name = name
        self.label = 'event ' + name


def pattern(tag, length):
    """Deterministic bytes for a write labelled tag."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (length // len(seed) + 1))[:length]


def aligned(data):
    buf = mmap.mmap(-1, max(len(data), 4096))
    buf[:len(data)] = data
    return buf


def mount_write(offset, tag, length=64 * 1024):
    """Io step: an O_DIRECT write through the export (not cached by the
    kernel, so it reached the daemon when pwrite returns)."""
    def fn(target):
        fd = os.open(target.mountpoint, os.O_RDWR | os.O_DIRECT)
        try:
            buf = aligned(pattern(tag, length))
            n = os.pwritev(fd, [memoryview(buf)[:length]], offset)
        finally:
            os.close(fd)
        return {'written': n}
    return Io('write %s at %d' % (tag, offset), fn)


def mount_read(offset, length, when):
    """Io step: an O_DIRECT read through the export; the observation is the
    length, a digest of the bytes, and whether they are all zero."""
    def fn(target):
        fd = os.open(target.mountpoint, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, length)
            n = os.preadv(fd, [buf], offset)
        finally:
            os.close(fd)
        data = bytes(buf[:n])
        return {'length': n, 'sha256': hashlib.sha256(data).hexdigest()[:16],
                'zero': data == bytes(n)}
    return Io('read %d@%d %s' % (length, offset, when), fn)


def mount_size():
    return Io('stat mountpoint', lambda t: {'st_size': os.stat(t.mountpoint).st_size})


def reopen_s2(backing):
    """blockdev-reopen of the top node s2 with a new backing."""
    return Cmd('blockdev-reopen', {'options': [{'driver': 'qcow2', 'node-name': 's2',
                                                'file': 'f-s2', 'backing': backing}]},
               label='blockdev-reopen s2 backing=%s' % backing)


SCRIPT = [
    Cmd('query-version'),
    Cmd('query-block-exports', label='query-block-exports (command line)'),
    # --- the chain: base (qcow2 on file) exported through FUSE
    Cmd('blockdev-add', {'driver': 'file', 'node-name': 'f-base',
                         'filename': '{D}/base.qcow2'}),
    Cmd('blockdev-add', {'driver': 'qcow2', 'node-name': 'base', 'file': 'f-base'}),
    Cmd('block-export-add', {'type': 'fuse', 'id': 'e0', 'node-name': 'base',
                             'mountpoint': '{D}/e0.img', 'writable': True}),
    mount_write(0, 'A'),
    mount_write(1 * MiB, 'A1'),
    # --- external snapshot creating the overlay file
    Cmd('blockdev-snapshot-sync', {'node-name': 'base', 'snapshot-file': '{D}/s1.qcow2',
                                   'snapshot-node-name': 's1', 'format': 'qcow2'}),
    mount_write(64 * 1024, 'B'),
    mount_read(0, 2 * MiB, 'on s1'),
    # --- external snapshot onto an existing overlay added with backing: null
    Cmd('blockdev-add', {'driver': 'file', 'node-name': 'f-s2',
                         'filename': '{D}/s2.qcow2'}),
    Cmd('blockdev-add', {'driver': 'qcow2', 'node-name': 's2', 'file': 'f-s2',
                         'backing': None}),
    Cmd('blockdev-snapshot', {'node': 's1', 'overlay': 's2'}),
    mount_write(2 * MiB, 'C'),
    mount_read(0, 3 * MiB, 'on s2'),
    # --- internal snapshots on the top
    Cmd('blockdev-snapshot-internal-sync', {'device': 's2', 'name': 'snap0'}),
    mount_write(2 * MiB, 'D'),
    Cmd('blockdev-snapshot-delete-internal-sync', {'device': 's2', 'name': 'snap0'}),
    Cmd('blockdev-snapshot-internal-sync', {'device': 's2', 'name': 'keep'}),
    Cmd('transaction', {'actions': [
        {'type': 'blockdev-snapshot-internal-sync', 'data': {'device': 's2', 'name': 'tx1'}},
        {'type': 'blockdev-snapshot-internal-sync', 'data': {'device': 'nope', 'name': 'tx2'}},
    ]}, expect='error', label='transaction (second action fails)'),
    Cmd('blockdev-snapshot-delete-internal-sync', {'device': 's2', 'name': 'tx1'},
        expect='error', label='blockdev-snapshot-delete-internal-sync tx1 (rolled back)'),
    Cmd('transaction', {'actions': [
        {'type': 'blockdev-snapshot-internal-sync', 'data': {'device': 's2', 'name': 'tx3'}},
    ]}),
    Cmd('blockdev-snapshot-delete-internal-sync', {'device': 's2', 'name': 'tx3'}),
    # two disks at one instant: an external snapshot of the command-line
    # disk (raw) and an internal one of s2; first aborted, then for real
    Cmd('transaction', {'actions': [
        {'type': 'blockdev-snapshot-sync', 'data': {
            'node-name': 'cl', 'snapshot-file': '{D}/cl-bad.qcow2',
            'snapshot-node-name': 'cl-bad', 'format': 'qcow2'}},
        {'type': 'blockdev-snapshot-internal-sync', 'data': {'device': 's2', 'name': 'tx4'}},
        {'type': 'abort', 'data': {}},
    ]}, expect='error', label='transaction of two disks (aborted)'),
    Cmd('query-block-exports', label='query-block-exports after the aborted transaction'),
    Cmd('transaction', {'actions': [
        {'type': 'blockdev-snapshot-sync', 'data': {
            'node-name': 'cl', 'snapshot-file': '{D}/cl-ov.qcow2',
            'snapshot-node-name': 'cl-ov', 'format': 'qcow2'}},
        {'type': 'blockdev-snapshot-internal-sync', 'data': {'device': 's2', 'name': 'tx5'}},
    ]}, label='transaction of two disks'),
    Cmd('query-block-exports', label='query-block-exports after the transaction'),
    Cmd('blockdev-snapshot-delete-internal-sync', {'device': 's2', 'name': 'tx4'},
        expect='error', label='blockdev-snapshot-delete-internal-sync tx4 (aborted)'),
    Cmd('blockdev-snapshot-delete-internal-sync', {'device': 's2', 'name': 'tx5'}),
    # --- change the backing of the live top: to an identical-content node,
    # to nothing, and back
    Cmd('blockdev-add', {'driver': 'qcow2', 'node-name': 's1b', 'read-only': True,
                         'file': {'driver': 'file', 'filename': '{D}/s1.qcow2'},
                         'backing': 'base'}),
    reopen_s2('s1b'),
    mount_read(0, 3 * MiB, 'over s1b'),
    reopen_s2(None),
    mount_read(0, 3 * MiB, 'without backing'),
    Cmd('change-backing-file', {'device': 's2', 'image-node-name': 's2',
                                'backing-file': 's1.qcow2'}, expect='error',
        label='change-backing-file without a backing'),
    reopen_s2('s1b'),
    mount_read(0, 3 * MiB, 'over s1b again'),
    Cmd('change-backing-file', {'device': 's2', 'image-node-name': 's2',
                                'backing-file': 's1.qcow2'}),
    # --- resize through QMP: the exported file follows
    Cmd('block_resize', {'node-name': 's2', 'size': 2 * SIZE}),
    mount_size(),
    Cmd('query-named-block-nodes', {'flat': True}),
    Cmd('x-debug-query-block-graph'),
    Cmd('query-block-exports'),
    # --- errors
    Cmd('blockdev-add', {'driver': 'qcow2', 'node-name': 'base', 'file': 'f-base'},
        expect='error', label='blockdev-add duplicate node-name'),
    Cmd('blockdev-del', {'node-name': 'nope'}, expect='error',
        label='blockdev-del unknown node'),
    Cmd('blockdev-del', {}, expect='error', label='blockdev-del missing argument'),
    Cmd('blockdev-del', {'node-name': 1}, expect='error', label='blockdev-del wrong type'),
    Cmd('blockdev-del', {'node-name': 's2', 'bogus': 1}, expect='error',
        label='blockdev-del unexpected argument'),
    Cmd('blockdev-del', {'node-name': 'base'}, expect='error',
        label='blockdev-del node in use (backing)'),
    Cmd('blockdev-del', {'node-name': 's2'}, expect='error',
        label='blockdev-del node in use (exported)'),
    Cmd('block_resize', {'node-name': 'nope', 'size': SIZE}, expect='error',
        label='block_resize unknown node'),
    Cmd('block_resize', {'node-name': 's2', 'size': '1M'}, expect='error',
        label='block_resize wrong type'),
    Cmd('blockdev-snapshot-sync', {'node-name': 'nope', 'snapshot-file': '{D}/x.qcow2'},
        expect='error', label='blockdev-snapshot-sync unknown node'),
    Cmd('blockdev-snapshot-sync', {'node-name': 's2'}, expect='error',
        label='blockdev-snapshot-sync missing argument'),
    Cmd('blockdev-snapshot', {'node': 's1b', 'overlay': 's2'}, expect='error',
        label='blockdev-snapshot overlay already has a backing'),
    Cmd('blockdev-snapshot-internal-sync', {'device': 'nope', 'name': 'x'},
        expect='error', label='blockdev-snapshot-internal-sync unknown node'),
    Cmd('blockdev-snapshot-internal-sync', {'device': 's2', 'name': 'keep'},
        expect='error', label='blockdev-snapshot-internal-sync duplicate name'),
    Cmd('blockdev-snapshot-internal-sync', {'device': 's1b', 'name': 'x'},
        expect='error', label='blockdev-snapshot-internal-sync not a root'),
    Cmd('blockdev-snapshot-delete-internal-sync', {'device': 's2', 'name': 'nosuch'},
        expect='error', label='blockdev-snapshot-delete-internal-sync unknown snapshot'),
    Cmd('blockdev-snapshot-delete-internal-sync', {'device': 's2'}, expect='error',
        label='blockdev-snapshot-delete-internal-sync neither name nor id'),
    Cmd('blockdev-reopen', {'options': [{'driver': 'qcow2', 'node-name': 's2',
                                         'file': 'f-s2', 'backing': 'nope'}]},
        expect='error', label='blockdev-reopen unknown backing'),
    Cmd('blockdev-reopen', {'options': [{'driver': 'qcow2', 'node-name': 'nope',
                                         'file': 'f-s2'}]},
        expect='error', label='blockdev-reopen unknown node'),
    Cmd('change-backing-file', {'device': 's2', 'image-node-name': 'nope',
                                'backing-file': 'x'}, expect='error',
        label='change-backing-file unknown image node'),
    Cmd('block-export-add', {'type': 'fuse', 'id': 'e0', 'node-name': 's2',
                             'mountpoint': '{D}/e0.img', 'bogus': 1}, expect='error',
        label='block-export-add unexpected argument'),
    Cmd('block-export-del', {'id': 'nope'}, expect='error',
        label='block-export-del unknown export'),
    Cmd('no-such-command', expect='error'),
    # --- objects
    Cmd('object-add', {'qom-type': 'iothread', 'id': 'iox', 'poll-max-ns': 0}),
    Cmd('object-add', {'qom-type': 'iothread', 'id': 'iox'}, expect='error',
        label='object-add duplicate id'),
    Cmd('object-add', {'qom-type': 'iothread', 'id': 'ioy', 'bogus': 1}, expect='error',
        label='object-add unexpected argument'),
    Cmd('object-add', {'qom-type': 'no-such-type', 'id': 'ioz'}, expect='error',
        label='object-add unknown type'),
    Cmd('object-del', {'id': 'iox'}),
    Cmd('object-del', {'id': 'iox'}, expect='error', label='object-del unknown object'),
    Cmd('object-add', {'qom-type': 'throttle-group', 'id': 'tg0',
                       'limits': {'iops-total': 1000, 'bps-write': 1 << 20}}),
    Cmd('qom-get', {'path': '/objects/tg0', 'property': 'limits'}),
    Cmd('qom-set', {'path': 'tg0', 'property': 'limits', 'value': {'iops-total': 500}}),
    Cmd('qom-get', {'path': 'tg0', 'property': 'limits'},
        label='qom-get limits after qom-set'),
    Cmd('qom-get', {'path': '/objects/nope', 'property': 'limits'}, expect='error',
        label='qom-get unknown object'),
    Cmd('qom-get', {'path': 'tg0', 'property': 'nope'}, expect='error',
        label='qom-get unknown property'),
    Cmd('object-del', {'id': 'tg0'}),
    # --- teardown
    Cmd('block-export-del', {'id': 'e0'}),
    Event('BLOCK_EXPORT_DELETED'),
    Cmd('block-export-del', {'id': 'cl-exp'}),
    Event('BLOCK_EXPORT_DELETED'),
    Cmd('query-block-exports', label='query-block-exports (none left)'),
    Cmd('blockdev-del', {'node-name': 's2'}),
    Cmd('query-named-block-nodes', {'flat': True},
        label='query-named-block-nodes after deleting s2'),
    Cmd('blockdev-del', {'node-name': 's1b'}),
    Cmd('blockdev-del', {'node-name': 'f-s2'}),
    Cmd('blockdev-del', {'node-name': 'base'}),
    Cmd('blockdev-del', {'node-name': 'f-base'}),
    Cmd('blockdev-del', {'node-name': 'cl'}),
    Cmd('blockdev-del', {'node-name': 'cl-file'}),
    Cmd('query-named-block-nodes', {'flat': True},
        label='query-named-block-nodes (none left)'),
]

# Layers whose chains are compared between the two runs, and checked.
LAYERS = ['base.qcow2', 's1.qcow2', 's2.qcow2', 'cl-ov.qcow2']

# Keys QEMU's schema makes mandatory, by the type of the object.
MANDATORY = {
    'BlockDeviceInfo': {'file', 'ro', 'drv', 'encrypted', 'detect_zeroes', 'bps',
                        'bps_rd', 'bps_wr', 'iops', 'iops_rd', 'iops_wr', 'image',
                        'cache', 'write_threshold', 'backing_file_depth'},
    'ImageInfo': {'filename', 'format', 'virtual-size'},
    'BlockdevCacheInfo': {'writeback', 'direct', 'no-flush'},
    'BlockExportInfo': {'id', 'type', 'node-name', 'shutting-down'},
    'SnapshotInfo': {'id', 'name', 'vm-state-size', 'date-sec', 'date-nsec',
                     'vm-clock-sec', 'vm-clock-nsec'},
    'VersionInfo': {'qemu', 'package'},
    'VersionTriple': {'major', 'minor', 'micro'},
    'Event': {'event', 'data', 'timestamp'},
    'XDbgBlockGraph': {'nodes', 'edges'},
    'XDbgBlockGraphNode': {'id', 'type', 'name'},
    'XDbgBlockGraphEdge': {'parent', 'child', 'name', 'perm', 'shared-perm'},
    'Timestamp': {'seconds', 'microseconds'},
}

# The QAPI type of a reply's return value, and of members inside types.
RETURN_TYPE = {
    'query-version': 'VersionInfo',
    'x-debug-query-block-graph': 'XDbgBlockGraph',
    'query-named-block-nodes': ['BlockDeviceInfo'],
    'query-block-exports': ['BlockExportInfo'],
    'blockdev-snapshot-delete-internal-sync': 'SnapshotInfo',
    'qom-get': 'ThrottleLimits',
}
MEMBER_TYPE = {
    ('XDbgBlockGraph', 'nodes'): ['XDbgBlockGraphNode'],
    ('XDbgBlockGraph', 'edges'): ['XDbgBlockGraphEdge'],
    ('BlockDeviceInfo', 'image'): 'ImageInfo',
    ('BlockDeviceInfo', 'cache'): 'BlockdevCacheInfo',
    ('ImageInfo', 'snapshots'): ['SnapshotInfo'],
    ('ImageInfo', 'backing-image'): 'ImageInfo',
    ('VersionInfo', 'qemu'): 'VersionTriple',
    ('Event', 'timestamp'): 'Timestamp',
}


def substitute(value, directory):
    if isinstance(value, str):
        return value.replace('{D}', directory)
    if isinstance(value, dict):
        return {k: substitute(v, directory) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, directory) for v in value]
    return value


# ---------------------------------------------------------------- targets

class Target:
    """One daemon under test in its own directory, with identical inputs:
    base.qcow2 (16 MiB), s2.qcow2 (16 MiB, no backing), cl.raw, and a
    command-line node + export (cl, cl-exp) next to the QMP monitor."""

    name = None

    def __init__(self, test, directory):
        self.test = test
        self.dir = directory
        os.makedirs(directory)
        for img in ('base.qcow2', 's2.qcow2'):
            r = run_qemu_img('create', '-q', '-f', 'qcow2',
                             os.path.join(directory, img), str(SIZE))
            test.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(directory, 'cl.raw'), 'wb') as f:
            f.truncate(MiB)
        for mp in ('cl.img', 'e0.img'):
            open(os.path.join(directory, mp), 'w').close()
        self.sock = os.path.join(directory, 'qmp.sock')
        self.mountpoint = os.path.join(directory, 'e0.img')
        self.cl_blockdevs = [
            'driver=file,node-name=cl-file,filename=%s/cl.raw' % directory,
            'driver=raw,node-name=cl,file=cl-file']
        self.cl_export = ('type=fuse,id=cl-exp,node-name=cl,mountpoint=%s/cl.img,'
                          'writable=on' % directory)

    def start(self):
        d = Daemon(self.command(), os.path.join(self.dir, 'cl.img'), self.dir,
                   name=self.name)
        self.test.daemons.append(d)
        # the daemon's cleanup unmounts cl.img; e0.img is mounted later
        self.test.addCleanup(force_unmount, self.mountpoint)
        d.start()
        wait_for(lambda: os.path.exists(self.sock) or d.proc.poll() is not None,
                 lambda: 'no QMP socket: ' + d.describe())
        self.daemon = d
        self.qmp = QmpConn(self.sock)
        return self


class QsdTarget(Target):
    name = 'qsd'

    def command(self):
        args = ['qemu-storage-daemon']
        for b in self.cl_blockdevs:
            args += ['--blockdev', b]
        args += ['--chardev', 'socket,path=%s,server=on,wait=off,id=m' % self.sock,
                 '--monitor', 'chardev=m', '--export', self.cl_export]
        return args


class DiskstackTarget(Target):
    name = 'diskstack'

    def command(self):
        args = [diskstack_bin(), 'serve', '--qmp', self.sock]
        for b in self.cl_blockdevs:
            args += ['--blockdev', b]
        return args + ['--export', self.cl_export]


# ---------------------------------------------------------------- running

def run_script(target):
    """Runs SCRIPT; returns one record per step:
    {'label', 'kind', 'reply' or 'observed' or 'event'}.  A dead daemon ends
    the run with a record of kind 'died'."""
    records = []
    q = target.qmp
    records.append({'label': 'greeting', 'kind': 'greeting', 'reply': q.greeting})
    records.append({'label': 'qmp_capabilities', 'kind': 'cmd', 'name': 'qmp_capabilities',
                    'reply': q.cmd('qmp_capabilities')})
    for step in SCRIPT:
        rec = {'label': step.label}
        try:
            if isinstance(step, Cmd):
                rec.update(kind='cmd', name=step.name, expect=step.expect,
                           reply=q.cmd(step.name, substitute(step.args, target.dir)))
            elif isinstance(step, Event):
                rec.update(kind='event', event=q.wait_event(step.name))
            else:
                try:
                    rec.update(kind='io', observed=step.fn(target))
                except OSError as e:
                    rec.update(kind='io', observed={'oserror': e.strerror})
        except (EOFError, OSError) as e:
            rec.update(kind='died', error=str(e))
            records.append(rec)
            return records
        records.append(rec)
    records.append({'label': 'quit', 'kind': 'cmd', 'name': 'quit',
                    'reply': q.cmd('quit')})
    return records


# ---------------------------------------------------------------- comparing

def json_type(v):
    for t, name in ((bool, 'boolean'), (int, 'integer'), (float, 'number'),
                    (str, 'string'), (list, 'array'), (dict, 'object')):
        if isinstance(v, t):
            return name
    return 'null'


# How list elements of a type are matched between the two replies.
LIST_KEY = {'BlockDeviceInfo': 'node-name', 'BlockExportInfo': 'id',
            'SnapshotInfo': 'name'}
# Lists whose elements are compared by position (shape only): their
# identities are numbers that differ between the two daemons.
POSITIONAL = {'XDbgBlockGraphNode', 'XDbgBlockGraphEdge'}


def element_key(e, qtype):
    """The identity of a list element: its node-name, id or name;
    auto-generated node names (#block123) match by driver and file."""
    if not isinstance(e, dict):
        return None
    name = e.get('node-name')
    if qtype == 'BlockDeviceInfo' and isinstance(name, str) and name.startswith('#'):
        return ('auto', e.get('drv'), os.path.basename(str(e.get('file'))))
    for k in ([LIST_KEY[qtype]] if qtype in LIST_KEY else []) + ['id', 'node-name', 'name']:
        if k in e:
            return (k, e[k])
    return None


def compare_shape(theirs, ours, qtype, path, out):
    """Appends ('diff'|'note', path, text) to out for every shape difference
    of ours (diskstack) against theirs (QEMU)."""
    if isinstance(qtype, list):
        qtype = qtype[0]
    if json_type(theirs) != json_type(ours):
        # null for a value (or the reverse) is a value, not a shape
        sev = 'note' if theirs is None or ours is None else 'diff'
        out.append((sev, path, 'type %s in QEMU, %s in diskstack'
                    % (json_type(theirs), json_type(ours))))
        return
    if isinstance(theirs, dict):
        mandatory = MANDATORY.get(qtype, set())
        for k in sorted(set(theirs) | set(ours)):
            p = '%s.%s' % (path, k)
            if k not in ours:
                sev = 'diff' if k in mandatory else 'note'
                out.append((sev, p, 'missing in diskstack (%s in QEMU)'
                            % ('mandatory' if sev == 'diff' else 'optional')))
            elif k not in theirs:
                if not k.startswith('x-diskstack-'):
                    out.append(('diff', p, 'diskstack returns a key QEMU does not'))
            else:
                compare_shape(theirs[k], ours[k], MEMBER_TYPE.get((qtype, k)), p, out)
    elif isinstance(theirs, list):
        compare_list(theirs, ours, qtype, path, out)


def compare_list(theirs, ours, qtype, path, out):
    keyed_t = {element_key(e, qtype): e for e in theirs}
    keyed_o = {element_key(e, qtype): e for e in ours}
    if qtype in POSITIONAL:       # the shape of one element, the rest by
        if theirs and ours:       # compare_graph
            compare_shape(theirs[0], ours[0], qtype, path + '[0]', out)
        return
    if None in keyed_t or None in keyed_o:      # plain values: by position
        if len(theirs) != len(ours):
            out.append(('note', path, '%d elements in QEMU, %d in diskstack'
                        % (len(theirs), len(ours))))
        for i, (t, o) in enumerate(zip(theirs, ours)):
            compare_shape(t, o, qtype, '%s[%d]' % (path, i), out)
        return
    for k in keyed_t:
        if k not in keyed_o:
            out.append(('diff', path, 'element %s missing in diskstack' % (k,)))
        else:
            compare_shape(keyed_t[k], keyed_o[k], qtype, '%s[%s]' % (path, k[1]), out)
    for k in keyed_o:
        if k not in keyed_t:
            out.append(('diff', path, 'element %s only in diskstack' % (k,)))


def compare_reply(t, o, out):
    label = t['label']
    rt, ro = t['reply'], o['reply']
    if 'error' in ro and ro['error'].get('class') == 'CommandNotFound' and \
            rt.get('error', {}).get('class') != 'CommandNotFound':
        out.append(('missing', t['name'], 'not implemented in diskstack'))
        return
    if ('error' in rt) != ('error' in ro):
        out.append(('diff', label, 'QEMU: %s; diskstack: %s'
                    % (json.dumps(rt)[:300], json.dumps(ro)[:300])))
        return
    if 'error' in rt:
        if rt['error'].get('class') != ro['error'].get('class'):
            out.append(('diff', label, 'error class %s in QEMU, %s in diskstack'
                        % (rt['error'].get('class'), ro['error'].get('class'))))
        if rt['error'].get('desc') != ro['error'].get('desc'):
            out.append(('note', label, 'QEMU says %r; diskstack says %r'
                        % (rt['error'].get('desc'), ro['error'].get('desc'))))
        compare_shape(rt, ro, None, label, out)
        return
    if t.get('name') == 'x-debug-query-block-graph':
        compare_graph(t, o, out)
    sub = []
    compare_shape(rt.get('return'), ro.get('return'), RETURN_TYPE.get(t.get('name')),
                  'return', sub)
    compare_shape({k: v for k, v in rt.items() if k != 'return'},
                  {k: v for k, v in ro.items() if k != 'return'}, None, 'reply', sub)
    out.extend((sev, '%s: %s' % (label, p), text) for sev, p, text in sub)


def graph_summary(graph):
    """x-debug-query-block-graph without the numeric ids, which differ:
    ({node labels}, {(parent, edge name, child): (perm, shared-perm)})."""
    def label(n):
        if n['type'] != 'block-driver':
            return n['type']
        return '#auto' if n['name'].startswith('#') else n['name']
    labels = {n['id']: label(n) for n in graph.get('nodes', [])}
    edges = {(labels.get(e['parent']), e['name'], labels.get(e['child'])):
             (sorted(e.get('perm', [])), sorted(e.get('shared-perm', [])))
             for e in graph.get('edges', [])}
    return set(labels.values()), edges


def compare_graph(t, o, out):
    """The same nodes and edges by name (a difference); the permissions on
    each edge (a note: they are what QEMU's locking follows)."""
    label = t['label']
    nt, et = graph_summary(t['reply']['return'])
    no, eo = graph_summary(o['reply']['return'])
    if nt != no:
        out.append(('diff', label, 'nodes: QEMU %s, diskstack %s' % (sorted(nt), sorted(no))))
    for e in sorted(set(et) | set(eo), key=str):
        if e not in eo:
            out.append(('diff', label, 'edge %s missing in diskstack' % (e,)))
        elif e not in et:
            out.append(('diff', label, 'edge %s only in diskstack' % (e,)))
        elif et[e] != eo[e]:
            out.append(('note', label, 'edge %s: QEMU perm/shared %s, diskstack %s'
                        % (e, et[e], eo[e])))


def walk_records(theirs, ours, compare_step):
    """The loop of both differential tests (this one, test_jobs_diff):
    compare_step(t, o, out) for each pair of step records until the
    diskstack run died; a diskstack run cut short is a difference."""
    out = []
    for t, o in zip(theirs, ours):
        if o['kind'] == 'died':
            out.append(('diff', o['label'], 'diskstack died or closed the socket: %s'
                        % o['error']))
            return out
        compare_step(t, o, out)
    if len(ours) < len(theirs):
        out.append(('diff', 'script', 'diskstack run ended after %d of %d steps'
                    % (len(ours), len(theirs))))
    return out


def compare_step(t, o, out):
    if t['kind'] == 'greeting':
        compare_shape(t['reply'], o['reply'], None, 'greeting', out)
    elif t['kind'] == 'cmd':
        compare_reply(t, o, out)
    elif t['kind'] == 'event':
        if o['event'] is None:
            out.append(('diff', t['label'], 'no such event from diskstack'))
        else:
            compare_shape(t['event'], o['event'], 'Event', t['label'], out)
    elif t['observed'] != o['observed']:
        out.append(('diff', t['label'], 'QEMU saw %s; diskstack saw %s'
                    % (t['observed'], o['observed'])))


def compare_records(theirs, ours):
    return walk_records(theirs, ours, compare_step)


def chain_summary(path):
    """qemu-img info --backing-chain of path, reduced to what must match."""
    r = run_qemu_img('info', '--output=json', '--backing-chain', '-U', path)
    if r.returncode != 0:
        return {'error': r.stderr.decode(errors='replace').strip()}
    layers = []
    for info in json.loads(r.stdout):
        layers.append({
            'file': os.path.basename(info['filename']),
            'format': info['format'],
            'virtual-size': info['virtual-size'],
            'backing': os.path.basename(info.get('backing-filename', '')),
            'backing-format': info.get('backing-filename-format'),
            'snapshots': sorted(s['name'] for s in info.get('snapshots', [])),
            'dirty': info.get('dirty-flag'),
        })
    return layers


def compare_images(qdir, ddir):
    out = []
    for layer in LAYERS:
        q, d = os.path.join(qdir, layer), os.path.join(ddir, layer)
        if not os.path.exists(d):
            out.append(('diff', layer, 'diskstack did not create it'))
            continue
        sq, sd = chain_summary(q), chain_summary(d)
        if sq != sd:
            out.append(('diff', layer, 'qemu-img info --backing-chain: QEMU %s; '
                        'diskstack %s' % (sq, sd)))
        r = run_qemu_img('check', '-q', d)
        if r.returncode != 0:
            out.append(('diff', layer, 'qemu-img check: %s'
                        % (r.stdout + r.stderr).decode(errors='replace').strip()))
        r = run_qemu_img('compare', '-U', q, d)
        if r.returncode != 0:
            out.append(('diff', layer, 'qemu-img compare (whole chain): %s'
                        % (r.stdout + r.stderr).decode(errors='replace').strip()))
    return out


def check_script_on_qsd(records):
    """The script's own sanity: qemu-storage-daemon does what it says."""
    wrong = []
    for r in records:
        if r['kind'] == 'died':
            wrong.append('%s: qemu-storage-daemon died: %s' % (r['label'], r['error']))
        elif r['kind'] == 'cmd' and 'expect' in r:
            got = 'error' if 'error' in r['reply'] else 'ok'
            if got != r['expect']:
                wrong.append('%s: expected %s, QEMU replied %s'
                             % (r['label'], r['expect'], json.dumps(r['reply'])[:300]))
        elif r['kind'] in ('event', 'wait') and r['event'] is None:
            wrong.append('%s: QEMU sent no such event' % r['label'])
        elif r['kind'] == 'io' and 'oserror' in r['observed']:
            wrong.append('%s: %s' % (r['label'], r['observed']['oserror']))
    return wrong


def merge_repeats(diffs):
    """One line for a difference repeated over list elements (the same key
    missing in every node): return[s2].bps and return[base].bps become
    return[*].bps (2 elements)."""
    merged, order = {}, []
    for sev, path, text in diffs:
        key = (sev, re.sub(r'\[[^\]]*\]', '[*]', path), text)
        if key not in merged:
            merged[key] = 0
            order.append(key)
        merged[key] += 1
    return [(sev, path if merged[(sev, path, text)] == 1 else
             '%s (%d times)' % (path, merged[(sev, path, text)]), text)
            for sev, path, text in order]


def format_report(diffs):
    diffs = merge_repeats(diffs)
    lines = []
    if any(d[0] == 'missing' for d in diffs):
        lines.append('(differences after the first command diskstack lacks may be '
                     'consequences of it)')
    for title, sevs in (('NOT IMPLEMENTED IN DISKSTACK', ('missing',)),
                        ('DIFFERENCES', ('diff',)),
                        ('NOTES (wording, optional keys; not failures)', ('note',))):
        items = [d for d in diffs if d[0] in sevs]
        if items:
            lines.append('%s (%d):' % (title, len(items)))
            lines.extend('  %s: %s' % (p, text) for _, p, text in items)
    return '\n'.join(lines)


class QmpDiff(FuseTestCase):

    def run_target(self, cls, name):
        t = cls(self, self.path(name)).start()
        try:
            records = run_script(t)
        finally:
            t.qmp.close()
        rc = t.daemon.wait_exit() if records[-1]['label'] == 'quit' else None
        self.assertFalse(is_mounted(t.mountpoint), 'e0 still mounted after quit')
        return t, records, rc

    def test_same_as_qemu_storage_daemon(self):
        if not shutil.which('qemu-storage-daemon'):
            self.skipTest('qemu-storage-daemon is not installed '
                          '(Debian: qemu-system-common); nothing to compare with')
        qsd, theirs, qrc = self.run_target(QsdTarget, 'qsd')
        wrong = check_script_on_qsd(theirs)
        self.assertEqual(wrong, [], 'the script is wrong for qemu-storage-daemon:\n'
                         + '\n'.join(wrong))
        self.assertEqual(qrc, 0, qsd.daemon.describe())

        # DISKSTACK_DIFF_SELFTEST=1 compares qemu-storage-daemon with itself:
        # the comparison must then find no difference.
        ours_cls = QsdTarget if os.environ.get('DISKSTACK_DIFF_SELFTEST') else DiskstackTarget
        ds, ours, drc = self.run_target(ours_cls, 'diskstack')
        diffs = compare_records(theirs, ours)
        if ours[-1]['label'] == 'quit' and drc != 0:
            diffs.append(('diff', 'quit', 'diskstack exited with %s: %s'
                          % (drc, ds.daemon.describe())))
        diffs += compare_images(qsd.dir, ds.dir)
        report = format_report(diffs)
        if any(d[0] in ('diff', 'missing') for d in diffs):
            self.fail('diskstack differs from qemu-storage-daemon:\n' + report +
                      '\n--- diskstack stderr ---\n' + ds.daemon.stderr())
        print(report)       # the notes, for humans
