"""Crash consistency of the qcow2 driver.

`diskstack mount` of a fresh qcow2 image is SIGKILLed while a writer does
allocating writes with an fsync every few writes.  Afterwards `qemu-img
check` must find no corruption (leaked clusters are allowed: exit 0 or 3),
and every byte that was fsynced and not written again since must read back.
The kill comes right after the writer's k-th fsync (an event, not a timer),
with k varying per round, so the crash lands at different points of the
allocation sequence.
"""

import os
import random
import signal
import threading

from common import (MiB, FuseTestCase, force_unmount, pwrite_all, random_bytes,
                    read_file, require_tool, run_qemu_img)

SIZE = 16 * MiB


class Writer(threading.Thread):
    """Random allocating writes, fsync every `every` writes.  Keeps the
    content known to be durable and which bytes were written since."""

    def __init__(self, path, seed, every, kill_after_syncs):
        super().__init__(daemon=True)
        self.path, self.rng, self.every = path, random.Random(seed), every
        self.kill_after = kill_after_syncs
        self.current = bytearray(SIZE)
        self.durable = bytes(SIZE)
        self.since_sync = bytearray(SIZE)      # 1 = written after last fsync
        self.synced = threading.Event()
        self.syncs = 0

    def one_write(self, fd):
        length = self.rng.randrange(1, 96) * 512
        off = self.rng.randrange(0, SIZE - length) // 512 * 512
        data = random_bytes(self.rng, length)
        self.since_sync[off:off + length] = b'\1' * length
        pwrite_all(fd, data, off)
        self.current[off:off + length] = data

    def run(self):
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            self.synced.set()
            return
        try:
            for i in range(100000):
                self.one_write(fd)
                if i % self.every == self.every - 1:
                    os.fsync(fd)
                    self.durable = bytes(self.current)
                    self.since_sync = bytearray(SIZE)
                    self.syncs += 1
                    if self.syncs == self.kill_after:
                        self.synced.set()
        except OSError:
            pass                                   # the daemon is gone
        finally:
            self.synced.set()
            try:
                os.close(fd)
            except OSError:
                pass


class Qcow2Crash(FuseTestCase):

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')

    def crash_round(self, seed, cluster_size, every, kill_after):
        img = self.path('crash-%d.qcow2' % seed)
        r = run_qemu_img('create', '-q', '-f', 'qcow2', '-o',
                         'cluster_size=%d' % cluster_size, img, str(SIZE))
        self.assertEqual(r.returncode, 0, r.stderr)
        d = self.mount(img, opts=['-f', 'qcow2'])
        w = Writer(d.mountpoint, seed, every, kill_after)
        w.start()
        self.assertTrue(w.synced.wait(60), 'writer never reached its fsync')
        d.send_signal(signal.SIGKILL)
        d.wait_exit()
        force_unmount(d.mountpoint)
        w.join(30)
        self.assertFalse(w.is_alive(), 'writer still blocked after the kill')
        self.assertGreaterEqual(w.syncs, 1, 'no fsync completed before the kill')

        r = run_qemu_img('check', '-f', 'qcow2', img)
        self.assertIn(r.returncode, (0, 3), 'qemu-img check after the crash '
                      '(round %d): %s%s' % (seed, r.stdout.decode(errors='replace'),
                                            r.stderr.decode(errors='replace')))
        out = self.path('crash-%d.raw' % seed)
        r = run_qemu_img('convert', '-f', 'qcow2', '-O', 'raw', img, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        got, durable, dirty = read_file(out), w.durable, w.since_sync
        for off in range(0, SIZE, 512):
            if dirty[off:off + 512].count(0) != 512:
                continue                 # written after the last fsync: either
            if got[off:off + 512] != durable[off:off + 512]:
                self.fail('round %d: fsynced sector at %d lost after the crash'
                          % (seed, off))
        os.unlink(out)

    def test_sigkill_during_allocating_writes_64k(self):
        for seed, kill_after in ((1, 1), (2, 3), (3, 6)):
            self.crash_round(seed, 65536, 5, kill_after)

    def test_sigkill_during_allocating_writes_4k(self):
        for seed, kill_after in ((11, 2), (12, 5)):
            self.crash_round(seed, 4096, 4, kill_after)
