"""The `diskstack` client verbs (graph, nodes, exports, snapshot, backing,
export, qmp) over QMP: against `diskstack serve`, against `diskstack mount`'s
QMP socket, and against qemu-storage-daemon (the reference the verbs are
written for).  Also the default socket paths and how the client finds the
one daemon that is running.

Every test gets its own runtime directory (XDG_RUNTIME_DIR), so daemons of
other tests and other users never count in socket discovery.  A diskstack
case whose QMP command is not implemented yet is skipped with the command's
name.
"""

import json
import os
import random
import socket
import stat
import subprocess
import threading

from common import (MiB, FuseTestCase, is_mounted, diskstack_bin, nonempty_lines,
                    pread_all, pwrite_all, read_file, run_qemu_img, require_tool,
                    wait_for, write_at)

SIZE = 16 * MiB
SOCKET_LINE = 'diskstack: QMP socket: '
CLIENT_TIMEOUT = 60


def socket_from_stderr(text):
    """The path of the "diskstack: QMP socket: PATH" line, or None."""
    for line in text.splitlines():
        if line.startswith(SOCKET_LINE):
            return line[len(SOCKET_LINE):]
    return None


class ClientCase(FuseTestCase):
    """A private runtime dir, the client as a subprocess, daemons to talk to."""

    def setUp(self):
        super().setUp()
        self.runtime = self.path('xdg')
        os.mkdir(self.runtime, 0o700)
        # The daemons inherit os.environ: point them at our runtime dir.
        saved = {k: os.environ.get(k) for k in ('XDG_RUNTIME_DIR', 'DISKSTACK_SOCKET')}
        self.addCleanup(self._restore_env, saved)
        os.environ['XDG_RUNTIME_DIR'] = self.runtime
        os.environ.pop('DISKSTACK_SOCKET', None)
        self.sockdir = os.path.join(self.runtime, 'diskstack')
        self.sock = None          # the socket client() uses by default

    @staticmethod
    def _restore_env(saved):
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    # ------------------------------------------------------------ client

    def client(self, *args, sock='default', env=None):
        """Runs `diskstack ARGS [--socket S]`; sock=None: no --socket."""
        cmd = [diskstack_bin()] + list(args)
        sock = self.sock if sock == 'default' else sock
        if sock:
            cmd += ['--socket', sock]
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env or dict(os.environ), timeout=CLIENT_TIMEOUT)

    def ok(self, *args, **kw):
        r = self.client(*args, **kw)
        self.assertEqual(r.returncode, 0, '%s: %s' % (' '.join(args), r.stderr.decode()))
        return r.stdout.decode()

    def ok_json(self, *args, **kw):
        out = self.ok(*(args + ('--json',)), **kw)
        try:
            return json.loads(out)
        except ValueError:
            self.fail('%s --json printed no JSON: %r' % (' '.join(args), out))

    def fails(self, code, *args, **kw):
        """Asserts exit `code`; for 1 also the one-line "diskstack: " error."""
        r = self.client(*args, **kw)
        err = r.stderr.decode()
        self.assertEqual(r.returncode, code, '%s: exit %d, stderr %r'
                         % (' '.join(args), r.returncode, err))
        if code == 1:
            lines = nonempty_lines(err)
            self.assertEqual(len(lines), 1, '%s: not one line: %r' % (' '.join(args), err))
            self.assertTrue(lines[0].startswith('diskstack: '), lines[0])
        return err.strip()

    def has_command(self, name):
        names = [c['name'] for c in self.ok_json('qmp', 'query-commands')['return']]
        return name in names

    def require_command(self, *names):
        for name in names:
            if not self.has_command(name):
                self.skipTest('the daemon has no %s yet' % name)

    # ------------------------------------------------------------ daemons

    def qcow2(self, name, data=None):
        """A 16 MiB qcow2 image; `data` is {offset: byte}: 64 KiB of it."""
        require_tool(self, 'qemu-img')
        p = self.path(name)
        raw = self.image(name + '.raw', size=SIZE,
                         data={off: bytes([b]) * 65536 for off, b in (data or {}).items()})
        r = run_qemu_img('convert', '-f', 'raw', '-O', 'qcow2', raw, p)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        os.unlink(raw)
        return p

    def start_serve(self, args=(), qmp=True, mountpoint=None):
        """`diskstack serve` with one IOThread; returns (daemon, socket)."""
        full = ['--iothreads', '1'] + list(args)
        if qmp:
            full += ['--qmp', self.path('qmp-%d.sock' % len(self.daemons))]
        d = self.serve(full, mountpoint or self.path('unused'), wait=False)
        return d, self.wait_socket(d)

    def wait_socket(self, d):
        """Waits for the daemon's "QMP socket:" line; returns the path."""
        text = d.wait_stderr(lambda t: socket_from_stderr(t) is not None or
                             d.proc.poll() is not None)
        self.assertIsNone(d.proc.poll(), d.describe())
        path = socket_from_stderr(text)
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode), path)
        return path

    def serve_disk(self, writable=True):
        """serve with node disk (qcow2 over file node f0) exported as e0."""
        img = self.qcow2('disk.qcow2', data={0: 0x5a})
        mp = self.path('e0.img')
        open(mp, 'w').close()
        d, sock = self.start_serve([
            '--blockdev', 'driver=file,node-name=f0,filename=' + img,
            '--blockdev', 'driver=qcow2,node-name=disk,file=f0',
            '--export', 'type=fuse,id=e0,node-name=disk,mountpoint=%s,writable=%s'
            % (mp, 'on' if writable else 'off')])
        self.sock = sock
        return d, img, mp

    def start_qsd(self, args):
        require_tool(self, 'qemu-storage-daemon')
        sock = self.path('qsd.sock')
        log = open(self.path('qsd.stderr'), 'wb')
        self.addCleanup(log.close)
        p = subprocess.Popen(['qemu-storage-daemon'] + list(args) + [
            '--chardev', 'socket,path=%s,server=on,wait=off,id=m' % sock,
            '--monitor', 'chardev=m'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True)
        self.addCleanup(self._kill, p)
        wait_for(lambda: os.path.exists(sock) or p.poll() is not None,
                 lambda: 'qemu-storage-daemon made no socket')
        if p.poll() is not None:
            self.fail('qemu-storage-daemon exited: ' + read_file(log.name).decode())
        return sock

    @staticmethod
    def _kill(p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        p.wait()


class ServeClient(ClientCase):
    """Every verb against `diskstack serve --qmp`."""

    def test_nodes_exports_graph(self):
        _, img, mp = self.serve_disk()
        out = self.ok('nodes')
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ['NODE', 'DRIVER', 'SIZE', 'MODE', 'FILE'])
        self.assertIn(['disk', 'qcow2', '16', 'MiB', 'rw', img], [l.split() for l in lines])
        nodes = {n['node-name']: n for n in self.ok_json('nodes')}
        self.assertEqual(set(nodes), {'disk', 'f0'})
        self.assertEqual(nodes['disk']['image']['virtual-size'], SIZE)

        out = self.ok('exports')
        self.assertEqual(out.splitlines()[0].split(), ['ID', 'TYPE', 'NODE', 'MOUNTPOINT'])
        self.assertEqual(out.splitlines()[1].split()[:2], ['e0', 'fuse'])
        self.assertEqual([e['id'] for e in self.ok_json('exports')], ['e0'])

        out = self.ok('graph')
        self.assertTrue(out.startswith('export e0 (fuse'), out)
        self.assertIn('disk  qcow2  16 MiB  ' + img, out)
        g = self.ok_json('graph')
        self.assertEqual(set(g), {'exports', 'nodes', 'graph', 'jobs'})
        self.assertEqual({n['node-name'] for n in g['nodes']}, {'disk', 'f0'})
        if g['graph'] is not None:
            # with the edges, f0 hangs below disk instead of being a root
            self.assertIn('`-- file: f0  file', out)
            if g['exports'][0].get('node-name') == 'disk':
                self.assertIn('export e0 (fuse', out.splitlines()[0])
                self.assertEqual(out.splitlines()[1], '`-- disk  qcow2  16 MiB  ' + img)

    def test_export_add_del(self):
        self.serve_disk()
        # a node of its own for e1: e0 already writes to disk
        raw = self.image('d1.raw', size=SIZE, data={0: b'\x5a' * 4})
        self.ok('qmp', 'blockdev-add', json.dumps(
            {'driver': 'file', 'node-name': 'f1', 'filename': raw}))
        self.ok('qmp', '{"execute": "blockdev-add", "arguments": '
                       '{"driver": "raw", "node-name": "d1", "file": "f1"}}')
        mp = self.path('e1.img')
        open(mp, 'w').close()
        out = self.ok('export', 'add', 'e1', 'd1', mp, '--writable')
        self.assertIn("export 'e1'", out)
        wait_for(lambda: is_mounted(mp), lambda: 'e1 not mounted')
        self.assertEqual(read_file(mp)[:4], b'\x5a' * 4)
        write_at(mp, 4096, b'client')
        self.assertEqual(read_file(raw)[4096:4102], b'client')
        self.assertEqual(sorted(e['id'] for e in self.ok_json('exports')), ['e0', 'e1'])
        self.assertEqual(self.ok_json('export', 'del', 'e1'), {})
        self.assertFalse(is_mounted(mp), 'export del returned before the unmount')
        self.assertEqual([e['id'] for e in self.ok_json('exports')], ['e0'])
        self.assertIn('e1', self.fails(1, 'export', 'del', 'e1'))
        err = self.fails(1, 'export', 'add', 'e2', 'nosuch', mp)
        self.assertIn('nosuch', err)
        # relative mountpoints are made absolute by the client, not the daemon
        open(self.path('rel.img'), 'w').close()
        r = subprocess.run([diskstack_bin(), 'export', 'add', 'e3', 'd1', 'rel.img',
                            '--socket', self.sock, '--iothread', 'iothread0'],
                           cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=CLIENT_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        wait_for(lambda: is_mounted(self.path('rel.img')), lambda: 'e3 not mounted')
        self.ok('export', 'del', 'e3')

    def test_qmp_raw(self):
        self.serve_disk()
        out = self.ok('qmp', 'query-version')
        self.assertGreater(len(out.splitlines()), 1, 'not pretty-printed: %r' % out)
        self.assertTrue(json.loads(out)['return']['package'].startswith('diskstack'))
        r = self.ok_json('qmp', '{"execute": "query-block-exports"}')
        self.assertEqual([e['id'] for e in r['return']], ['e0'])
        r = self.ok_json('qmp', 'query-named-block-nodes', '{"flat": true}')
        self.assertEqual(len(r['return']), 2)
        # an error reply: printed, one line on stderr, exit 1
        r = self.client('qmp', 'no-such-command')
        self.assertEqual(r.returncode, 1)
        self.assertEqual(json.loads(r.stdout)['error']['class'], 'CommandNotFound')
        self.assertEqual(nonempty_lines(r.stderr),
                         ['diskstack: The command no-such-command has not been found'])
        self.assertIn('missing', self.fails(1, 'qmp', 'blockdev-del'))
        # bad JSON on the command line is a usage error
        self.fails(2, 'qmp', '{"execute": 1}')
        self.fails(2, 'qmp', '{"execute": "query-version"')
        self.fails(2, 'qmp', 'query-version', '[1]')
        self.fails(2, 'qmp')

    def test_snapshot_external(self):
        d, img, mp = self.serve_disk()
        self.require_command('blockdev-snapshot-sync')
        overlay = self.path('overlay.qcow2')
        out = self.ok('snapshot', 'create', 'disk', '--file', overlay,
                      '--node-name', 'ov', '--format', 'qcow2')
        self.assertIn(overlay, out)
        self.assertTrue(os.path.exists(overlay))
        nodes = {n['node-name']: n for n in self.ok_json('nodes')}
        self.assertIn('ov', nodes)
        self.assertEqual(nodes['ov']['drv'], 'qcow2')
        write_at(mp, 0, b'after')
        self.assertEqual(read_file(mp)[:8], b'after' + b'\x5a' * 3)
        # without --node-name: the first free OVERLAY-snapN
        self.ok('snapshot', 'create', 'ov', '--file', self.path('overlay2.qcow2'))
        self.ok('snapshot', 'create', 'ov-snap1', '--file', self.path('overlay3.qcow2'))
        nodes = {n['node-name'] for n in self.ok_json('nodes')}
        self.assertTrue({'ov-snap1', 'ov-snap1-snap1'} <= nodes, nodes)
        self.assertEqual(read_file(mp)[:8], b'after' + b'\x5a' * 3)
        err = self.fails(1, 'snapshot', 'create', 'nosuch', '--file', self.path('x.qcow2'))
        self.assertIn('nosuch', err)
        self.fails(2, 'snapshot', 'create', 'disk')                    # no --file
        self.fails(2, 'snapshot', 'create', 'disk', 'x', '--file', overlay)
        self.stop_cleanly(d)
        info = json.loads(run_qemu_img('info', '--output=json', overlay).stdout)
        self.assertEqual(info.get('backing-filename'), img)
        for name in ('overlay.qcow2', 'overlay2.qcow2', 'overlay3.qcow2'):
            self.assertEqual(run_qemu_img('check', self.path(name)).returncode, 0, name)

    def test_snapshot_internal(self):
        self.serve_disk()
        self.require_command('blockdev-snapshot-internal-sync',
                             'blockdev-snapshot-delete-internal-sync')
        self.assertEqual(self.ok('snapshot', 'list', 'disk').strip(),
                         "node 'disk' has no internal snapshots")
        self.assertEqual(self.ok_json('snapshot', 'list', 'disk'), [])
        self.ok('snapshot', 'create', '--internal', 'disk', 'first')
        self.assertEqual(self.ok_json('snapshot', 'create', '--internal', 'disk', 'second'), {})
        snaps = self.ok_json('snapshot', 'list', 'disk')
        self.assertEqual([s['name'] for s in snaps], ['first', 'second'])
        table = self.ok('snapshot', 'list', 'disk').splitlines()
        self.assertEqual(table[0].split()[:2], ['ID', 'NAME'])
        self.assertEqual([l.split()[1] for l in table[1:]], ['first', 'second'])
        self.assertIn('first', self.fails(1, 'snapshot', 'create', '--internal', 'disk', 'first'))
        gone = self.ok_json('snapshot', 'delete', '--internal', 'disk', 'first')
        self.assertEqual(gone['name'], 'first')
        self.assertEqual([s['name'] for s in self.ok_json('snapshot', 'list', 'disk')],
                         ['second'])
        self.fails(1, 'snapshot', 'delete', '--internal', 'disk', 'first')
        self.fails(1, 'snapshot', 'list', 'nosuch')
        self.fails(2, 'snapshot', 'delete', 'disk', 'second')          # not --internal
        self.fails(2, 'snapshot', 'create', '--internal', 'disk')      # no NAME
        self.fails(2, 'snapshot', 'create', '--internal', 'disk', 'n', '--file', 'x')

    def test_backing_set(self):
        base = self.qcow2('base.qcow2', data={0: 0x42})
        top = self.qcow2('top.qcow2')
        mp = self.path('top.img')
        open(mp, 'w').close()
        d, self.sock = self.start_serve([
            '--blockdev', 'driver=file,node-name=fb,filename=' + base,
            '--blockdev', 'driver=qcow2,node-name=base,file=fb,read-only=on',
            '--blockdev', 'driver=file,node-name=ft,filename=' + top,
            '--blockdev', '{"driver": "qcow2", "node-name": "top", "file": "ft", '
                          '"backing": null, "detect-zeroes": "on"}',
            '--export', 'type=fuse,id=e0,node-name=top,mountpoint=' + mp])
        self.require_command('blockdev-reopen', 'x-debug-query-block-graph')
        self.assertEqual(read_file(mp)[:4], b'\0' * 4)
        out = self.ok('backing', 'set', 'top', 'base')
        self.assertIn("'base'", out)
        self.assertRegex(self.ok('graph'), r'\n    [|`]-- backing: base  qcow2')
        self.assertEqual(read_file(mp)[:4], b'\x42' * 4)
        # the options the reopen did not mean to change are kept
        top_info = [n for n in self.ok_json('nodes') if n['node-name'] == 'top'][0]
        self.assertEqual(top_info['detect_zeroes'], 'on')
        self.assertEqual(self.ok_json('backing', 'set', 'top', 'none'), {})
        self.assertNotIn('backing:', self.ok('graph'))
        self.assertEqual(read_file(mp)[:4], b'\0' * 4)
        self.assertIn('nosuch', self.fails(1, 'backing', 'set', 'nosuch', 'base'))
        self.assertIn('nosuch', self.fails(1, 'backing', 'set', 'top', 'nosuch'))
        self.fails(1, 'backing', 'set', 'top', 'top')                  # a cycle
        self.fails(2, 'backing', 'set', 'top')
        self.fails(2, 'backing', 'frob', 'top', 'base')

    def test_usage_and_connection_errors(self):
        self.serve_disk()
        for args in (['snapshot'], ['export'], ['backing'], ['nodes', 'extra'],
                     ['nodes', '--bogus'], ['graph', '--file', 'x'],
                     ['exports', '--socket']):
            self.fails(2, *args, sock=None)
        self.assertIn('/nonexistent', self.fails(1, 'nodes', sock='/nonexistent'))
        # something that accepts but does not speak QMP
        path = self.path('not-qmp.sock')
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        self.addCleanup(srv.close)

        def answer():
            conn, _ = srv.accept()
            conn.sendall(b'hello\n')
            conn.close()
        t = threading.Thread(target=answer)
        t.start()
        self.assertIn('not QMP', self.fails(1, 'nodes', sock=path))
        t.join()
        for verb in ('graph', 'nodes', 'exports', 'snapshot', 'qmp'):
            r = self.client(verb, '--help', sock=None)
            self.assertEqual(r.returncode, 0, verb)
            self.assertIn('Usage: diskstack ' + verb, r.stdout.decode())

    def test_socket_option_env_and_global(self):
        self.serve_disk()
        sock, self.sock = self.sock, None
        self.assertIn('disk', self.ok('nodes', '--socket', sock))
        self.assertIn('disk', self.ok('--socket', sock, 'nodes'))
        self.assertIn('disk', self.ok('nodes', env=dict(os.environ, DISKSTACK_SOCKET=sock)))
        # --socket wins over the environment
        self.fails(1, 'nodes', '--socket', self.path('none.sock'),
                   env=dict(os.environ, DISKSTACK_SOCKET=sock))


class Discovery(ClientCase):
    """Default socket paths and finding the one running daemon."""

    def test_serve_default_socket_and_discovery(self):
        self.fails(1, 'nodes', sock=None)             # no daemon yet
        d1, s1 = self.start_serve(qmp=False)
        self.assertEqual(s1, os.path.join(self.sockdir, 'serve-%d.qmp' % d1.pid))
        self.assertEqual(stat.S_IMODE(os.stat(self.sockdir).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(s1).st_mode), 0o600)
        self.assertEqual(self.ok_json('nodes', sock=None), [])
        d2, s2 = self.start_serve(qmp=False)
        err = self.fails(1, 'nodes', sock=None)
        self.assertIn(s1, err)
        self.assertIn(s2, err)
        self.assertIn('--socket', err)
        self.stop_cleanly(d1)
        self.assertFalse(os.path.exists(s1), 'socket left behind at exit')
        self.assertEqual(self.ok_json('exports', sock=None), [])
        self.stop_cleanly(d2)
        self.assertFalse(os.path.exists(s2))
        self.assertIn('no diskstack daemon', self.fails(1, 'nodes', sock=None))

    def test_stale_socket_is_not_a_daemon(self):
        os.mkdir(self.sockdir, 0o700)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(os.path.join(self.sockdir, 'serve-1.qmp'))
        stale.close()                                   # nobody accepts there
        open(os.path.join(self.sockdir, 'junk.qmp'), 'w').close()
        d, s = self.start_serve(qmp=False)
        self.assertEqual(self.ok_json('exports', sock=None), [])
        self.stop_cleanly(d)

    def test_mount_default_and_explicit_socket(self):
        img = self.image(size=SIZE)
        d = self.mount(img, opts=['--iothreads', '1'])
        s = self.wait_socket(d)
        self.assertEqual(s, os.path.join(self.sockdir, 'mount-%d.qmp' % d.pid))
        self.assertEqual(sorted(n['node-name'] for n in self.ok_json('nodes', sock=None)),
                         ['disk', 'file'])
        self.assertEqual([e['id'] for e in self.ok_json('exports', sock=None)], ['mount'])
        self.stop_cleanly(d)
        self.assertFalse(os.path.exists(s))
        mine = self.path('m.qmp')
        d = self.mount(img, mountpoint=self.path('m2.img'),
                       opts=['--iothreads', '1', '--qmp', mine])
        self.assertEqual(self.wait_socket(d), mine)
        self.assertIn('disk', self.ok('nodes', sock=mine))
        fusermount = subprocess.run(['fusermount3', '-u', self.path('m2.img')])
        self.assertEqual(fusermount.returncode, 0)
        self.assertEqual(d.wait_exit(), 0, d.describe())
        self.assertFalse(os.path.exists(mine))


    def test_mount_refuses_a_qmp_path_that_is_a_file(self):
        img = self.image(size=SIZE)
        taken = self.path('taken')
        with open(taken, 'w') as f:
            f.write('keep')
        d = self.mount(img, opts=['--iothreads', '1', '--qmp', taken], wait=False)
        self.assertEqual(d.wait_exit(), 1, d.describe())
        lines = nonempty_lines(d.stderr())
        self.assertEqual(len(lines), 1, d.describe())
        self.assertIn(taken, lines[0])
        self.assertEqual(read_file(taken), b'keep')
        self.assertFalse(os.path.exists(d.mountpoint), 'mountpoint left behind')

    def test_runtime_dir_is_made_private(self):
        os.mkdir(self.sockdir, 0o755)
        d, s = self.start_serve(qmp=False)
        self.assertEqual(stat.S_IMODE(os.stat(self.sockdir).st_mode), 0o700)
        self.stop_cleanly(d)


class MountClient(ClientCase):
    """mount's QMP socket: steer a mounted image with the client."""

    def test_snapshot_while_reading_and_writing(self):
        img = self.qcow2('disk.qcow2')
        d = self.mount(img, opts=['--iothreads', '2'])
        self.sock = self.wait_socket(d)
        self.require_command('blockdev-snapshot-sync', 'blockdev-snapshot-internal-sync')
        io = MixedIo(d.mountpoint, SIZE, nthreads=3)
        io.start()
        try:
            before = io.wait_ops(50)      # the I/O is under way
            overlay = self.path('ov1.qcow2')
            self.ok('snapshot', 'create', 'disk', '--file', overlay, '--node-name', 'ov1')
            overlay2 = self.path('ov2.qcow2')
            self.ok('snapshot', 'create', 'ov1', '--file', overlay2, '--node-name', 'ov2')
            self.ok('snapshot', 'create', '--internal', 'ov2', 'live')
            during = io.ops() - before
        finally:
            io.stop()
        self.assertEqual(io.errors, [])
        self.assertGreater(during, 0, 'no I/O ran while the snapshots were taken')
        self.assertBytesEqual(read_file(d.mountpoint), bytes(io.reference),
                              'mounted file after the snapshots')
        self.assertEqual([s['name'] for s in self.ok_json('snapshot', 'list', 'ov2')],
                         ['live'])
        self.assertRegex(self.ok('graph'),
                         r'export mount \(fuse.*\n`-- ov2  qcow2  16 MiB  ' + overlay2)
        self.stop_cleanly(d)
        for p in (img, overlay, overlay2):
            r = run_qemu_img('check', p)
            self.assertEqual(r.returncode, 0, '%s: %s' % (p, r.stdout.decode()))
        ref = self.path('ref.raw')
        with open(ref, 'wb') as f:
            f.write(io.reference)
        r = run_qemu_img('compare', '-f', 'qcow2', '-F', 'raw', overlay2, ref)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())


class MixedIo:
    """Threads that write and read back random blocks of a file until
    stopped, each in its own region, keeping the expected content."""

    def __init__(self, path, size, nthreads):
        self.path = path
        self.reference = bytearray(size)
        self.region = size // nthreads
        self.nthreads = nthreads
        self.errors = []
        self.count = 0
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._worker, args=(i,))
                        for i in range(nthreads)]

    def start(self):
        for t in self.threads:
            t.start()

    def ops(self):
        with self.cond:
            return self.count

    def wait_ops(self, n):
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= n or self.errors, 30):
                raise AssertionError('I/O did not get going')
            return self.count

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join()

    def _worker(self, idx):
        rng = random.Random(idx)
        base = idx * self.region
        fd = os.open(self.path, os.O_RDWR)
        try:
            while not self.stopping.is_set():
                length = 4096 * rng.randrange(1, 17)
                off = base + 4096 * rng.randrange((self.region - length) // 4096)
                if rng.random() < 0.6:
                    data = rng.randbytes(length)
                    pwrite_all(fd, data, off)
                    self.reference[off:off + length] = data
                elif pread_all(fd, length, off) != self.reference[off:off + length]:
                    raise AssertionError('read %d@%d differs' % (length, off))
                with self.cond:
                    self.count += 1
                    self.cond.notify_all()
        except (OSError, AssertionError) as e:
            with self.cond:
                self.errors.append('thread %d: %s' % (idx, e))
                self.cond.notify_all()
        finally:
            os.close(fd)


class AgainstQemuStorageDaemon(ClientCase):
    """The verbs against the reference: qemu-storage-daemon's QMP."""

    def test_verbs(self):
        require_tool(self, 'qemu-storage-daemon')
        img = self.qcow2('base.qcow2', data={0: 0x42})
        mp = self.path('e0.img')
        open(mp, 'w').close()
        self.sock = self.start_qsd([
            '--blockdev', 'driver=file,node-name=f0,filename=' + img,
            '--blockdev', 'driver=qcow2,node-name=disk,file=f0',
            '--export', 'type=fuse,id=e0,node-name=disk,mountpoint=%s,writable=on' % mp])
        lines = self.ok('graph').splitlines()
        self.assertEqual(lines[:2], ['export e0 (fuse)', '`-- disk  qcow2  16 MiB  ' + img])
        self.assertTrue(lines[2].startswith('    `-- file: f0  file  '), lines)
        self.assertTrue(lines[2].endswith('  ' + img), lines)
        self.assertEqual(self.ok_json('exports'), [
            {'node-name': 'disk', 'shutting-down': False, 'type': 'fuse', 'id': 'e0'}])
        # internal snapshots
        self.ok('snapshot', 'create', '--internal', 'disk', 's1')
        self.assertEqual([s['name'] for s in self.ok_json('snapshot', 'list', 'disk')], ['s1'])
        self.assertEqual(self.ok_json('snapshot', 'delete', '--internal', 'disk', 's1')['name'],
                         's1')
        self.fails(1, 'snapshot', 'delete', '--internal', 'disk', 's1')
        # external snapshot, then the backing edge cut and restored
        ov = self.path('ov.qcow2')
        self.ok('snapshot', 'create', 'disk', '--file', ov, '--node-name', 'ov')
        out = self.ok('graph')
        self.assertIn('`-- ov  qcow2  16 MiB  ' + ov, out)
        self.assertIn('`-- backing: disk  qcow2', out)
        self.ok('backing', 'set', 'ov', 'none')
        out = self.ok('graph')
        self.assertNotIn('backing:', out)
        self.assertIn('\ndisk  qcow2', out, 'disk must be a root of its own now')
        self.ok('backing', 'set', 'ov', 'disk')
        self.assertIn('`-- backing: disk  qcow2', self.ok('graph'))
        self.assertIn('cycle', self.fails(1, 'backing', 'set', 'ov', 'ov'))
        # exports
        mp2 = self.path('e1.img')
        open(mp2, 'w').close()
        self.ok('export', 'add', 'e1', 'ov', mp2)
        wait_for(lambda: is_mounted(mp2), lambda: 'e1 not mounted')
        self.ok('export', 'del', 'e1')
        self.assertFalse(is_mounted(mp2))
        self.assertIn('e1', self.fails(1, 'export', 'del', 'e1'))
        r = self.ok_json('qmp', 'query-block-jobs')
        self.assertEqual(r, {'return': []})
        # a block job (a stream slowed to a crawl) shows below the trees
        other = self.qcow2('other.qcow2', data={0: 0x11})
        self.ok('qmp', 'blockdev-add', json.dumps({
            'driver': 'qcow2', 'node-name': 'o',
            'file': {'driver': 'file', 'filename': other}}))
        otop = self.path('o-top.qcow2')
        r = run_qemu_img('create', '-f', 'qcow2', '-b', other, '-F', 'qcow2', otop)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.ok('qmp', 'blockdev-add', json.dumps({
            'driver': 'qcow2', 'node-name': 'otop', 'backing': 'o',
            'file': {'driver': 'file', 'filename': otop}}))
        self.ok('qmp', 'block-stream', '{"job-id": "j1", "device": "otop", "speed": 1}')
        self.assertRegex(self.ok('graph'), r'\njobs:\n  j1  stream  \w+  .* / 16 MiB\n$')
        self.assertEqual([j['id'] for j in self.ok_json('graph')['jobs']], ['j1'])
        self.ok('qmp', 'block-job-cancel', '{"device": "j1"}')
