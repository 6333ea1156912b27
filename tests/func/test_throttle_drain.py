"""The drain test of issue 5: a graph change below a throttle node while its
queue is full completes at once and does not flush the queue.

`diskstack serve` with a throttle group of 20 IOPS (no burst), a throttle
node over a raw image and a FUSE export of it; 16 writer threads keep the
queue full; a blockdev-snapshot-sync of the node below the throttle must
answer well under a second, and the completions the writers see in the
second around it must stay within the rate (+ the bucket).  Then the same
scenario runs against qemu-storage-daemon and its figures are printed for
comparison (QEMU switches throttling off while it drains, so its queue
floods through); nothing is asserted about it.

Completions are counted on the client side per 100 ms window.  Waiting is
on events: the writers signal a condition on every completion.
"""

import os
import shutil
import subprocess
import sys
import threading
import time

from common import MiB, FuseTestCase, is_mounted, wait_for
from qmp import QmpClient
from test_qmp import QmpHelpers

IOPS = 20
WRITERS = 16
SIZE = 16 * MiB
# The bucket of a limit without burst holds avg/10 ops, so avg/10 + 1
# requests may go back to back after an idle stretch.
BUCKET = IOPS // 10 + 1


class Writers:
    """WRITERS threads doing 4k writes at distinct offsets of a file until
    stopped; every completion is timestamped and signalled."""

    def __init__(self, path):
        self.path = path
        self.times = []
        self.errors = []
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(WRITERS)]

    def start(self):
        for t in self.threads:
            t.start()

    def _run(self, idx):
        buf = bytes([idx + 1]) * 4096
        n = 0
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError as e:
            with self.cond:
                self.errors.append(e)
                self.cond.notify_all()
            return
        try:
            while not self.stopping.is_set():
                off = (idx * 64 + n % 64) * 4096
                os.pwrite(fd, buf, off)
                n += 1
                with self.cond:
                    self.times.append(time.monotonic())
                    self.cond.notify_all()
        except OSError as e:
            if not self.stopping.is_set():
                with self.cond:
                    self.errors.append(e)
                    self.cond.notify_all()
        finally:
            os.close(fd)

    def wait_completions(self, n, timeout=15.0):
        """Waits until n writes have completed (the queue is then full: each
        writer has had a write answered and sent the next)."""
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.times) >= n or self.errors,
                                    timeout)
        if self.errors:
            raise AssertionError('writer failed: %r' % self.errors[0])
        if not ok:
            raise AssertionError('only %d writes completed' % len(self.times))

    def stop(self, timeout=15.0):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self.threads)

    def counts(self, start, end, step=0.1):
        """Completions per window of `step` seconds in [start, end)."""
        with self.cond:
            times = list(self.times)
        n = int(round((end - start) / step))
        out = [0] * n
        for t in times:
            if start <= t < end:
                out[min(int((t - start) / step), n - 1)] += 1
        return out


def run_scenario(test, qmp_path, mountpoint, img, overlay):
    """Builds the graph over QMP (the same commands for both daemons), runs
    the writers and the snapshot; returns (snapshot seconds, per-100ms
    completions over the 2 s around it, completions in the 1 s around it)."""
    c = QmpClient(qmp_path).negotiate()
    r = c.cmd('object-add', {'qom-type': 'throttle-group', 'id': 'g',
                             'limits': {'iops-total': IOPS}})
    test.assertEqual(r, {'return': {}}, r)
    for args in ({'driver': 'file', 'node-name': 'f0', 'filename': img},
                 {'driver': 'raw', 'node-name': 'disk', 'file': 'f0'},
                 {'driver': 'throttle', 'node-name': 'thr', 'throttle-group': 'g',
                  'file': 'disk'}):
        r = c.cmd('blockdev-add', args)
        test.assertEqual(r, {'return': {}}, r)
    open(mountpoint, 'w').close()
    r = c.cmd('block-export-add', {'type': 'fuse', 'id': 'e0', 'node-name': 'thr',
                                   'mountpoint': mountpoint, 'writable': True})
    test.assertEqual(r, {'return': {}}, r)
    wait_for(lambda: is_mounted(mountpoint), lambda: 'export not mounted')

    w = Writers(mountpoint)
    w.start()
    try:
        # two seconds of steady state: every writer has a request queued
        w.wait_completions(2 * IOPS + BUCKET)
        t0 = time.monotonic()
        r = c.cmd('blockdev-snapshot-sync', {'node-name': 'disk',
                                             'snapshot-file': overlay,
                                             'snapshot-node-name': 'over',
                                             'format': 'qcow2'})
        t1 = time.monotonic()
        test.assertEqual(r, {'return': {}}, r)
        mid = (t0 + t1) / 2
        # one second after the snapshot, for the windows after it
        w.wait_completions(len(w.times) + IOPS)
        windows = w.counts(mid - 1.0, mid + 1.0)
        second = sum(w.counts(mid - 0.5, mid + 0.5))
    finally:
        # let the queue go so that the writers can stop quickly
        c.cmd('qom-set', {'path': 'g', 'property': 'limits', 'value': {'iops-total': 0}})
        stopped = w.stop()
    test.assertTrue(stopped, 'writers did not stop')
    r = c.cmd('block-export-del', {'id': 'e0'})
    test.assertEqual(r, {'return': {}}, r)
    wait_for(lambda: not is_mounted(mountpoint), lambda: 'export still mounted')
    c.cmd('quit')
    c.close()
    return t1 - t0, windows, second


class ThrottleDrain(QmpHelpers, FuseTestCase):

    def test_snapshot_below_throttle_keeps_the_limit(self):
        d = self.start()
        img = self.image(size=SIZE)
        took, windows, second = run_scenario(self, self.sock, self.path('e.img'),
                                             img, self.path('over.qcow2'))
        print('\ndiskstack: snapshot %.0f ms; completions per 100 ms around it: %s; '
              'in the second around it: %d' % (took * 1000, windows, second),
              file=sys.stderr)
        self.assertEqual(d.wait_exit(), 0, d.describe())
        self.assertLess(took, 0.25, 'blockdev-snapshot-sync waited for the queue')
        self.assertLessEqual(second, IOPS + BUCKET,
                             'limit exceeded around the snapshot: %s' % windows)
        self.assertLessEqual(max(windows), BUCKET + 1,
                             'a burst through the throttle: %s' % windows)

    def test_same_scenario_on_qemu_storage_daemon(self):
        """For comparison only: prints qsd's figures, asserts nothing about
        them (QEMU flushes the throttle queue while draining)."""
        if not shutil.which('qemu-storage-daemon'):
            self.skipTest('no qemu-storage-daemon')
        sock = self.path('qsd.sock')
        q = subprocess.Popen(['qemu-storage-daemon', '--chardev',
                              'socket,path=%s,server=on,wait=off,id=m' % sock,
                              '--monitor', 'chardev=m,mode=control'],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        mp = self.path('q.img')
        try:
            wait_for(lambda: os.path.exists(sock) or q.poll() is not None,
                     lambda: 'no qsd socket')
            self.assertIsNone(q.poll(), 'qemu-storage-daemon exited')
            img = self.image(size=SIZE)
            took, windows, second = run_scenario(self, sock, mp, img,
                                                 self.path('over.qcow2'))
            print('\nqemu-storage-daemon: snapshot %.0f ms; completions per 100 ms '
                  'around it: %s; in the second around it: %d (limit %d)'
                  % (took * 1000, windows, second, IOPS), file=sys.stderr)
            q.wait(15)
        finally:
            if q.poll() is None:
                q.kill()
                q.wait()
            if is_mounted(mp):
                subprocess.run(['fusermount3', '-u', '-z', mp],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
