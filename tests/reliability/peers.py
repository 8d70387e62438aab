"""Raw-protocol peers for the reliability suite.

These speak the wire protocol directly (no gear.Client/Worker), so a
test controls exactly what is sent and when, and a killed process or a
half-written packet is precisely what the test says it is.  Every read
has a deadline.
"""

import os
import socket
import time

from gear import constants as C
from gear.protocol import InputBuffer, join_arguments, pack
from tests import util

HOST = '127.0.0.1'
RECV_SIZE = 256 * 1024
DEFAULT_TIMEOUT = 30.0

# Set GEAR_SOAK=1 for the long versions of every scenario.
SOAK = os.environ.get('GEAR_SOAK', '') not in ('', '0')


def scale(default, soak):
    """``soak`` when GEAR_SOAK=1 is set, else ``default``."""
    return soak if SOAK else default


def req(ptype, *args):
    """The bytes of one request packet."""
    return pack(C.REQ, ptype, join_arguments(*[_b(a) for a in args]))


def _b(value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return str(value).encode()
    return value.encode('utf8')


class PeerClosed(Exception):
    """The server closed the connection."""


def wait_for(predicate, timeout=DEFAULT_TIMEOUT, message=None,
             interval=0.01):
    """Poll ``predicate`` until it returns something true (bounded)."""
    return util.wait_for(predicate, timeout, interval,
                         message or 'timed out after %ss waiting for %r'
                         % (timeout, predicate))


class RawPeer(object):
    """One blocking loopback connection with a packet parser."""

    def __init__(self, port, host=HOST, timeout=DEFAULT_TIMEOUT,
                 rcvbuf=None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Must be set before connect to shrink the advertised window.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.timeout = timeout
        self.inbuf = InputBuffer()

    def send(self, data):
        self.sock.sendall(data)

    def send_packet(self, ptype, *args):
        self.sock.sendall(req(ptype, *args))

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout('no reply before the deadline')
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(RECV_SIZE)
        except ConnectionResetError:
            data = b''
        if not data:
            raise PeerClosed()
        self.inbuf.feed(data)

    def read_packet(self, timeout=None, skip=(C.NOOP,)):
        """The next binary packet as ``(ptype, args)``, skipping ``skip``.
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            parsed = self.inbuf.readPacket()
            if parsed is None:
                self._fill(deadline)
                continue
            code, ptype, payload = parsed
            if ptype in skip:
                continue
            count = C.ARGUMENT_COUNTS.get(ptype, 1)
            args = payload.split(b'\x00', max(count - 1, 0)) \
                if count > 1 else [payload]
            return ptype, args

    def expect(self, ptype, timeout=None):
        got, args = self.read_packet(timeout)
        if got != ptype:
            raise AssertionError('expected %s, got %s %r' % (
                C.types.get(ptype), C.types.get(got), args))
        return args

    def admin(self, command, timeout=None):
        """Send one admin line; return the reply text (multi-line replies
        end with ``.``)."""
        self.send(command.encode() + b'\n')
        deadline = time.monotonic() + (timeout or self.timeout)
        word = command.split()[0].lower() if command.split() else ''
        multi = word in ('status', 'workers') or command.lower().startswith(
            ('show jobs', 'show unique jobs', 'prioritystatus'))
        while True:
            data = self.inbuf.unread()
            if multi:
                if data == b'.\n' or b'\n.\n' in data:
                    end = (data.index(b'\n.\n') + 3) if data != b'.\n' else 2
                    self.inbuf.consume(end)
                    return data[:end].decode('utf8', 'replace')
            elif b'\n' in data:
                end = data.index(b'\n') + 1
                self.inbuf.consume(end)
                return data[:end].decode('utf8', 'replace')
            self._fill(deadline)

    def admin_reply_ready(self, timeout=None):
        """Wait for a complete ``status``-style reply; True once read."""
        self.admin_reply = None
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            data = self.inbuf.unread()
            if data == b'.\n' or b'\n.\n' in data:
                end = 2 if data == b'.\n' else data.index(b'\n.\n') + 3
                self.inbuf.consume(end)
                self.admin_reply = data[:end]
                return True
            self._fill(deadline)

    def status(self, timeout=None):
        """``{function: (total, running, workers)}``."""
        table = {}
        for line in self.admin('status', timeout).splitlines():
            # Function names are arbitrary bytes (tabs too): take the
            # three numbers from the right, skip rows that do not parse.
            parts = line.rsplit('\t', 3)
            try:
                table[parts[0]] = tuple(int(x) for x in parts[1:4])
            except ValueError:
                continue
        return table

    def shutdown(self, how):
        self.sock.shutdown(how)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def status(port, timeout=DEFAULT_TIMEOUT):
    """Admin ``status`` over a fresh connection."""
    with RawPeer(port, timeout=timeout) as peer:
        return peer.status()


def function_total(port, fn, timeout=DEFAULT_TIMEOUT):
    """Queued plus running jobs of ``fn`` (0 if the server has none)."""
    return status(port, timeout).get(fn, (0, 0, 0))[0]


def control_round_trip(client, worker, fn, data, timeout=10.0):
    """One foreground job from ``client`` through ``worker`` and back.

    ``worker`` must have sent CAN_DO ``fn``.  Returns the result.
    """
    client.send_packet(C.SUBMIT_JOB, fn, '', data)
    handle = client.expect(C.JOB_CREATED, timeout)[0]
    # JOB_CREATED came back, so the job is queued before this grab.
    worker.send_packet(C.GRAB_JOB_UNIQ)
    ptype, args = worker.read_packet(timeout)
    if ptype != C.JOB_ASSIGN_UNIQ:
        raise AssertionError('worker got %s' % C.types.get(ptype))
    whandle, _, _, payload = args
    worker.send_packet(C.WORK_COMPLETE, whandle, payload[::-1])
    ptype, args = client.read_packet(timeout)
    if ptype != C.WORK_COMPLETE or args[0] != handle:
        raise AssertionError('client got %s %r' % (C.types.get(ptype), args))
    return args[1]
