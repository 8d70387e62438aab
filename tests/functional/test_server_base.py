"""Shared helpers for the server's functional tests (no tests here).

``RawClient`` speaks raw Gearman bytes to a real Server on 127.0.0.1, with
bounded reads: every wait has a deadline and fails the test when it
passes.
"""

import socket
import struct
import time

import testtools

import gear
from gear import constants as c
from gear.protocol import pack
from tests.util import waiter

WAIT = 10.0


wait_for = waiter(WAIT, 0.005)


class RawClient(object):
    """A plain socket that sends packets and reads replies with deadlines.
    """

    def __init__(self, port, host='127.0.0.1'):
        self.sock = socket.create_connection((host, port), timeout=WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b''

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, ptype, *args, **kw):
        magic = kw.get('magic', c.REQ)
        self.sock.sendall(pack(magic, ptype, b'\x00'.join(args)))

    def sendRaw(self, data):
        self.sock.sendall(data)

    def _fill(self, needed, timeout):
        deadline = time.monotonic() + timeout
        while len(self.buf) < needed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError('timed out; have %r' % (self.buf,))
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError('timed out; have %r' % (self.buf,))
            if not data:
                raise EOFError('connection closed; have %r' % (self.buf,))
            self.buf += data

    def read(self, timeout=WAIT):
        """Return (magic, ptype, payload) of the next packet."""
        self._fill(12, timeout)
        magic, ptype, size = struct.unpack('!4sII', self.buf[:12])
        self._fill(12 + size, timeout)
        payload = self.buf[12:12 + size]
        self.buf = self.buf[12 + size:]
        return magic, ptype, payload

    def expect(self, ptype, payload=None, timeout=WAIT):
        magic, got, data = self.read(timeout)
        if magic != c.RES or got != ptype or (
                payload is not None and data != payload):
            raise AssertionError('expected %s %r, got %s %s %r' % (
                c.types.get(ptype), payload, magic, c.types.get(got, got),
                data))
        return data

    def readText(self, size=None, end=None, timeout=WAIT):
        """Read admin text: ``size`` bytes, or up to and including ``end``.
        """
        deadline = time.monotonic() + timeout
        while True:
            if end is not None and end in self.buf:
                i = self.buf.index(end) + len(end)
                out, self.buf = self.buf[:i], self.buf[i:]
                return out
            if size is not None and len(self.buf) >= size:
                out, self.buf = self.buf[:size], self.buf[size:]
                return out
            self._fill(len(self.buf) + 1, deadline - time.monotonic())

    def admin(self, line, end=b'\n'):
        """Send an admin line and read the reply up to ``end``."""
        self.sendRaw(line + b'\n')
        return self.readText(end=end)

    def adminList(self, line):
        """Send a listing command and read up to the final ``.\\n``."""
        self.sendRaw(line + b'\n')
        out = self.readText(end=b'\n')
        while not (out == b'.\n' or out.endswith(b'\n.\n') or
                   out.startswith(b'ERR ')):
            out += self.readText(end=b'\n')
        return out

    def sync(self, token=b'sync'):
        """ECHO round trip: proves nothing else was queued before it."""
        self.send(c.ECHO_REQ, token)
        self.expect(c.ECHO_RES, token)

    def assertClosed(self, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError('connection still open')
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError('connection still open')
            except ConnectionResetError:
                return
            if not data:
                return
            self.buf += data

    # Conveniences -----------------------------------------------------------

    def submit(self, name, data=b'', unique=b'', ptype=c.SUBMIT_JOB):
        self.send(ptype, name, unique, data)
        return self.expect(c.JOB_CREATED)

    def canDo(self, *names):
        for name in names:
            self.send(c.CAN_DO, name)

    def grab(self, ptype=c.GRAB_JOB_UNIQ):
        """GRAB; return the assignment's fields, or None for NO_JOB."""
        self.send(ptype)
        magic, got, data = self.read()
        if got == c.NO_JOB:
            return None
        counts = {c.JOB_ASSIGN: 3, c.JOB_ASSIGN_UNIQ: 4,
                  c.JOB_ASSIGN_ALL: 5}
        if got not in counts:
            raise AssertionError('unexpected %s %r' % (c.types.get(got), data))
        return data.split(b'\x00', counts[got] - 1)


class ServerTestCase(testtools.TestCase):
    """Starts a Server on 127.0.0.1 port 0 per test."""

    server_options = {}

    def setUp(self):
        super(ServerTestCase, self).setUp()
        self.server = self.makeServer(**self.server_options)

    def makeServer(self, **kw):
        kw.setdefault('host', '127.0.0.1')
        kw.setdefault('job_handle_prefix', 'H:test')
        server = gear.Server(0, **kw)
        self.addCleanup(server.shutdown)
        return server

    def connect(self, server=None):
        client = RawClient((server or self.server).port)
        self.addCleanup(client.close)
        return client

    def sleepingWorker(self, *names):
        """A worker that registered ``names`` and is asleep."""
        w = self.connect()
        w.canDo(*names)
        w.send(c.PRE_SLEEP)
        # Requests are handled in order: once the echo is back, the
        # worker is registered and asleep.
        w.sync()
        return w
