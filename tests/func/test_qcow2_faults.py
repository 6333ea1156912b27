"""qcow2 error paths end to end: a fault below qcow2 at a named step of an
allocating write, and an inconsistency found at run time.

The stack is qcow2 -> inject -> file in a daemon with a QMP socket, exported
writable through FUSE (direct I/O, so a write's error reaches pwrite).  For
plain writes and for each qcow2 event point (l2-update, refblock-alloc,
cow-read, cow-write, header-update) a once-rule fails that step with EIO:
the write that reaches it fails with EIO, the rule is cleared, the same
write then succeeds without reopening, and everything reads back like the
reference.  After the daemon quits, `qemu-img check` finds no corruption
(leaked clusters are allowed: exit 0 or 3) and `qemu-img compare` matches
the reference.

The images have 512-byte clusters and 64-bit refcounts, so an L2 table
covers 32 KiB, a refcount block 32 KiB of the file and the first refcount
table 2 MiB: every step is reached within a few writes.  The first 64 KiB
hold data shared with an internal snapshot, so a partial write there copies
the old cluster from the image file (cow-read).

Runtime corruption: an L2 entry made to point at the refcount table; the
access fails with EIO, BLOCK_IMAGE_CORRUPTED arrives on the QMP socket with
qemu's fields (once), writes are refused, reads elsewhere work, and
`qemu-img info` reports the corrupt bit.
"""

import errno
import json
import os
import random
import struct
import sys

from common import (FALLOC_FL_ZERO_RANGE, MiB, FuseTestCase, fallocate, is_mounted,
                    pread_all, pwrite_all, require_tool, run_qemu_img, wait_for)
from test_qmp import QmpClient, QmpHelpers

SIZE = 8 * MiB
CLUSTER = 512
SHARED = 64 * 1024           # [0, SHARED) is shared with snapshot s1
SHARED_BYTE = 0x11
MAX_WRITES = 2048            # bound on writes searching for a step


class FaultStack(QmpHelpers):
    """A daemon with qcow2 -> inject -> file exported at self.mp (a mixin
    for FuseTestCase classes; holds no tests).  self.ref is the expected
    guest content."""

    def qemu_ok(self, *args):
        r = run_qemu_img(*args)
        self.assertEqual(r.returncode, 0, 'qemu-img %s: %s' % (args, r.stderr))
        return r

    def make_image(self, name='disk.qcow2', size=SIZE, opts='', snapshot=False):
        img = self.path(name)
        self.qemu_ok('create', '-q', '-f', 'qcow2', *(['-o', opts] if opts else []),
                     img, str(size))
        self.ref = bytearray(size)
        if snapshot:
            r = os.system("qemu-io -f qcow2 -c 'write -P %d 0 %d' '%s' >/dev/null"
                          % (SHARED_BYTE, SHARED, img))
            self.assertEqual(r, 0, 'qemu-io failed')
            self.qemu_ok('snapshot', '-c', 's1', img)
            self.ref[:SHARED] = bytes([SHARED_BYTE]) * SHARED
        return img

    def open_stack(self, img, rules=(), **qcow2_opts):
        self.d = self.start()
        self.c = QmpClient(self.sock).negotiate()
        self.addCleanup(self.c.close)
        node = {'driver': 'qcow2', 'node-name': 'disk',
                'file': {'driver': 'inject', 'node-name': 'inj', 'rules': list(rules),
                         'file': {'driver': 'file', 'node-name': 'f0',
                                  'filename': img}}}
        node.update(qcow2_opts)
        r = self.c.cmd('blockdev-add', node)
        self.assertEqual(r, {'return': {}}, '%s\n%s' % (r, self.d.describe()))
        self.mp = self.path('export.img')
        open(self.mp, 'w').close()
        r = self.c.cmd('block-export-add', {'type': 'fuse', 'id': 'e0',
                                            'node-name': 'disk',
                                            'mountpoint': self.mp, 'writable': True})
        self.assertEqual(r, {'return': {}}, r)
        wait_for(lambda: is_mounted(self.mp), lambda: 'export not mounted')
        self.fd = os.open(self.mp, os.O_RDWR)
        self.addCleanup(self.close_fd)

    def close_fd(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def set_rule(self, rule):
        r = self.c.cmd('x-diskstack-inject-set', {'node-name': 'inj',
                                                  'rules': [rule], 'replace': True})
        self.assertEqual(r, {'return': {}}, r)

    def fired(self, rule_id):
        rules = self.c.cmd('x-diskstack-inject-query', {'node-name': 'inj'})['return']
        return sum(r['fired'] for r in rules if r['id'] == rule_id)

    def clear_rules(self):
        r = self.c.cmd('x-diskstack-inject-clear', {'node-name': 'inj'})
        self.assertEqual(r, {'return': {}}, r)

    def write(self, off, data):
        """A write that must succeed; recorded in the reference."""
        pwrite_all(self.fd, data, off)
        self.ref[off:off + len(data)] = data

    def write_fails(self, off, data, err=errno.EIO):
        """A write that must fail with err (its range is then undefined
        until written again)."""
        with self.assertRaises(OSError, msg='write at %d did not fail' % off) as cm:
            os.pwrite(self.fd, data, off)
        self.assertEqual(cm.exception.errno, err,
                         'write at %d: %s' % (off, cm.exception))

    def try_write(self, off, data):
        """None if the write succeeded (and is recorded), else its errno."""
        try:
            pwrite_all(self.fd, data, off)
        except OSError as e:
            return e.errno
        self.ref[off:off + len(data)] = data
        return None

    def assert_reads_back(self, start=0, end=None):
        end = len(self.ref) if end is None else end
        got = pread_all(self.fd, end - start, start)
        self.assertBytesEqual(got, bytes(self.ref[start:end]),
                              'content read back through the export')

    def quit_and_check(self, img):
        """Quits the daemon; the image must check without corruption (leaks
        allowed) and compare equal to the reference."""
        os.fsync(self.fd)
        self.close_fd()
        self.quit(self.d, self.c)
        r = run_qemu_img('check', '-f', 'qcow2', img)
        self.assertIn(r.returncode, (0, 3), 'qemu-img check: %s%s'
                      % (r.stdout.decode(errors='replace'),
                         r.stderr.decode(errors='replace')))
        ref = self.path('reference.raw')
        with open(ref, 'wb') as f:
            f.write(self.ref)
        r = run_qemu_img('compare', '-f', 'raw', '-F', 'qcow2', ref, img)
        self.assertEqual(r.returncode, 0, 'qemu-img compare: %s%s'
                         % (r.stdout.decode(errors='replace'),
                            r.stderr.decode(errors='replace')))
        return r


def fault_seed():
    """The seed of a random fault test: DISKSTACK_FAULT_SEED if set, else a
    fresh one (the test prints it, so a failure can be repeated)."""
    env = os.environ.get('DISKSTACK_FAULT_SEED')
    return int(env, 0) if env else random.SystemRandom().getrandbits(63)


def pattern(seed, n):
    """n bytes that differ per seed and per position (no zero runs)."""
    return bytes(((seed * 131 + i * 7) % 251) + 1 for i in range(n))


class Qcow2Faults(FaultStack, FuseTestCase):

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')
        require_tool(self, 'qemu-io')
        self.img = self.make_image(opts='cluster_size=%d,refcount_bits=64' % CLUSTER,
                                   snapshot=True)
        self.open_stack(self.img)
        # warm-up: the first write clears autoclear bits and builds an L2 table
        self.write(4 * MiB, pattern(1, 4096))

    def fail_once(self, rule_id, **rule):
        d = {'id': rule_id, 'op': 'write', 'once': True, 'action': 'fail',
             'errno': 'EIO'}
        d.update(rule)
        self.set_rule(d)

    def fail_retry(self, rule_id, off, data):
        """The write fails once with EIO; after clearing, it succeeds."""
        self.write_fails(off, data)
        self.assertEqual(self.fired(rule_id), 1)
        self.clear_rules()
        self.write(off, data)

    def first_failing_write(self, rule_id, start, step):
        """Writes `step` bytes at start, start+step, ... until one fails;
        that one must fail with EIO.  Returns its offset."""
        for i in range(MAX_WRITES):
            off = start + i * step
            self.assertLess(off + step, SIZE, 'rule %s never fired' % rule_id)
            err = self.try_write(off, pattern(i + 7, step))
            if err is not None:
                self.assertEqual(err, errno.EIO, 'write at %d' % off)
                self.assertEqual(self.fired(rule_id), 1)
                return off
        self.fail('rule %s never fired in %d writes' % (rule_id, MAX_WRITES))

    def finish(self):
        self.write(7 * MiB, pattern(99, 8192))          # more I/O afterwards
        self.assert_reads_back()
        self.quit_and_check(self.img)

    def test_plain_data_write_fails_then_recovers(self):
        # same L2 table as the warm-up: the first write below is the data
        self.fail_once('data')
        self.fail_retry('data', 4 * MiB + 4096, pattern(2, 4096))
        self.finish()

    def test_l2_update_fails_then_recovers(self):
        self.fail_once('l2', event='l2-update')
        self.fail_retry('l2', 6 * MiB, pattern(3, 4096))     # a new L2 table
        self.finish()

    def test_cow_write_fails_then_recovers(self):
        self.fail_once('cw', event='cow-write')
        # 100 bytes inside a fresh cluster: head and tail are copied (zeroes)
        self.fail_retry('cw', 5 * MiB + 1000, pattern(4, 100))
        self.finish()

    def test_cow_read_fails_then_recovers(self):
        self.fail_once('cr', op='read', event='cow-read')
        # inside a cluster shared with the snapshot: the old data is read
        self.fail_retry('cr', 1000, pattern(5, 100))
        self.finish()

    def test_refblock_alloc_fails_then_recovers(self):
        self.fail_once('rb', event='refblock-alloc')
        off = self.first_failing_write('rb', 1 * MiB, 4096)
        self.clear_rules()
        self.write(off, pattern(6, 4096))
        self.write(off + 4096, pattern(8, 4096))
        self.finish()

    def test_l1_entry_update_fails_then_recovers(self):
        # l2-update is raised for the new L2 table, then for the L1 entry
        # that links it: let the first through, fail the second
        self.fail_once('l1', event='l2-update', after=1)
        self.fail_retry('l1', 6 * MiB, pattern(11, 4096))
        self.write(6 * MiB + 8192, pattern(12, 4096))      # same L2 table
        self.finish()

    def test_refblock_hookup_fails_then_recovers(self):
        # refblock-alloc is raised for the new block, then for the refcount
        # table entry that links it: fail the second
        self.fail_once('rbt', event='refblock-alloc', after=1)
        off = self.first_failing_write('rbt', 1 * MiB, 4096)
        self.clear_rules()
        for i in range(16):          # enough to fill the range it was for
            self.write(off + i * 4096, pattern(13 + i, 4096))
        self.finish()

    def test_long_run_hookup_fails_then_recovers(self):
        # A 32 KiB write needs 64 clusters, more than half a refcount
        # block's range: they go past the end of the file, with the blocks
        # of the (two or more) new ranges right after them.  Fail linking
        # those blocks into the refcount table (not the first such write):
        # no range may end up linked to a block that sits, uncounted, in a
        # range left unlinked — later small allocations would reuse it.
        with open(self.img, 'rb') as f:
            rt_off = struct.unpack('>Q', f.read(56)[48:56])[0]
        self.fail_once('hook', event='refblock-alloc', offset=rt_off,
                       length=CLUSTER, after=1)
        off = self.first_failing_write('hook', 1 * MiB, 32768)
        self.clear_rules()
        self.write(off, pattern(15, 32768))
        for i in range(128):
            self.write(3 * MiB + i * 4096, pattern(16 + i, 4096))
        self.finish()

    def test_header_flush_fails_then_recovers(self):
        # the header now names the grown refcount table but its flush
        # fails: qcow2 must use the new table from then on, as the file does
        self.fail_once('hflush', op='flush', event='header-update')
        off = self.first_failing_write('hflush', 128 * 1024, 16384)
        self.clear_rules()
        for i in range(64):          # enough to link more refcount blocks
            self.write(off + i * 16384, pattern(18 + i, 16384))
        self.finish()

    def test_snapshot_create_l1_write_fails(self):
        # internal snapshot: refcounts of everything go up, then the active
        # L1 loses its COPIED flags in one write of the table.  Fail that
        # write: the command fails, and the L1 must still reach the disk
        # (next flush) — else an L1 entry stays COPIED with refcount 2
        with open(self.img, 'rb') as f:
            l1_off = struct.unpack('>Q', f.read(48)[40:48])[0]
        self.fail_once('l1', offset=l1_off, length=CLUSTER)
        r = self.c.cmd('blockdev-snapshot-internal-sync',
                       {'device': 'disk', 'name': 'x'})
        self.assertIn('Input/output error', r['error']['desc'], r)
        self.assertEqual(self.fired('l1'), 1)
        self.clear_rules()
        self.write(5 * MiB, pattern(17, 4096))      # not in the warm-up's table
        self.finish()

    def test_dirty_l2_writeback_fails_then_retried(self):
        # an allocating write in an existing table leaves the table dirty in
        # the cache; the fsync that writes it back fails, the entry stays
        # dirty, and the next fsync writes it
        self.write(4 * MiB + 8192, pattern(14, 4096))
        self.fail_once('wb', event='l2-update')
        with self.assertRaises(OSError) as cm:
            os.fsync(self.fd)
        self.assertEqual(cm.exception.errno, errno.EIO)
        self.assertEqual(self.fired('wb'), 1)
        self.clear_rules()
        os.fsync(self.fd)
        self.finish()

    def test_random_write_faults(self):
        # one write or flush in five below qcow2 fails, whatever step it
        # belongs to; writes up to 64 KiB also take the allocator's long-run
        # path (new refcount blocks after the run).  Failed ranges are
        # written again once the faults stop.  One seed picks the writes and
        # seeds the filter's draws (the rule's "seed"), so each run fails
        # different steps and a failing run repeats with the seed it prints.
        seed = fault_seed()
        print('test_random_write_faults: DISKSTACK_FAULT_SEED=%d' % seed,
              file=sys.stderr)
        rng = random.Random(seed)
        self.set_rule({'id': 'rnd', 'op': ['write', 'flush'], 'probability': 0.2,
                       'action': 'fail', 'errno': 'EIO', 'seed': seed})
        failed = []
        for i in range(300):
            n = rng.randrange(1, 65536)
            off = rng.randrange(0, SIZE - n)
            if self.try_write(off, pattern(i, n)) is not None:
                failed.append((off, n))
            if i % 37 == 36:
                try:
                    os.fsync(self.fd)
                except OSError as e:
                    self.assertEqual(e.errno, errno.EIO)
            if i % 53 == 52:
                off, n = rng.randrange(0, SIZE // 2), rng.randrange(1, 200000)
                try:
                    fallocate(self.fd, FALLOC_FL_ZERO_RANGE, off, n)
                    self.ref[off:off + n] = bytes(n)
                except OSError as e:
                    self.assertEqual(e.errno, errno.EIO)
                    failed.append((off, n))
        fired = self.fired('rnd')
        print('test_random_write_faults: %d faults, failed %s' % (fired, failed),
              file=sys.stderr)
        self.assertGreater(fired, 0)
        self.clear_rules()
        for k, (off, n) in enumerate(failed):
            self.write(off, pattern(1000 + k, n))
        self.finish()

    def test_header_update_fails_then_recovers(self):
        # the refcount table (2 MiB of file) must grow: header fields change
        self.fail_once('hdr', event='header-update')
        off = self.first_failing_write('hdr', 128 * 1024, 16384)
        self.clear_rules()
        self.write(off, pattern(9, 16384))
        self.write(off + 16384, pattern(10, 16384))
        self.finish()


class Qcow2RuntimeCorruption(FaultStack, FuseTestCase):

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')
        require_tool(self, 'qemu-io')

    def corrupt_image(self):
        """64 KiB clusters, 0x44 in [0, 128 KiB); the L2 entry of guest
        cluster 1 then points at the refcount table.  Returns (img, rt)."""
        img = self.make_image(size=4 * MiB)
        r = os.system("qemu-io -f qcow2 -c 'write -P 0x44 0 128k' '%s' >/dev/null" % img)
        self.assertEqual(r, 0)
        self.ref[:128 * 1024] = b'\x44' * (128 * 1024)
        with open(img, 'r+b') as f:
            hdr = f.read(64)
            l1 = struct.unpack('>Q', hdr[40:48])[0]
            rt = struct.unpack('>Q', hdr[48:56])[0]
            f.seek(l1)
            l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
            f.seek(l2 + 8)
            f.write(struct.pack('>Q', (1 << 63) | rt))
        return img, rt

    def test_inconsistency_at_run_time_marks_corrupt_and_refuses_writes(self):
        img, rt = self.corrupt_image()
        self.open_stack(img)
        watcher = QmpClient(self.sock).negotiate()
        self.addCleanup(watcher.close)
        with self.assertRaises(OSError) as cm:
            os.pread(self.fd, 4096, 65536)
        self.assertEqual(cm.exception.errno, errno.EIO)
        ev = watcher.event('BLOCK_IMAGE_CORRUPTED')
        data = ev['data']
        self.assertEqual(data['device'], '')
        self.assertEqual(data['node-name'], 'disk')
        self.assertIs(data['fatal'], True)
        self.assertEqual(data['offset'], rt)
        self.assertEqual(data['size'], 65536)
        self.assertIn('0x%x' % rt, data['msg'])
        self.assertIn('timestamp', ev)
        # writes are refused, anywhere; reads of sound clusters work
        self.write_fails(0, b'x' * 4096)
        self.write_fails(2 * MiB, b'y' * 4096)
        self.assert_reads_back(0, 65536)
        self.assert_reads_back(128 * 1024, 4 * MiB)
        # a second detection is not announced again
        with self.assertRaises(OSError):
            os.pread(self.fd, 4096, 65536)
        self.c.cmd('query-named-block-nodes')
        watcher.cmd('query-named-block-nodes')
        self.assertEqual([e for e in watcher.events
                          if e['event'] == 'BLOCK_IMAGE_CORRUPTED'], [])
        self.close_fd()
        self.quit(self.d, self.c)
        r = run_qemu_img('info', '--output=json', '-U', img)
        self.assertEqual(r.returncode, 0, r.stderr)
        info = json.loads(r.stdout)
        self.assertIs(info['format-specific']['data']['corrupt'], True)
        r = run_qemu_img('info', '-U', img)
        self.assertIn(b'corrupt: true', r.stdout)
