"""Growable FUSE exports take the resize permission only while a request
resizes the node, so jobs that share no resize (mirror, active commit) run
under them.

Through real FUSE mounts of a daemon with two IOThreads:
- threads grow a growable export by writes past the end and by truncates at
  once; the size and content are right and qemu-img check is clean, and a
  shrink followed by a grow reads zeroes where the old data was;
- a blockdev-mirror (sync full, job-complete) of a growable export written
  by threads succeeds (direct I/O and through the page cache): the export and the target equal the reference the
  writers kept (qemu-img compare, check);
- while the job runs, every request that would resize the node (a write or
  fallocate past the end, a write crossing it, a truncate either way, and
  `dd` appending) fails with EBUSY, changes nothing (size, content), and
  the daemon logs one line naming the job; once the job is gone, growing
  works again;
- the same for an active commit (block-commit of the exported top).

The helpers are test_mirror.py's MirrorCase and test_stream.py's JobCase
(with test_commit.py's active-commit steps)."""

import errno
import os
import random
import subprocess
import threading

import test_commit
from common import (MiB, FALLOC_FL_ZERO_RANGE, fallocate, pread_all,
                    pwrite_all, read_file, run_qemu_img, wait_for, write_at)
from test_mirror import SIZE as MIRROR_SIZE, MirrorCase
from test_qmp_snapshot import SnapshotCase
from test_stream import SLOW, JobCase

BLOCK = 64 * 1024
REFUSED_LOG = 'resize refused (EBUSY)'


def growable_export(case, node, name, direct_io=True):
    """block-export-add of node, writable and growable, at tmp/name."""
    mp = case.path(name)
    open(mp, 'w').close()
    case.ok('block-export-add', {'type': 'fuse', 'id': 'e-' + node,
                                 'node-name': node, 'mountpoint': mp,
                                 'writable': True, 'growable': True,
                                 'direct-io': direct_io})
    return mp


def in_threads(n, fn):
    """Runs fn(i) in n threads at once; returns the exceptions raised."""
    errors = []

    def run(i):
        try:
            fn(i)
        except Exception as e:      # reported by the caller's assertion
            errors.append('thread %d: %r' % (i, e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


class RefusedWhileJob:
    """Mixin: the checks of a growable export while a job refuses resizes."""

    def assert_busy(self, fn, what):
        with self.assertRaises(OSError, msg=what) as cm:
            fn()
        self.assertEqual(cm.exception.errno, errno.EBUSY,
                         '%s: %s' % (what, cm.exception))

    def assert_resizes_refused(self, mp, size, job, tail=None):
        """Each request that would resize the size bytes long export fails
        with EBUSY and changes nothing; given tail (what the last 4 KiB hold,
        when no other writer touches them), a write crossing the end too.
        One log line names the job."""
        fd = os.open(mp, os.O_RDWR)
        try:
            self.assertEqual(os.fstat(fd).st_size, size)
            data = b'\xee' * BLOCK
            self.assert_busy(lambda: os.pwrite(fd, data, size), 'write at EOF')
            self.assert_busy(lambda: os.pwrite(fd, data, size + MiB),
                             'write past EOF')
            if tail is not None:
                self.assert_busy(lambda: os.pwrite(fd, data, size - 4096),
                                 'write across EOF')
                self.assertEqual(pread_all(fd, 4096, size - 4096), tail,
                                 'the block before EOF is intact')
            self.assert_busy(lambda: os.ftruncate(fd, size + MiB), 'grow')
            self.assert_busy(lambda: os.ftruncate(fd, size // 2), 'shrink')
            self.assert_busy(lambda: fallocate(fd, 0, size, MiB), 'fallocate')
            self.assert_busy(lambda: fallocate(fd, FALLOC_FL_ZERO_RANGE,
                                               size - 4096, 2 * 4096),
                             'zero range across EOF')
            self.assertEqual(os.fstat(fd).st_size, size)
        finally:
            os.close(fd)
        # what dd says: its write fails, nothing is appended
        r = subprocess.run(['dd', 'if=/dev/zero', 'of=' + mp, 'bs=%d' % BLOCK,
                            'count=1', 'seek=%d' % (size // BLOCK),
                            'conv=notrunc'], capture_output=True)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn(b'Device or resource busy', r.stderr)
        self.assertEqual(os.stat(mp).st_size, size)
        log = self.d.wait_stderr(lambda t: REFUSED_LOG in t)
        lines = [l for l in log.splitlines() if REFUSED_LOG in l]
        self.assertEqual(len(lines), 1, log)
        self.assertIn("job '%s'" % job, lines[0])

    def grow_after_job(self, mp, reference):
        """Growing works again: a write past the end; returns the new
        reference."""
        data = random.Random(9).randbytes(BLOCK)
        size = len(reference)
        write_at(mp, size + BLOCK, data)
        self.assertEqual(os.stat(mp).st_size, size + 2 * BLOCK)
        return bytes(reference) + bytes(BLOCK) + data


class Grow(SnapshotCase):
    """No job: growing from several threads at once."""

    def test_writes_and_truncates_from_threads(self):
        img = self.qcow2('g.qcow2', MiB)
        self.add_disk('g', img)
        mp = growable_export(self, 'g', 'g.img')
        reference = bytearray(read_file(mp))
        self.assertEqual(len(reference), MiB)
        nthreads, per_thread = 4, 24
        blocks = {}

        def append(i):
            # interleaved blocks past the end, each thread in its own order
            rng = random.Random(i)
            offsets = [MiB + (k * nthreads + i) * BLOCK for k in range(per_thread)]
            rng.shuffle(offsets)
            fd = os.open(mp, os.O_WRONLY)
            try:
                for off in offsets:
                    data = rng.randbytes(BLOCK)
                    pwrite_all(fd, data, off)
                    blocks[off] = data
            finally:
                os.close(fd)

        self.assertEqual(in_threads(nthreads, append), [])
        end = MiB + nthreads * per_thread * BLOCK
        reference.extend(bytes(end - MiB))
        for off, data in blocks.items():
            reference[off:off + BLOCK] = data
        self.assertEqual(os.stat(mp).st_size, end)
        self.assertBytesEqual(read_file(mp), bytes(reference), 'after appending')

        # truncates race each other: the last one wins, which is the last
        # one of some thread
        def truncate(i):
            fd = os.open(mp, os.O_WRONLY)
            try:
                for k in range(8):
                    os.ftruncate(fd, end + MiB + i * BLOCK + k * 4 * BLOCK)
            finally:
                os.close(fd)

        self.assertEqual(in_threads(nthreads, truncate), [])
        size = os.stat(mp).st_size
        self.assertIn(size, [end + MiB + i * BLOCK + 7 * 4 * BLOCK
                             for i in range(nthreads)])
        reference.extend(bytes(size - end))
        self.assertBytesEqual(read_file(mp), bytes(reference), 'after truncates')

        # shrink into the last block written (qcow2 shrinks only where
        # nothing is allocated past the new end), then grow again: the cut
        # data must not come back
        with open(mp, 'r+b') as f:
            f.truncate(end - 4096)
            self.assertEqual(os.fstat(f.fileno()).st_size, end - 4096)
            f.seek(end + BLOCK)
            f.write(b'\x5a' * BLOCK)
        del reference[end - 4096:]
        reference.extend(bytes(BLOCK + 4096) + b'\x5a' * BLOCK)
        self.assertBytesEqual(read_file(mp), bytes(reference), 'shrunk and grown')
        self.assertNotIn(REFUSED_LOG, self.d.stderr())
        self.quit()
        self.check_clean(img)
        r = run_qemu_img('compare', '-U', '-f', 'qcow2', '-F', 'raw', img,
                         self.save(bytes(reference)))
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())


class GrowMirror(RefusedWhileJob, MirrorCase):
    """MirrorCase with the source exported growable."""

    def export(self, node, name):
        return growable_export(self, node, name)

    def test_mirror_of_growable_export(self):
        src, mp = self.source()
        tgt = self.target()
        self.assertEqual(self.mirror(speed=8 * MiB), {})
        self.join(self.writers(mp))
        # the job runs (it cannot complete before job-complete): no writer
        # touches the file now, so a write across the end is checked too
        self.assert_resizes_refused(mp, MIRROR_SIZE, 'job0',
                                    tail=bytes(self.reference[-4096:]))
        self.assert_export(mp)
        w = self.writers(mp, seed=2)
        self.ok('block-job-set-speed', {'device': 'job0', 'speed': 0})
        self.event('BLOCK_JOB_READY')
        self.join(w)
        w = self.writers(mp, ops=200, seed=3)
        self.ok('job-complete', {'id': 'job0'})
        done = self.event('BLOCK_JOB_COMPLETED')
        self.join(w)
        self.assertNotIn('error', done)
        self.assertEqual(self.statuses('null')[-2:], ['concluded', 'null'])
        self.assertEqual(self.parents_of('tgt'), [self.export_user()])
        self.assert_export(mp)
        self.reference = bytearray(self.grow_after_job(mp, self.reference))
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt)
        self.check_clean(src)
        self.assertEqual(len(self.reference), MIRROR_SIZE + 2 * BLOCK)


class GrowMirrorPageCache(GrowMirror):
    """The same through the page cache (direct-io off): a refused write
    leaves no page behind that reads back what was not written."""

    def export(self, node, name):
        return growable_export(self, node, name, direct_io=False)


class GrowActiveCommit(RefusedWhileJob, JobCase):
    """block-commit of a growable export's top (test_commit.ActiveCommit's
    steps)."""

    ready_then = test_commit.ActiveCommit.ready_then
    node = test_commit.ActiveCommit.node

    def test_active_commit_of_growable_export(self):
        self.add_chain(growable=True)

        def after(rounds):
            # writers run inside the end meanwhile: no write across it here
            self.assert_resizes_refused(self.mp, len(self.expected_start), 'a0')
            wait_for(lambda: len(rounds) > 2, lambda: 'no write rounds')
            self.ok('block-job-set-speed', {'device': 'a0', 'speed': 0})
            self.ready_then('a0', 'job-complete')

        ev, content = self.run_job('block-commit', {
            'job-id': 'a0', 'device': 'top', 'speed': SLOW}, after=after)
        self.assertNotIn('error', ev['data'])
        self.wait_status('a0', 'null')
        self.assertFalse(self.node('base')['ro'], 'base is the active layer')
        self.assertBytesEqual(read_file(self.mp), content, 'after the commit')
        content = self.grow_after_job(self.mp, content)
        self.verify(self.base, content, [(self.base, None)])


if __name__ == '__main__':
    import unittest
    unittest.main()
