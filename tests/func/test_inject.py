"""The inject fault-injection filter through a real daemon and FUSE mount:
errnos on exactly the failed range while other requests continue, live
set/clear/query over QMP, once / after / probability / trigger file /
up-down phases, unsafe-drop-write, a refused set that changes nothing, the
command line's rules-file, and the slow disk of issue 6 (a 200 ms delay
below one export: QMP and another export stay fast).

Every request goes through O_DIRECT so that the page cache cannot answer
it.  Waits are on observed changes (wait_for), never fixed sleeps; the only
timing thresholds are the slow-disk test's, which the issue asks for.
"""

import errno
import json
import mmap
import os
import threading
import time

from common import MiB, FuseTestCase, wait_for
from test_throttle import Load, Stack

BLOCK = 4096
FAST_BOUND = 0.050      # the bound for QMP and the other export


def dio_pread(path, offset, length=BLOCK):
    """One O_DIRECT read; returns the bytes or raises OSError."""
    buf = mmap.mmap(-1, length)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)
        buf.close()


def dio_pwrite(path, offset, data):
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        return os.pwritev(fd, [buf], offset)
    finally:
        os.close(fd)
        buf.close()


def read_errno(path, offset, length=BLOCK):
    """0 if an O_DIRECT read succeeds, else its errno."""
    try:
        dio_pread(path, offset, length)
        return 0
    except OSError as e:
        return e.errno


class InjectStack(Stack):
    """test_throttle's Stack with inject nodes."""

    def inject(self, node, child, rules=()):
        self.blockdevs.append({'driver': 'inject', 'node-name': node,
                               'file': child, 'rules': list(rules)})
        return node

    def file(self, node, size=64 * MiB):
        img = self.test.image('%s%s.raw' % (node, self.tag), size)
        self.blockdevs.append({'driver': 'file', 'node-name': node,
                               'filename': img})
        return img

    def set(self, node, rules, replace=False):
        return self.ok('x-diskstack-inject-set',
                       {'node-name': node, 'rules': rules, 'replace': replace})

    def clear(self, node, id=None):
        args = {'node-name': node}
        if id is not None:
            args['id'] = id
        return self.ok('x-diskstack-inject-clear', args)

    def query(self, node):
        return {r['id']: r for r in
                self.ok('x-diskstack-inject-query', {'node-name': node})}

    def error(self, cmd, args):
        r = self.qmp.cmd(cmd, args)
        self.test.assertIn('error', r, '%s %s: %s' % (cmd, args, r))
        return r['error']['desc']


class Inject(FuseTestCase):

    def stack(self, rules=()):
        """One export of an inject node straight over a raw file."""
        s = InjectStack(self)
        self.img = s.file('disk-file')
        s.inject('inj', 'disk-file', rules)
        self.mnt = s.export('inj')
        return s.start()

    # ------------------------------------------------------------ errnos

    def test_fail_range_errno_others_continue(self):
        s = self.stack([
            {'id': 'eio', 'op': 'read', 'offset': MiB, 'length': 64 * 1024},
            {'id': 'enospc', 'op': 'write', 'offset': 2 * MiB, 'errno': 'ENOSPC'},
            {'id': 'eperm', 'op': 'read', 'offset': 3 * MiB, 'length': BLOCK,
             'errno': 'EPERM'}])
        errors, stop = [], threading.Event()

        def other_ranges(seed):
            n = 0
            while not stop.is_set() or n < 20:
                off = ((seed * 7919 + n) % 200) * BLOCK + 4 * MiB
                try:
                    dio_pread(self.mnt, off)
                except OSError as e:
                    errors.append('read at %d: %s' % (off, e))
                    return
                n += 1

        threads = [threading.Thread(target=other_ranges, args=(i,))
                   for i in range(4)]
        for t in threads:
            t.start()
        try:
            for _ in range(20):
                self.assertEqual(read_errno(self.mnt, MiB + 8192), errno.EIO)
                self.assertEqual(read_errno(self.mnt, 3 * MiB), errno.EPERM)
                with self.assertRaises(OSError) as cm:
                    dio_pwrite(self.mnt, 2 * MiB + BLOCK, b'x' * BLOCK)
                self.assertEqual(cm.exception.errno, errno.ENOSPC)
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(errors, [])
        self.assertEqual(read_errno(self.mnt, MiB - BLOCK), 0, 'just before')
        self.assertEqual(read_errno(self.mnt, MiB + 64 * 1024), 0, 'just after')
        self.assertEqual(dio_pwrite(self.mnt, 0, b'y' * BLOCK), BLOCK)
        q = s.query('inj')
        self.assertEqual(q['eio']['fired'], 20)
        self.assertEqual(q['enospc']['errno'], 'ENOSPC')
        s.clear('inj', 'eio')
        self.assertEqual(read_errno(self.mnt, MiB + 8192), 0, 'cleared')
        self.assertEqual(read_errno(self.mnt, 3 * MiB), errno.EPERM, 'kept')
        s.clear('inj')
        self.assertEqual(s.query('inj'), {})
        self.assertEqual(read_errno(self.mnt, 3 * MiB), 0)

    def test_live_changes_under_io(self):
        """Rules replaced and cleared 100 times while 4 threads read: each
        read succeeds or gets the rule's EIO, nothing else, and the daemon
        lives on."""
        s = self.stack()
        bad, stop = [], threading.Event()

        def reader(seed):
            n = 0
            while not stop.is_set():
                e = read_errno(self.mnt, ((seed * 31 + n) % 512) * BLOCK)
                if e not in (0, errno.EIO):
                    bad.append(e)
                n += 1

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            for i in range(100):
                s.set('inj', [{'op': 'read', 'offset': (i % 8) * 256 * 1024,
                               'length': 256 * 1024}], replace=True)
                if i % 3 == 0:
                    s.clear('inj')
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(bad, [])
        s.clear('inj')
        self.assertEqual(read_errno(self.mnt, 0), 0)
        self.assertIsNone(s.daemon.proc.poll())

    # ------------------------------------------------------------ selectors

    def test_once_after_probability_zero(self):
        s = self.stack()
        s.set('inj', [{'id': 'once', 'op': 'read', 'offset': 0,
                       'length': BLOCK, 'once': True},
                      {'id': 'after', 'op': 'read', 'offset': MiB,
                       'length': BLOCK, 'after': 2},
                      {'id': 'never', 'op': 'read', 'offset': 2 * MiB,
                       'length': BLOCK, 'probability': 0}])
        self.assertEqual([read_errno(self.mnt, 0) for _ in range(3)],
                         [errno.EIO, 0, 0])
        self.assertEqual([read_errno(self.mnt, MiB) for _ in range(4)],
                         [0, 0, errno.EIO, errno.EIO])
        self.assertEqual([read_errno(self.mnt, 2 * MiB) for _ in range(20)],
                         [0] * 20)
        q = s.query('inj')
        self.assertEqual((q['once']['matched'], q['once']['fired']), (1, 1),
                         'a spent rule matches no more')
        self.assertEqual((q['after']['matched'], q['after']['fired']), (4, 2))
        self.assertEqual((q['never']['matched'], q['never']['fired']), (20, 0))

    def test_trigger_file(self):
        trigger = self.path('fail-now')
        s = self.stack([{'op': 'read', 'trigger-file': trigger}])
        self.assertEqual(read_errno(self.mnt, 0), 0)
        open(trigger, 'w').close()
        wait_for(lambda: read_errno(self.mnt, 0) == errno.EIO,
                 lambda: 'reads still work with %s present' % trigger)
        os.unlink(trigger)
        wait_for(lambda: read_errno(self.mnt, 0) == 0,
                 lambda: 'reads still fail after %s went' % trigger)
        self.assertGreater(s.query('inj')['r0']['fired'], 0)

    def test_up_down_phases(self):
        s = self.stack([{'op': 'read', 'up-ms': 100, 'down-ms': 100}])
        seen = []
        for want in (errno.EIO, 0, errno.EIO, 0):
            wait_for(lambda: read_errno(self.mnt, 0) == want,
                     lambda: 'no %s phase after %s' % (want, seen))
            seen.append(want)
        q = s.query('inj')['r0']
        self.assertEqual((q['up-ms'], q['down-ms']), (100, 100))

    # ------------------------------------------------------------ actions

    def test_unsafe_drop_write(self):
        s = self.stack([{'id': 'drop', 'action': 'unsafe-drop-write',
                         'offset': MiB, 'length': MiB}])
        self.assertEqual(dio_pwrite(self.mnt, MiB, b'\xab' * BLOCK), BLOCK,
                         'the dropped write reports success')
        self.assertEqual(dio_pwrite(self.mnt, 0, b'\xcd' * BLOCK), BLOCK)
        with open(self.img, 'rb') as f:
            f.seek(MiB)
            self.assertEqual(f.read(BLOCK), bytes(BLOCK), 'nothing below')
            f.seek(0)
            self.assertEqual(f.read(BLOCK), b'\xcd' * BLOCK, 'others are written')
        self.assertEqual(dio_pread(self.mnt, MiB), bytes(BLOCK))
        self.assertEqual(s.query('inj')['drop']['fired'], 1)

    # ------------------------------------------------------------ QMP

    def test_bad_set_refused_old_rules_kept(self):
        s = self.stack()
        s.set('inj', [{'id': 'keep', 'op': 'write'}])
        err = s.error('x-diskstack-inject-set', {
            'node-name': 'inj', 'rules': [{'id': 'new'}, {'op': 'nap'}]})
        self.assertIn("rules[1].op", err)
        err = s.error('x-diskstack-inject-set', {
            'node-name': 'inj', 'rules': [{'id': 'x'}], 'replace': True,
            'bogus': 1})
        self.assertIn("'bogus'", err)
        err = s.error('x-diskstack-inject-set', {
            'node-name': 'inj', 'rules': [{'probability': 2}], 'replace': True})
        self.assertIn("rules[0].probability", err)
        self.assertEqual(list(s.query('inj')), ['keep'], 'nothing changed')
        self.assertEqual(read_errno(self.mnt, 0), 0)
        err = s.error('x-diskstack-inject-set', {'node-name': 'inj', 'rules': {}})
        self.assertIn("'rules'", err)
        err = s.error('x-diskstack-inject-set', {'rules': []})
        self.assertIn("'node-name' is missing", err)
        for node in ('disk-file', 'nosuch'):
            err = s.error('x-diskstack-inject-query', {'node-name': node})
            self.assertEqual(err, "Node '%s' is not an inject filter" % node)
        err = s.error('x-diskstack-inject-clear', {'node-name': 'inj', 'id': 'zz'})
        self.assertIn("'zz'", err)
        self.assertEqual(list(s.query('inj')), ['keep'])

    def test_rules_file_on_the_command_line(self):
        rules = self.path('rules.json')
        with open(rules, 'w') as f:
            json.dump([{'id': 'cli', 'op': 'read', 'offset': MiB,
                        'length': BLOCK, 'errno': 'EROFS'}], f)
        img = self.image('disk.raw', 16 * MiB)
        mnt = self.path('disk.mnt')
        open(mnt, 'w').close()
        sock = self.path('qmp.sock')
        self.serve(['--qmp', sock,
                    '--blockdev', 'driver=file,node-name=f,filename=' + img,
                    '--blockdev', 'driver=inject,node-name=inj,file=f,'
                                  'rules-file=' + rules,
                    '--export', 'type=fuse,id=e,node-name=inj,mountpoint=%s,'
                                'writable=on' % mnt], mnt)
        self.assertEqual(read_errno(mnt, MiB), errno.EROFS)
        self.assertEqual(read_errno(mnt, 0), 0)

    def test_bad_rules_file_refused_at_start(self):
        rules = self.path('rules.json')
        with open(rules, 'w') as f:
            json.dump([{'op': 'read', 'errno': 'EBOGUS'}], f)
        img = self.image('disk.raw', MiB)
        d = self.serve(['--blockdev', 'driver=file,node-name=f,filename=' + img,
                        '--blockdev', 'driver=inject,node-name=inj,file=f,'
                                      'rules-file=' + rules],
                       self.path('unused'), wait=False)
        self.assertNotEqual(d.wait_exit(), 0)
        self.assertIn('rules[0].errno', d.stderr())

    # ------------------------------------------------------------ slow disk

    def test_slow_disk_leaves_qmp_and_other_export_fast(self):
        """Issue 6: with a 200 ms delay on every op of the bottom node of
        one export, 4 threads hammering it, the control socket answers
        query-named-block-nodes within 50 ms (20 round trips) and reads of
        another export take under 50 ms each."""
        s = InjectStack(self)
        s.file('slow-file')
        s.inject('slow-inj', 'slow-file',
                 [{'action': 'delay', 'delay-ms': 200}])
        s.blockdevs.append({'driver': 'raw', 'node-name': 'slow',
                            'file': 'slow-inj'})
        s.raw('fast')
        slow_mnt, fast_mnt = s.export('slow'), s.export('fast')
        s.start()
        t0 = time.monotonic()
        self.assertEqual(len(dio_pread(slow_mnt, 0)), BLOCK)
        self.assertGreaterEqual(time.monotonic() - t0, 0.2, 'the delay is there')
        load = Load(self, slow_mnt, 4, BLOCK).start()
        load.wait_queued(completions=4)
        qmp_times, read_times = [], []
        for i in range(20):
            # one round per completion on the slow export: the rounds span
            # about a second of load, with requests asleep in the filter
            done = len(load.times)
            wait_for(lambda: len(load.times) > done or load.errors,
                     lambda: 'the slow export stopped completing')
            qmp_times.append(s.timed('query-named-block-nodes')[0])
            t = time.monotonic()
            dio_pread(fast_mnt, i * BLOCK)
            read_times.append(time.monotonic() - t)
        fired = s.query('slow-inj')['r0']['fired']
        self.assertEqual(load.stop(), [])
        print('slow disk: QMP worst %.1f ms, other export worst %.1f ms, '
              '%d delayed requests' % (max(qmp_times) * 1e3,
                                       max(read_times) * 1e3, fired))
        self.assertGreaterEqual(fired, 24, 'the slow export was under load')
        self.assertLess(max(qmp_times), FAST_BOUND,
                        'QMP round trips: %s' % ['%.1f' % (t * 1e3) for t in qmp_times])
        self.assertLess(max(read_times), FAST_BOUND,
                        'other export reads: %s' % ['%.1f' % (t * 1e3) for t in read_times])


if __name__ == '__main__':
    import unittest
    unittest.main()
