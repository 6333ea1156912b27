#!/usr/bin/env python3
"""Bounded soak of `diskstack serve` under load (issue 6, "Soak and leak
checks"); tests/soak/README.md says how to run it.  Not part of the default
test run (tests/func/run.py does not look here).

The daemon is test_stress.py's: 4 IOThreads, export A (a0.qcow2 over
base-a.qcow2, whose first half holds data) on io0+io1 and export B (b.qcow2)
on io2+io3, both multiqueue FUSE exports.  For --seconds (default 600):

  - WORKERS python threads per export do verified I/O, each in a region of
    the disk it alone touches (so every read must be exact): 4 KiB and
    64 KiB aligned writes, unaligned writes (any offset, 1 B..20 KiB),
    reads checked against the thread's reference, FALLOC_FL_PUNCH_HOLE and
    FALLOC_FL_ZERO_RANGE, fsync;
  - meanwhile a loop of graph operations over QMP (SoakOps): external
    snapshots of A (blockdev-snapshot-sync, and blockdev-add +
    blockdev-snapshot, alternately; during the first third only, at most
    MAX_OVERLAYS, so the chain stops growing before RSS is judged),
    blockdev-reopen of A's top (same backing / an identical-content node),
    blockdev-reopen of B toggling detect-zeroes and cache.direct, internal
    snapshots of B (B is never an overlay target; up to 3 live, oldest
    deleted), query-* calls, and the mirror/commit hook (issue 7: a no-op
    until the jobs land, see SoakOps.mirror_commit_cycle);
  - VmRSS of the daemon is sampled every seconds/100 (>= 1 s).

At the end: every byte read through both mounts equals the reference, the
daemon quits cleanly on QMP `quit`, `qemu-img check` is clean on every
image, `qemu-img compare` of each top against a raw reference finds no
difference, and RSS is flat after warm-up: the curve is printed, and the
largest sample of the last third may exceed the largest of the second
third by at most max(RSS_SLACK_MIB, RSS_SLACK_PCT %) -- the one threshold
of the soak.  With --leak-check (an ASan build: build-soak-asan) the
daemon runs with ASAN_OPTIONS=detect_leaks=1 and the soak fails if
LeakSanitizer, AddressSanitizer or UBSan wrote anything; the RSS curve is
printed but not judged (ASan's quarantine grows by design).

The last line is `N passed, M failed`; the exit status is non-zero on any
failure.  crash_matrix.py reuses the workload to SIGKILL the daemon.
"""

import argparse
import collections
import os
import random
import struct
import sys
import threading
import time
import unittest
import zlib
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'func'))
sys.dont_write_bytecode = True     # keep the source tree clean

from common import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,   # noqa: E402
                    FALLOC_FL_ZERO_RANGE, MiB, diskstack_bin, fallocate,
                    first_difference, pread_all, pwrite_all, read_file,
                    run_qemu_img)
from test_qmp_diff import QmpConn                                # noqa: E402
from test_stress import DISK_SIZE, GraphLoop, Stress             # noqa: E402

SECTOR = 512
WORKERS = 3                      # I/O threads per export
MAX_OVERLAYS = 8                 # external snapshots of A at most
LIVE_INTERNAL = 3                # internal snapshots of B kept at once
RSS_SLACK_MIB = 8                # RSS threshold: see the module docstring
RSS_SLACK_PCT = 10
STOP_TIMEOUT = 30.0              # seconds for the I/O threads to stop

# Every 512-byte sector a write produces: magic, disk, worker, sector
# number, write sequence number, CRC-32 of the rest, then filler.  A sector
# wholly from one write is self-describing; a torn or misplaced one is not.
MAGIC = b'DSSOAK01'
HEADER = struct.Struct('<8sIIQQ')
CRC = struct.Struct('<I')
BODY = SECTOR - HEADER.size - CRC.size


def sector_bytes(disk, worker, sector, seq):
    head = HEADER.pack(MAGIC, disk, worker, sector, seq)
    fill = struct.pack('<Q', (seq * 0x9E3779B97F4A7C15 ^ sector) & (2 ** 64 - 1))
    body = (fill * (BODY // 8 + 1))[:BODY]
    return head + CRC.pack(zlib.crc32(head + body)) + body


def pattern(disk, worker, seq, offset, length):
    """The bytes write number `seq` of `worker` puts at [offset, +length)."""
    first, last = offset // SECTOR, (offset + length - 1) // SECTOR
    data = b''.join(sector_bytes(disk, worker, s, seq) for s in range(first, last + 1))
    skip = offset - first * SECTOR
    return data[skip:skip + length]


def describe_sector(data, sector):
    """What a sector read back is: zeros, a whole write, or garbage."""
    if data == bytes(SECTOR):
        return 'zeros'
    magic, disk, worker, num, seq = HEADER.unpack_from(data)
    body = data[HEADER.size + CRC.size:]
    if magic == MAGIC and num == sector and \
            CRC.unpack_from(data, HEADER.size)[0] == zlib.crc32(data[:HEADER.size] + body):
        return 'write %d of disk %d worker %d' % (seq, disk, worker)
    return 'not one whole write (mixed, torn, misplaced or garbage): %r...' % bytes(data[:24])


def initial_content(disk):
    """What a disk holds before the soak: A's base has data in every other
    MiB of its first half (so reads through the backing chain matter)."""
    content = bytearray(DISK_SIZE)
    if disk == 1:
        for off in range(0, DISK_SIZE // 2, 2 * MiB):
            content[off:off + MiB] = pattern(disk, 99, 0, off, MiB)
    return content


class Worker(threading.Thread):
    """Verified I/O in [lo, hi) of one export, touched by nobody else.

    `ref` is what the region holds.  For crash_matrix.py it also keeps what
    survives a crash: `durable` is the region as of the last fsync that
    returned, `pending` every (offset, bytes) written since that fsync
    began, including a request in flight (recorded before it is sent)."""

    OPS = (('write4k', 30), ('write64k', 12), ('unaligned', 15), ('read', 25),
           ('punch', 5), ('zero', 5), ('fsync', 8))

    def __init__(self, path, disk, idx, lo, hi, initial, seed):
        super().__init__(daemon=True)
        self.path, self.disk, self.idx, self.lo, self.hi = path, disk, idx, lo, hi
        self.rng = random.Random(seed)
        self.ref = bytearray(initial[lo:hi])
        self.durable = bytearray(self.ref)
        self.pending = []
        self.seq = 0
        self.stop = threading.Event()
        self.counts = {name: 0 for name, _ in self.OPS}
        self.fsyncs = 0
        self.error = None            # a verification failure
        self.os_error = None         # the I/O error that ended the thread
        self.os_error_at = None      # and when (time.monotonic())
        self.names, self.weights = zip(*self.OPS)

    def run(self):
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as e:
            self.os_error, self.os_error_at = e, time.monotonic()
            return
        try:
            while not self.stop.is_set() and self.error is None:
                op = self.rng.choices(self.names, self.weights)[0]
                getattr(self, 'do_' + op)(fd)
                self.counts[op] += 1
        except OSError as e:
            self.os_error, self.os_error_at = e, time.monotonic()
        finally:
            try:
                os.close(fd)
            except OSError:
                pass                 # the daemon is gone (crash_matrix.py)

    def span(self, align, max_len):
        """A random (offset, length) inside the region."""
        if align:
            length = align * self.rng.randint(1, max(1, max_len // align))
            off = self.lo + align * self.rng.randrange((self.hi - self.lo - length) // align + 1)
        else:
            length = self.rng.randint(1, max_len)
            off = self.lo + self.rng.randrange(self.hi - self.lo - length + 1)
        return off, length

    def apply(self, off, data):
        self.ref[off - self.lo:off - self.lo + len(data)] = data

    def write(self, fd, off, length):
        self.seq += 1
        data = pattern(self.disk, self.idx, self.seq, off, length)
        self.pending.append((off, data))
        pwrite_all(fd, data, off)
        self.apply(off, data)

    def do_write4k(self, fd):
        self.write(fd, *self.span(4096, 4096))

    def do_write64k(self, fd):
        self.write(fd, *self.span(65536, 65536))

    def do_unaligned(self, fd):
        self.write(fd, *self.span(0, 20480))

    def do_read(self, fd):
        off, length = self.span(0, 65536)
        got = pread_all(fd, length, off)
        want = bytes(self.ref[off - self.lo:off - self.lo + length])
        diff = first_difference(got, want)
        if diff:
            self.error = 'disk %d worker %d: read %d@%d: %s' % (
                self.disk, self.idx, length, off, diff)

    def zero(self, fd, mode):
        off, length = self.span(4096 if self.rng.random() < 0.7 else 0, 256 * 1024)
        self.pending.append((off, bytes(length)))
        fallocate(fd, mode | FALLOC_FL_KEEP_SIZE, off, length)
        self.apply(off, bytes(length))

    def do_punch(self, fd):
        self.zero(fd, FALLOC_FL_PUNCH_HOLE)

    def do_zero(self, fd):
        self.zero(fd, FALLOC_FL_ZERO_RANGE)

    def do_fsync(self, fd):
        started = len(self.pending)
        os.fsync(fd)
        for off, data in self.pending[:started]:
            self.durable[off - self.lo:off - self.lo + len(data)] = data
        del self.pending[:started]
        self.fsyncs += 1

    def check_crash(self, image):
        """None if `image` (the whole disk, read after a crash) holds, in
        this region, every fsync'd write, and every other byte from either
        the durable content or a write begun since; else what is wrong."""
        got = image[self.lo:self.hi]
        for s in range(0, self.hi - self.lo, SECTOR):
            if got[s:s + SECTOR] == self.durable[s:s + SECTOR]:
                continue
            bad = self.bad_byte(got, s)
            if bad is not None:
                sector = (self.lo + s) // SECTOR
                return ('disk %d worker %d: byte %d (sector %d) is neither the fsync\'d '
                        'content nor from a write since: sector holds %s, fsync\'d '
                        'content %s' % (self.disk, self.idx, self.lo + bad, sector,
                                        describe_sector(got[s:s + SECTOR], sector),
                                        describe_sector(self.durable[s:s + SECTOR], sector)))
        return None

    def bad_byte(self, got, s):
        """The first disk offset in the sector at region offset s whose byte
        comes from no allowed source, or None."""
        writes = [(off - self.lo, data) for off, data in self.pending
                  if off - self.lo < s + SECTOR and off - self.lo + len(data) > s]
        for i in range(s, min(s + SECTOR, len(got))):
            if got[i] == self.durable[i]:
                continue
            if not any(w <= i < w + len(d) and d[i - w] == got[i] for w, d in writes):
                return i
        return None


def regions(workers):
    """[(lo, hi)] of `workers` disjoint 64 KiB-aligned regions of a disk."""
    size = DISK_SIZE // workers // 65536 * 65536
    return [(i * size, (i + 1) * size) for i in range(workers)]


def disk_reference(initial, workers):
    ref = bytearray(initial)
    for w in workers:
        ref[w.lo:w.hi] = w.ref
    return ref


class NoGenerations:
    """GraphLoop records test_stress's per-block generations at each
    snapshot; the soak keeps its references in the workers instead."""
    done = started = array('q')


class SoakOps(GraphLoop):
    """The loop of graph operations, over QMP: test_stress's GraphLoop
    (its error bookkeeping and A's snapshot/reopen steps) plus the soak's
    own steps.  `current` names the command in flight (crash_matrix.py
    prints it at the kill); `pending` is an overlay that may or may not
    have become A's top when a snapshot command did not reply."""

    JOB_COMMANDS = ('block-commit', 'blockdev-mirror', 'job-complete')

    def __init__(self, qmp, directory, chain, top_file, snapshot_every):
        super().__init__(qmp, directory, chain, top_file, NoGenerations())
        self.snapshot_every = snapshot_every      # seconds; 0: every 4th round
        self.snapshot_until = None                # monotonic time, or None
        self.last_snapshot = 0.0
        self.internal = []                        # B's live internal snapshots
        self.detect_zeroes = ('on', 'unmap', 'off')
        self.current = None
        self.pending = None
        self.on_send = None                       # called with a command's name
        self.notes = set()
        self.counts = collections.Counter(self.counts)     # any command

    def cmd(self, name, args):
        self.current = name
        if self.on_send:
            self.on_send(name)
        try:
            return super().cmd(name, args)
        finally:
            self.current = None

    def external_snapshot(self):
        self.pending = os.path.join(self.dir, 'a-snap%d.qcow2' % len(self.images))
        super().external_snapshot()
        self.pending = None

    def blockdev_snapshot(self):
        """The two-step external snapshot: an overlay made by qemu-img (-u:
        the daemon holds the top's lock), blockdev-add, blockdev-snapshot."""
        name = 'a-snap%d' % len(self.images)
        path = os.path.join(self.dir, name + '.qcow2')
        r = run_qemu_img('create', '-q', '-f', 'qcow2', '-u', '-b', self.chain[0]['path'],
                         '-F', 'qcow2', path, str(DISK_SIZE))
        if r.returncode != 0:
            self.errors.append('qemu-img create %s: %s' % (path, r.stderr))
            return
        if not self.cmd('blockdev-add', {'driver': 'qcow2', 'node-name': name,
                                         'backing': None,
                                         'file': {'driver': 'file', 'filename': path}}):
            return
        self.pending = path
        if self.cmd('blockdev-snapshot', {'node': self.chain[0]['node'], 'overlay': name}):
            self.images.append(path)
            self.chain.insert(0, {'node': name, 'path': path, 'owned': False})
            self.top_file = self.file_node_of(path)
        else:
            self.cmd('blockdev-del', {'node-name': name})
        self.pending = None

    def snapshot_due(self):
        if len(self.images) >= MAX_OVERLAYS and not self.has_jobs():
            return False
        if self.snapshot_until is not None and time.monotonic() > self.snapshot_until:
            return False
        if self.snapshot_every:
            return time.monotonic() - self.last_snapshot >= self.snapshot_every
        return self.iteration % 4 == 0

    def snapshot(self):
        self.last_snapshot = time.monotonic()
        if len(self.images) % 2 == 0:
            self.step(self.external_snapshot)
        else:
            self.step(self.blockdev_snapshot)

    def reopen_b(self):
        """blockdev-reopen of B: detect-zeroes cycles on/unmap/off, and
        every other time the file's cache.direct flips."""
        i = self.iteration
        self.cmd('blockdev-reopen', {'options': [{
            'driver': 'qcow2', 'node-name': 'b', 'file': 'b-file',
            'detect-zeroes': self.detect_zeroes[i % 3]}]})
        if i % 2:
            self.cmd('blockdev-reopen', {'options': [{
                'driver': 'file', 'node-name': 'b-file', 'filename': self.b_path,
                'cache': {'direct': i % 4 == 1}}]})

    def internal_snapshot_b(self):
        """An internal snapshot of B; the oldest deleted past LIVE_INTERNAL."""
        name = 'soak%d' % self.iteration
        if self.cmd('blockdev-snapshot-internal-sync', {'device': 'b', 'name': name}):
            self.internal.append(name)
        if len(self.internal) > LIVE_INTERNAL:
            self.cmd('blockdev-snapshot-delete-internal-sync',
                     {'device': 'b', 'name': self.internal.pop(0)})

    def queries(self):
        for q in ('query-named-block-nodes', 'query-block-exports', 'query-iothreads',
                  'query-block-jobs'):
            if q in self.have:
                self.cmd(q, None)

    def has_jobs(self):
        return all(c in self.have for c in self.JOB_COMMANDS)

    # ------------------------------------------------------------------
    # ISSUE 7 HOOK: mirror/commit cycle.  Not written yet: the jobs issue
    # adds block-commit, blockdev-mirror and job-*.  Once it lands, this
    # step should (1) active-commit A's top overlay into its backing
    # (block-commit, wait BLOCK_JOB_READY, job-complete, drop the overlay
    # from self.chain: that also bounds the chain, so snapshot_due() keeps
    # taking snapshots all the soak long), and (2) mirror B to a fresh
    # qcow2 and pivot (blockdev-mirror sync=full, job-complete), then
    # mirror back or keep the new image as B's node for the final checks.
    # Until then it only notes that it was skipped (printed at the end).
    # ------------------------------------------------------------------
    def mirror_commit_cycle(self):
        if not self.has_jobs():
            self.notes.add('mirror/commit cycle skipped: the daemon has no %s yet '
                           '(issue 7 hook)' % '/'.join(self.JOB_COMMANDS))
            return
        self.notes.add('mirror/commit commands exist now but the soak hook is not '
                       'written: see SoakOps.mirror_commit_cycle')

    def run_until(self, stop, b_path):
        """Runs rounds of every step until `stop` is set."""
        self.b_path = b_path
        self.have = {c['name'] for c in self.qmp.cmd('query-commands')['return']}
        self.missing = set(self.LOOP_COMMANDS) - self.have
        while not stop.is_set():
            if self.snapshot_due():
                self.snapshot()
            if self.top_file and self.iteration % 4 == 2:
                self.step(self.reopen_to_identical_node)
            elif self.top_file:
                self.step(self.reopen_top, self.chain[1]['node'])
            self.step(self.reopen_b)
            self.step(self.internal_snapshot_b)
            self.step(self.queries)
            self.mirror_commit_cycle()
            self.iteration += 1


class RssSampler(threading.Thread):
    """VmRSS of a process every `interval` seconds: [(seconds, KiB)]."""

    def __init__(self, pid, interval):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def sample(self):
        try:
            with open('/proc/%d/status' % self.pid) as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        self.samples.append((time.monotonic() - self.t0,
                                             int(line.split()[1])))
        except OSError:
            pass

    def run(self):
        while True:
            self.sample()
            if self.stop.wait(self.interval):
                return

    def curve(self, rows=30):
        """The curve as text: one row per slice of time, its largest sample."""
        if not self.samples:
            return 'no RSS samples'
        end = self.samples[-1][0] or 1.0
        peak = max(k for _, k in self.samples)
        out = []
        for r in range(rows):
            lo, hi = end * r / rows, end * (r + 1) / rows
            ks = [k for t, k in self.samples if lo <= t < hi or (r == rows - 1 and t == end)]
            if ks:
                k = max(ks)
                out.append('  %6.0fs %8.1f MiB %s' % (lo, k / 1024, '#' * int(50 * k / peak)))
        return '\n'.join(out)

    def flat(self, slack_mib, slack_pct):
        """(ok, text): largest sample of the last third vs the second."""
        end = self.samples[-1][0] if self.samples else 0
        second = [k for t, k in self.samples if end / 3 <= t < 2 * end / 3]
        last = [k for t, k in self.samples if t >= 2 * end / 3]
        if not second or not last:
            return False, 'too few RSS samples (%d)' % len(self.samples)
        m2, m3 = max(second), max(last)
        allowed = m2 + max(slack_mib * 1024, m2 * slack_pct / 100)
        return m3 <= allowed, ('RSS max second third %.1f MiB, last third %.1f MiB '
                               '(allowed %.1f MiB: +max(%d MiB, %d%%))'
                               % (m2 / 1024, m3 / 1024, allowed / 1024, slack_mib,
                                  slack_pct))


def asan_built():
    with open(diskstack_bin(), 'rb') as f:
        return b'__asan_init' in f.read()


SANITIZER_MARKS = ('LeakSanitizer', 'AddressSanitizer', 'runtime error:',
                   'UndefinedBehaviorSanitizer')


class SoakBase(Stress):
    """test_stress's daemon and checks, with the soak's workload."""

    test_graph_changes_under_load = None     # Stress's own test: not here
    maxDiff = None

    def prepare(self):
        """Images (base-a.qcow2 with data), the daemon, QMP, the workers
        (not started) and the graph loop."""
        base, a0, b = self.make_images()
        self.initial = {1: initial_content(1), 2: initial_content(2)}
        raw = self.path('base-a.raw')
        with open(raw, 'wb') as f:
            f.write(self.initial[1])
        r = run_qemu_img('convert', '-f', 'raw', '-O', 'qcow2', raw, base)
        self.assertEqual(r.returncode, 0, r.stderr)
        os.unlink(raw)
        self.images_a, self.image_b = [base, a0], b
        d, self.deferred = self.start_multiqueue(a0, b)
        self.daemon = d
        self.qmp = QmpConn(self.sock)
        self.addCleanup(self.qmp.close)
        self.assertEqual(self.qmp.cmd('qmp_capabilities'), {'return': {}})
        backing = self.backing_node_of_a0(self.qmp)
        self.assertIsNotNone(backing, 'no node for base-a.qcow2')
        self.workers = []
        for disk, mp in ((1, 'a.img'), (2, 'b.img')):
            for i, (lo, hi) in enumerate(regions(self.n_workers)):
                self.workers.append(Worker(self.path(mp), disk, i, lo, hi,
                                           self.initial[disk], self.seed * 100 + disk * 10 + i))
        self.ops = SoakOps(self.qmp, self.tmp,
                           [{'node': 'a0', 'path': a0, 'owned': True},
                            {'node': backing, 'path': base, 'owned': False}],
                           'a0-file', self.snapshot_every)
        return d

    def run_logged(self, d, body, *args):
        """body(*args); on failure the daemon's command line and stderr
        are printed too."""
        try:
            body(*args)
        except BaseException:
            print('--- daemon ---\n' + d.describe()[-20000:])
            raise

    def stop_workers(self):
        """Stops the I/O threads; the paths of those still stuck."""
        for w in self.workers:
            w.stop.set()
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        return sorted({'%s worker %d' % (w.path, w.idx) for w in self.workers if w.is_alive()})

    def worker_summary(self):
        total = {}
        for w in self.workers:
            for k, v in w.counts.items():
                total[k] = total.get(k, 0) + v
        return ', '.join('%s %d' % kv for kv in sorted(total.items()))


class Soak(SoakBase):

    n_workers = WORKERS
    seconds = 600.0
    seed = 1
    leak_check = False
    snapshot_every = None

    def describe(self):
        return 'soak %.0fs seed %d%s' % (self.seconds, self.seed,
                                         ' (leak check)' if self.leak_check else '')

    def test_soak(self):
        self.snapshot_every = max(1.0, self.seconds / 3 / MAX_OVERLAYS)
        d = self.prepare()
        self.run_logged(d, self.soak, d)

    def soak(self, d):
        rss = RssSampler(d.pid, max(1.0, self.seconds / 100))
        stop = threading.Event()
        self.ops.snapshot_until = time.monotonic() + self.seconds / 3
        rss.start()
        for w in self.workers:
            w.start()
        timer = threading.Timer(self.seconds, stop.set)
        timer.start()
        try:
            self.ops.run_until(WorkerWatch(stop, self.workers), self.path('b.qcow2'))
        finally:
            timer.cancel()
            stuck = self.stop_workers()
            rss.stop.set()
            rss.join()
        self.assertEqual(stuck, [], 'I/O threads stuck in a request')
        failed = ['%s: %s' % (w.path, w.error or w.os_error) for w in self.workers
                  if w.error or w.os_error]
        self.assertEqual(failed, [], 'verified I/O failed')

        print('I/O: %s' % self.worker_summary())
        print('graph loop: %d rounds, %s' % (self.ops.iteration, dict(self.ops.counts)))
        for note in sorted(self.ops.notes):
            print('note: ' + note)
        print('daemon VmRSS (largest sample per slice of time):\n' + rss.curve())
        self.check_end(d, rss)

    def check_end(self, d, rss):
        refs = {disk: disk_reference(self.initial[disk],
                                     [w for w in self.workers if w.disk == disk])
                for disk in (1, 2)}
        for disk, mp in ((1, 'a.img'), (2, 'b.img')):
            diff = first_difference(read_file(self.path(mp)), bytes(refs[disk]))
            self.assertIsNone(diff, '%s through the mount vs the reference' % mp)
        self.assertEqual(self.qmp.cmd('quit'), {'return': {}})
        self.assertEqual(d.wait_exit(), 0, d.describe())
        if self.leak_check:
            self.assertTrue(asan_built(), 'not an ASan build: %s' % diskstack_bin())
            marks = [m for m in SANITIZER_MARKS if m in d.stderr()]
            self.assertEqual(marks, [], 'sanitizer reports in the daemon\'s stderr:\n'
                             + d.stderr()[-20000:])
            print('leak check: the daemon exited cleanly, no sanitizer report')
        top_a = self.ops.images[-1] if self.ops.images else self.images_a[-1]
        for disk, images, top in ((1, self.images_a + self.ops.images, top_a),
                                  (2, [self.image_b], self.image_b)):
            raw = self.path('ref-%d.raw' % disk)
            with open(raw, 'wb') as f:
                f.write(refs[disk])
            self.check_images(images, top, raw)
        self.assertEqual(self.ops.errors, [], 'graph operations failed')
        self.assertEqual(sorted(self.ops.missing), [], 'QMP commands diskstack lacks')
        self.assertEqual(self.deferred, [])
        if not self.leak_check:
            ok, text = rss.flat(RSS_SLACK_MIB, RSS_SLACK_PCT)
            print(text)
            self.assertTrue(ok, 'RSS grew after warm-up: ' + text)


class WorkerWatch:
    """An Event-like stop condition for the graph loop: set by the timer,
    or as soon as a worker has failed (no point going on)."""

    def __init__(self, event, workers):
        self.event, self.workers = event, workers

    def is_set(self):
        return self.event.is_set() or any(w.error or w.os_error for w in self.workers)


# ---------------------------------------------------------------- runner

def run_tests(tests, epilogue=None):
    """Runs TestCase instances one by one; prints `ok|FAIL name seconds`,
    failures in full, epilogue() if given, then `N passed, M failed`.
    Returns the exit status."""
    passed = failed = 0
    for t in tests:
        result = unittest.TestResult()
        t0 = time.monotonic()
        t.run(result)
        problems = result.failures + result.errors
        status = 'FAIL' if problems else ('skip' if result.skipped else 'ok')
        print('%-4s  %s  %.1fs' % (status, t.describe(), time.monotonic() - t0), flush=True)
        for _, text in problems:
            print(text)
        for _, why in result.skipped:
            print('  skipped: ' + why)
        if problems or result.skipped:
            failed += 1
        else:
            passed += 1
    if epilogue:
        print(epilogue())
    print('%d passed, %d failed' % (passed, failed))
    return 0 if failed == 0 else 1


def use_build(build):
    path = os.path.abspath(os.path.join(build, 'diskstack'))
    if not os.access(path, os.X_OK):
        sys.exit('no diskstack binary at %s' % path)
    os.environ['DISKSTACK_BIN'] = path


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--build', default='build', help='build directory (default build)')
    p.add_argument('--seconds', type=float, default=600.0, help='soak length (600)')
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--workers', type=int, default=WORKERS, help='I/O threads per export')
    p.add_argument('--leak-check', action='store_true',
                   help='ASan build: detect_leaks=1, fail on any sanitizer report')
    args = p.parse_args()
    use_build(args.build)
    if args.leak_check:
        opts = os.environ.get('ASAN_OPTIONS', '')
        os.environ['ASAN_OPTIONS'] = ':'.join(filter(None, [opts, 'detect_leaks=1']))
    t = Soak('test_soak')
    t.seconds, t.seed, t.n_workers, t.leak_check = (args.seconds, args.seed, args.workers,
                                                    args.leak_check)
    print('soak: %s, %.0f s, seed %d, %d I/O threads per export'
          % (os.environ['DISKSTACK_BIN'], args.seconds, args.seed, args.workers), flush=True)
    return run_tests([t])


if __name__ == '__main__':
    sys.exit(main())
