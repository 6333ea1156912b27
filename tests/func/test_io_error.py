"""Export error policy end to end: an `inject` node fails chosen requests
below a FUSE export served over QMP, and the export's rerror/werror decide
what the program using the file sees (report: the same errno, for exactly
that request; ignore: success; stop/enospc: the request and the ones after
it are held until x-diskstack-export-resume), with BLOCK_IO_ERROR events
and query-block-exports' x-diskstack-io-status (QEMU's io-status values:
ok, failed, nospace)."""

import errno
import os
import random
import threading

from common import (MiB, FuseTestCase, is_mounted, random_bytes, run_diskstack,
                    wait_for)
from qmp import QmpClient
from test_qmp import QmpHelpers

SIZE = 4 * MiB
BLOCK = 4096


class Blocked(threading.Thread):
    """One pread/pwrite on its own fd of the export, in a thread, because
    the export may hold it.  .result is the bytes read / count written, or
    the OSError."""

    def __init__(self, path, offset, data=None, length=BLOCK):
        super().__init__(daemon=True)
        self.path, self.offset, self.data, self.length = path, offset, data, length
        self.result = None
        self.fd = os.open(path, os.O_RDWR)

    def run(self):
        try:
            if self.data is None:
                self.result = os.pread(self.fd, self.length, self.offset)
            else:
                self.result = os.pwrite(self.fd, self.data, self.offset)
        except OSError as e:
            self.result = e

    def finish(self, timeout=15.0):
        self.join(timeout)
        assert not self.is_alive(), 'request still held after %.0fs' % timeout
        try:
            os.close(self.fd)
        except OSError:
            pass             # the flush of an export that is gone
        return self.result


class IoErrorBase(QmpHelpers, FuseTestCase):
    """A daemon with inject -> file exported writable at self.mp as e0 (a
    mixin base holding no tests).  The image starts with a known pattern,
    kept in self.ref."""

    def setUp(self):
        super().setUp()
        rng = random.Random(6)
        self.ref = bytearray(random_bytes(rng, SIZE))
        self.img = self.path('disk.raw')
        with open(self.img, 'wb') as f:
            f.write(self.ref)

    def open_export(self, **policy):
        """Serves the image through inj as e0; policy: rerror=, werror=."""
        self.mp = self.path('export.img')
        open(self.mp, 'w').close()
        self.d = self.start()
        self.c = QmpClient(self.sock).negotiate()
        self.addCleanup(self.c.close)
        node = {'driver': 'inject', 'node-name': 'inj', 'rules': [],
                'file': {'driver': 'file', 'node-name': 'f0', 'filename': self.img}}
        self.assertEqual(self.c.cmd('blockdev-add', node), {'return': {}},
                         self.d.describe())
        export = dict(policy, type='fuse', id='e0', mountpoint=self.mp,
                      writable=True)
        export['node-name'] = 'inj'
        r = self.c.cmd('block-export-add', export)
        self.assertEqual(r, {'return': {}}, r)
        wait_for(lambda: is_mounted(self.mp), lambda: 'export not mounted')
        self.fd = os.open(self.mp, os.O_RDWR)
        self.addCleanup(self.close_fd)
        # runs first: stopping the daemon releases the requests a failed
        # test left held, so the threads and fds can end
        self.addCleanup(self.d.cleanup)

    def close_fd(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def fail_rule(self, rule_id, op, offset, err='EIO', length=64 * 1024):
        """Makes this rule the inject node's only one."""
        r = self.c.cmd('x-diskstack-inject-set', {'node-name': 'inj', 'rules': [
            {'id': rule_id, 'op': op, 'offset': offset, 'length': length,
             'errno': err, 'action': 'fail'}], 'replace': True})
        self.assertEqual(r, {'return': {}}, r)

    def clear_rules(self):
        self.assertEqual(self.c.cmd('x-diskstack-inject-clear', {'node-name': 'inj'}),
                         {'return': {}})

    def io_error(self, operation, action, err):
        """The next BLOCK_IO_ERROR, checked field by field."""
        data = self.c.event('BLOCK_IO_ERROR')['data']
        self.assertEqual(data, {'device': 'e0', 'node-name': 'inj',
                                'operation': operation, 'action': action,
                                'nospace': err == errno.ENOSPC,
                                'reason': os.strerror(err)})

    def io_status(self):
        exports = self.c.cmd('query-block-exports')['return']
        self.assertEqual(len(exports), 1, exports)
        return exports[0]['x-diskstack-io-status']

    def resume(self, export_id='e0'):
        return self.c.cmd('x-diskstack-export-resume', {'id': export_id})

    def assertErrno(self, err, fn, *args):
        with self.assertRaises(OSError) as cm:
            fn(*args)
        self.assertEqual(cm.exception.errno, err, cm.exception)

    def fuse_waiting(self):
        """Requests the kernel has sent to the export and not had answered
        (fusectl's `waiting` of the export's connection)."""
        conn = os.minor(os.stat(self.mp).st_dev)
        with open('/sys/fs/fuse/connections/%d/waiting' % conn) as f:
            return int(f.read())

    def wait_held(self, n, *threads):
        """Waits until n requests wait for the export and the threads that
        sent them are still blocked in them."""
        wait_for(lambda: self.fuse_waiting() >= n,
                 lambda: 'only %d requests waiting' % self.fuse_waiting())
        self.assertIn('return', self.c.cmd('query-version'))
        for t in threads:
            self.assertTrue(t.is_alive(), 'request completed while paused: %r'
                            % (t.result,))


class Report(IoErrorBase):

    def test_report_same_errno_only_failed_request(self):
        self.open_export()
        self.fail_rule('r', 'read', 1 * MiB)
        self.assertErrno(errno.EIO, os.pread, self.fd, BLOCK, 1 * MiB)
        self.io_error('read', 'report', errno.EIO)
        for rule_id, err, off in (('s', errno.ENOSPC, 2 * MiB),
                                  ('p', errno.EPERM, 3 * MiB)):
            self.fail_rule(rule_id, 'write', off, errno.errorcode[err])
            self.assertErrno(err, os.pwrite, self.fd, b'x' * BLOCK, off)
            self.io_error('write', 'report', err)
        self.assertEqual(self.io_status(), 'ok')

        # readers of other ranges are untouched while one reader keeps failing
        self.fail_rule('r', 'read', 1 * MiB)
        failures, errors = [], []

        def reader(idx):
            fd = os.open(self.mp, os.O_RDONLY)
            try:
                for i in range(40):
                    off = ((idx * 40 + i) * 8 * BLOCK) % (1 * MiB)
                    got = os.pread(fd, BLOCK, off)
                    if got != self.ref[off:off + BLOCK]:
                        errors.append('reader %d: wrong data at %d' % (idx, off))
            except OSError as e:
                errors.append('reader %d: %s' % (idx, e))
            finally:
                os.close(fd)

        def failing_reader():
            fd = os.open(self.mp, os.O_RDONLY)
            try:
                for i in range(20):
                    try:
                        os.pread(fd, BLOCK, 1 * MiB + (i % 16) * BLOCK)
                        errors.append('read %d in the failing range succeeded' % i)
                    except OSError as e:
                        failures.append(e.errno)
            finally:
                os.close(fd)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
        threads.append(threading.Thread(target=failing_reader))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(failures, [errno.EIO] * 20)
        for _ in range(20):      # one event per failed request, none dropped
            self.io_error('read', 'report', errno.EIO)
        self.clear_rules()
        self.assertEqual(os.pread(self.fd, BLOCK, 1 * MiB),
                         self.ref[1 * MiB:1 * MiB + BLOCK])
        self.quit(self.d, self.c)

    def test_ignore(self):
        self.open_export(rerror='ignore', werror='ignore')
        self.fail_rule('r', 'read', 1 * MiB)
        self.assertEqual(os.pread(self.fd, BLOCK, 1 * MiB), bytes(BLOCK))
        self.io_error('read', 'ignore', errno.EIO)
        self.fail_rule('w', 'write', 2 * MiB)
        self.assertEqual(os.pwrite(self.fd, b'y' * BLOCK, 2 * MiB), BLOCK)
        self.io_error('write', 'ignore', errno.EIO)
        self.clear_rules()
        # the ignored write is lost: that is what ignore means
        self.assertEqual(os.pread(self.fd, BLOCK, 2 * MiB),
                         self.ref[2 * MiB:2 * MiB + BLOCK])
        self.assertEqual(self.io_status(), 'ok')
        self.quit(self.d, self.c)

    def test_policy_option_errors(self):
        self.d = self.start()
        self.c = QmpClient(self.sock).negotiate()
        self.add_raw(self.c, self.img)
        mp = self.path('export.img')
        open(mp, 'w').close()
        r = self.c.cmd('block-export-add', {'type': 'fuse', 'id': 'e0',
                                            'node-name': 'disk', 'mountpoint': mp,
                                            'werror': 'sometimes'})
        self.assertEqual(r['error']['class'], 'GenericError')
        self.assertIn('werror', r['error']['desc'])
        r = self.resume('nope')
        self.assertEqual(r['error'], {'class': 'GenericError',
                                      'desc': "Export 'nope' is not found"})
        self.quit(self.d, self.c)


class Stop(IoErrorBase):

    def test_stop_holds_until_resume(self):
        self.open_export(rerror='stop', werror='stop')
        self.fail_rule('w', 'write', 1 * MiB)
        data = b'z' * BLOCK
        writer = Blocked(self.mp, 1 * MiB, data)
        writer.start()
        self.io_error('write', 'stop', errno.EIO)
        self.assertEqual(self.io_status(), 'failed')
        # a read of a healthy range is held as well
        reader = Blocked(self.mp, 3 * MiB)
        reader.start()
        self.wait_held(2, writer, reader)
        # a close (the kernel's flush) is not held: forks and execs go on
        os.close(os.open(self.mp, os.O_RDONLY))

        # a retry that fails again pauses again, with a new event (the
        # reader may have got through in between, or be held again)
        self.assertEqual(self.resume(), {'return': {}})
        self.io_error('write', 'stop', errno.EIO)
        self.assertEqual(self.io_status(), 'failed')
        self.wait_held(1, writer)

        self.clear_rules()
        self.assertEqual(self.resume(), {'return': {}})
        self.assertEqual(writer.finish(), BLOCK)
        self.assertEqual(reader.finish(), self.ref[3 * MiB:3 * MiB + BLOCK])
        self.assertEqual(os.pread(self.fd, BLOCK, 1 * MiB), data)
        self.assertEqual(self.io_status(), 'ok')
        r = self.resume()
        self.assertEqual(r['error'], {'class': 'GenericError',
                                      'desc': "Export 'e0' is not paused"})
        self.assertEqual([e for e in self.c.events if e['event'] == 'BLOCK_IO_ERROR'], [])
        self.quit(self.d, self.c)

    def test_enospc(self):
        self.open_export(werror='enospc')
        self.fail_rule('s', 'write', 1 * MiB, 'ENOSPC')
        writer = Blocked(self.mp, 1 * MiB, b'n' * BLOCK)
        writer.start()
        self.io_error('write', 'stop', errno.ENOSPC)
        self.assertEqual(self.io_status(), 'nospace')
        self.wait_held(1, writer)
        self.clear_rules()
        # the client's verb this time
        r = run_diskstack(['export', 'resume', 'e0', '--socket', self.sock])
        self.assertEqual((r.returncode, r.stdout), (0, b"export 'e0' resumed\n"), r)
        self.assertEqual(writer.finish(), BLOCK)
        self.assertEqual(os.pread(self.fd, BLOCK, 1 * MiB), b'n' * BLOCK)
        r = run_diskstack(['export', 'resume', 'e0', '--socket', self.sock])
        self.assertOneLineError(r, 'resume of a running export')
        self.assertIn("Export 'e0' is not paused", r.stderr.decode())
        # any other errno is reported
        self.fail_rule('e', 'write', 2 * MiB, 'EIO')
        self.assertErrno(errno.EIO, os.pwrite, self.fd, b'e' * BLOCK, 2 * MiB)
        self.io_error('write', 'report', errno.EIO)
        self.assertEqual(self.io_status(), 'ok')
        self.quit(self.d, self.c)

    def test_graph_change_while_paused(self):
        """A snapshot quiesces the paused export's node: held requests are
        not in flight, so it completes; the retry writes to the overlay."""
        self.open_export(werror='stop')
        self.fail_rule('w', 'write', 1 * MiB)
        writer = Blocked(self.mp, 1 * MiB, b's' * BLOCK)
        writer.start()
        self.io_error('write', 'stop', errno.EIO)
        self.wait_held(1, writer)
        r = self.c.cmd('blockdev-snapshot-sync', {
            'node-name': 'inj', 'snapshot-file': self.path('top.qcow2'),
            'snapshot-node-name': 'top', 'format': 'qcow2'})
        self.assertEqual(r, {'return': {}}, r)
        self.assertEqual(self.c.cmd('query-block-exports')['return'][0]['node-name'],
                         'top')
        self.assertTrue(writer.is_alive())
        self.assertEqual(self.resume(), {'return': {}})
        self.assertEqual(writer.finish(), BLOCK)
        self.assertEqual(os.pread(self.fd, BLOCK, 1 * MiB), b's' * BLOCK)
        with open(self.img, 'rb') as f:      # the base is unchanged
            f.seek(1 * MiB)
            self.assertEqual(f.read(BLOCK), self.ref[1 * MiB:1 * MiB + BLOCK])
        self.quit(self.d, self.c)


class DeletePaused(IoErrorBase):

    def test_export_del_fails_held_requests(self):
        self.open_export(rerror='stop', werror='stop')
        self.fail_rule('w', 'write', 1 * MiB)
        writer = Blocked(self.mp, 1 * MiB, b'd' * BLOCK)
        writer.start()
        self.io_error('write', 'stop', errno.EIO)
        reader = Blocked(self.mp, 0)
        reader.start()
        self.wait_held(2, writer, reader)
        self.assertEqual(self.c.cmd('block-export-del', {'id': 'e0'}), {'return': {}})
        for t in (writer, reader):
            result = t.finish()
            self.assertIsInstance(result, OSError)
            self.assertEqual(result.errno, errno.EIO, result)
        self.c.event('BLOCK_EXPORT_DELETED')
        wait_for(lambda: not is_mounted(self.mp), lambda: 'still mounted')
        self.assertEqual(self.c.cmd('query-block-exports'), {'return': []})
        self.assertIn('return', self.c.cmd('query-version'))
        self.quit(self.d, self.c)

    def test_quit_while_paused(self):
        self.open_export(werror='stop')
        self.fail_rule('w', 'write', 1 * MiB)
        writer = Blocked(self.mp, 1 * MiB, b'q' * BLOCK)
        writer.start()
        self.io_error('write', 'stop', errno.EIO)
        self.wait_held(1, writer)
        self.quit(self.d, self.c)
        result = writer.finish()
        self.assertIsInstance(result, OSError)
        self.assertEqual(result.errno, errno.EIO, result)
