"""blockdev-mirror through a real daemon, the source exported writable
through FUSE and written by threads while the job runs: sync full / top /
none, the pivot on job-complete (the export then writes to the target),
cancel before and after ready, pause / resume, the speed limit, the error
policies with an inject filter under the target, and the refusals.

After each job: the export's content equals the reference the writers kept,
qemu-img compare of the image that ends up in use against it, and qemu-img
check clean.  Names, events and messages are qemu-storage-daemon 7.2's."""

import os
import random
import shutil
import subprocess
import threading
import time

from common import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
                    FALLOC_FL_ZERO_RANGE, MiB, fallocate, pread_all, pwrite_all,
                    random_io_workers, run_qemu_img, wait_for)
from qmp import QmpClient
from test_qmp_snapshot import SnapshotCase, pwrite_all_path, qemu_img_json

SIZE = 16 * MiB


class MirrorCase(SnapshotCase):

    # ------------------------------------------------------------ helpers

    def source(self, name='src', backing=None, inject=False, throttle=False,
               discard=False):
        """A qcow2 source node `name`, exported writable, with data; on an
        inject node `name`-inj if inject; exported through a throttle
        filter `name`-thr (generous limits) if throttle; discard=unmap if
        discard."""
        img = self.qcow2(name + '.qcow2', SIZE, backing=backing)
        if discard:
            self.add_unmapping(name, img)
        elif inject:
            self.ok('blockdev-add', {
                'driver': 'qcow2', 'node-name': name, 'file': {
                    'driver': 'inject', 'node-name': name + '-inj', 'rules': [],
                    'file': {'driver': 'file', 'filename': img}}})
        else:
            self.add_disk(name, img)
        exported = name
        if throttle:
            self.ok('object-add', {'qom-type': 'throttle-group', 'id': 'tg0',
                                   'limits': {'iops-total': 1000000}})
            exported = name + '-thr'
            self.ok('blockdev-add', {'driver': 'throttle', 'node-name': exported,
                                     'throttle-group': 'tg0', 'file': name})
        mp = self.export(exported, name + '.img')
        rng = random.Random(7)
        fd = os.open(mp, os.O_RDWR)
        try:
            for i in range(0, SIZE, 2 * MiB):     # half the disk has data
                pwrite_all(fd, rng.randbytes(MiB), i)
            self.reference = bytearray(pread_all(fd, SIZE, 0))
        finally:
            os.close(fd)
        return img, mp

    def target(self, name='tgt', size=SIZE, backing=None, discard=False):
        img = self.qcow2(name + '.qcow2', size, backing=backing)
        if discard:
            self.add_unmapping(name, img)
        else:
            self.add_disk(name, img, backing=False if backing else None)
        return img

    def add_unmapping(self, name, img):
        """qcow2 node `name` with discard=unmap (MAY_UNMAP passes)."""
        self.ok('blockdev-add', {'driver': 'qcow2', 'node-name': name,
                                 'discard': 'unmap', 'file': {
                                     'driver': 'file', 'node-name': name + '-f',
                                     'filename': img}})

    def writers(self, mp, ops=150, seed=1):
        """Random I/O on the export in a background thread; join() it."""
        errors = []
        t = threading.Thread(target=lambda: errors.extend(random_io_workers(
            mp, self.reference, 3, ops, seed, max_size=256 * 1024)))
        t.start()
        return t, errors

    def join(self, writer):
        t, errors = writer
        t.join()
        self.assertEqual(errors, [])

    def mirror(self, **kw):
        args = {'job-id': 'job0', 'device': 'src', 'target': 'tgt', 'sync': 'full'}
        args.update(kw)
        return self.ok('blockdev-mirror', args)

    def job(self, id='job0'):
        jobs = [j for j in self.ok('query-block-jobs') if j['device'] == id]
        return jobs[0] if jobs else None

    def event(self, name, id='job0'):
        e = self.c.event(name)
        self.assertEqual(e['data'].get('device', e['data'].get('id')), id, e)
        return e['data']

    def statuses(self, until):
        """JOB_STATUS_CHANGE statuses up to and including `until`."""
        seen = []
        while not seen or seen[-1] != until:
            seen.append(self.c.event('JOB_STATUS_CHANGE')['data']['status'])
        return seen

    def assert_export(self, mp):
        with open(mp, 'rb') as f:
            data = f.read()
        self.assertBytesEqual(data, bytes(self.reference), 'export content')

    def assert_image(self, img, data=None):
        """img's guest view equals data (the reference by default)."""
        self.check_clean(img)
        expected = self.save(bytes(self.reference if data is None else data))
        r = self.run_compare(img, expected)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())

    def run_compare(self, img, raw):
        return run_qemu_img('compare', '-U', '-f', 'qcow2', '-F', 'raw', img, raw)

    def parents_of(self, node):
        graph = self.ok('x-debug-query-block-graph')
        ids = {n['id']: n['name'] for n in graph['nodes']}
        child = [n['id'] for n in graph['nodes'] if n['name'] == node][0]
        return sorted(ids[e['parent']] for e in graph['edges']
                      if e['child'] == child)

    def export_user(self):
        """How the export shows in x-debug-query-block-graph."""
        graph = self.ok('x-debug-query-block-graph')
        return [n['name'] for n in graph['nodes'] if n['type'] == 'block-backend'][0]

    def filter_name(self):
        names = [n['node-name'] for n in self.ok('query-named-block-nodes')
                 if n['drv'] == 'mirror_top']
        self.assertEqual(len(names), 1)
        return names[0]

    def zero_runs(self, img):
        """qemu-img map of img: (start, end, host offset or None) of the
        runs that read as zeroes."""
        return [(m['start'], m['start'] + m['length'], m.get('offset'))
                for m in qemu_img_json('map', '-U', '--output=json', img)
                if m['zero']]

    def fill_second_half(self, img):
        """Puts data into the second half of img (qemu-img as the writer)."""
        raw = self.path('fill.raw')
        with open(raw, 'wb') as f:
            f.truncate(SIZE)
            f.seek(SIZE // 2)
            f.write(random.Random(3).randbytes(SIZE // 4))
        r = run_qemu_img('convert', '-n', '-f', 'raw', '-O', 'qcow2', raw, img)
        self.assertEqual(r.returncode, 0, r.stderr)


class Mirror(MirrorCase):

    def test_full_pivot_under_writes(self):
        src, mp = self.source()
        tgt = self.target()
        # slow at first, so that the writers race the copy, then unlimited
        self.assertEqual(self.mirror(speed=8 * MiB), {})
        w = self.writers(mp)
        self.assertIn('error', self.c.cmd('blockdev-del', {'node-name': 'tgt'}))
        self.join(w)
        self.assertFalse(self.job()['ready'], 'the writes raced nothing')
        w = self.writers(mp, seed=2)
        self.ok('block-job-set-speed', {'device': 'job0', 'speed': 0})
        ready = self.event('BLOCK_JOB_READY')
        self.assertEqual(ready['type'], 'mirror')
        self.assertTrue(self.job()['ready'])
        self.join(w)
        # the pivot happens while the file is read and written
        w = self.writers(mp, ops=300, seed=3)
        self.ok('job-complete', {'id': 'job0'})
        done = self.event('BLOCK_JOB_COMPLETED')
        self.join(w)
        self.assertNotIn('error', done)
        self.assertEqual(done['len'], done['offset'])
        self.assertIsNone(self.job())
        # the export writes to the target now, the source keeps its past
        pwrite_all_path(mp, b'Z' * 65536, MiB)
        self.reference[MiB:MiB + 65536] = b'Z' * 65536
        self.assert_export(mp)
        self.assertEqual(self.parents_of('tgt'), [self.export_user()])
        self.quit()
        self.assert_image(tgt)
        self.check_clean(src)
        self.assertNotEqual(self.raw_of(src)[MiB:MiB + 65536], b'Z' * 65536)

    def test_sync_top(self):
        base = self.qcow2('base.qcow2', SIZE)
        self.fill_second_half(base)
        src, mp = self.source(backing=base)
        tgt = self.target(backing=base)
        self.mirror(sync='top', speed=4 * MiB)
        w = self.writers(mp, ops=80)
        self.join(w)
        w = self.writers(mp, ops=40, seed=2)
        self.ok('block-job-set-speed', {'device': 'job0', 'speed': 0})
        self.event('BLOCK_JOB_READY')
        self.join(w)
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt)
        self.assertEqual(self.backing_chain(tgt), [(tgt, base), (base, None)])
        # only what the top allocates was copied: the target is smaller
        # than a full copy of the chain would be
        self.assertLess(os.path.getsize(tgt), os.path.getsize(src) + SIZE // 2)

    def test_sync_none_copies_new_writes(self):
        src, mp = self.source()
        tgt = self.path('tgt.qcow2')
        r = run_qemu_img('convert', '-U', '-O', 'qcow2', src, tgt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.add_disk('tgt', tgt, backing=None)
        self.mirror(sync='none')
        self.event('BLOCK_JOB_READY')
        self.assertEqual(self.job()['len'], 0)
        w = self.writers(mp, ops=80)
        self.join(w)
        self.ok('job-complete', {'id': 'job0'})
        done = self.event('BLOCK_JOB_COMPLETED')
        self.assertNotIn('error', done)
        self.assertGreater(done['len'], 0)
        self.assertLess(done['len'], SIZE)
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt)

    def test_cancel_before_ready(self):
        src, mp = self.source()
        self.target()
        self.mirror(speed=MiB)
        self.assertEqual(self.statuses('running'), ['created', 'running'])
        self.assertEqual(self.parents_of('src'), sorted(
            [self.filter_name(), 'job0']))
        self.ok('job-cancel', {'id': 'job0'})
        e = self.event('BLOCK_JOB_CANCELLED')
        self.assertLess(e['offset'], SIZE)
        self.assertEqual(self.statuses('null'), ['aborting', 'concluded', 'null'])
        # the export is back on the source, nothing else holds it
        self.assertEqual(self.parents_of('src'), [self.export_user()])
        w = self.writers(mp, ops=40)
        self.join(w)
        self.assert_export(mp)
        self.ok('blockdev-del', {'node-name': 'tgt'})
        self.quit()
        self.assert_image(src)

    def test_soft_cancel_after_ready_leaves_a_copy(self):
        src, mp = self.source()
        tgt = self.target()
        w = self.writers(mp, ops=80)
        self.mirror(**{'filter-node-name': 'mtop'})
        self.assertEqual(self.filter_name(), 'mtop')
        self.event('BLOCK_JOB_READY')
        self.join(w)
        copy = bytes(self.reference)
        self.ok('block-job-cancel', {'device': 'job0'})
        done = self.event('BLOCK_JOB_COMPLETED')     # as QEMU: not cancelled
        self.assertNotIn('error', done)
        self.assertFalse([n for n in self.ok('query-named-block-nodes')
                          if n['node-name'] == 'mtop'])
        w = self.writers(mp, ops=40, seed=5)        # the source only now
        self.join(w)
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt, copy)
        self.assert_image(src)

    def test_target_is_zero_skips_zeroes(self):
        src, mp = self.source()
        tgt = self.target()
        self.mirror(**{'x-diskstack-target-is-zero': True})
        self.event('BLOCK_JOB_READY')
        # only the data half of the disk was dirty at the start
        self.assertLessEqual(self.job()['len'], SIZE // 2)
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.quit()
        self.assert_image(tgt)
        self.assertLess(os.path.getsize(tgt), SIZE * 3 // 4)

    def test_quit_with_a_ready_mirror(self):
        src, mp = self.source()
        tgt = self.target()
        self.mirror(**{'copy-mode': 'write-blocking'})
        self.event('BLOCK_JOB_READY')
        self.quit()             # the job is cancelled, the nodes close cleanly
        self.assert_image(src)
        self.check_clean(tgt)

    def test_pause_resume(self):
        src, mp = self.source()
        tgt = self.target()
        self.mirror(speed=2 * MiB)
        self.ok('job-pause', {'id': 'job0'})
        wait_for(lambda: self.job()['status'] == 'paused',
                 lambda: 'not paused: %s' % self.job())
        self.assertTrue(self.job()['paused'])
        self.ok('block-job-set-speed', {'device': 'job0', 'speed': 0})
        self.ok('job-resume', {'id': 'job0'})
        self.event('BLOCK_JOB_READY')
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.quit()
        self.assert_image(tgt)

    def test_speed_limit(self):
        """The one timing check the issue asks for: within 10%."""
        self.source()
        self.target()
        speed = 4 * MiB
        self.mirror(speed=speed, **{'buf-size': MiB})
        wait_for(lambda: self.job()['offset'] >= MiB, lambda: str(self.job()))
        t0, o0 = time.monotonic(), self.job()['offset']
        wait_for(lambda: self.job()['offset'] >= o0 + 8 * MiB,
                 lambda: str(self.job()), timeout=10)
        t1, o1 = time.monotonic(), self.job()['offset']
        rate = (o1 - o0) / (t1 - t0)
        self.assertLess(abs(rate - speed) / speed, 0.10,
                        'rate %.0f B/s, limit %d' % (rate, speed))
        self.ok('job-cancel', {'id': 'job0'})
        self.event('BLOCK_JOB_CANCELLED')
        self.quit()

    def test_refusals(self):
        self.source()
        self.target('small', SIZE - MiB)
        self.target()
        base = {'device': 'src', 'target': 'tgt', 'sync': 'full'}
        self.refused('blockdev-mirror', dict(base, target='small'),
                     'Source and target image have different sizes')
        self.refused('blockdev-mirror', dict(base, device='nope'),
                     "Cannot find device='nope' nor node-name='nope'")
        self.refused('blockdev-mirror', dict(base, sync='sideways'),
                     "Parameter 'sync' does not accept value 'sideways'")
        self.refused('blockdev-mirror', dict(base, granularity=1000),
                     "Parameter 'granularity' expects a power of 2")
        self.refused('blockdev-mirror', dict(base, granularity=256),
                     "Parameter 'granularity' expects a value in range [512B, 64MB]")
        self.refused('blockdev-mirror', dict(base, target='src'),
                     "Can't mirror node into itself")
        self.refused('blockdev-mirror', {'device': 'src', 'target': 'tgt'},
                     "Parameter 'sync' is missing")
        self.refused('blockdev-mirror', dict(base, target='src-f'),
                     "Cannot mirror 'src' to 'src-f': one is in the other's chain")
        self.refused('blockdev-add', {'driver': 'mirror_top', 'node-name': 'm',
                                      'file': 'src'},
                     "Parameter 'driver' does not accept value 'mirror_top'")
        # job-id defaults to the device; a mirror target refuses other writers
        self.ok('blockdev-mirror', dict(base, speed=MiB))
        self.assertEqual(self.job('src')['type'], 'mirror')
        mp = self.path('t.img')
        open(mp, 'w').close()
        r = self.c.cmd('block-export-add', {'type': 'fuse', 'id': 'et',
                                             'node-name': 'tgt', 'mountpoint': mp,
                                             'writable': True})
        self.assertIn('error', r)
        self.assertIn("job 'src'", r['error']['desc'])
        for node in ('src', 'tgt'):
            r = self.c.cmd('block_resize', {'node-name': node, 'size': 2 * SIZE})
            self.assertIn("job 'src'", r.get('error', {}).get('desc', ''), r)
        self.target('tgt2')
        self.refused('blockdev-mirror', dict(base, target='tgt2', **{'job-id': 'j2'}),
                     "Node 'src' is busy: block device is in use by block job: mirror")
        self.target('tgt3')
        self.refused('blockdev-mirror', {'device': 'tgt2', 'target': 'tgt3',
                                         'sync': 'full', 'job-id': 'src'},
                     "Job ID 'src' already in use")
        self.ok('job-cancel', {'id': 'src'})
        self.event('BLOCK_JOB_CANCELLED', 'src')
        self.quit()


class WriteBlocking(MirrorCase):

    def write_stays_clean(self, mp):
        """A guest write in write-blocking mode reaches the target before
        it completes: nothing is left dirty for the background copy, so the
        job's length does not grow."""
        before = self.job()
        self.assertTrue(before['actively-synced'], before)
        data = random.Random(9).randbytes(MiB)
        pwrite_all_path(mp, data, 3 * MiB)
        self.reference[3 * MiB:4 * MiB] = data
        after = self.job()
        self.assertEqual((after['len'], after['offset']),
                         (before['len'], before['offset']))
        self.assertTrue(after['actively-synced'])

    def test_write_blocking_from_the_start(self):
        src, mp = self.source()
        tgt = self.target()
        self.mirror(**{'copy-mode': 'write-blocking'})
        self.event('BLOCK_JOB_READY')
        self.write_stays_clean(mp)
        w = self.writers(mp, ops=60)
        self.join(w)
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt)

    def test_write_blocking_races_the_copy(self):
        """Guest writes go to source and target at once while the copy
        runs over the same ranges (slow, then unlimited): whatever
        overlaps a copy in flight is left dirty and copied again; the
        target ends equal to the source."""
        src, mp = self.source()
        tgt = self.target()
        self.mirror(speed=8 * MiB, **{'copy-mode': 'write-blocking'})
        w = self.writers(mp, ops=300)
        self.join(w)
        w = self.writers(mp, ops=300, seed=2)
        self.ok('block-job-set-speed', {'device': 'job0', 'speed': 0})
        self.event('BLOCK_JOB_READY')
        self.join(w)
        w = self.writers(mp, ops=200, seed=3)
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.join(w)
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt)

    def test_block_job_change_live(self):
        src, mp = self.source()
        tgt = self.target()
        self.mirror(speed=8 * MiB)
        w = self.writers(mp, ops=60)
        self.join(w)
        self.ok('block-job-set-speed', {'device': 'job0', 'speed': 0})
        self.event('BLOCK_JOB_READY')
        self.assertFalse(self.job()['actively-synced'])
        change = {'id': 'job0', 'type': 'mirror', 'copy-mode': 'write-blocking'}
        self.refused('block-job-change', dict(change, id='nope'),
                     "Block job 'nope' not found", 'DeviceNotActive')
        self.refused('block-job-change', dict(change, type='stream'),
                     'Job type does not match')
        self.assertEqual(self.ok('block-job-change', change), {})
        wait_for(lambda: self.job()['actively-synced'], lambda: str(self.job()))
        self.write_stays_clean(mp)
        self.refused('block-job-change', dict(change, **{'copy-mode': 'background'}),
                     "Change of copy mode from 'write-blocking' to 'background' "
                     "is not supported")
        w = self.writers(mp, ops=60, seed=4)
        self.join(w)
        self.ok('block-job-cancel', {'device': 'job0'})   # a consistent copy
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.quit()
        self.assert_image(tgt)
        self.assert_image(src)


    def test_write_zeroes_and_punch_go_to_the_target(self):
        """fallocate on the export (write-zeroes) reaches the target
        before it completes: nothing is left dirty."""
        src, mp = self.source()
        tgt = self.target(discard=True)
        self.mirror(**{'copy-mode': 'write-blocking'})
        w = self.writers(mp, ops=60)
        self.event('BLOCK_JOB_READY')
        self.join(w)
        before = self.job()
        self.assertTrue(before['actively-synced'], before)
        fd = os.open(mp, os.O_RDWR)
        try:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2 * MiB)
            fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                      4 * MiB, 2 * MiB)
        finally:
            os.close(fd)
        self.reference[0:2 * MiB] = bytes(2 * MiB)
        self.reference[4 * MiB:6 * MiB] = bytes(2 * MiB)
        after = self.job()
        self.assertEqual((after['len'], after['offset']),
                         (before['len'], before['offset']), 'left dirty')
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt)
        # The target was zeroed by the guest's requests, not by the copy:
        # the copy's write-zeroes carry MAY_UNMAP and the target has
        # discard=unmap, so the copy would have left holes; the guest's
        # lose MAY_UNMAP at mirror-top (as at QEMU's, opened without
        # discard=unmap), so clusters that held data stay allocated.
        # [0, 1M) and [4M, 5M) held data on the target before.
        runs = self.zero_runs(tgt)
        for start, end in ((0, MiB), (4 * MiB, 5 * MiB)):
            inside = [r for r in runs if r[0] < end and r[1] > start]
            self.assertEqual(sum(min(r[1], end) - max(r[0], start)
                                 for r in inside), end - start, runs)
            self.assertNotIn(None, [r[2] for r in inside], runs)


class Replaces(MirrorCase):
    """replaces: the target takes the place of a node below the device
    through filters (QEMU's check_to_replace_node), here the qcow2 node
    under the exported throttle filter: the filter stays and ends up over
    the target."""

    def test_replaces_the_node_under_a_filter(self):
        src, mp = self.source(throttle=True)
        tgt = self.target()
        self.mirror(device='src-thr', replaces='src', speed=8 * MiB)
        w = self.writers(mp)
        self.join(w)
        w = self.writers(mp, seed=2)
        self.ok('block-job-set-speed', {'device': 'job0', 'speed': 0})
        self.event('BLOCK_JOB_READY')
        self.join(w)
        w = self.writers(mp, ops=300, seed=3)
        self.ok('job-complete', {'id': 'job0'})
        done = self.event('BLOCK_JOB_COMPLETED')
        self.join(w)
        self.assertNotIn('error', done)
        self.assertEqual(self.parents_of('src-thr'), [self.export_user()])
        self.assertEqual(self.parents_of('tgt'), ['src-thr'])
        self.assertEqual(self.parents_of('src'), [])
        pwrite_all_path(mp, b'Z' * 65536, MiB)
        self.reference[MiB:MiB + 65536] = b'Z' * 65536
        self.assert_export(mp)
        self.ok('blockdev-del', {'node-name': 'src'})     # nobody uses it now
        self.quit()
        self.assert_image(tgt)
        self.check_clean(src)

    def test_replaces_the_device_itself(self):
        src, mp = self.source()
        tgt = self.target()
        w = self.writers(mp, ops=80)
        self.mirror(replaces='src')
        self.event('BLOCK_JOB_READY')
        self.join(w)
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.assertEqual(self.parents_of('tgt'), [self.export_user()])
        self.quit()
        self.assert_image(tgt)

    def test_replaces_refusals(self):
        src, mp = self.source(throttle=True)
        self.target()
        args = {'job-id': 'job0', 'device': 'src-thr', 'target': 'tgt',
                'sync': 'full'}
        why = ("because it cannot be guaranteed that doing so would not lead "
               "to an abrupt change of visible data")
        self.refused('blockdev-mirror', dict(args, replaces='nope'),
                     "Failed to find node with node-name='nope'")
        # below the qcow2 node: not through filters only
        self.refused('blockdev-mirror', dict(args, replaces='src-f'),
                     "Cannot replace 'src-f' by a node mirrored from 'src-thr', "
                     + why)
        # above the device
        self.refused('blockdev-mirror', dict(args, device='src', replaces='src-thr'),
                     "Cannot replace 'src-thr' by a node mirrored from 'src', "
                     + why)
        # a node another job holds
        self.target('t2')
        self.target('t3')
        self.ok('blockdev-mirror', {'job-id': 'other', 'device': 't2',
                                    'target': 't3', 'sync': 'full', 'speed': MiB})
        self.refused('blockdev-mirror', dict(args, replaces='t3'),
                     "Node 't3' is busy: block device is in use by block job: mirror")
        self.refused('drive-mirror', {'device': 'src-thr', 'replaces': 'src',
                                      'target': self.path('new.qcow2'),
                                      'sync': 'full'},
                     "a node-name must be provided when replacing a named node "
                     "of the graph")
        # nothing was left behind: the real thing works
        w = self.writers(mp, ops=60)
        self.mirror(replaces='src')
        self.event('BLOCK_JOB_READY')
        self.join(w)
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.ok('job-cancel', {'id': 'other'})
        self.event('BLOCK_JOB_CANCELLED', 'other')
        self.assert_export(mp)
        self.quit()


class Unmap(MirrorCase):
    """drive-mirror unmap: the zero regions of the source reach a target
    full of data as write-zeroes with unmap (holes) or without (the
    clusters stay allocated, zeroed) — qemu-img map tells."""

    def run_unmap(self, unmap, ops=60):
        # the target inherits the source's discard=unmap (QEMU's flags)
        src, mp = self.source(discard=True)
        tgt = self.path('tgt.qcow2')
        self.qcow2('tgt.qcow2', SIZE)
        r = subprocess.run(['qemu-io', '-f', 'qcow2', '-c',
                            'write -P 0x55 0 %d' % SIZE, tgt], capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        w = self.writers(mp, ops=ops)
        self.ok('drive-mirror', {'device': 'src', 'target': tgt, 'sync': 'full',
                                 'mode': 'existing', 'format': 'qcow2',
                                 'node-name': 'tgt', 'unmap': unmap})
        self.event('BLOCK_JOB_READY', 'src')
        self.join(w)
        w = self.writers(mp, ops=ops, seed=2)
        self.ok('job-complete', {'id': 'src'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED', 'src'))
        self.join(w)
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt)
        runs = self.zero_runs(tgt)
        self.assertTrue(runs, 'no zero run in the target')
        return runs

    def test_unmap_true_leaves_holes(self):
        runs = self.run_unmap(True)
        self.assertEqual([r for r in runs if r[2] is not None], [], runs)

    def test_unmap_false_keeps_clusters(self):
        runs = self.run_unmap(False)
        self.assertEqual([r for r in runs if r[2] is None], [], runs)

    def test_blockdev_mirror_has_no_unmap(self):
        self.source()
        self.target()
        self.refused('blockdev-mirror', {'device': 'src', 'target': 'tgt',
                                         'sync': 'full', 'unmap': False},
                     "Parameter 'unmap' is unexpected")
        self.quit()


class ActiveCommitJob(MirrorCase):
    """The active commit is this job with type commit: as in
    qemu-storage-daemon, query-block-jobs has no actively-synced for it
    (BlockJobInfoMirror is the mirror's only), and the nodes it holds are
    busy with a job named commit."""

    def test_active_commit_reports_as_commit(self):
        base = self.qcow2('base.qcow2', SIZE)
        src, mp = self.source(backing=base)
        self.ok('block-commit', {'job-id': 'c0', 'device': 'src', 'speed': MiB})
        job = self.job('c0')
        self.assertEqual(job['type'], 'commit')
        self.assertNotIn('actively-synced', job)
        self.target()
        self.refused('blockdev-mirror', {'job-id': 'm', 'device': 'src',
                                         'target': 'tgt', 'sync': 'full'},
                     "Node 'src' is busy: block device is in use by block job: "
                     "commit")
        w = self.writers(mp, ops=60)
        self.ok('block-job-set-speed', {'device': 'c0', 'speed': 0})
        self.event('BLOCK_JOB_READY', 'c0')
        self.join(w)
        self.assertNotIn('actively-synced', self.job('c0'))
        self.ok('job-complete', {'id': 'c0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED', 'c0'))
        self.assert_export(mp)
        self.quit()
        self.assert_image(base)


class DriveMirror(MirrorCase):

    def test_absolute_paths_top_creates_over_the_backing(self):
        base = self.qcow2('base.qcow2', SIZE)
        self.fill_second_half(base)
        src, mp = self.source(backing=base)
        tgt = self.path('new.qcow2')
        self.ok('drive-mirror', {'device': 'src', 'target': tgt, 'sync': 'top',
                                 'node-name': 'new', 'speed': 8 * MiB})
        w = self.writers(mp, ops=60)
        self.join(w)
        self.ok('block-job-set-speed', {'device': 'src', 'speed': 0})
        self.event('BLOCK_JOB_READY', 'src')
        self.ok('block-job-complete', {'device': 'src'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED', 'src'))
        self.assertEqual(self.parents_of('new'), [self.export_user()])
        self.refused('blockdev-del', {'node-name': 'new'},
                     "Node 'new' is not owned by the monitor")
        self.assert_export(mp)
        self.quit()
        self.assertEqual(self.backing_chain(tgt), [(tgt, base), (base, None)])
        self.assert_image(tgt)

    def test_existing_full_and_errors(self):
        src, mp = self.source()
        tgt = self.path('exist.raw')
        with open(tgt, 'wb') as f:
            f.truncate(SIZE)
        args = {'device': 'src', 'target': tgt, 'sync': 'full', 'mode': 'existing'}
        self.refused('drive-mirror', dict(args, mode='sideways'),
                     "Parameter 'mode' does not accept value 'sideways'")
        self.refused('drive-mirror', dict(args, target=self.path('none.raw')),
                     "Could not open '%s': No such file or directory"
                     % self.path('none.raw'))
        self.ok('drive-mirror', args)
        self.event('BLOCK_JOB_READY', 'src')
        w = self.writers(mp, ops=40)
        self.join(w)
        self.ok('block-job-cancel', {'device': 'src'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED', 'src'))
        self.quit()
        with open(tgt, 'rb') as f:
            self.assertBytesEqual(f.read(), bytes(self.reference), 'mirror copy')


def mirror_events(c, src, tgt):
    """Runs one simple mirror (full, complete) over QMP connection c and
    returns its events as (name, status or sorted data keys)."""
    def ok(cmd, args):
        r = c.cmd(cmd, args)
        assert 'return' in r, (cmd, args, r)

    def seen(cond):     # waits, keeping every event in arrival order
        while not any(cond(e) for e in c.events):
            c.events.append(c.recv())
    for node, img in (('src', src), ('tgt', tgt)):
        ok('blockdev-add', {'driver': 'qcow2', 'node-name': node, 'file': {
            'driver': 'file', 'filename': img}})
    ok('blockdev-mirror', {'job-id': 'j', 'device': 'src', 'target': 'tgt',
                           'sync': 'full'})
    seen(lambda e: e['event'] == 'BLOCK_JOB_READY')
    ok('job-complete', {'id': 'j'})
    seen(lambda e: e['data'].get('status') == 'null')
    return [(e['event'], e['data'].get('status') or sorted(e['data']))
            for e in c.events]


class AsQemuStorageDaemon(MirrorCase):

    def test_event_sequence(self):
        """The same mirror on qemu-storage-daemon 7.2 (nodes not exported:
        qsd refuses a job on a writable FUSE export) gives the same events."""
        if not shutil.which('qemu-storage-daemon'):
            self.skipTest('qemu-storage-daemon is not installed')
        imgs = [self.qcow2(n, SIZE) for n in ('qs.qcow2', 'qt.qcow2',
                                                'ds.qcow2', 'dt.qcow2')]
        sock = self.path('qsd.sock')
        qsd = subprocess.Popen(['qemu-storage-daemon', '--chardev',
                                'socket,path=%s,server=on,wait=off,id=m' % sock,
                                '--monitor', 'chardev=m'],
                               stderr=subprocess.PIPE)
        self.addCleanup(qsd.wait)
        self.addCleanup(qsd.kill)
        wait_for(lambda: os.path.exists(sock), lambda: 'no qsd socket')
        q = QmpClient(sock).negotiate()
        self.addCleanup(q.close)
        theirs = mirror_events(q, imgs[0], imgs[1])
        ours = mirror_events(self.c, imgs[2], imgs[3])
        self.assertEqual(ours, theirs)
        self.quit()


class MirrorErrors(MirrorCase):

    def inject_target(self):
        img = self.qcow2('tgt.qcow2', SIZE)
        self.ok('blockdev-add', {
            'driver': 'qcow2', 'node-name': 'tgt', 'backing': None,
            'file': {'driver': 'inject', 'node-name': 'inj', 'rules': [],
                     'file': {'driver': 'file', 'node-name': 'tgt-f',
                              'filename': img}}})
        return img

    def fail_writes(self):
        self.ok('x-diskstack-inject-set', {'node-name': 'inj', 'rules': [
            {'id': 'w', 'op': 'write', 'errno': 'EIO'}]})

    def stop_then_resume(self, mp, tgt, inj, policy, operation):
        """With inject node inj failing `operation`s and policy=stop: a
        BLOCK_JOB_ERROR, the job paused (io-status failed); cleared and
        resumed, it goes ready and pivots; export and target are right."""
        self.ok('x-diskstack-inject-set', {'node-name': inj, 'rules': [
            {'id': 'x', 'op': operation, 'errno': 'EIO'}]})
        self.mirror(**{policy: 'stop'})
        e = self.event('BLOCK_JOB_ERROR')
        self.assertEqual((e['operation'], e['action']), (operation, 'stop'))
        wait_for(lambda: self.job()['status'] == 'paused', lambda: str(self.job()))
        self.assertEqual(self.job()['io-status'], 'failed')
        self.ok('x-diskstack-inject-clear', {'node-name': inj})
        self.ok('job-resume', {'id': 'job0'})
        self.event('BLOCK_JOB_READY')
        self.ok('job-complete', {'id': 'job0'})
        self.assertNotIn('error', self.event('BLOCK_JOB_COMPLETED'))
        self.assert_export(mp)
        self.quit()
        self.assert_image(tgt)

    def test_stop_then_resume(self):
        src, mp = self.source()
        self.stop_then_resume(mp, self.inject_target(), 'inj', 'on-target-error',
                              'write')

    def test_source_read_error_stop_then_resume(self):
        src, mp = self.source(inject=True)
        self.stop_then_resume(mp, self.target(), 'src-inj', 'on-source-error',
                              'read')

    def test_report_fails_cleanly(self):
        src, mp = self.source()
        self.inject_target()
        self.fail_writes()
        self.mirror()
        e = self.event('BLOCK_JOB_ERROR')
        self.assertEqual((e['operation'], e['action']), ('write', 'report'))
        done = self.event('BLOCK_JOB_COMPLETED')
        self.assertIn('error', done)
        self.assertIsNone(self.job())
        self.assertEqual(self.parents_of('src'), [self.export_user()])
        w = self.writers(mp, ops=40)
        self.join(w)
        self.assert_export(mp)
        self.quit()
        self.assert_image(src)

