"""`diskstack serve --qmp SOCKET`: the QMP control socket — greeting,
negotiation, framing errors, block nodes and exports at run time, events,
several clients, quit."""

import json
import os
import shutil
import socket
import stat
import subprocess
import threading

from common import (MiB, Daemon, FuseTestCase, diskstack_bin, is_mounted,
                    read_file, wait_for, write_at)
from qmp import QmpClient

SIZE = 4 * MiB
TIMEOUT = 15.0


class QmpHelpers:
    """Starting a daemon with a QMP socket and common steps (a mixin for
    FuseTestCase classes; holds no tests itself)."""

    def start(self):
        self.sock = self.path('qmp.sock')
        d = self.serve(['--qmp', self.sock, '--iothreads', '1'],
                       self.path('unused'), wait=False)
        wait_for(lambda: os.path.exists(self.sock) or d.proc.poll() is not None,
                 lambda: 'no QMP socket: ' + d.describe())
        self.assertIsNone(d.proc.poll(), d.describe())
        return d

    def add_raw(self, c, img, node='disk', fnode='f0'):
        r = c.cmd('blockdev-add', {'driver': 'file', 'node-name': fnode,
                                   'filename': img})
        self.assertEqual(r, {'return': {}})
        r = c.cmd('blockdev-add', {'driver': 'raw', 'node-name': node, 'file': fnode})
        self.assertEqual(r, {'return': {}})

    def quit(self, d, c):
        self.assertEqual(c.cmd('quit'), {'return': {}})
        self.assertEqual(d.wait_exit(), 0, d.describe())
        self.assertFalse(os.path.exists(self.sock), 'socket file left behind')


class Qmp(QmpHelpers, FuseTestCase):

    def test_greeting_negotiation_version(self):
        d = self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.sock).st_mode), 0o600)
        c = QmpClient(self.sock)
        g = c.greeting['QMP']
        self.assertEqual(g['capabilities'], [])
        self.assertEqual(g['version']['qemu'], {'micro': 0, 'minor': 1, 'major': 0})
        self.assertTrue(g['version']['package'].startswith('diskstack'))
        r = c.cmd('query-version', id=7)
        self.assertEqual(r['error']['class'], 'CommandNotFound')
        self.assertEqual(r['error']['desc'],
                         "Expecting capabilities negotiation with 'qmp_capabilities'")
        self.assertEqual(r['id'], 7)
        c.negotiate()
        r = c.cmd('query-version', id='x')
        self.assertEqual(r['return'], g['version'])
        self.assertEqual(r['id'], 'x')
        names = [e['name'] for e in c.cmd('query-commands')['return']]
        for n in ('qmp_capabilities', 'query-version', 'quit', 'blockdev-add',
                  'block-export-add', 'query-named-block-nodes'):
            self.assertIn(n, names)
        r = c.cmd('no-such-command')
        self.assertEqual(r['error'], {'class': 'CommandNotFound',
                                      'desc': 'The command no-such-command has not been found'})
        r = c.cmd('blockdev-del', {})
        self.assertEqual(r['error']['desc'], "Parameter 'node-name' is missing")
        r = c.cmd('blockdev-del', {'node-name': 1})
        self.assertEqual(r['error']['desc'],
                         "Invalid parameter type for 'node-name', expected: string")
        r = c.cmd('query-version', {'bogus': 1})
        self.assertEqual(r['error']['desc'], "Parameter 'bogus' is unexpected")
        self.quit(d, c)

    def test_framing_errors_and_two_clients(self):
        d = self.start()
        c = QmpClient(self.sock).negotiate()
        c2 = QmpClient(self.sock).negotiate()
        # an unfinished object waits for the rest, as in QEMU; '}' ends it
        c.send_raw(b'{"execute": \n')
        c.send_raw(b'}\n')
        r = c.reply()
        self.assertEqual(r['error']['class'], 'GenericError')
        self.assertTrue(r['error']['desc'].startswith('JSON parse error'), r)
        c.send_raw(b'[' * 2000 + b']' * 2000 + b'\n')
        self.assertEqual(c.reply()['error']['desc'],
                         'JSON nesting depth limit exceeded; input dropped up to '
                         'the next newline')
        c.send_raw(b'"' + b'a' * (2 * MiB) + b'"\n')
        self.assertIn('1 MiB', c.reply()['error']['desc'])
        self.assertIn('return', c2.cmd('query-version'))
        self.assertIn('return', c.cmd('query-version'))
        # bare values and garbage tokens: QEMU's words
        c.send_raw(b'42\n"str"\n[1, 2]\nxyz\n{"a": tru}\n')
        for _ in range(3):
            self.assertEqual(c.reply()['error']['desc'],
                             'QMP input must be a JSON object')
        self.assertEqual(c.reply()['error']['desc'],
                         "JSON parse error, invalid keyword 'xyz'")
        self.assertTrue(c.reply()['error']['desc'].startswith('JSON parse error'))
        # envelope errors
        for msg, desc in ((b'{"id": 1}', "QMP input lacks member 'execute'"),
                          (b'{"execute": 1}',
                           "QMP input member 'execute' must be a string"),
                          (b'{"execute": "quit", "arguments": []}',
                           "QMP input member 'arguments' must be an object"),
                          (b'{"execute": "quit", "x": 1}',
                           "QMP input member 'x' is unexpected")):
            c.send_raw(msg + b'\n')
            self.assertEqual(c.reply()['error']['desc'], desc)
        self.assertIn('return', c.cmd('query-version'))
        # a client that disconnects mid-request does not disturb the others
        c3 = QmpClient(self.sock).negotiate()
        c3.send_raw(b'{"execute": "query-named-block-nodes"}\n')
        c3.close()
        self.assertIn('return', c2.cmd('query-version'))
        self.quit(d, c)

    def test_streaming_framing(self):
        """Requests split over several writes, several in one write, no
        newlines needed (QEMU's streaming parser accepts the same)."""
        d = self.start()
        c = QmpClient(self.sock)
        # negotiation and a command in one write, without newlines
        c.send_raw(b'{"execute":"qmp_capabilities"}{"execute":"query-version",'
                   b'"id":1}')
        self.assertEqual(c.reply(), {'return': {}})
        self.assertEqual(c.reply()['id'], 1)
        # one request split byte by byte, with braces and escapes in strings
        req = json.dumps({'execute': 'query-version', 'id': 'a}"\\{['}).encode()
        for i in range(len(req)):
            c.send_raw(req[i:i + 1])
        self.assertEqual(c.reply()['id'], 'a}"\\{[')
        # three requests, split in the middle of the second
        batch = b''.join(json.dumps({'execute': 'query-version', 'id': i}).encode()
                         + b' ' for i in range(3))
        c.send_raw(batch[:40])
        c.send_raw(batch[40:])
        self.assertEqual([c.reply()['id'] for _ in range(3)], [0, 1, 2])
        self.quit(d, c)

    def test_garbage_line_10mib(self):
        """10 MiB of garbage on one line: one error reply, the client stays
        usable, and another client is served meanwhile."""
        d = self.start()
        c = QmpClient(self.sock).negotiate()
        other = QmpClient(self.sock).negotiate()
        for garbage in (b'x' * (10 * MiB), b'{"a": "' + b'y' * (10 * MiB),
                        bytes(range(256)) * (40 * 1024)):
            sender = threading.Thread(target=c.send_raw,
                                      args=(garbage.replace(b'\n', b' ') + b'\n',))
            sender.start()
            self.assertIn('return', other.cmd('query-version'))
            r = c.reply()
            sender.join(TIMEOUT)
            self.assertEqual(r['error']['class'], 'GenericError')
            self.assertTrue(r['error']['desc'].startswith('JSON parse error'), r)
            # exactly one error: the next reply answers the next request
            self.assertEqual(c.cmd('query-version', id='after')['id'], 'after')
        self.quit(d, c)

    def test_slow_reader_is_dropped(self):
        """A client that never reads its replies does not block the others;
        past 16 MiB of backlog it is dropped with a warning."""
        d = self.start()
        other = QmpClient(self.sock).negotiate()
        slow = QmpClient(self.sock).negotiate()
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # replies echo the id: 30 replies with a 768 KiB id are past the bound
        flood = json.dumps({'execute': 'query-version',
                            'id': 'x' * (768 * 1024)}).encode() * 30
        sender = threading.Thread(target=self._send_ignoring_errors,
                                  args=(slow, flood))
        sender.start()
        try:
            for i in range(20):
                self.assertEqual(other.cmd('query-version', id=i)['id'], i)
            wait_for(lambda: 'does not read' in d.stderr(),
                     lambda: 'slow client not dropped: ' + d.describe())
            self.assertIn('return', other.cmd('query-version'))
        finally:
            slow.close()
            sender.join(TIMEOUT)
        self.quit(d, other)

    @staticmethod
    def _send_ignoring_errors(client, data):
        try:
            client.send_raw(data)
        except OSError:
            pass   # the daemon dropped us, as it should

    def test_eof_after_requests_gets_replies(self):
        """A client that sends its requests and shuts its side down still
        gets every reply (`... | socat - UNIX-CONNECT:sock`)."""
        d = self.start()
        c = QmpClient(self.sock)
        c.send_raw(b'{"execute":"qmp_capabilities"}\n{"execute":"query-version",'
                   b'"id":5}\n')
        c.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(c.reply(), {'return': {}})
        self.assertEqual(c.reply()['id'], 5)
        self.assertRaises(EOFError, c.recv)
        c2 = QmpClient(self.sock).negotiate()
        self.quit(d, c2)

    def test_nodes_and_exports(self):
        d = self.start()
        img = self.image(size=SIZE)
        write_at(img, 4096, b'qmp!')
        mp = self.path('export.img')
        open(mp, 'w').close()
        c = QmpClient(self.sock).negotiate()
        watcher = QmpClient(self.sock).negotiate()
        self.add_raw(c, img)
        nodes = {n['node-name']: n for n in
                 c.cmd('query-named-block-nodes', {'flat': True})['return']}
        self.assertEqual(nodes['disk']['drv'], 'raw')
        self.assertEqual(nodes['f0']['drv'], 'file')
        self.assertEqual(nodes['disk']['image']['virtual-size'], SIZE)
        self.assertFalse(nodes['disk']['ro'])
        r = c.cmd('blockdev-add', {'driver': 'file', 'node-name': 'f0', 'filename': img})
        self.assertEqual(r['error']['desc'], "Duplicate nodes with node-name='f0'")
        self.assertIn('error', c.cmd('blockdev-del', {'node-name': 'f0'}))
        r = c.cmd('block-export-add', {'type': 'fuse', 'id': 'e0', 'node-name': 'disk',
                                       'mountpoint': mp, 'writable': True})
        self.assertEqual(r, {'return': {}}, r)
        wait_for(lambda: is_mounted(mp), lambda: 'export not mounted')
        self.assertEqual(read_file(mp)[4096:4100], b'qmp!')
        exps = c.cmd('query-block-exports')['return']
        self.assertEqual([e['id'] for e in exps], ['e0'])
        self.assertEqual(c.cmd('block-export-del', {'id': 'e0'}), {'return': {}})
        self.assertFalse(is_mounted(mp))
        self.assertEqual(watcher.event('BLOCK_EXPORT_DELETED')['data'], {'id': 'e0'})
        self.assertEqual(c.cmd('query-block-exports')['return'], [])
        # a client that sends a command and leaves at once: the command still
        # completes, the daemon cleans the client up and serves the others
        mp1 = self.path('export1.img')
        open(mp1, 'w').close()
        c4 = QmpClient(self.sock).negotiate()
        c4.send_raw(json.dumps({'execute': 'block-export-add', 'arguments': {
            'type': 'fuse', 'id': 'e1', 'node-name': 'disk', 'mountpoint': mp1}})
            .encode() + b'\n')
        c4.close()
        wait_for(lambda: is_mounted(mp1), lambda: 'e1 not mounted')
        self.assertEqual(c.cmd('block-export-del', {'id': 'e1'}), {'return': {}})
        self.assertEqual(watcher.event('BLOCK_EXPORT_DELETED')['data'], {'id': 'e1'})
        self.assertEqual(c.cmd('blockdev-del', {'node-name': 'disk'}), {'return': {}})
        self.assertEqual(c.cmd('blockdev-del', {'node-name': 'f0'}), {'return': {}})
        self.assertEqual(c.cmd('query-named-block-nodes')['return'], [])
        self.quit(d, c)

    def test_refuses_existing_path(self):
        path = self.path('not-a-socket')
        open(path, 'w').close()
        d = Daemon([diskstack_bin(), 'serve',
                    '--qmp', path, '--iothreads', '1'], self.path('unused'), self.tmp)
        self.daemons.append(d)
        d.start(wait_mounted=False)
        self.assertEqual(d.wait_exit(), 1, d.describe())
        self.assertTrue(os.path.isfile(path))

    def test_same_shape_as_qemu_storage_daemon(self):
        if not shutil.which('qemu-storage-daemon'):
            self.skipTest('no qemu-storage-daemon')
        qsock = self.path('qsd.sock')
        q = subprocess.Popen(['qemu-storage-daemon', '--chardev',
                              'socket,path=%s,server=on,wait=off,id=m' % qsock,
                              '--monitor', 'chardev=m,mode=control'],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: os.path.exists(qsock), lambda: 'no qsd socket')
            d = self.start()
            img = self.image(size=SIZE)
            ours, theirs = QmpClient(self.sock), QmpClient(qsock)
            self.assertEqual(set(ours.greeting['QMP']), set(theirs.greeting['QMP']))
            r1, r2 = ours.cmd('query-version'), theirs.cmd('query-version')
            self.assertEqual(r1['error'], r2['error'])
            ours.negotiate()
            theirs.negotiate()
            r1, r2 = ours.cmd('query-version'), theirs.cmd('query-version')
            self.assertEqual(set(r1['return']), set(r2['return']))
            self.assertEqual(set(r1['return']['qemu']), set(r2['return']['qemu']))
            for c in (ours, theirs):
                self.add_raw(c, img)
            r1, r2 = ours.cmd('blockdev-add', {'driver': 'file', 'node-name': 'f0',
                                               'filename': img}), \
                theirs.cmd('blockdev-add', {'driver': 'file', 'node-name': 'f0',
                                            'filename': img})
            self.assertEqual(r1, r2)
            n1 = ours.cmd('query-named-block-nodes')['return'][0]
            n2 = theirs.cmd('query-named-block-nodes')['return'][0]
            self.assertLessEqual(set(n1), set(n2))
            self.assertLessEqual(set(n1['image']), set(n2['image']))
            for args in ({}, {'node-name': 1}, {'node-name': 'x', 'bogus': 1}):
                r1, r2 = ours.cmd('blockdev-del', args), theirs.cmd('blockdev-del', args)
                self.assertEqual(r1['error'], r2['error'])
            r1, r2 = ours.cmd('nope'), theirs.cmd('nope')
            self.assertEqual(r1, r2)
            theirs.cmd('quit')
            self.quit(d, ours)
        finally:
            q.kill()
            q.wait()
