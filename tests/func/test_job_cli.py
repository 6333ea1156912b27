"""The block-job client verbs against a real daemon: `diskstack stream`,
`commit`, `mirror` (foreground and --detach), `jobs`, `job pause|resume|
cancel|wait`, with the top of base <- mid <- top exported writable through
FUSE (JobCase of test_stream.py).

Output modes: plain lines per state change (a pipe), one JSON event per
line (--json), and on a terminal (a pty) the progress bar and the Ctrl-C
question.  Exit status: 0 completed, 1 failed/cancelled, 2 usage.  Slow
jobs (--speed) only make room for pause/cancel; every wait is on an event,
a job status or a line of output, never on time."""

import json
import os
import pty
import select
import signal
import subprocess
import threading
import time

from common import (diskstack_bin, nonempty_lines, random_io_workers, read_file,
                    run_diskstack, wait_for)
from test_stream import SIZE, SLOW, JobCase

CRAWL = '1M'            # --speed: 8 MiB last long enough to pause/cancel
OUTPUT_TIMEOUT = 15.0


class JobCli(JobCase):

    def cli(self, *args):
        return run_diskstack(['--socket', self.sock] + list(args))

    def cli_ok(self, *args):
        r = self.cli(*args)
        self.assertEqual(r.returncode, 0, '%s: %s' % (args, r.stderr.decode()))
        return r.stdout.decode()

    def cli_fails(self, code, *args):
        r = self.cli(*args)
        self.assertEqual(r.returncode, code, '%s: %r' % (args, r.stdout + r.stderr))
        return self.assertOneLineError(r, ' '.join(args)) if code == 1 else r

    def popen(self, *args):
        p = subprocess.Popen([diskstack_bin(), '--socket', self.sock] + list(args),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        return p

    def job_row(self, job):
        rows = [l.split() for l in nonempty_lines(self.cli_ok('jobs'))]
        self.assertEqual(rows[0][:3], ['ID', 'TYPE', 'STATUS'])
        return [r for r in rows[1:] if r[0] == job]

    def chain_unchanged(self):
        self.verify(self.top, self.expected_start,
                    [(self.top, self.mid), (self.mid, self.base), (self.base, None)])

    def test_foreground_stream_under_writes(self):
        """The verb in the foreground while threads write the export."""
        self.add_chain()
        reference = bytearray(read_file(self.mp))
        errors, done, rounds = [], threading.Event(), []

        def write_until_done():
            while not done.is_set() and not errors:
                rounds.append(1)
                errors.extend(random_io_workers(self.mp, reference, 2, 20,
                                                seed=len(rounds), max_size=256 * 1024))

        t = threading.Thread(target=write_until_done)
        t.start()
        try:
            r = self.cli('stream', 'top', '--base', 'base', '--speed', str(SLOW))
        finally:
            done.set()
            t.join()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(nonempty_lines(r.stdout)[-1], 'job top: concluded (completed)')
        self.assertEqual(errors, [])
        self.assertGreater(len(rounds), 1, 'the writers raced the job')
        self.verify(self.top, bytes(reference), [(self.top, self.base), (self.base, None)])

    def test_active_commit_complete(self):
        """commit NODE --complete: an active commit that pivots the export
        to the base once it is in sync."""
        self.add_chain()
        reference = bytes(read_file(self.mp))
        r = self.cli('commit', 'top', '--base', 'base', '--job-id', 'a0',
                     '--complete')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(nonempty_lines(r.stdout),
                         ['job a0: created', 'job a0: running', 'job a0: ready',
                          'job a0: waiting', 'job a0: pending',
                          'job a0: concluded (completed)'])
        self.assertEqual(read_file(self.mp), reference)
        self.verify(self.base, reference, [(self.base, None)])

    def test_detach_jobs_pause_resume_wait(self):
        self.add_chain()
        self.assertEqual(self.cli_ok('stream', 'top', '--base', 'base', '--speed',
                                     CRAWL, '--job-id', 's0', '--detach'), 's0\n')
        row = self.job_row('s0')[0]
        self.assertEqual(row[1], 'stream')
        self.assertIn(row[2], ('created', 'running'))
        self.assertTrue(row[3].endswith('%'), row)
        self.cli_ok('job', 'pause', 's0')
        self.wait_status('s0', 'paused')
        self.assertEqual(self.job_row('s0')[0][2], 'paused')
        self.cli_ok('job', 'resume', 's0')
        self.wait_status('s0', 'running')
        waiter = self.popen('job', 'wait', 's0')
        self.assertEqual(waiter.stdout.readline().decode(), 'job s0: running\n')
        self.ok('block-job-set-speed', {'device': 's0', 'speed': 0})
        out, err = waiter.communicate(timeout=OUTPUT_TIMEOUT)
        self.assertEqual(waiter.returncode, 0, err)
        self.assertEqual(['job s0: running'] + nonempty_lines(out),
                         ['job s0: running', 'job s0: waiting', 'job s0: pending',
                          'job s0: concluded (completed)'])
        self.assertEqual(self.job_row('s0'), [])
        self.verify(self.top, self.expected_start,
                    [(self.top, self.base), (self.base, None)])

    def test_foreground_lines_and_json(self):
        self.add_chain()
        r = self.cli('commit', 'top', '--top', 'mid', '--base', 'base',
                     '--job-id', 'c0')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(nonempty_lines(r.stdout),
                         ['job c0: created', 'job c0: running', 'job c0: waiting',
                          'job c0: pending', 'job c0: concluded (completed)'])
        out = self.cli_ok('stream', 'top', '--json')
        events = [json.loads(l) for l in nonempty_lines(out)]
        for e in events:
            ids = (e['data'].get('id'), e['data'].get('device'))
            self.assertIn('top', ids, e)
        names = [e['event'] for e in events]
        self.assertIn('BLOCK_JOB_COMPLETED', names)
        self.assertEqual([e['data']['status'] for e in events
                          if e['event'] == 'JOB_STATUS_CHANGE'][-2:],
                         ['concluded', 'null'])
        self.verify(self.top, self.expected_start, [(self.top, None)])

    def test_cancel_makes_the_waiter_fail(self):
        self.add_chain()
        self.cli_ok('stream', 'top', '--speed', CRAWL, '--job-id', 's1', '--detach')
        waiter = self.popen('job', 'wait', 's1')
        self.assertEqual(waiter.stdout.readline().decode(), 'job s1: running\n')
        self.cli_ok('job', 'cancel', 's1')
        out, err = waiter.communicate(timeout=OUTPUT_TIMEOUT)
        self.assertEqual(waiter.returncode, 1)
        self.assertEqual(nonempty_lines(out)[-1], 'job s1: concluded (cancelled)')
        self.assertEqual(nonempty_lines(err), ["diskstack: job 's1' was cancelled"])
        self.chain_unchanged()

    def test_sigint_without_terminal_cancels(self):
        self.add_chain()
        p = self.popen('stream', 'top', '--speed', CRAWL, '--job-id', 's2')
        self.assertEqual(p.stdout.readline().decode(), 'job s2: created\n')
        self.assertEqual(p.stdout.readline().decode(), 'job s2: running\n')
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=OUTPUT_TIMEOUT)
        self.assertEqual(p.returncode, 1, err)
        self.assertEqual(nonempty_lines(out)[-1], 'job s2: concluded (cancelled)')
        self.chain_unchanged()

    def test_terminal_bar_and_ctrl_c(self):
        self.add_chain()
        term = Pty([diskstack_bin(), '--socket', self.sock, 'stream', 'top',
                    '--speed', CRAWL, '--job-id', 's3'])
        self.addCleanup(term.close)
        bar = term.read_until(lambda o: o.count(b'\r') >= 2 and b'ETA' in o
                              and b'%' in o and b'running' in o)
        self.assertRegex(bar.decode(), r'\[[#.]+\] +\d+%  [\d.]+ \S*B/8\.0 MiB')
        term.write(b'\x03')
        term.read_until(lambda o: b'Cancel job s3? [y/N]' in o)
        term.write(b'n\n')
        # still following: the bar comes back, the job runs
        term.read_until(lambda o: o.rsplit(b'[y/N]', 1)[-1].count(b'ETA') >= 2)
        self.assertEqual(self.ok('query-jobs')[0]['status'], 'running')
        term.write(b'\x03')
        term.read_until(lambda o: o.count(b'[y/N]') == 2)
        term.write(b'y\n')
        out = term.read_until(lambda o: b"was cancelled" in o)
        self.assertIn(b'cancelled', out)
        self.assertEqual(term.wait(), 1)
        self.chain_unchanged()

    def test_mirror_complete_pivots(self):
        self.add_chain()
        target = self.path('copy.qcow2')
        r = self.cli('mirror', 'top', target, '-f', 'qcow2', '--complete')
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = nonempty_lines(r.stdout)
        self.assertIn('job top: ready', lines)
        self.assertEqual(lines[-1], 'job top: concluded (completed)')
        exp = self.ok('query-block-exports')[0]
        node = [n for n in self.ok('query-named-block-nodes')
                if n['node-name'] == exp['node-name']][0]
        self.assertEqual(node['file'], target)
        self.verify(target, self.expected_start, [(target, None)])

    def test_mirror_to_node_write_blocking_json(self):
        self.add_chain()
        target = self.qcow2('tgt.qcow2', SIZE)
        self.add_disk('tgt', target, backing=None)
        self.assertIn("'tgt' is a node",
                      self.cli_fails(1, 'mirror', 'top', 'tgt', '-f', 'qcow2'))
        out = self.cli_ok('mirror', 'top', 'tgt', '--write-blocking', '--complete',
                          '--json', '--job-id', 'm1')
        names = [json.loads(l)['event'] for l in nonempty_lines(out)]
        self.assertLess(names.index('BLOCK_JOB_READY'),
                        names.index('BLOCK_JOB_COMPLETED'))
        self.assertEqual(self.ok('query-block-exports')[0]['node-name'], 'tgt')
        self.verify(target, self.expected_start, [(target, None)])

    def test_quit_cancels_running_and_paused_jobs(self):
        """quit (SIGTERM takes the same path) with a mirror whose target
        write is in flight (held 300 ms by an inject filter) and a paused
        stream: both jobs are cancelled and drained before the nodes
        close, so the target's metadata is written back after its last
        write (check clean, no leaks) and the streamed chain is
        unchanged."""
        self.add_chain()
        target = self.qcow2('tgt.qcow2', SIZE)
        self.ok('blockdev-add', {
            'driver': 'qcow2', 'node-name': 'tgt', 'backing': None,
            'file': {'driver': 'inject', 'node-name': 'inj', 'rules': [
                {'id': 'slow', 'op': 'write', 'action': 'delay',
                 'delay-ms': 300}],
                     'file': {'driver': 'file', 'node-name': 'tgt-f',
                              'filename': target}}})
        self.ok('blockdev-mirror', {'job-id': 'm2', 'device': 'top',
                                    'target': 'tgt', 'sync': 'full'})
        other = self.qcow2('other.qcow2', SIZE, backing=self.base)
        self.qemu_io(other, 'write -P 0x44 2M 1M')
        self.add_named('other', other, 'base')
        self.cli_ok('stream', 'other', '--speed', CRAWL, '--job-id', 's4',
                    '--detach')
        self.cli_ok('job', 'pause', 's4')
        self.wait_status('s4', 'paused')
        wait_for(lambda: self.ok('x-diskstack-inject-query',
                                 {'node-name': 'inj'})[0]['matched'] > 0,
                 'a target write in flight')
        self.assertEqual(sorted(j['id'] for j in self.ok('query-jobs')),
                         ['m2', 's4'])
        self.quit()
        for img in (target, other, self.top):
            self.check_clean(img)
        self.assertEqual(self.backing_chain(other),
                         [(other, self.base), (self.base, None)])
        self.assertEqual(self.raw_of(self.top), self.expected_start)

    def test_errors(self):
        self.add_chain()
        lines = nonempty_lines(self.cli_ok('jobs'))
        self.assertEqual([l.split() for l in lines],
                         [['ID', 'TYPE', 'STATUS', 'DONE', 'BYTES', 'SPEED']])
        self.assertEqual(self.cli_ok('jobs', '--json').strip(), '[]')
        self.assertIn("no job 'nope'", self.cli_fails(1, 'job', 'wait', 'nope'))
        self.cli_fails(1, 'job', 'pause', 'nope')
        self.cli_fails(1, 'job', 'cancel', 'nope')
        self.assertIn("'nope'", self.cli_fails(1, 'stream', 'nope'))
        for args in (['job'], ['job', 'frob', 'x'], ['job', 'pause'],
                     ['job', 'pause', 'a', 'b'], ['stream'],
                     ['stream', 'top', '--sync', 'full'],
                     ['stream', 'top', '--speed', 'fast'],
                     ['mirror', 'top'],
                     ['mirror', 'top', self.path('x.qcow2'), '--sync', 'most'],
                     ['commit', 'top', '--complete', '--detach'], ['jobs', 'extra'],
                     ['mirror', 'top', self.path('x.qcow2'), '--complete',
                      '--detach']):
            r = self.cli_fails(2, *args)
            self.assertIn(b'Try', r.stderr, args)
        self.assertEqual(self.ok('query-jobs'), [])


class Pty:
    """A command on a pseudo-terminal: what it printed, keys typed."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(argv[0], argv)
        self.out = b''
        self.status = None

    def read_until(self, pred, timeout=OUTPUT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not pred(self.out):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError('no such output; got %r' % self.out[-800:])
            if select.select([self.fd], [], [], left)[0]:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:       # EIO: the child is gone
                    data = b''
                if not data:
                    raise AssertionError('output ended; got %r' % self.out[-800:])
                self.out += data
        return self.out

    def write(self, data):
        os.write(self.fd, data)

    def wait(self):
        _, st = os.waitpid(self.pid, 0)
        self.status = os.waitstatus_to_exitcode(st)
        return self.status

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                self.wait()
            except ProcessLookupError:
                pass
        os.close(self.fd)
