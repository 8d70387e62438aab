"""Live fuzzing: random and mutated packets and admin lines from several
sockets against a running Server, while a control client and worker keep
completing jobs.

The control traffic never stalls, no server thread dies or logs an
unexpected exception, and the server still answers ``status`` at the
end.  GEAR_SOAK=1 sends 100,000 messages instead of 10,000; set
GEAR_FUZZ_SEED to replay a run (the seed is printed on failure).
"""

import logging
import os
import socket
import threading
import time

import pytest
import testtools
from testtools.content import text_content

from gear import constants as C
from gear.testing import GearServerFixture
from tests.reliability import fuzz, peers

SEED = int(os.environ.get('GEAR_FUZZ_SEED', '7411'))
SOCKETS = 4
MESSAGES = peers.scale(10000, 100000)
CONTROL_TIMEOUT = 10.0
RUN_TIMEOUT = peers.scale(90.0, 600.0)


class ErrorLog(logging.Handler):
    """Keeps every ERROR (and worse) the server logs."""

    def __init__(self):
        super(ErrorLog, self).__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append('%s: %s%s' % (
            record.name, record.getMessage(),
            ('\n' + logging.Formatter().formatException(record.exc_info))
            if record.exc_info else ''))


class FuzzSocket(threading.Thread):
    """Sends its share of fuzz messages and reads the replies.

    Runs of well-framed messages end with an ECHO barrier, so the
    server is known to have handled them.  After a damaged message the
    connection's state is unknown: a few more messages may follow, then
    the socket is half-closed and read to EOF (the server handles all it
    received before it sees the EOF), and a new connection starts.
    """

    def __init__(self, port, seed, count, deadline):
        super(FuzzSocket, self).__init__(daemon=True)
        self.port = port
        self.fuzzer = fuzz.Fuzzer(seed, ['fz%d' % i for i in range(4)])
        self.count = count
        self.deadline = deadline
        self.sent = 0
        self.confirmed = 0
        self.connections = 0
        self.closed_by_server = 0
        self.error = None
        self.sock = None
        self.barriers = 0

    def _connect(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.create_connection((peers.HOST, self.port),
                                             timeout=10)
        self.connections += 1

    def _read_until(self, token):
        """Read replies until ``token`` shows up (True) or EOF (False)."""
        tail = b''
        end = time.monotonic() + 10
        while True:
            if time.monotonic() > end:
                raise AssertionError('no reply and no close within 10s')
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b''
            if not data:
                return False
            self.fuzzer.note_reply(data)
            tail = tail[-64:] + data
            if token is not None and token in tail:
                return True

    def _barrier(self, unconfirmed):
        self.barriers += 1
        token = b'barrier-%d-%d' % (id(self), self.barriers)
        try:
            self.sock.sendall(peers.req(C.ECHO_REQ, token))
            if self._read_until(token):
                self.confirmed += unconfirmed
                return True
        except OSError:
            pass
        self.closed_by_server += 1
        self._connect()
        return False

    def _finish_connection(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self._read_until(None)
        except OSError:
            pass
        self._connect()

    def _send(self, message):
        rng = self.fuzzer.rng
        if len(message) > 1 and rng.random() < 0.2:
            # Cut a message across two writes.
            at = rng.randint(1, len(message) - 1)
            self.sock.sendall(message[:at])
            self.sock.sendall(message[at:])
        else:
            self.sock.sendall(message)

    def run(self):
        rng = self.fuzzer.rng
        try:
            self._connect()
            run = 0
            damaged = False
            while self.sent < self.count:
                if time.monotonic() > self.deadline:
                    raise AssertionError('fuzzer ran out of time')
                message, framed = self.fuzzer.message()
                self.sent += 1
                try:
                    self._send(message)
                except OSError:
                    self.closed_by_server += 1
                    self._connect()
                    run = 0
                    damaged = False
                    continue
                if damaged:
                    if rng.random() < 0.5:
                        self._finish_connection()
                        damaged = False
                        run = 0
                    continue
                run += 1
                if not framed:
                    damaged = True
                elif run >= rng.randint(1, 32):
                    self._barrier(run)
                    run = 0
            if not damaged:
                self._barrier(run)
        except BaseException as e:
            self.error = e
        finally:
            if self.sock is not None:
                self.sock.close()


class Control(threading.Thread):
    """A client and a worker completing one job at a time."""

    def __init__(self, port, fn):
        super(Control, self).__init__(daemon=True)
        self.port = port
        self.fn = fn
        self.stop = threading.Event()
        self.completed = 0
        self.slowest = 0.0
        self.error = None

    def run(self):
        try:
            with peers.RawPeer(self.port) as client, \
                    peers.RawPeer(self.port) as worker:
                worker.send_packet(C.CAN_DO, self.fn)
                while not self.stop.is_set():
                    start = time.monotonic()
                    data = 'c%d' % self.completed
                    result = peers.control_round_trip(
                        client, worker, self.fn, data, CONTROL_TIMEOUT)
                    if result != data[::-1].encode():
                        raise AssertionError('wrong result %r' % result)
                    self.completed += 1
                    self.slowest = max(self.slowest,
                                       time.monotonic() - start)
        except BaseException as e:
            self.error = e


class TestLiveFuzz(testtools.TestCase):

    @pytest.mark.timeout(int(RUN_TIMEOUT) + 60)
    def test_fuzz_does_not_disturb_control_traffic(self):
        errors = ErrorLog()
        logger = logging.getLogger('gear')
        logger.addHandler(errors)
        self.addCleanup(logger.removeHandler, errors)
        fixture = self.useFixture(GearServerFixture(
            max_packet_size=1024 * 1024))
        server = fixture.server
        port = fixture.port
        control = Control(port, 'ctl-%x' % SEED)
        control.start()
        self.addCleanup(control.stop.set)
        deadline = time.monotonic() + RUN_TIMEOUT
        fuzzers = [FuzzSocket(port, SEED * 100 + i, MESSAGES // SOCKETS,
                              deadline) for i in range(SOCKETS)]
        for f in fuzzers:
            f.start()
        for f in fuzzers:
            f.join(max(1.0, deadline - time.monotonic()))
        control.stop.set()
        control.join(CONTROL_TIMEOUT * 2)
        sent = sum(f.sent for f in fuzzers)
        summary = (
            'seed %d: %d messages (%d confirmed by a barrier), %d '
            'connections (%d closed by the server), %d control jobs '
            '(slowest %.3fs)' % (
                SEED, sent, sum(f.confirmed for f in fuzzers),
                sum(f.connections for f in fuzzers),
                sum(f.closed_by_server for f in fuzzers),
                control.completed, control.slowest))
        self.addDetail('fuzz', text_content(summary))
        for f in fuzzers:
            self.assertFalse(f.is_alive(), summary)
            self.assertIsNone(f.error, summary)
        self.assertEqual(MESSAGES // SOCKETS * SOCKETS, sent, summary)
        self.assertIsNone(control.error, summary)
        self.assertGreater(control.completed, 0, summary)
        self.assertTrue(server.poll_thread.is_alive(), summary)
        table = peers.status(port)
        self.assertIn('ctl-%x' % SEED, table, summary)
        self.assertEqual(0, table['ctl-%x' % SEED][0], summary)
        self.assertEqual([], errors.records, summary)
