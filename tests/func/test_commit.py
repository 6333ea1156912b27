"""block-commit (intermediate) over the real QMP socket: mid of the chain
base <- mid <- top is committed into base while top is exported writable
through FUSE and written by threads.

After each job: the export's content equals the writers' reference,
`qemu-img compare`, `qemu-img check` clean, the promised chain in `qemu-img
info --backing-chain`, and base holds what mid showed (the commit's point)
and is read-only again.  Also pause/resume with blockdev-del of chain nodes
refused, the error policies with an inject node under mid, and argument
errors (qemu-storage-daemon 7.2's messages)."""

import unittest

from common import MiB, run_qemu_img
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
        self.inject_mid()
        self.ok('x-diskstack-inject-set', {'node-name': 'inj', 'rules': [
            {'id': 'bad', 'op': 'read'}]})
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'c3', 'device': 'top', 'top-node': 'mid',
            'on-error': 'stop'}), {})
        ev = self.c.event('BLOCK_JOB_ERROR')
        self.assertEqual(ev['data'], {'device': 'c3', 'operation': 'read',
                                      'action': 'stop'})
        self.wait_status('c3', 'paused')
        self.ok('x-diskstack-inject-clear', {'node-name': 'inj'})
        self.assertEqual(self.ok('job-resume', {'id': 'c3'}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', ev['data'])
        self.verify_commit(self.expected_start)

    def test_error_report_fails_cleanly(self):
        self.inject_mid()
        self.ok('x-diskstack-inject-set', {'node-name': 'inj', 'rules': [
            {'id': 'bad', 'op': 'read', 'offset': 2 * MiB}]})
        self.assertEqual(self.ok('block-commit', {
            'job-id': 'c4', 'device': 'top', 'top-node': 'mid'}), {})
        ev = self.c.event('BLOCK_JOB_COMPLETED')
        self.assertIn('error', ev['data'])
        self.assertEqual(self.statuses('c4'), ['created', 'running', 'aborting',
                                               'concluded', 'null'])
        self.ok('x-diskstack-inject-clear', {'node-name': 'inj'})
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
            ({'device': 'top'}, "Committing the active layer 'top' (active "
             "commit) is not supported yet", None),
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


if __name__ == '__main__':
    unittest.main()
