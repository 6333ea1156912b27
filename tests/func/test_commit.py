"""block-commit (intermediate) over the real QMP socket: mid of the chain
base <- mid <- top is committed into base while top is exported writable
through FUSE and written by threads.

After each job: the export's content equals the writers' reference,
`qemu-img compare`, `qemu-img check` clean, the promised chain in `qemu-img
info --backing-chain`, and base holds what mid showed (the commit's point)
and is read-only again.  Also pause/resume with blockdev-del of chain nodes
refused, the error policies with an inject node under mid, and argument
errors (qemu-storage-daemon 7.2's messages).

CommitFilter: the commit_top node the job puts between top and mid
(filter-node-name, or an automatic name) is in the graph while the job runs
(paused to look), gone after a completion and after a cancel; a duplicate
name is refused with the graph unchanged.

ActiveCommit: the active layer top (the exported node) committed into base
while the export is written: ready, job-complete under writes, then the
export serves base (read-write now, as QEMU leaves it), base's content is
the writers' reference and top and mid leave the graph when deleted; a
cancel after ready leaves base a copy of top at that moment, read-only
again, and top the active layer; the events match qemu-storage-daemon's."""

import os
import unittest

from common import MiB, read_file, run_qemu_img, wait_for
import test_stream
from test_stream import SIZE, SLOW, JobCase


class Commit(JobCase):

    def setUp(self):
        super().setUp()
        self.mid_view = self.raw_of(self.mid)

    def node(self, name):
        return [n for n in self.ok('query-named-block-nodes')
                if n['node-name'] == name][0]

    def verify_commit(self, content):
        self.assertTrue(self.node('base')['ro'], 'base is read-only again')
        self.verify(self.top, content, [(self.top, self.base), (self.base, None)])
        base_raw = self.save(self.mid_view, 'mid-view.raw')
        r = run_qemu_img('compare', '-U', '-f', 'qcow2', '-F', 'raw',
                         self.base, base_raw)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())

    def test_commit_mid_under_writes(self):
        self.add_chain()
        ev, content = self.run_job('block-commit', {
            'job-id': 'c0', 'device': 'top', 'top-node': 'mid',
            'base-node': 'base', 'speed': SLOW})
        self.assertEqual((ev['data']['type'], ev['data']['device']),
                         ('commit', 'c0'))
        self.assertNotIn('error', ev['data'])
        self.assertEqual(ev['data']['len'], SIZE)
        self.assertEqual(ev['data']['offset'], SIZE)
        self.assertEqual(self.statuses('c0'), ['created', 'running', 'waiting',
                                               'pending', 'concluded', 'null'])
        # mid left the chain
        self.assertEqual(self.ok('blockdev-del', {'node-name': 'mid'}), {})
        self.verify_commit(content)

    def test_commit_default_base_and_backing_file(self):
        self.add_chain()
        ev, content = self.run_job('block-commit', {
            'job-id': 'c1', 'device': 'top', 'top-node': 'mid',
            'backing-file': 'base.qcow2', 'speed': SLOW}, writers=1)
        self.assertNotIn('error', ev['data'])
        self.assertTrue(self.node('base')['ro'])
        self.verify(self.top, content, [(self.top, 'base.qcow2'),
                                        (self.base, None)])

    def test_pause_resume_and_del_refused(self):
        self.add_chain()
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'c2', 'device': 'top', 'top-node': 'mid',
            'speed': 1 * MiB}), {})
        self.assertEqual(self.ok('job-pause', {'id': 'c2'}), {})
        self.wait_status('c2', 'paused')
        self.assertFalse(self.node('base')['ro'], 'base writable for the job')
        for node in ('mid', 'base'):
            self.refused('blockdev-del', {'node-name': node},
                         "Node '%s' is in use by job 'c2'" % node)
        self.reopen_refused('mid', "Cannot change frozen 'backing' link from "
                            "'mid' to 'base'")
        self.refused('block-stream', {'job-id': 's', 'device': 'top'},
                     "Node 'mid' is busy: block device is in use by block "
                     "job: commit")
        self.assertEqual(self.ok('block-job-set-speed',
                                 {'device': 'c2', 'speed': 0}), {})
        self.assertEqual(self.ok('job-resume', {'id': 'c2'}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])
        self.verify_commit(self.expected_start)

    def test_cancel_restores_base(self):
        self.add_chain()
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'c5', 'device': 'top', 'top-node': 'mid',
            'speed': 1 * MiB}), {})
        self.assertEqual(self.ok('job-cancel', {'id': 'c5'}), {})
        ev = self.c.event('BLOCK_JOB_CANCELLED')
        self.assertEqual((ev['data']['type'], ev['data']['device']),
                         ('commit', 'c5'))
        self.wait_status('c5', 'null')
        self.assertTrue(self.node('base')['ro'], 'base is read-only again')
        self.verify(self.top, self.expected_start,
                    [(self.top, self.mid), (self.mid, self.base),
                     (self.base, None)])

    def test_error_stop_then_resume(self):
        self.stop_then_resume('block-commit', {'job-id': 'c3', 'device': 'top',
                                               'top-node': 'mid'})
        self.verify_commit(self.expected_start)

    def test_error_report_fails_cleanly(self):
        self.report_fails_cleanly('block-commit', {'job-id': 'c4', 'device': 'top',
                                                   'top-node': 'mid'})
        self.assertTrue(self.node('base')['ro'], 'base is read-only again')
        self.verify(self.top, self.expected_start,
                    [(self.top, self.mid), (self.mid, self.base),
                     (self.base, None)])

    def test_argument_errors(self):
        self.add_chain()
        self.add_disk('other', self.qcow2('other.qcow2'))
        cases = [
            ({'device': 'nope'}, "Device 'nope' not found", 'DeviceNotFound'),
            ({'device': 'top', 'top-node': 'other'},
             "'other' is not in this backing file chain", None),
            ({'device': 'top', 'top-node': 'mid', 'base-node': 'other'},
             "'other' is not in this backing file chain", None),
            ({'device': 'top', 'top-node': 'mid', 'base-node': 'mid'},
             'cannot commit an image into itself', None),
            ({'device': 'top', 'top-node': 'mid', 'top': 'x'},
             "'top-node' and 'top' are mutually exclusive", None),
            ({'device': 'top', 'top-node': 'mid', 'base': 'x', 'base-node': 'base'},
             "'base-node' and 'base' are mutually exclusive", None),
            ({'device': 'top', 'top-node': 'mid', 'base': '/nonexistent'},
             "Can't find '/nonexistent' in the backing chain", None),
            ({'device': 'top', 'top': '/nonexistent'},
             'Top image file /nonexistent not found', None),
            ({'device': 'top', 'backing-file': 'x'},
             "'backing-file' specified, but 'top' is the active layer", None),
            ({'device': 'top', 'top-node': 'mid', 'on-error': 'maybe'},
             "Parameter 'on-error' does not accept value 'maybe'", None),
        ]
        for args, desc, cls in cases:
            args['job-id'] = 'j'
            self.refused('block-commit', args, desc, cls or 'GenericError')
        self.refused('block-commit', {'device': 'top', 'top-node': 'mid'},
                     'An explicit job ID is required')
        self.assertTrue(self.node('base')['ro'])
        self.assertEqual(self.ok('query-jobs'), [])
        self.quit()


class CommitFilter(JobCase):

    node = Commit.node
    verify_commit = Commit.verify_commit

    def setUp(self):
        super().setUp()
        self.mid_view = self.raw_of(self.mid)

    def paused_commit(self, job, **extra):
        args = {'job-id': job, 'device': 'top', 'top-node': 'mid',
                'base-node': 'base', 'speed': 1}
        args.update(extra)
        self.assertEqual(self.ok('block-commit', args), {})
        self.assertEqual(self.ok('job-pause', {'id': job}), {})
        self.wait_status(job, 'paused')

    def test_named_filter_while_paused(self):
        self.add_chain()
        before = self.drivers()
        self.paused_commit('cf', **{'filter-node-name': 'ctop'})
        self.assertEqual(self.drivers(), dict(before, ctop='commit_top'))
        # the overlay reads its backing through the filter
        self.assertBytesEqual(read_file(self.mp), self.expected_start,
                              'export with the filter in place')
        self.refused('block-commit', {'job-id': 'x', 'device': 'top',
                                      'top-node': 'mid',
                                      'filter-node-name': 'y'},
                     "Node 'mid' is busy: block device is in use by block "
                     "job: commit")
        self.assertEqual(self.ok('block-job-set-speed',
                                 {'device': 'cf', 'speed': 0}), {})
        self.assertEqual(self.ok('job-resume', {'id': 'cf'}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])
        self.assertEqual(self.drivers(), before)
        self.verify_commit(self.expected_start)

    def test_automatic_filter_name_under_writes(self):
        self.add_chain()
        before = self.drivers()
        names = []

        def look(rounds):
            self.assertEqual(self.ok('job-pause', {'id': 'cg'}), {})
            self.wait_status('cg', 'paused')
            names.extend(n for n in self.drivers() if n not in before)
            self.assertEqual(self.ok('block-job-set-speed',
                                     {'device': 'cg', 'speed': SLOW}), {})
            self.assertEqual(self.ok('job-resume', {'id': 'cg'}), {})
        # 1 byte/s until look() has seen the filter
        ev, content = self.run_job('block-commit', {
            'job-id': 'cg', 'device': 'top', 'top-node': 'mid',
            'speed': 1}, after=look)
        self.assertNotIn('error', ev['data'])
        self.assertEqual(len(names), 1)
        self.assertTrue(names[0].startswith('#block'), names)
        self.assertEqual(self.drivers(), before)
        self.verify_commit(content)

    def test_named_filter_under_writes(self):
        self.add_chain()
        ev, content = self.run_job('block-commit', {
            'job-id': 'ch', 'device': 'top', 'top-node': 'mid',
            'base-node': 'base', 'speed': SLOW, 'filter-node-name': 'ctop'})
        self.assertNotIn('error', ev['data'])
        self.assertNotIn('ctop', self.drivers())
        self.verify_commit(content)

    def test_cancel_removes_the_filter(self):
        self.add_chain()
        before = self.graph()
        self.paused_commit('ci', **{'filter-node-name': 'ctop'})
        self.assertEqual(self.ok('job-cancel', {'id': 'ci'}), {})
        self.wait_status('ci', 'null')
        self.assertEqual(self.graph(), before)
        self.verify(self.top, self.expected_start,
                    [(self.top, self.mid), (self.mid, self.base),
                     (self.base, None)])

    def test_duplicate_name_refused(self):
        self.add_chain()
        self.refused('block-commit', {'job-id': 'cj', 'device': 'top',
                                      'top-node': 'mid',
                                      'filter-node-name': 'top'},
                     "Duplicate nodes with node-name='top'")
        # refused by the job core once the filter is in: it goes again
        self.refused('block-commit', {'job-id': 'cj', 'device': 'top',
                                      'top-node': 'mid', 'speed': -1,
                                      'filter-node-name': 'ctop'},
                     "Parameter 'speed' expects a non-negative value")
        self.assertTrue(self.node('base')['ro'])
        self.assertEqual(self.ok('query-jobs'), [])
        self.quit()


class ActiveCommit(JobCase):

    node = Commit.node

    def export_node(self):
        return [e['node-name'] for e in self.ok('query-block-exports')
                if e['id'] == 'e-top'][0]

    def ready_then(self, job, verb, base='base'):
        """Waits for job's BLOCK_JOB_READY (type commit), then verb."""
        ev = self.c.event('BLOCK_JOB_READY')
        self.assertEqual((ev['data']['type'], ev['data']['device']),
                         ('commit', job))
        self.assertFalse(self.node(base)['ro'], 'base writable for the job')
        self.assertEqual(self.ok(verb, {'id': job}), {})

    def complete_after_writes(self, job, base='base'):
        """run_job's after: the writers race the slow copy, then the job
        catches up (speed 0), goes ready and completes under the writes."""
        def after(rounds):
            wait_for(lambda: len(rounds) > 2, lambda: 'no write rounds')
            self.assertEqual(self.ok('block-job-set-speed',
                                     {'device': job, 'speed': 0}), {})
            self.ready_then(job, 'job-complete', base)
        return after

    def test_active_commit_under_writes(self):
        self.add_chain()
        ev, content = self.run_job('block-commit', {
            'job-id': 'a0', 'device': 'top', 'speed': SLOW},
            after=self.complete_after_writes('a0'))
        self.assertEqual((ev['data']['type'], ev['data']['device']),
                         ('commit', 'a0'))
        self.assertNotIn('error', ev['data'])
        self.assertEqual(ev['data']['offset'], ev['data']['len'])
        self.assertEqual(self.statuses('a0'), [
            'created', 'running', 'ready', 'waiting', 'pending', 'concluded',
            'null'])
        self.assertEqual(self.export_node(), 'base')
        self.assertFalse(self.node('base')['ro'], 'base is the active layer')
        # top and mid left the chain: nobody uses them, they close
        self.assertEqual(self.ok('blockdev-del', {'node-name': 'top'}), {})
        self.assertEqual(self.ok('blockdev-del', {'node-name': 'mid'}), {})
        self.assertEqual(self.node_names(), ['base', 'base-f'])
        self.verify(self.base, content, [(self.base, None)])

    def test_active_commit_to_mid(self):
        """base-node mid: mid becomes the active layer over base."""
        self.add_chain()
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'a1', 'device': 'top', 'base-node': 'mid'}), {})
        self.ready_then('a1', 'job-complete', 'mid')
        self.assertNotIn('error', self.c.event('BLOCK_JOB_COMPLETED')['data'])
        self.assertEqual(self.export_node(), 'mid')
        self.assertTrue(self.node('base')['ro'])
        self.assertEqual(self.ok('blockdev-del', {'node-name': 'top'}), {})
        self.verify(self.mid, self.expected_start,
                    [(self.mid, self.base), (self.base, None)])

    def open_images(self):
        """The image files the daemon has open."""
        fds = '/proc/%d/fd' % self.d.proc.pid
        paths = set()
        for fd in os.listdir(fds):
            try:
                paths.add(os.readlink(os.path.join(fds, fd)))
            except OSError:
                pass    # closed meanwhile
        return {p for p in paths if p in (self.top, self.mid, self.base)}

    def test_implicit_chain_dropped_and_closed(self):
        """A chain opened from the image headers: after the pivot and the
        blockdev-del of top (the monitor's node), top and mid are closed;
        the export keeps base."""
        self.add_disk('top', self.top)
        self.mp = self.export('top', 'top.img')
        self.assertEqual(self.open_images(), {self.top, self.mid, self.base})
        ev, content = self.run_job('block-commit', {
            'job-id': 'a4', 'device': 'top', 'speed': SLOW}, writers=1,
            after=self.complete_after_writes('a4', self.implicit_base()))
        self.assertNotIn('error', ev['data'])
        self.assertEqual(self.ok('blockdev-del', {'node-name': 'top'}), {})
        self.assertEqual(self.open_images(), {self.base})
        self.verify(self.base, content, [(self.base, None)])

    def implicit_base(self):
        return [n['node-name'] for n in self.ok('query-named-block-nodes')
                if n['file'] == self.base and n['drv'] == 'qcow2'][0]

    def test_shorter_base_is_grown(self):
        small = self.qcow2('small.qcow2', SIZE // 2)
        self.qemu_io(small, 'write -P 0x66 0 4M')
        big = self.qcow2('big.qcow2', SIZE, backing=small)
        self.qemu_io(big, 'write -P 0x77 3M 2M')
        expected = self.raw_of(big)
        self.add_named('small', small, None, ro=True)
        self.add_named('big', big, 'small')
        self.mp = self.export('big', 'big.img')
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'a7', 'device': 'big'}), {})
        self.ready_then('a7', 'job-complete', 'small')
        self.assertNotIn('error', self.c.event('BLOCK_JOB_COMPLETED')['data'])
        self.verify(small, expected, [(small, None)])

    def test_cancel_after_ready_keeps_top(self):
        self.add_chain()
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'a2', 'device': 'top'}), {})
        self.c.event('BLOCK_JOB_READY')
        with open(self.mp, 'r+b') as f:
            f.seek(7 * MiB)
            f.write(b'\x44' * MiB)
        copy = read_file(self.mp)
        # QEMU: block-job-cancel of a ready job completes it without the
        # pivot (job-cancel would force it: no copy promised)
        self.assertEqual(self.ok('block-job-cancel', {'device': 'a2'}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])
        self.wait_status('a2', 'null')
        self.assertEqual(self.export_node(), 'top')
        self.assertTrue(self.node('base')['ro'], 'base is read-only again')
        with open(self.mp, 'r+b') as f:                # top only, now
            f.write(b'\x55' * MiB)
        after = read_file(self.mp)
        self.verify(self.top, after, [(self.top, self.mid),
                                      (self.mid, self.base), (self.base, None)])
        r = run_qemu_img('compare', '-U', '-f', 'qcow2', '-F', 'raw',
                         self.base, self.save(copy, 'copy.raw'))
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())

    def test_error_stop_then_resume(self):
        self.inject_mid()
        # data only: like QEMU's mirror, a failing allocation status read
        # before the copy fails the job whatever the policy
        self.ok('x-diskstack-inject-set', {'node-name': 'inj', 'rules': [
            {'id': 'bad', 'op': 'read', 'offset': 2 * MiB}]})
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'a5', 'device': 'top', 'on-error': 'stop'}), {})
        ev = self.c.event('BLOCK_JOB_ERROR')
        self.assertEqual(ev['data'], {'device': 'a5', 'operation': 'read',
                                      'action': 'stop'})
        self.wait_status('a5', 'paused')
        self.ok('x-diskstack-inject-clear', {'node-name': 'inj'})
        self.assertEqual(self.ok('job-resume', {'id': 'a5'}), {})
        self.ready_then('a5', 'job-complete')
        self.assertNotIn('error', self.c.event('BLOCK_JOB_COMPLETED')['data'])
        self.assertEqual(self.export_node(), 'base')
        self.verify(self.base, self.expected_start, [(self.base, None)])

    def test_error_report_fails_cleanly(self):
        self.inject_mid()
        self.ok('x-diskstack-inject-set', {'node-name': 'inj', 'rules': [
            {'id': 'bad', 'op': 'read', 'offset': 2 * MiB}]})
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'a6', 'device': 'top'}), {})
        self.assertIn('error', self.c.event('BLOCK_JOB_COMPLETED')['data'])
        self.assertEqual(self.statuses('a6'), ['created', 'running', 'aborting',
                                               'concluded', 'null'])
        self.ok('x-diskstack-inject-clear', {'node-name': 'inj'})
        self.assertEqual(self.export_node(), 'top')
        self.assertTrue(self.node('base')['ro'], 'base is read-only again')
        self.verify(self.top, self.expected_start, [
            (self.top, self.mid), (self.mid, self.base), (self.base, None)])

    def test_busy_while_ready(self):
        self.add_chain()
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'a3', 'device': 'top', 'filter-node-name': 'ctop'}), {})
        self.c.event('BLOCK_JOB_READY')
        self.assertIn('ctop', self.node_names())
        self.refused('block-stream', {'job-id': 's', 'device': 'top'},
                     "Node 'top' is busy: block device is in use by block "
                     "job: commit")
        self.reopen_refused('mid', "Cannot change frozen 'backing' link from "
                            "'mid' to 'base'")
        self.assertEqual(self.ok('job-cancel', {'id': 'a3'}), {})
        self.wait_status('a3', 'null')
        self.assertNotIn('ctop', self.node_names())
        self.assertTrue(self.node('base')['ro'])
        self.verify(self.top, self.expected_start, [
            (self.top, self.mid), (self.mid, self.base), (self.base, None)])


class ActiveCommitAsQsd(test_stream.SameAsQsd):

    test_stream_events_match_qsd = None     # test_stream.py runs that one

    def test_active_commit_events_match_qsd(self):
        got, want = self.events_of_both(job=('block-commit', {
            'job-id': 'c', 'device': 'top'}), complete=True)
        self.assertEqual(got, want)
        self.assertEqual([e[1].get('status', e[0]) for e in want], [
            'created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting',
            'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null'])


if __name__ == '__main__':
    unittest.main()
