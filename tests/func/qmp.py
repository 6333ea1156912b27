"""A QMP client for the functional tests: one line-oriented connection to
a unix socket, replies returned, events kept aside."""

import json
import socket

TIMEOUT = 15.0


class QmpClient:
    """A line-oriented QMP connection; events are kept aside."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.buf = b''
        self.events = []
        self.greeting = self.recv()

    def recv(self):
        while b'\n' not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError('QMP connection closed')
            self.buf += data
        line, self.buf = self.buf.split(b'\n', 1)
        return json.loads(line)

    def reply(self):
        while True:
            msg = self.recv()
            if 'event' in msg:
                self.events.append(msg)
            else:
                return msg

    def event(self, name):
        while True:
            for e in self.events:
                if e['event'] == name:
                    self.events.remove(e)
                    return e
            self.events.append(self.recv())

    def send_raw(self, data):
        self.sock.sendall(data)

    def cmd(self, name, args=None, id=None):
        msg = {'execute': name}
        if args is not None:
            msg['arguments'] = args
        if id is not None:
            msg['id'] = id
        self.send_raw(json.dumps(msg).encode() + b'\n')
        return self.reply()

    def negotiate(self):
        assert self.cmd('qmp_capabilities') == {'return': {}}
        return self

    def close(self):
        self.sock.close()
