"""Hostile input (issue 6): backing files named by a crafted image, and
clients of the control socket that send garbage, flood, or vanish.

Backing files: a name taken from an image's metadata opens only a regular
file, read-only, never created; a device, directory, FIFO or a loop in the
chain is refused with a message naming the path and why.  A block device
named explicitly by the user still opens.

Control socket: 0600 and owned by the daemon's user whatever the umask;
binary garbage, NULs, invalid UTF-8, 10000-deep nesting, a 10 MiB command,
10000 commands sent without reading, clients that disconnect mid-command or
by the hundred: after each the daemon is alive, answers a normal client, and
holds no leaked connection.  (test_qmp.py covers the 10 MiB garbage line and
the slow reader dropped past 16 MiB of backlog.)
"""

import json
import os
import random
import socket
import stat
import struct
import subprocess
import threading

from common import (MiB, FuseTestCase, run_diskstack, run_qemu_img,
                    require_tool, wait_for)
from qmp import QmpClient
from test_qmp import QmpHelpers

TIMEOUT = 15.0


def make_overlay(path, backing, backing_fmt='raw', size=MiB):
    """A qcow2 image whose header names `backing` verbatim (qemu-img -u:
    the backing file is neither opened nor checked)."""
    r = run_qemu_img('create', '-f', 'qcow2', '-u', '-b', backing,
                     '-F', backing_fmt, path, str(size))
    if r.returncode != 0:
        raise AssertionError('qemu-img create: %r' % r.stderr)


def set_backing_name(path, name):
    """Rewrites the backing file name in a qcow2 header in place, for names
    qemu-img refuses to write (the image itself); the new name must have the
    length of the old one."""
    with open(path, 'r+b') as f:
        hdr = f.read(20)
        offset, = struct.unpack('>Q', hdr[8:16])
        length, = struct.unpack('>I', hdr[16:20])
        if length != len(name):
            raise ValueError('backing name length %d, want %d' % (length, len(name)))
        f.seek(offset)
        f.write(name.encode())


def open_fds(pid):
    """{fd: (target, flags)} of a process's open files."""
    out = {}
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
            with open('/proc/%d/fdinfo/%s' % (pid, fd)) as f:
                flags = int(f.read().split('flags:')[1].split()[0], 8)
        except (OSError, IndexError):
            continue
        out[int(fd)] = (target, flags)
    return out


def socket_fd_count(pid):
    return sum(1 for t, _ in open_fds(pid).values() if t.startswith('socket:'))


class HostileBacking(QmpHelpers, FuseTestCase):
    """Backing files named by image metadata."""

    def setUp(self):
        super().setUp()
        require_tool(self, 'qemu-img')

    def refused(self, image, *words):
        """`diskstack img info` and `diskstack mount` both refuse image with
        one line naming every word; returns the mount's message."""
        r = run_diskstack(['img', 'info', image])
        err = self.assertOneLineError(r, 'img info ' + image)
        mp = self.path('mnt-' + os.path.basename(image))
        r = run_diskstack(['mount', '-f', 'qcow2', '--read-only', image, mp])
        err = self.assertOneLineError(r, 'mount ' + image)
        for w in words:
            self.assertIn(w, err)
        self.assertFalse(os.path.exists(mp), 'mountpoint left behind: ' + mp)
        return err

    def test_device_named_by_metadata_refused(self):
        """/dev/zero as an absolute name, through ../ and through a symlink
        in the image's directory: refused, and the message says what it is."""
        make_overlay(self.path('abs.qcow2'), '/dev/zero')
        err = self.refused(self.path('abs.qcow2'), "'/dev/zero'",
                           'is a character device, not a regular file',
                           'named by image metadata')
        self.assertIn("backing file '/dev/zero' of '%s'" % self.path('abs.qcow2'), err)
        make_overlay(self.path('rel.qcow2'), '../' * 20 + 'dev/zero')
        self.refused(self.path('rel.qcow2'), 'dev/zero', 'character device')
        os.symlink('/dev/null', self.path('link'))
        make_overlay(self.path('lnk.qcow2'), 'link')
        self.refused(self.path('lnk.qcow2'), "link'", 'character device')

    def test_directory_fifo_missing_refused(self):
        """A directory (absolute, and "." relative to the image) and a FIFO
        are refused without hanging; a missing backing file is not created."""
        make_overlay(self.path('dir.qcow2'), '/tmp')
        self.refused(self.path('dir.qcow2'), "'/tmp' is a directory")
        make_overlay(self.path('dot.qcow2'), '.')
        self.refused(self.path('dot.qcow2'), 'is a directory')
        os.mkfifo(self.path('fifo'))
        make_overlay(self.path('fifo.qcow2'), 'fifo')
        self.refused(self.path('fifo.qcow2'), 'is a FIFO')
        make_overlay(self.path('gone.qcow2'), 'gone.raw')
        self.refused(self.path('gone.qcow2'), 'gone.raw', 'No such file')
        self.assertFalse(os.path.exists(self.path('gone.raw')),
                         'a missing backing file was created')

    def assertLoopRefused(self, image, name, of, back_to):
        """image is refused with the one short line of the loop check."""
        err = self.refused(image, "qcow2: backing file '%s' of '%s' loops back "
                           "to '%s'" % (name, of, back_to))
        self.assertLess(len(err), 1024, err)

    def test_backing_loop_refused(self):
        """An image that is its own backing file, a two-image loop and a
        loop through a symlink: one short line naming the loop, not a stack
        overflow nor a message per level."""
        make_overlay(self.path('self.qcow2'), 'selX.qcow2', 'qcow2')
        set_backing_name(self.path('self.qcow2'), 'self.qcow2')
        self.assertLoopRefused(self.path('self.qcow2'), 'self.qcow2',
                               self.path('self.qcow2'), self.path('self.qcow2'))
        make_overlay(self.path('a.qcow2'), 'b.qcow2', 'qcow2')
        make_overlay(self.path('b.qcow2'), 'a.qcow2', 'qcow2')
        self.assertLoopRefused(self.path('a.qcow2'), 'a.qcow2',
                               self.path('b.qcow2'), self.path('a.qcow2'))
        os.symlink('c.qcow2', self.path('c-link.qcow2'))
        make_overlay(self.path('c.qcow2'), 'c-link.qcow2', 'qcow2')
        self.assertLoopRefused(self.path('c.qcow2'), 'c-link.qcow2',
                               self.path('c.qcow2'), self.path('c.qcow2'))

    def test_backing_chain_past_the_depth_limit(self):
        """A chain of 205 distinct images (no loop) stops at the depth limit
        with one short message, not one prefix per level."""
        name = lambda i: 'd%03d.qcow2' % i
        make_overlay(self.path(name(0)), name(1), 'qcow2')
        with open(self.path(name(0)), 'rb') as f:
            template = f.read()
        for i in range(1, 205):
            with open(self.path(name(i)), 'wb') as f:
                f.write(template)
            set_backing_name(self.path(name(i)), name(i + 1))
        err = self.refused(self.path(name(0)), 'nested more than 200 levels')
        self.assertLess(len(err), 1024, err)

    def test_regular_backing_opened_read_only(self):
        """The usual case still works: a relative regular backing file is
        opened, O_RDONLY, and reads show its data through the overlay."""
        base = self.image('base.raw', size=MiB, data={4096: b'base' * 1024})
        make_overlay(self.path('top.qcow2'), 'base.raw')
        st = os.stat(base)
        d = self.mount(self.path('top.qcow2'), opts=['-f', 'qcow2'])
        with open(d.mountpoint, 'r+b') as f:
            f.seek(4096)
            self.assertEqual(f.read(4096), b'base' * 1024)
            f.seek(0)
            f.write(b'top' * 100)
            os.fsync(f.fileno())
        modes = [flags & os.O_ACCMODE for target, flags in open_fds(d.pid).values()
                 if target == base]
        self.assertTrue(modes, 'backing file not open')
        self.assertEqual(set(modes), {os.O_RDONLY}, 'backing file opened writable')
        self.stop_cleanly(d)
        self.assertEqual(os.stat(base).st_mtime_ns, st.st_mtime_ns,
                         'backing file modified')

    def test_block_device_only_when_named(self):
        """A loop device as a backing name in the image is refused; the same
        device named in blockdev-add as the backing opens."""
        require_tool(self, 'losetup')
        lo_img = self.image('lo.raw', size=MiB, data={0: b'dev!' * 128})
        r = subprocess.run(['losetup', '-f', '--show', lo_img],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            self.skipTest('no loop device: %r' % r.stderr)
        dev = r.stdout.decode().strip()
        self.addCleanup(subprocess.run, ['losetup', '-d', dev])
        make_overlay(self.path('top.qcow2'), dev)
        self.refused(self.path('top.qcow2'), 'is a block device',
                     'name a block device explicitly')
        d = self.start()
        c = QmpClient(self.sock).negotiate()
        r = c.cmd('blockdev-add', {
            'driver': 'qcow2', 'node-name': 'top',
            'file': {'driver': 'file', 'filename': self.path('top.qcow2')}})
        self.assertIn('is a block device', r['error']['desc'])
        r = c.cmd('blockdev-add', {
            'driver': 'qcow2', 'node-name': 'top', 'read-only': True,
            'file': {'driver': 'file', 'filename': self.path('top.qcow2')},
            'backing': {'driver': 'raw',
                        'file': {'driver': 'file', 'filename': dev}}})
        self.assertEqual(r, {'return': {}})
        mp = self.path('top.img')
        open(mp, 'w').close()
        r = c.cmd('block-export-add', {'type': 'fuse', 'id': 'e', 'node-name': 'top',
                                       'mountpoint': mp})
        self.assertEqual(r, {'return': {}})
        with open(mp, 'rb') as f:
            self.assertEqual(f.read(512), b'dev!' * 128)
        self.assertEqual(c.cmd('block-export-del', {'id': 'e'}), {'return': {}})
        self.quit(d, c)


class HostileQmp(QmpHelpers, FuseTestCase):
    """Clients of the control socket."""

    def setUp(self):
        super().setUp()
        self.d = self.start()

    def assert_serving(self):
        """The daemon is alive and a fresh client is served."""
        self.assertIsNone(self.d.proc.poll(), self.d.describe())
        c = QmpClient(self.sock).negotiate()
        self.assertEqual(c.cmd('query-version', id='alive')['id'], 'alive')
        c.close()

    def replies_until(self, c, marker):
        """Reads replies up to the one with id marker; returns the others."""
        out = []
        while True:
            r = c.reply()
            if r.get('id') == marker:
                return out
            out.append(r)

    def test_socket_mode_and_owner(self):
        """0600 and the daemon's uid, even when started with umask 0."""
        self.d.cleanup()
        old = os.umask(0)
        try:
            self.d = self.start()
        finally:
            os.umask(old)
        st = os.stat(self.sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        with open('/proc/%d/status' % self.d.pid) as f:
            uid = [l.split()[1] for l in f if l.startswith('Uid:')][0]
        self.assertEqual(st.st_uid, int(uid))
        self.assertEqual(st.st_uid, os.getuid())
        self.assert_serving()

    def test_binary_garbage(self):
        """NULs, invalid UTF-8 (bare and inside strings), control bytes and
        random binary: errors only, then the same client works."""
        c = QmpClient(self.sock).negotiate()
        garbage = [b'\0' * 1000, b'\xff\xfe\xc0\xaf' * 100, bytes(range(256)),
                   b'{"execute": "query-version", "id": "\xff\xfe"}',
                   b'{"execute": "query-\0version"}',
                   b'{"execute": "query-version", "id": "\\u0000"}',
                   b'\x1b[2J\x07\x08', b'{"execute":' + b'\0' * 100 + b'}',
                   random.Random(6).randbytes(64 * 1024)]
        for g in garbage:
            c.send_raw(g.replace(b'\n', b' ') + b'\n')
            c.send_raw(b'{"execute": "query-version", "id": "after"}\n')
            for r in self.replies_until(c, 'after'):
                self.assertEqual(r['error']['class'], 'GenericError', (g[:40], r))
        self.assert_serving()
        self.quit(self.d, c)

    def test_deep_nesting_and_huge_command(self):
        """10000 levels of nesting (closed or not) and a 10 MiB command are
        each one error naming the limit; the client stays usable."""
        c = QmpClient(self.sock).negotiate()
        for g in (b'[' * 10000, b'{"a":' * 10000 + b'1' + b'}' * 10000,
                  b'{"execute": "query-version", "arguments": ' + b'[' * 10000):
            c.send_raw(g + b'\n')
            r = c.reply()
            self.assertIn('nesting depth limit exceeded', r['error']['desc'])
            self.assertEqual(c.cmd('query-version', id=1)['id'], 1)
        huge = json.dumps({'execute': 'query-version',
                           'id': 'x' * (10 * MiB)}).encode()
        sender = threading.Thread(target=c.send_raw, args=(huge + b'\n',))
        sender.start()
        r = c.reply()
        sender.join(TIMEOUT)
        self.assertIn('larger than 1 MiB', r['error']['desc'])
        self.assertEqual(c.cmd('query-version', id=2)['id'], 2)
        self.assert_serving()
        self.quit(self.d, c)

    def test_flood_without_reading(self):
        """10000 commands sent without reading a reply: another client is
        answered meanwhile, and the flooder then gets every reply in order."""
        flooder = QmpClient(self.sock).negotiate()
        other = QmpClient(self.sock).negotiate()
        n = 10000
        flood = b''.join(b'{"execute": "query-version", "id": %d}\n' % i
                         for i in range(n))
        sender = threading.Thread(target=flooder.send_raw, args=(flood,))
        sender.start()
        answered = 0
        while sender.is_alive() or answered < 5:
            self.assertEqual(other.cmd('query-version', id=answered)['id'], answered)
            answered += 1
        sender.join(TIMEOUT)
        ids = [flooder.reply()['id'] for _ in range(n)]
        self.assertEqual(ids, list(range(n)))
        self.assert_serving()
        self.quit(self.d, other)

    def test_fifo_and_char_device_refused_without_stalling(self):
        """blockdev-add of a FIFO nobody writes to (open(2) would wait for a
        writer and stall the main loop) or of a character device: a prompt
        error, also when named explicitly."""
        os.mkfifo(self.path('fifo'))
        c = QmpClient(self.sock).negotiate()
        for path, what in ((self.path('fifo'), 'is not a regular file or block device'),
                           ('/dev/zero', 'is not a regular file or block device'),
                           (self.tmp, 'Is a directory')):
            for ro in (True, False):
                r = c.cmd('blockdev-add', {'driver': 'file', 'node-name': 'f',
                                           'filename': path, 'read-only': ro})
                self.assertIn(what, r['error']['desc'], (path, ro))
        self.assert_serving()
        self.quit(self.d, c)

    def test_disconnect_mid_command(self):
        """blockdev-add, then the connection closes (or is reset) before the
        reply: the command completes, the daemon carries on."""
        img = self.image('disk.raw', size=MiB)
        for i in range(20):
            c = QmpClient(self.sock).negotiate()
            c.send_raw(json.dumps({'execute': 'blockdev-add', 'arguments': {
                'driver': 'raw', 'node-name': 'n%d' % i,
                'file': {'driver': 'file', 'filename': img,
                         'node-name': 'f%d' % i}}}).encode() + b'\n')
            if i % 2:   # RST instead of FIN
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                  struct.pack('ii', 1, 0))
            c.close()
        c = QmpClient(self.sock).negotiate()
        names = set()
        wait_for(lambda: names.update(n['node-name'] for n in c.cmd(
                     'query-named-block-nodes')['return']) or
                 all('n%d' % i in names for i in range(20)),
                 lambda: 'nodes missing: %s' % sorted(names))
        for i in range(20):
            self.assertEqual(c.cmd('blockdev-del', {'node-name': 'n%d' % i}),
                             {'return': {}})
        self.assert_serving()
        self.quit(self.d, c)

    def test_many_clients_connect_and_drop(self):
        """Hundreds of clients that leave at every stage (before reading the
        greeting, mid-request, with a reset): no connection leaks, and one
        more than the limit at once is refused with a clear error."""
        base = socket_fd_count(self.d.pid)
        for i in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.sock)
            kind = i % 4
            if kind == 1:
                s.sendall(b'{"execute": "qmp_capabilities"}\n{"execu')
            elif kind == 2:
                s.sendall(b'{"execute": "qmp_capabilities"}\n'
                          b'{"execute": "query-named-block-nodes"}\n')
            elif kind == 3:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack('ii', 1, 0))
            s.close()
        wait_for(lambda: socket_fd_count(self.d.pid) <= base,
                 lambda: 'leaked connections: %d sockets, %d before'
                 % (socket_fd_count(self.d.pid), base))
        self.assert_serving()
        # 100 at once is the limit: the 101st gets one error line instead of
        # the greeting, and is closed; leaving frees a place
        held = [QmpClient(self.sock) for _ in range(100)]
        refused = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        refused.settimeout(TIMEOUT)
        refused.connect(self.sock)
        data = b''
        while True:
            chunk = refused.recv(4096)
            if not chunk:
                break
            data += chunk
        refused.close()
        self.assertEqual(json.loads(data)['error']['desc'],
                         'Too many QMP clients (at most 100 at once)')
        held.pop().close()
        wait_for(lambda: socket_fd_count(self.d.pid) <= base + 99,
                 lambda: 'closed client still counted')
        c = QmpClient(self.sock).negotiate()
        for h in held:
            h.close()
        self.assertIn('return', c.cmd('query-version'))
        self.quit(self.d, c)
