"""Throttle groups from the outside: QMP object-add/-del, qom-get/qom-set
(compared reply by reply with qemu-storage-daemon 7.2), `diskstack serve
--object throttle-group`, `diskstack mount --throttle` and the client verb
`diskstack throttle set|show`.

The limits' accuracy is test_throttle*.py's business; here a rate only has
to visibly apply (50 IOPS make 100 writes take well over a second).  Every
daemon is stopped and every mount undone by the test base's cleanup, also
when a test fails."""

import mmap
import os
import time

from common import MiB, nonempty_lines, run_diskstack
from qmp import QmpClient
from test_client import ClientCase

SIZE = 16 * MiB
BLOCK = 4096

# Commands sent to both daemons, in order; every reply must be the same.
# f0 is a file node both have.
SAME_AS_QSD = [
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g0',
                    'limits': {'iops-total': 100}}),
    ('qom-get', {'path': 'g0', 'property': 'limits'}),
    ('qom-get', {'path': '/objects/g0', 'property': 'limits'}),
    ('qom-get', {'path': 'g0', 'property': 'type'}),
    ('qom-get', {'path': 'g0', 'property': 'x-iops-total'}),
    ('qom-get', {'path': 'g0', 'property': 'nope'}),
    ('qom-get', {'path': 'nope', 'property': 'limits'}),
    ('qom-get', {'path': '/objects/nope', 'property': 'limits'}),
    ('qom-get', {'path': '/objects', 'property': 'limits'}),
    ('qom-get', {'path': 'f0', 'property': 'limits'}),
    ('qom-get', {'path': 'g0'}),
    ('qom-get', {'path': 5, 'property': 'type'}),
    ('qom-get', {'path': 'g0', 'property': 'limits', 'x': 1}),
    # a partial qom-set keeps the other limits
    ('qom-set', {'path': 'g0', 'property': 'limits', 'value': {'bps-read': 1000}}),
    ('qom-get', {'path': 'g0', 'property': 'limits'}),
    ('qom-set', {'path': 'g0', 'property': 'limits', 'value': {'iops-read': 5}}),
    ('qom-set', {'path': 'g0', 'property': 'limits', 'value': {'iops-total-max': 5}}),
    ('qom-set', {'path': 'g0', 'property': 'limits',
                 'value': {'iops-total-max-length': 5}}),
    ('qom-set', {'path': 'g0', 'property': 'limits', 'value': {'iops-total': -1}}),
    ('qom-set', {'path': 'g0', 'property': 'limits', 'value': {'iops-total': '5'}}),
    ('qom-set', {'path': 'g0', 'property': 'limits',
                 'value': {'iops-total': 5, 'bogus': 1}}),
    ('qom-set', {'path': 'g0', 'property': 'limits', 'value': 5}),
    ('qom-set', {'path': 'g0', 'property': 'limits'}),
    ('qom-set', {'path': 'g0', 'property': 'nope', 'value': 5}),
    ('qom-set', {'path': 'g0', 'property': 'type', 'value': 'x'}),
    ('qom-set', {'path': 'g0', 'property': 'x-iops-total', 'value': 7}),
    ('qom-set', {'path': 'nope', 'property': 'limits', 'value': {}}),
    ('qom-set', {'path': 'g0', 'property': 'limits',
                 'value': {'bps-write': 2000, 'bps-write-max': 4000,
                           'bps-write-max-length': 3, 'iops-size': 8192}}),
    ('qom-get', {'path': 'g0', 'property': 'limits'}),
    # legacy keys, and "limits" winning over them
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g1',
                    'x-iops-total': 50, 'x-bps-read': 20}),
    ('qom-get', {'path': 'g1', 'property': 'limits'}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g2',
                    'limits': {'iops-total': 50}, 'x-iops-total': 20}),
    ('qom-get', {'path': 'g2', 'property': 'limits'}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g3',
                    'limits': {'iops-total': 50, 'iops-read': 3}}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g3',
                    'limits': {'iops-total': 5, 'iops-total-max': 4}}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g3', 'limits': {'nope': 5}}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g3', 'limits': 5}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g3', 'x-iops-total': '5'}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g3', 'x-nope': 3}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g3'}),
    ('qom-get', {'path': 'g3', 'property': 'limits'}),
    ('object-add', {'qom-type': 'throttle-group', 'id': 'g0'}),
    # the throttle node and what it does to object-del
    ('blockdev-add', {'driver': 'throttle', 'node-name': 't0',
                      'throttle-group': 'nope', 'file': 'f0'}),
    ('blockdev-add', {'driver': 'throttle', 'node-name': 't0', 'file': 'f0'}),
    ('blockdev-add', {'driver': 'throttle', 'node-name': 't0',
                      'throttle-group': 'g0', 'file': 'f0'}),
    ('object-del', {'id': 'g0'}),
    ('object-del', {'id': 'g1'}),
    ('object-del', {'id': 'g1'}),
    ('qom-get', {'path': 'g1', 'property': 'limits'}),
    ('blockdev-del', {'node-name': 't0'}),
    ('object-del', {'id': 'g0'}),
    ('object-add', {'qom-type': 'iothread', 'id': 'io9'}),
    ('qom-get', {'path': 'io9', 'property': 'type'}),
    ('qom-get', {'path': 'io9', 'property': 'limits'}),
]


def timed_direct_writes(path, count):
    """Seconds for `count` 4 KiB O_DIRECT writes, one after the other."""
    buf = mmap.mmap(-1, BLOCK)          # page-aligned, as O_DIRECT wants
    buf.write(b'T' * BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        start = time.monotonic()
        for i in range(count):
            os.pwrite(fd, buf, i * BLOCK)
        return time.monotonic() - start
    finally:
        os.close(fd)


class ThrottleCase(ClientCase):

    def raw(self, name):
        return self.image(name, size=SIZE)

    def qmp(self, sock):
        c = QmpClient(sock).negotiate()
        self.addCleanup(c.close)
        return c

    def throttled_serve(self):
        """serve with group g0 (iops-total 100) and throttle node t0 on f0."""
        d, sock = self.start_serve([
            '--object', 'throttle-group,id=g0,limits.iops-total=100',
            '--blockdev', 'driver=file,node-name=f0,filename=' + self.raw('a.raw'),
            '--blockdev', 'driver=throttle,node-name=t0,throttle-group=g0,file=f0'])
        self.sock = sock
        return d

    def limits(self, name):
        return self.ok_json('throttle', 'show', name)


class ThrottleQmp(ThrottleCase):
    """QMP, command by command, against qemu-storage-daemon."""

    def test_same_replies_as_qsd(self):
        _, ours = self.start_serve(['--blockdev', 'driver=file,node-name=f0,'
                                    'filename=' + self.raw('ours.raw')])
        theirs = self.start_qsd(['--blockdev', 'driver=file,node-name=f0,'
                                 'filename=' + self.raw('theirs.raw')])
        a, b = self.qmp(ours), self.qmp(theirs)
        for name, args in SAME_AS_QSD:
            r1, r2 = a.cmd(name, args), b.cmd(name, args)
            self.assertEqual(r1, r2, '%s %s' % (name, args))

    def test_node_reports_its_group(self):
        self.throttled_serve()
        c = self.qmp(self.sock)
        nodes = {n['node-name']: n for n in
                 c.cmd('query-named-block-nodes', {'flat': True})['return']}
        self.assertEqual(nodes['t0']['drv'], 'throttle')
        self.assertEqual(nodes['t0'].get('throttle-group'), 'g0')
        self.assertNotIn('throttle-group', nodes['f0'])
        names = [x['name'] for x in c.cmd('query-commands')['return']]
        self.assertIn('qom-get', names)
        self.assertIn('qom-set', names)


class ThrottleServe(ThrottleCase):
    """`diskstack serve --object throttle-group,...`."""

    def test_object_syntaxes(self):
        _, sock = self.start_serve([
            '--object', 'throttle-group,id=g0,limits.iops-total=100,'
                        'limits.bps-total=10M,limits.bps-total-max=20M',
            '--object', '{"qom-type": "throttle-group", "id": "g1", '
                        '"limits": {"iops-write": 5, "bps-read": 4096}}',
            '--object', 'qom-type=throttle-group,id=g2,x-iops-read=7,x-iops-size=4k',
            '--object', 'iothread,id=io0',
            '--blockdev', 'driver=file,node-name=f0,filename=' + self.raw('a.raw'),
            '--blockdev', 'driver=throttle,node-name=t0,throttle-group=g0,file=f0'])
        c = self.qmp(sock)
        g0 = c.cmd('qom-get', {'path': 'g0', 'property': 'limits'})['return']
        self.assertEqual((g0['iops-total'], g0['bps-total'], g0['bps-total-max']),
                         (100, 10 * MiB, 20 * MiB))
        g1 = c.cmd('qom-get', {'path': 'g1', 'property': 'limits'})['return']
        self.assertEqual((g1['iops-write'], g1['bps-read'], g1['iops-total']),
                         (5, 4096, 0))
        g2 = c.cmd('qom-get', {'path': 'g2', 'property': 'limits'})['return']
        self.assertEqual((g2['iops-read'], g2['iops-size']), (7, 4096))
        # the groups are no IOThreads
        self.assertEqual(sorted(t['id'] for t in c.cmd('query-iothreads')['return']),
                         ['io0', 'iothread0'])
        r = c.cmd('object-del', {'id': 'g0'})
        self.assertEqual(r['error']['desc'], "object 'g0' is in use, can not be deleted")

    def test_bad_objects(self):
        sock = self.path('bad.sock')
        cases = [
            ('throttle-group,id=g0,limits.iops-total=abc',
             "Parameter 'limits.iops-total' expects an integer"),
            ('throttle-group,id=g0,limits.bps-total=1Q',
             "Parameter 'limits.bps-total' expects a size"),
            ('throttle-group,id=g0,limits.nope=1', "Parameter 'limits.nope' is unexpected"),
            ('throttle-group,limits.iops-total=5', "Parameter 'id' is missing"),
            ('throttle-group,id=g0,limits.iops-total=5,limits.iops-read=1',
             'total values and read/write values cannot be used at the same time'),
            ('throttle-group,id=g0,limits.iops-total=5,limits.iops-total-max=1',
             'bps_max/iops_max cannot be lower than bps/iops'),
            ('{"qom-type": "throttle-group", "id": "g0", "limits": {"iops-total": "5"}}',
             "Invalid parameter type for 'limits.iops-total', expected: integer"),
        ]
        for obj, msg in cases:
            r = run_diskstack(['serve', '--iothreads', '1', '--qmp', sock,
                               '--object', obj])
            self.assertOneLineError(r, obj)
            self.assertEqual(r.returncode, 1, obj)
            self.assertIn(msg, r.stderr.decode(), obj)
            self.assertFalse(os.path.exists(sock), 'socket left behind: ' + obj)
        # a throttle node whose group does not exist: QEMU's message
        r = run_diskstack(['serve', '--iothreads', '1', '--qmp', sock,
                           '--blockdev', 'driver=file,node-name=f0,filename=' +
                           self.raw('b.raw'), '--blockdev',
                           'driver=throttle,node-name=t0,throttle-group=gx,file=f0'])
        self.assertOneLineError(r, 'unknown group')
        self.assertIn("Throttle group 'gx' does not exist", r.stderr.decode())


class ThrottleVerb(ThrottleCase):
    """`diskstack throttle set|show`."""

    def test_show_and_set(self):
        self.throttled_serve()
        out = self.ok('throttle', 'show', 'g0')
        self.assertIn("throttle group 'g0'", out)
        self.assertRegex(out, r'iops-total +100/s +- +-')
        # a node means its group
        self.assertEqual(self.ok('throttle', 'show', 't0'), out)
        self.assertEqual(self.limits('t0')['iops-total'], 100)

        self.ok('throttle', 'set', 't0', '--iops-total', '200',
                '--iops-total-max', '400', '--iops-total-max-length', '2')
        self.ok('throttle', 'set', 'g0', '--bps-total', '10M', '--iops-size', '8k')
        lim = self.limits('g0')
        self.assertEqual((lim['iops-total'], lim['iops-total-max'],
                          lim['iops-total-max-length'], lim['bps-total'],
                          lim['iops-size']), (200, 400, 2, 10 * MiB, 8192))
        out = self.ok('throttle', 'show', 'g0')
        self.assertRegex(out, r'iops-total +200/s +400/s +2s')
        self.assertRegex(out, r'bps-total +10 MiB/s +- +-')
        self.assertIn('iops-size: 8 KiB', out)
        self.assertEqual(self.ok_json('throttle', 'set', 'g0', '--bps-total', '0'), {})
        self.assertEqual(self.limits('g0')['bps-total'], 0)

    def test_errors(self):
        self.throttled_serve()
        self.ok('qmp', 'blockdev-add', '{"driver": "raw", "node-name": "r0", '
                '"file": "f0"}')
        self.assertIn('at least one limit', self.fails(2, 'throttle', 'set', 'g0'))
        self.assertIn("--iops-total expects a number, not 'abc'",
                      self.fails(2, 'throttle', 'set', 'g0', '--iops-total', 'abc'))
        self.assertIn("--bps-read expects a size",
                      self.fails(2, 'throttle', 'set', 'g0', '--bps-read', '1Q'))
        self.fails(2, 'throttle', 'set', 'g0', '--iops-total', '-5')
        self.fails(2, 'throttle', 'show', 'g0', '--iops-total', '5')
        self.fails(2, 'throttle', 'show')
        self.fails(2, 'throttle')
        self.fails(2, 'throttle', 'bogus', 'g0')
        self.assertIn('cannot be used at the same time',
                      self.fails(1, 'throttle', 'set', 'g0', '--iops-read', '5'))
        self.assertIn("no throttle group or node called 'nope'",
                      self.fails(1, 'throttle', 'set', 'nope', '--iops-total', '5'))
        self.assertIn("node 'r0' is not a throttle node (driver raw) and has "
                      "none above it", self.fails(1, 'throttle', 'show', 'r0'))
        # f0 has two throttle nodes above it: which one is meant?
        self.ok('qmp', 'object-add', '{"qom-type": "throttle-group", "id": "g1"}')
        self.ok('qmp', 'blockdev-add', '{"driver": "throttle", "node-name": "t1", '
                '"throttle-group": "g1", "file": "f0"}')
        self.assertIn("node 'f0' has several throttle nodes above it",
                      self.fails(1, 'throttle', 'show', 'f0'))
        # nothing changed by the failures
        self.assertEqual(self.limits('g0')['iops-total'], 100)
        self.assertEqual(self.limits('g0')['iops-read'], 0)

    def test_against_qsd(self):
        """The verb speaks plain QMP: qemu-storage-daemon's throttle node
        names its group only inside its json: filename."""
        self.sock = self.start_qsd([
            '--object', 'throttle-group,id=g0,limits.iops-total=100',
            '--blockdev', 'driver=file,node-name=f0,filename=' + self.raw('q.raw'),
            '--blockdev', 'driver=throttle,node-name=t0,throttle-group=g0,file=f0'])
        self.ok('throttle', 'set', 't0', '--iops-total', '300', '--bps-total', '1M')
        theirs = self.limits('t0')
        self.assertEqual((theirs['iops-total'], theirs['bps-total']), (300, MiB))
        self.assertEqual(self.limits('f0'), theirs)      # the node below t0
        text_theirs = self.ok('throttle', 'show', 'g0')

        self.throttled_serve()
        self.ok('throttle', 'set', 't0', '--iops-total', '300', '--bps-total', '1M')
        self.assertEqual(self.limits('t0'), theirs)
        self.assertEqual(self.ok('throttle', 'show', 'g0'), text_theirs)
        # the node below a throttle node, found through the graph edges
        self.assertEqual(self.limits('f0'), theirs)


class ThrottleMount(ThrottleCase):
    """`diskstack mount --throttle`."""

    def test_rate_applies_and_changes_live(self):
        sock = self.path('m.sock')
        mp = self.path('disk.img')
        self.mount(self.raw('m.raw'), mp, opts=['--throttle', 'iops-total=50',
                                                 '--qmp', sock])
        self.sock = sock
        nodes = {n['node-name']: n for n in self.ok_json('nodes')}
        self.assertEqual(nodes['throttle']['drv'], 'throttle')
        self.assertEqual(nodes['throttle'].get('throttle-group'), 'mount-throttle')
        self.assertEqual([e['node-name'] for e in self.ok_json('exports')], ['throttle'])
        self.assertEqual(self.limits('throttle')['iops-total'], 50)
        # the image's node means the throttle node above it
        self.assertEqual(self.limits('disk'), self.limits('mount-throttle'))

        # 50 IOPS: 100 writes need about 2 s (a loose sanity check)
        took = timed_direct_writes(mp, 100)
        self.assertGreater(took, 1.5, '100 writes at 50 IOPS took %.2fs' % took)
        self.assertLess(took, 10)

        self.ok('throttle', 'set', 'disk', '--iops-total', '100000')
        took = timed_direct_writes(mp, 100)
        self.assertLess(took, 1.0, '100 writes at 100000 IOPS took %.2fs' % took)
        self.stop_cleanly(self.daemons[-1])

    def test_bad_limits(self):
        img = self.raw('m.raw')
        mp = self.path('never.img')
        cases = [
            ('nope=3', 2, "Parameter 'nope' is unexpected"),
            ('iops-total', 2, "Expected '='"),
            ('iops-total=abc', 2, "Parameter 'iops-total' expects an integer"),
            ('bps-total=10Q', 2, "Parameter 'bps-total' expects a size"),
            ('iops-total=50,iops-read=3', 1,
             'total values and read/write values cannot be used at the same time'),
            ('iops-total-max=5', 1, 'bps_max/iops_max require corresponding bps/iops'),
        ]
        for limits, code, msg in cases:
            r = run_diskstack(['mount', '--throttle', limits, img, mp])
            err = r.stderr.decode()
            self.assertEqual(r.returncode, code, '%s: %s' % (limits, err))
            self.assertIn(msg, err, limits)
            # usage errors add the --help hint line; the others are one line
            self.assertEqual(len(nonempty_lines(err)), 2 if code == 2 else 1, err)
            self.assertFalse(os.path.exists(mp), 'mountpoint created: ' + limits)
