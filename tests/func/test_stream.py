"""block-stream over the real QMP socket, with the top of a three-image
chain (base <- mid <- top) exported writable through FUSE and written by
threads while the job copies.

After each job: the export's content equals the reference the writers kept,
`qemu-img compare` of the top image against it, `qemu-img check` clean, and
`qemu-img info --backing-chain` shows the promised chain.  Also: pause and
resume, the error policies with an inject node under mid (stop, then resume;
report fails cleanly and leaves the chain as it was), blockdev-del of a chain
node refused while the job runs, and the argument errors (qemu-storage-daemon
7.2's messages).  A guest write that lands while the job holds old data of the
same chunk (its read held by an inject delay) must win; an external snapshot
of top during the stream, a read-only intermediate streamed, a chain opened
from the image headers; and the event sequence of one simple stream compared
with qemu-storage-daemon's.

StreamFilter: the copy-on-read filter the job inserts above top
(filter-node-name, or an automatic name): visible while the job runs, gone
after; a read through the export of a paused stream copies into top
(`qemu-img map`); a duplicate name refused with the graph unchanged.
CopyOnReadNode: blockdev-add driver=copy-on-read over a chain, exported and
written and read by threads: reads populate top down to `bottom`.

JobCase is the shared base of test_commit.py."""

import os
import shutil
import subprocess
import threading
import unittest

from common import (MiB, Daemon, diskstack_bin, pwrite_all, random_io_workers,
                    read_file, run_qemu_img, wait_for)
from qmp import QmpClient
from test_qmp_snapshot import SnapshotCase, qemu_img_json

SIZE = 8 * MiB
SLOW = 4 * MiB          # bytes/s: the copy lasts while the writers run


class JobCase(SnapshotCase):
    """A daemon with base <- mid <- top as named nodes, top exported."""

    def setUp(self):
        super().setUp()
        self.setUp_images()

    def setUp_images(self):
        self.base = self.qcow2('base.qcow2', SIZE)
        self.mid = self.qcow2('mid.qcow2', SIZE, backing=self.base)
        self.top = self.qcow2('top.qcow2', SIZE, backing=self.mid)
        # each layer owns some data; ranges overlap so that upper layers win
        self.qemu_io(self.base, 'write -P 0x11 0 6M')
        self.qemu_io(self.mid, 'write -P 0x22 1M 3M', 'write -z 5M 1M')
        self.qemu_io(self.top, 'write -P 0x33 3M 1M')
        self.expected_start = self.raw_of(self.top)

    def qemu_io(self, img, *cmds):
        args = ['qemu-io', '-f', 'qcow2']
        for c in cmds:
            args += ['-c', c]
        r = subprocess.run(args + [img], capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)

    def add_chain(self, mid_file=None, growable=False):
        """base, mid, top as named nodes, top exported writable (growable:
        the export holds the resize permission too); mid's file may be
        another node (an inject filter)."""
        self.add_named('base', self.base, None, ro=True)
        self.add_named('mid', self.mid, 'base', mid_file, ro=True)
        self.add_named('top', self.top, 'mid')
        self.mp = self.path('top.img')
        open(self.mp, 'w').close()
        self.ok('block-export-add', {'type': 'fuse', 'id': 'e-top',
                                     'node-name': 'top', 'mountpoint': self.mp,
                                     'writable': True, 'growable': growable})

    def add_named(self, node, img, backing, file_node=None, ro=False):
        f = file_node or {'driver': 'file', 'node-name': node + '-f', 'filename': img}
        self.ok('blockdev-add', {'driver': 'qcow2', 'node-name': node, 'read-only': ro,
                                 'file': f, 'backing': backing})

    def run_job(self, cmd, args, writers=2, ops=20, after=None):
        """Starts the job while writer threads hammer the export, rounds of
        ops requests each until the job has completed (so that writes race
        the whole copy); after(rounds), if given, runs once the job started,
        rounds the list of write rounds begun so far (an active commit:
        wait for ready, job-complete); returns the
        BLOCK_JOB_COMPLETED event and the reference content."""
        reference = bytearray(read_file(self.mp))
        self.assertEqual(bytes(reference), self.expected_start)
        errors, done, rounds = [], threading.Event(), []

        def write_until_done():
            while not done.is_set() and not errors:
                rounds.append(1)
                errors.extend(random_io_workers(
                    self.mp, reference, writers, ops, seed=len(rounds),
                    max_size=256 * 1024))

        t = threading.Thread(target=write_until_done)
        t.start()
        try:
            self.assertEqual(self.ok(cmd, args), {})
            if after:
                after(rounds)
            ev = self.c.event('BLOCK_JOB_COMPLETED')
        finally:
            done.set()
            t.join()
        self.assertEqual(errors, [])
        self.assertGreater(len(rounds), 1, 'the writers raced the job')
        return ev, bytes(reference)

    def statuses(self, job):
        """The JOB_STATUS_CHANGE statuses of job up to 'null', in order."""
        self.wait_status(job, 'null', keep=True)
        out = [e['data']['status'] for e in self.c.events
               if e['event'] == 'JOB_STATUS_CHANGE' and e['data']['id'] == job]
        self.c.events = [e for e in self.c.events
                         if not (e['event'] == 'JOB_STATUS_CHANGE' and
                                 e['data']['id'] == job)]
        return out

    def wait_status(self, job, status, keep=False):
        """Waits for job's status event; keep: leave the events queued."""
        seen = []
        while True:
            e = self.c.event('JOB_STATUS_CHANGE')
            seen.append(e)
            if e['data']['id'] == job and e['data']['status'] == status:
                break
        if keep:
            self.c.events = seen + self.c.events

    def verify(self, img, content, chain):
        """The export shows content; after quit, the image too (qemu-img
        compare against a raw copy), check is clean, the chain is chain."""
        self.assertBytesEqual(read_file(self.mp), content, 'export after the job')
        self.quit()
        ref = self.save(content)
        r = run_qemu_img('compare', '-U', '-f', 'qcow2', '-F', 'raw', img, ref)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        for i, _ in chain:
            self.check_clean(i)
        self.assertEqual(self.backing_chain(img), chain)

    def inject_mid(self):
        """mid's file under an inject node 'inj' (no rules yet)."""
        self.add_chain({'driver': 'inject', 'node-name': 'inj', 'rules': [],
                        'file': {'driver': 'file', 'node-name': 'mid-f',
                                 'filename': self.mid}})

    def start_with_failing_mid(self, cmd, args, rule):
        """mid's reads fail as inject rule `rule` says (id 'bad', op
        read), then cmd starts the job."""
        self.inject_mid()
        self.ok('x-diskstack-inject-set', {'node-name': 'inj', 'rules': [
            dict(rule, id='bad', op='read')]})
        self.assertEqual(self.ok(cmd, args), {})

    def stop_then_resume(self, cmd, args):
        """on-error stop on a failing read of mid: BLOCK_JOB_ERROR, the job
        paused with io-status failed; once the fault is cleared, job-resume
        completes it without error."""
        job = args['job-id']
        self.start_with_failing_mid(cmd, dict(args, **{'on-error': 'stop'}), {})
        ev = self.c.event('BLOCK_JOB_ERROR')
        self.assertEqual(ev['data'], {'device': job, 'operation': 'read',
                                      'action': 'stop'})
        self.wait_status(job, 'paused')
        info = self.ok('query-block-jobs')[0]
        self.assertEqual(info['io-status'], 'failed')
        self.ok('x-diskstack-inject-clear', {'node-name': 'inj'})
        self.assertEqual(self.ok('job-resume', {'id': job}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])

    def report_fails_cleanly(self, cmd, args):
        """on-error report (the default) on a read of mid failing at 2 MiB:
        BLOCK_JOB_ERROR, then the job fails (aborting, concluded, null);
        returns its BLOCK_JOB_COMPLETED data."""
        job = args['job-id']
        self.start_with_failing_mid(cmd, args, {'offset': 2 * MiB})
        ev = self.c.event('BLOCK_JOB_ERROR')
        self.assertEqual(ev['data']['action'], 'report')
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertIn('error', ev['data'])
        self.assertEqual(self.statuses(job), ['created', 'running', 'aborting',
                                              'concluded', 'null'])
        self.ok('x-diskstack-inject-clear', {'node-name': 'inj'})
        return ev['data']

    def reopen_refused(self, node, desc):
        """blockdev-reopen of node (a read-only qcow2 on node-f) without
        its backing is refused with desc."""
        self.refused('blockdev-reopen', {'options': [{
            'driver': 'qcow2', 'node-name': node, 'read-only': True,
            'file': node + '-f', 'backing': None}]}, desc)

    def node_names(self):
        return sorted(n['node-name'] for n in self.ok('query-named-block-nodes'))

    def drivers(self):
        """node-name -> driver of every named node."""
        return {n['node-name']: n['drv']
                for n in self.ok('query-named-block-nodes')}

    def depths(self, img, start, length):
        """The layers (qemu-img map depth: 0 is img itself, None: nowhere)
        that [start, start+length) of img's chain comes from."""
        out = set()
        for e in qemu_img_json('map', '-U', '--output=json', img):
            if e['start'] < start + length and e['start'] + e['length'] > start:
                out.add(e['depth'] if e.get('present', True) else None)
        return out

    def fsync_export(self):
        """Metadata the daemon caches reaches the image files."""
        fd = os.open(self.mp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Stream(JobCase):

    def test_stream_to_base_under_writes(self):
        self.add_chain()
        ev, content = self.run_job('block-stream', {
            'job-id': 's0', 'device': 'top', 'base-node': 'base', 'speed': SLOW})
        self.assertEqual(ev['data']['type'], 'stream')
        self.assertEqual(ev['data']['device'], 's0')
        self.assertNotIn('error', ev['data'])
        self.assertEqual(ev['data']['offset'], ev['data']['len'])
        self.assertEqual(ev['data']['len'], SIZE)
        self.assertEqual(self.statuses('s0'), ['created', 'running', 'waiting',
                                               'pending', 'concluded', 'null'])
        self.assertEqual(self.ok('query-block-jobs'), [])
        # mid left the chain: nobody uses it any more
        self.assertEqual(self.ok('blockdev-del', {'node-name': 'mid'}), {})
        self.verify(self.top, content, [(self.top, self.base), (self.base, None)])

    def test_stream_whole_chain_under_writes(self):
        self.add_chain(growable=True)
        ev, content = self.run_job('block-stream', {
            'job-id': 's1', 'device': 'top', 'speed': SLOW})
        self.assertNotIn('error', ev['data'])
        self.verify(self.top, content, [(self.top, None)])

    def test_stream_bottom_and_backing_file(self):
        self.add_chain()
        ev, content = self.run_job('block-stream', {
            'job-id': 's2', 'device': 'top', 'bottom': 'mid',
            'backing-file': 'base.qcow2', 'speed': SLOW}, writers=1)
        self.assertNotIn('error', ev['data'])
        # the header names base relative to top's directory
        self.verify(self.top, content, [(self.top, 'base.qcow2'),
                                        (self.base, None)])

    def test_stream_read_only_intermediate(self):
        """Streaming mid (read-only, below the exported top) reopens it
        read-write for the job only."""
        self.add_chain()
        ev, content = self.run_job('block-stream', {
            'job-id': 's8', 'device': 'mid', 'speed': SLOW})
        self.assertNotIn('error', ev['data'])
        mid = [n for n in self.ok('query-named-block-nodes')
               if n['node-name'] == 'mid'][0]
        self.assertTrue(mid['ro'], 'mid is read-only again')
        self.verify(self.top, content, [(self.top, self.mid), (self.mid, None)])

    def test_pause_resume_and_del_refused(self):
        self.add_chain()
        self.assertEqual(self.ok('block-stream', {
            'job-id': 's3', 'device': 'top', 'base-node': 'base',
            'speed': 1 * MiB}), {})
        self.assertEqual(self.ok('job-pause', {'id': 's3'}), {})
        self.wait_status('s3', 'paused')
        job = self.ok('query-jobs')[0]
        self.assertEqual((job['id'], job['type'], job['status']),
                         ('s3', 'stream', 'paused'))
        self.assertEqual(job['total-progress'], SIZE)
        for node in ('mid', 'top'):
            self.refused('blockdev-del', {'node-name': node},
                         "Node '%s' is in use by job 's3'" % node)
        self.reopen_refused('mid', "Cannot change frozen 'backing' link from "
                            "'mid' to 'base'")
        self.refused('block-stream', {'job-id': 's4', 'device': 'top'},
                     "Node 'top' is busy: block device is in use by block "
                     "job: stream")
        self.assertEqual(self.ok('block-job-set-speed',
                                 {'device': 's3', 'speed': 0}), {})
        self.assertEqual(self.ok('job-resume', {'id': 's3'}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])
        self.verify(self.top, self.expected_start,
                    [(self.top, self.base), (self.base, None)])

    def test_snapshot_of_top_during_the_stream(self):
        """An external snapshot of top while the stream runs (a quiesced
        section on top pauses the job; the export moves to the overlay):
        the content never changes and the chain ends as overlay <- top <-
        base."""
        self.add_chain()
        self.assertEqual(self.ok('block-stream', {
            'job-id': 'sa', 'device': 'top', 'base-node': 'base',
            'speed': 1 * MiB}), {})
        ov = self.path('ov.qcow2')
        self.assertEqual(self.ok('blockdev-snapshot-sync', {
            'node-name': 'top', 'snapshot-file': ov, 'snapshot-node-name': 'ov'}), {})
        self.assertEqual(self.ok('block-job-set-speed',
                                 {'device': 'sa', 'speed': 0}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])
        self.verify(ov, self.expected_start,
                    [(ov, self.top), (self.top, self.base), (self.base, None)])

    def test_implicit_backing_nodes_are_closed(self):
        """A chain opened from the image headers: after the stream the
        nodes it dropped are closed."""
        self.add_disk('top', self.top)
        self.mp = self.export('top', 'top.img')
        before = self.node_names()
        ev, content = self.run_job('block-stream', {
            'job-id': 'sb', 'device': 'top', 'speed': SLOW}, writers=1)
        self.assertNotIn('error', ev['data'])
        self.assertEqual(self.node_names(), ['top', 'top-f'])
        self.assertGreater(len(before), 2)
        self.verify(self.top, content, [(self.top, None)])

    def test_cancel_leaves_the_chain(self):
        self.add_chain()
        self.assertEqual(self.ok('block-stream', {
            'job-id': 's9', 'device': 'top', 'speed': 1 * MiB}), {})
        self.assertEqual(self.ok('job-cancel', {'id': 's9'}), {})
        ev = self.c.event('BLOCK_JOB_CANCELLED')
        self.assertEqual((ev['data']['type'], ev['data']['device']),
                         ('stream', 's9'))
        self.assertEqual(self.statuses('s9'), ['created', 'running', 'aborting',
                                               'concluded', 'null'])
        self.verify(self.top, self.expected_start,
                    [(self.top, self.mid), (self.mid, self.base),
                     (self.base, None)])

    def test_error_stop_then_resume(self):
        self.stop_then_resume('block-stream', {'job-id': 's5', 'device': 'top',
                                               'base-node': 'base'})
        self.verify(self.top, self.expected_start,
                    [(self.top, self.base), (self.base, None)])

    def test_error_report_fails_cleanly(self):
        done = self.report_fails_cleanly('block-stream',
                                         {'job-id': 's6', 'device': 'top'})
        self.assertLess(done['offset'], SIZE)
        # the chain is as it was, the content too
        self.verify(self.top, self.expected_start,
                    [(self.top, self.mid), (self.mid, self.base),
                     (self.base, None)])

    def test_guest_write_during_copy_wins(self):
        """The job has read a chunk's old data from mid (its read is held
        by a delay) when the guest writes that chunk: the job's copy must
        not put the old data over the guest's."""
        self.inject_mid()
        # mid's metadata into its cache: the first read of mid's file the
        # rule sees is then the job's read of data
        self.assertEqual(read_file(self.mp), self.expected_start)
        self.ok('x-diskstack-inject-set', {'node-name': 'inj', 'rules': [
            {'id': 'slow', 'op': 'read', 'action': 'delay', 'delay-ms': 500,
             'once': True}]})
        self.assertEqual(self.ok('block-stream', {
            'job-id': 's7', 'device': 'top', 'base-node': 'base'}), {})
        # mid's first data chunk is the first the job reads from mid
        wait_for(lambda: self.ok('x-diskstack-inject-query',
                                 {'node-name': 'inj'})[0]['fired'] > 0,
                 lambda: 'the job never read mid')
        new = b'\x77' * (512 * 1024)
        fd = os.open(self.mp, os.O_RDWR)
        try:
            pwrite_all(fd, new, 1 * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])
        content = bytearray(self.expected_start)
        content[1 * MiB:1 * MiB + len(new)] = new
        self.verify(self.top, bytes(content),
                    [(self.top, self.base), (self.base, None)])

    def test_argument_errors(self):
        self.add_chain()
        self.add_disk('other', self.qcow2('other.qcow2'))
        cases = [
            ({'device': 'top', 'base': 'x', 'base-node': 'base'},
             "'base' and 'base-node' cannot be specified at the same time"),
            ({'device': 'top', 'base': 'x', 'bottom': 'mid'},
             "'base' and 'bottom' cannot be specified at the same time"),
            ({'device': 'top', 'bottom': 'mid', 'base-node': 'base'},
             "'bottom' and 'base-node' cannot be specified at the same time"),
            ({'device': 'nope'}, "Cannot find device='nope' nor node-name='nope'"),
            ({'device': 'top', 'base-node': 'other'},
             "Node 'other' is not a backing image of 'top'"),
            ({'device': 'top', 'base-node': 'top'},
             "Node 'top' is not a backing image of 'top'"),
            ({'device': 'top', 'base': '/nonexistent'}, "Base '/nonexistent' not found"),
            ({'device': 'top', 'bottom': 'other'},
             "Node 'other' is not in a chain starting from 'top'"),
            ({'device': 'top', 'backing-file': 'x'},
             'backing file specified, but streaming the entire chain'),
            ({'device': 'top', 'on-error': 'maybe'},
             "Parameter 'on-error' does not accept value 'maybe'"),
            ({'device': 'top', 'speed': -1},
             "Parameter 'speed' expects a non-negative value"),
            ({'device': 'top'}, 'An explicit job ID is required'),
        ]
        for args, desc in cases:
            if 'job-id' not in args and desc != 'An explicit job ID is required':
                args['job-id'] = 'j'
            self.refused('block-stream', args, desc)
        self.assertEqual(self.ok('query-jobs'), [])
        self.quit()


class StreamFilter(JobCase):

    def paused_stream(self, job, **extra):
        """A stream of top down to base, almost not moving (1 byte/s: it
        copies at most one chunk, then sleeps), paused."""
        args = {'job-id': job, 'device': 'top', 'base-node': 'base',
                'speed': 1}
        args.update(extra)
        self.assertEqual(self.ok('block-stream', args), {})
        self.assertEqual(self.ok('job-pause', {'id': job}), {})
        self.wait_status(job, 'paused')

    def finish(self, job):
        self.assertEqual(self.ok('block-job-set-speed',
                                 {'device': job, 'speed': 0}), {})
        self.assertEqual(self.ok('job-resume', {'id': job}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])

    def test_named_filter_while_paused_and_read_copies_up(self):
        self.add_chain()
        before = self.node_names()
        self.paused_stream('sf', **{'filter-node-name': 'cor'})
        self.assertEqual(self.drivers().get('cor'), 'copy-on-read')
        self.refused('blockdev-del', {'node-name': 'cor'},
                     "Node 'cor' is not owned by the monitor")
        # mid's data at 2M..3M: not copied by the job yet (its first copy
        # is 1M..1.5M), copied by a read through the export
        self.fsync_export()
        self.assertEqual(self.depths(self.top, 2 * MiB, MiB), {1})
        with open(self.mp, 'rb') as f:
            f.seek(2 * MiB)
            self.assertEqual(f.read(MiB), self.expected_start[2 * MiB:3 * MiB])
        self.fsync_export()
        self.assertEqual(self.depths(self.top, 2 * MiB, MiB), {0})
        # base's data below the filter's bottom is not copied up
        with open(self.mp, 'rb') as f:
            f.seek(4 * MiB)
            self.assertEqual(f.read(MiB), self.expected_start[4 * MiB:5 * MiB])
        self.fsync_export()
        self.assertEqual(self.depths(self.top, 4 * MiB, MiB), {2})
        self.finish('sf')
        self.assertEqual(self.node_names(), before)
        self.verify(self.top, self.expected_start,
                    [(self.top, self.base), (self.base, None)])

    def test_automatic_filter_name(self):
        self.add_chain()
        before = self.drivers()
        self.paused_stream('sg')
        added = {n: d for n, d in self.drivers().items() if n not in before}
        self.assertEqual(list(added.values()), ['copy-on-read'])
        self.assertTrue(list(added)[0].startswith('#block'))
        self.finish('sg')
        self.assertEqual(self.drivers(), before)
        self.verify(self.top, self.expected_start,
                    [(self.top, self.base), (self.base, None)])

    def test_named_filter_under_writes(self):
        """Writers and readers through the filter while the job copies."""
        self.add_chain()
        ev, content = self.run_job('block-stream', {
            'job-id': 'sh', 'device': 'top', 'speed': SLOW,
            'filter-node-name': 'cor'})
        self.assertNotIn('error', ev['data'])
        self.assertNotIn('cor', self.node_names())
        self.verify(self.top, content, [(self.top, None)])

    def test_cancel_removes_the_filter(self):
        self.add_chain()
        before = self.graph()
        self.paused_stream('si', **{'filter-node-name': 'cor'})
        self.assertEqual(self.ok('job-cancel', {'id': 'si'}), {})
        self.wait_status('si', 'null')
        self.assertEqual(self.graph(), before)
        self.verify(self.top, self.expected_start,
                    [(self.top, self.mid), (self.mid, self.base),
                     (self.base, None)])

    def test_duplicate_and_bad_filter_names_refused(self):
        """QEMU's messages; refused() checks that the graph (the named
        nodes) is unchanged, and no job was left behind."""
        self.add_chain()
        self.refused('block-stream', {'job-id': 'sj', 'device': 'top',
                                      'filter-node-name': 'mid'},
                     "Duplicate nodes with node-name='mid'")
        self.refused('block-stream', {'job-id': 'sj', 'device': 'top',
                                      'filter-node-name': '#x'},
                     "Invalid node-name: '#x'")
        # refused by the job core once the filter is in: it goes again
        self.refused('block-stream', {'job-id': '1sj', 'device': 'top',
                                      'filter-node-name': 'cor'},
                     "Invalid job ID '1sj'")
        self.assertEqual(self.ok('query-jobs'), [])
        # a read-only intermediate stays read-only after a refusal
        self.refused('block-stream', {'job-id': 'sj', 'device': 'mid',
                                      'filter-node-name': 'base'},
                     "Duplicate nodes with node-name='base'")
        mid = [n for n in self.ok('query-named-block-nodes')
               if n['node-name'] == 'mid'][0]
        self.assertTrue(mid['ro'])
        self.assertEqual(self.ok('query-jobs'), [])
        self.quit()


class CopyOnReadNode(JobCase):
    """blockdev-add driver=copy-on-read over base <- mid <- top."""

    def add_cor(self, **extra):
        self.add_named('base', self.base, None, ro=True)
        self.add_named('mid', self.mid, 'base', ro=True)
        self.add_named('top', self.top, 'mid')
        d = {'driver': 'copy-on-read', 'node-name': 'cor', 'file': 'top'}
        d.update(extra)
        self.assertEqual(self.ok('blockdev-add', d), {})
        self.mp = self.path('cor.img')
        open(self.mp, 'w').close()
        self.ok('block-export-add', {'type': 'fuse', 'id': 'e-cor',
                                     'node-name': 'cor', 'mountpoint': self.mp,
                                     'writable': True})

    def read_under_writes(self):
        """Threads write and read the export; then everything is read once.
        Returns the content the writers left."""
        reference = bytearray(self.expected_start)
        errors = random_io_workers(self.mp, reference, 2, 40, seed=7,
                                   max_size=256 * 1024)
        self.assertEqual(errors, [])
        self.assertBytesEqual(read_file(self.mp), bytes(reference),
                              'export after the writers')
        return bytes(reference)

    def verify_top(self, content):
        """After quit: top alone (its backing chain as it was) shows
        content, check is clean."""
        self.quit()
        ref = self.save(content)
        r = run_qemu_img('compare', '-U', '-f', 'qcow2', '-F', 'raw',
                         self.top, ref)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        for img in (self.top, self.mid, self.base):
            self.check_clean(img)
        self.assertEqual(self.backing_chain(self.top), [
            (self.top, self.mid), (self.mid, self.base), (self.base, None)])

    def test_whole_chain_copied_up(self):
        self.add_cor()
        self.assertEqual(self.drivers()['cor'], 'copy-on-read')
        content = self.read_under_writes()
        self.fsync_export()
        # everything any layer had is in top now (what nobody had: nowhere)
        self.assertEqual(self.depths(self.top, 0, 6 * MiB), {0})
        self.verify_top(content)

    def test_bottom_limits_the_copy(self):
        self.add_cor(bottom='mid')
        # the chain down to bottom is frozen while the node exists
        self.refused('blockdev-reopen', {'options': [{
            'driver': 'qcow2', 'node-name': 'top', 'file': 'top-f',
            'backing': None}]},
            "Cannot change frozen 'backing' link from 'top' to 'mid'")
        self.assertEqual(read_file(self.mp), self.expected_start)
        self.fsync_export()
        self.assertEqual(self.depths(self.top, 1 * MiB, 3 * MiB), {0})
        self.assertEqual(self.depths(self.top, 5 * MiB, MiB), {0})
        self.assertEqual(self.depths(self.top, 0, MiB), {2})
        self.assertEqual(self.depths(self.top, 4 * MiB, MiB), {2})
        content = self.read_under_writes()
        self.verify_top(content)

    def test_refusals(self):
        self.add_named('base', self.base, None, ro=True)
        self.add_named('mid', self.mid, 'base', ro=True)
        self.add_named('top', self.top, 'mid')
        cases = [
            ({'bottom': 'nope'}, "Bottom node 'nope' not found"),
            ({'bottom': 'top-f'}, "Bottom node 'top-f' is not in the backing "
             "chain of 'top'"),
            ({'file': 'mid'},
             "Node 'cor', child 'file': Block node is read-only"),
        ]
        for extra, desc in cases:
            d = {'driver': 'copy-on-read', 'node-name': 'cor', 'file': 'top'}
            d.update(extra)
            self.refused('blockdev-add', d, desc)
        self.quit()


class SameAsQsd(JobCase):
    """The events of one simple stream (no export: qemu-storage-daemon 7.2
    refuses a job on a writable FUSE export's node) as qsd sends them."""

    def job_events(self, who, args, sock, job=None, complete=False):
        """The events of job (cmd, args; default: a stream of top down to
        base) in order of arrival, until its status is null; complete:
        job-complete once it is ready."""
        d = Daemon(args, self.path('unused-' + who), self.tmp, name=who)
        self.addCleanup(d.cleanup)
        d.start(wait_mounted=False)
        wait_for(lambda: os.path.exists(sock) or d.proc.poll() is not None,
                 lambda: 'no QMP socket: ' + d.describe())
        self.c = QmpClient(sock).negotiate()
        for node, img, backing in (('base', self.base, None),
                                   ('mid', self.mid, 'base'),
                                   ('top', self.top, 'mid')):
            self.add_named(node, img, backing, ro=node != 'top')
        cmd, cmd_args = job or ('block-stream', {
            'job-id': 's', 'device': 'top', 'base-node': 'base'})
        self.assertEqual(self.ok(cmd, cmd_args), {})
        events = []
        if complete:
            events = self.recv_until(lambda e: e['event'] == 'BLOCK_JOB_READY')
            self.assertEqual(self.ok('job-complete',
                                     {'id': cmd_args['job-id']}), {})
        events += self.recv_until(lambda e: e['data'].get('status') == 'null')
        events = [(e['event'], e['data']) for e in events]
        self.assertEqual(self.c.cmd('quit'), {'return': {}})
        self.c.close()
        d.wait_exit()
        return events

    def recv_until(self, cond):
        """The queued events, then received ones, in order of arrival, up
        to one that cond accepts."""
        events, self.c.events = self.c.events, []
        while not any(cond(e) for e in events):
            events.append(self.c.recv())
        return events

    def events_of_both(self, **job):
        """job_events(**job) on qemu-storage-daemon, then on diskstack with
        the same images: (ours, theirs)."""
        qsd = shutil.which('qemu-storage-daemon')
        if not qsd:
            self.skipTest('qemu-storage-daemon not installed')
        self.c.cmd('quit')
        self.c.close()
        sock = self.path('qsd.sock')
        want = self.job_events('qsd', [
            qsd, '--chardev', 'socket,path=%s,server=on,wait=off,id=m' % sock,
            '--monitor', 'chardev=m'], sock, **job)
        # the same images again
        for img in (self.top, self.mid, self.base):
            os.unlink(img)
        self.setUp_images()
        sock = self.path('ds.sock')
        got = self.job_events('diskstack', [
            diskstack_bin(), 'serve', '--qmp', sock], sock, **job)
        return got, want

    def test_stream_events_match_qsd(self):
        got, want = self.events_of_both()
        self.assertEqual(got, want)
        self.assertEqual([e[1].get('status', e[0]) for e in want], [
            'created', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED',
            'concluded', 'null'])

if __name__ == '__main__':
    unittest.main()
