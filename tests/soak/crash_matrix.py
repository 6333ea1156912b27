#!/usr/bin/env python3
"""Crash matrix (issue 6): SIGKILL the soak's daemon at random moments.

Each round starts soak.py's daemon and workload on fresh images (4
IOThreads; export A = a0.qcow2 over base-a.qcow2 with data, export B =
b.qcow2; verified I/O with fsync, punch hole, zero range, 4k/64k/unaligned
writes; the graph loop taking external snapshots of A, reopening A and B,
creating/deleting internal snapshots of B, querying) and SIGKILLs the
daemon after a random delay drawn from the round's seed (printed, with the
QMP command that was in flight).  Then, with the dead mounts lazily
unmounted:

  - `qemu-img check` of every image of both chains -- including an overlay
    whose snapshot command got no reply -- finds no corruption (leaked
    clusters allowed: exit 0 or 3).  An overlay the daemon was still
    creating may be unreadable (not yet a qcow2 image); the round then
    reads A through the previous top, and says so.  One exception, which
    --strict removes: a kill inside an internal snapshot command on B may
    leave OFLAG_COPIED flags out of step with the refcounts (QEMU's
    ordering leaves the same); the round accepts them only if they are
    the sole errors and `qemu-img check -r all` repairs them on a copy,
    and counts such rounds at the end;
  - each disk, read back with `qemu-img convert` through its top, holds in
    every worker's region every write the worker had fsync'd (fsync
    returned before the kill), and every other byte is either that
    fsync'd content or from a write begun since -- never anything else
    (every 512-byte sector of a write carries magic, disk, worker, sector,
    sequence number and CRC-32, so a failure says what the sector holds);
  - nothing failed before the kill (I/O errors, mismatched reads, QMP
    errors).

`--iterations 50` is the full run; CI runs 10.  `--only SEED` reruns one
round; `--kill-during COMMAND` kills 0..5 ms after the loop sends that
command (the moment is still random: rerun a few rounds to reproduce).  The last
line is `N passed, M failed`; the exit status is non-zero on any failure.
"""

import argparse
import collections
import os
import random
import shutil
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True     # keep the source tree clean
import soak                        # noqa: E402  (also puts tests/func on the path)
from soak import SoakBase, regions, run_tests, use_build
from common import force_unmount, read_file, run_qemu_img          # noqa: E402

MIN_DELAY = 0.2                  # seconds after the workload starts
MAX_DELAY = 3.0
WORKERS = 2                      # I/O threads per export
KILL_JITTER = 0.005              # --kill-during: latest kill after the send
INTERNAL = ('blockdev-snapshot-internal-sync', 'blockdev-snapshot-delete-internal-sync')


class CrashRound(SoakBase):
    """One round: run, SIGKILL, check."""

    n_workers = WORKERS
    seed = 1
    max_delay = MAX_DELAY
    kill_during = None
    strict = False
    in_flight = None             # the QMP command the kill interrupted
    copied_mismatch = 0          # OFLAG_COPIED errors allowed in this round

    @property
    def snapshot_every(self):
        """Snapshots spread over the kill window, so kills land before,
        during and after them."""
        return self.max_delay / (soak.MAX_OVERLAYS + 1)

    def describe(self):
        return 'crash round seed %d' % self.seed

    def test_round(self):
        d = self.prepare()
        self.run_logged(d, self.crash_and_check, d)

    def crash_and_check(self, d):
        delay = random.Random(self.seed).uniform(MIN_DELAY, self.max_delay)
        stop = threading.Event()
        ops = threading.Thread(target=self.run_ops, args=(stop,), daemon=True)
        for w in self.workers:
            w.start()
        ops.start()
        # The random moment is what the round tests; nothing waits on it.
        stop.wait(delay)
        if self.kill_during:
            self.wait_for_command(random.Random(-self.seed))
        self.in_flight, errors_before = self.ops.current or 'I/O only', len(self.ops.errors)
        killed_at = time.monotonic()
        d.send_signal(signal.SIGKILL)
        d.wait_exit()
        stop.set()
        for mp in ('a.img', 'b.img'):
            force_unmount(self.path(mp))       # fusermount3 -u, then -z if busy
        stuck = self.stop_workers()
        ops.join(soak.STOP_TIMEOUT)
        self.assertEqual(stuck, [], 'I/O threads still blocked after the kill')
        self.assertFalse(ops.is_alive(), 'the graph loop still blocked after the kill')
        print('  seed %d: killed after %.2fs during %s; %d fsyncs, %d overlays, %d '
              'internal snapshots, %d graph rounds'
              % (self.seed, delay, self.in_flight, sum(w.fsyncs for w in self.workers),
                 len(self.ops.images), len(self.ops.internal), self.ops.iteration),
              flush=True)
        self.check_before_kill(killed_at, errors_before)

        top_a, notes = self.check_chain_images()
        self.check_disk(1, top_a)
        self.check_disk(2, self.image_b)
        for n in notes:
            print('    ' + n)

    def wait_for_command(self, rng):
        """--kill-during: returns 0..KILL_JITTER s after the graph loop
        next sends that command (a reproducer for a failure seen there)."""
        sent = threading.Event()
        self.ops.on_send = lambda name: name == self.kill_during and sent.set()
        self.assertTrue(sent.wait(soak.STOP_TIMEOUT), 'the loop never sent '
                        + self.kill_during)
        time.sleep(rng.uniform(0, KILL_JITTER))   # the moment itself, not a wait

    def run_ops(self, stop):
        try:
            self.ops.run_until(stop, self.path('b.qcow2'))
        except (OSError, EOFError, ValueError):
            pass                     # the daemon died mid-command

    def check_before_kill(self, killed_at, errors_before):
        failed = ['%s worker %d: %s' % (w.path, w.idx, w.error) for w in self.workers
                  if w.error]
        failed += ['%s worker %d: %s' % (w.path, w.idx, w.os_error) for w in self.workers
                   if w.os_error and w.os_error_at < killed_at]
        self.assertEqual(failed, [], 'I/O failed before the kill')
        self.assertEqual(self.ops.errors[:errors_before], [],
                         'graph operations failed before the kill')

    def check_image(self, image, pending=False):
        """qemu-img check's exit status: no corruption (exit 2) ever -- but
        see copied_flags_only; leaks (3) allowed; unreadable (1) allowed
        only for a pending overlay."""
        r = run_qemu_img('check', '-f', 'qcow2', image)
        if r.returncode == 2 and self.copied_flags_only(image, r):
            return r
        ok = (0, 1, 3) if pending else (0, 3)
        self.assertIn(r.returncode, ok, 'qemu-img check %s (exit %d):\n%s' % (
            image, r.returncode, check_report(r)))
        return r

    def copied_flags_only(self, image, r):
        """True if the kill interrupted an internal snapshot command on B
        and the only errors are OFLAG_COPIED flags out of step with the
        refcounts, which `qemu-img check -r all` repairs (checked on a
        copy).  QEMU's own snapshot code writes the refcount blocks before
        the L2 tables whose COPIED flags it changes, so a crash in between
        leaves exactly this; --strict fails on it instead."""
        errors = [l for l in (r.stdout + r.stderr).decode(errors='replace').splitlines()
                  if l.startswith('ERROR')]
        if self.strict or image != self.image_b or self.in_flight not in INTERNAL or \
                not errors or not all(l.startswith('ERROR OFLAG_COPIED') for l in errors):
            return False
        copy = self.path('repaired.qcow2')
        shutil.copyfile(image, copy)
        fixed = run_qemu_img('check', '-r', 'all', '-f', 'qcow2', copy)
        after = run_qemu_img('check', '-f', 'qcow2', copy)
        os.unlink(copy)
        self.assertIn(after.returncode, (0, 3), 'qemu-img check -r all %s did not repair '
                      'the COPIED flags:\n%s\n%s' % (image, check_report(fixed),
                                                     check_report(after)))
        self.copied_mismatch = len(errors)
        return True

    def check_chain_images(self):
        """Checks A's chain, the pending overlay if any, and B; returns the
        image to read A through and notes for the round's line."""
        notes = []
        for image in [c['path'] for c in self.ops.chain] + [self.image_b]:
            rc = self.check_image(image).returncode
            if rc == 3:
                notes.append('leaks in %s' % os.path.basename(image))
            elif rc == 2:
                notes.append('%d OFLAG_COPIED errors in %s (killed inside %s), '
                             'repairable' % (self.copied_mismatch,
                                             os.path.basename(image), self.in_flight))
        top = self.ops.chain[0]['path']
        pending = self.ops.pending
        if pending and os.path.exists(pending):
            r = self.check_image(pending, pending=True)
            if r.returncode in (0, 3):
                top = pending
                notes.append('read A through %s (its snapshot got no reply)'
                             % os.path.basename(pending))
            else:
                notes.append('%s unreadable (being created at the kill): %s' % (
                    os.path.basename(pending),
                    r.stderr.decode(errors='replace').strip().splitlines()[-1:]))
        return top, notes

    def check_disk(self, disk, top):
        raw = self.path('after-%d.raw' % disk)
        r = run_qemu_img('convert', '-f', 'qcow2', '-O', 'raw', top, raw)
        self.assertEqual(r.returncode, 0, r.stderr)
        image = read_file(raw)
        os.unlink(raw)
        wrong = [w.check_crash(image) for w in self.workers if w.disk == disk]
        wrong = [e for e in wrong if e]
        if wrong:
            self.fail('disk %d read through %s after the kill:\n%s'
                      % (disk, top, '\n'.join(wrong)))
        last = regions(self.n_workers)[-1][1]
        self.assertEqual(image[last:], bytes(soak.initial_content(disk)[last:]),
                         'disk %d past the workers\' regions' % disk)


def check_report(r):
    """qemu-img check's output, its (many) 'Leaked cluster' lines counted."""
    lines = (r.stdout + r.stderr).decode(errors='replace').splitlines()
    leaks = [l for l in lines if l.startswith('Leaked cluster')]
    rest = [l for l in lines if l.strip() and not l.startswith('Leaked cluster')]
    return '\n'.join(rest + ['(%d "Leaked cluster" lines left out)' % len(leaks)])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--build', default='build', help='build directory (default build)')
    p.add_argument('--iterations', type=int, default=50, help='rounds (50)')
    p.add_argument('--seed', type=int, default=1, help='round i uses seed*1000+i')
    p.add_argument('--only', type=int, metavar='SEED',
                   help='run the one round of this seed (as printed) instead')
    p.add_argument('--kill-during', metavar='COMMAND',
                   help='kill 0..%.0f ms after the loop sends this QMP command '
                   '(first after the round\'s delay)' % (KILL_JITTER * 1000))
    p.add_argument('--strict', action='store_true',
                   help='fail on OFLAG_COPIED errors after a kill inside an internal '
                   'snapshot command too (QEMU leaves them as well)')
    p.add_argument('--max-delay', type=float, default=MAX_DELAY,
                   help='latest kill, seconds after the start (%.1f)' % MAX_DELAY)
    args = p.parse_args()
    use_build(args.build)
    if args.only is not None:
        seeds = [args.only]
    else:
        seeds = [args.seed * 1000 + i for i in range(args.iterations)]
    rounds = []
    for seed in seeds:
        t = CrashRound('test_round')
        t.seed, t.max_delay, t.kill_during = seed, args.max_delay, args.kill_during
        t.strict = args.strict
        rounds.append(t)
    print('crash matrix: %s, %d rounds, seeds %d..%d, kill %.1f..%.1fs after the start'
          % (os.environ['DISKSTACK_BIN'], len(seeds), seeds[0], seeds[-1], MIN_DELAY,
             args.max_delay), flush=True)
    return run_tests(rounds, lambda: kill_moments(rounds))


def kill_moments(rounds):
    """Where the kills landed: rounds per QMP command in flight."""
    counts = collections.Counter(t.in_flight for t in rounds if t.in_flight)
    copied = sum(1 for t in rounds if t.copied_mismatch)
    return ('killed during: %s\nrounds with repairable OFLAG_COPIED errors (kill inside '
            'an internal snapshot command): %d' % (
                ', '.join('%s %d' % kv for kv in sorted(counts.items())), copied))


if __name__ == '__main__':
    sys.exit(main())
