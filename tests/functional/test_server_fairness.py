"""Fairness: peers that flood the server with requests do not hold up the
others.

A CI farm's workers each register tens of thousands of functions at once.
The server reads a flooding peer's input in slices and answers the peers
that sent little first, so a job makes progress while the registrations
are still being handled -- and each connection's requests are still
handled in the order they were sent.
"""

import array
import fcntl
import socket
import termios
import threading

import testtools

from gear import constants as c
from gear.protocol import InputBuffer, pack
from gear.server.loop import RECV_SIZE
from gear.testing import GearServerFixture
from tests.util import wait_for

FLOODERS = 8
# Each flooder sends more than one read's worth, so its reads fill up.
FUNCTIONS = 3000
BARRIER = pack(c.REQ, c.ECHO_REQ, b'barrier')


def name(i):
    return b'build:job-%06d:label' % i


def can_do_all(names):
    return b''.join(pack(c.REQ, c.CAN_DO, n) for n in names)


def unread(sock):
    """Bytes waiting in a socket's receive buffer."""
    buf = array.array('i', [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf, True)
    return buf[0]


class TestFairness(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.fixture = self.useFixture(GearServerFixture())
        self.server = self.fixture.server

    def connect(self):
        sock = socket.create_connection(('127.0.0.1', self.fixture.port),
                                        timeout=30)
        self.addCleanup(sock.close)
        return sock

    def server_side(self, sock):
        port = sock.getsockname()[1]
        return wait_for(
            lambda: next((conn for conn in self.server.connections()
                          if conn.port == port), None),
            timeout=30, message='the server to accept a connection')

    def read_until(self, sock, buf, ptype):
        while True:
            packet = buf.readPacket()
            if packet is None:
                data = sock.recv(1 << 16)
                self.assertTrue(data, 'the server closed the connection')
                buf.feed(data)
                continue
            if packet[1] != c.NOOP:
                self.assertEqual(c.types[ptype], c.types[packet[1]])
                return packet

    def barrier(self, sock, buf=None):
        sock.sendall(BARRIER)
        self.read_until(sock, buf or InputBuffer(), c.ECHO_RES)

    def count_can_dos(self):
        """Count the CAN_DOs the server handles from now on (the scanner
        hands runs of them over at once)."""
        runs = self.server._scanner.runs
        original = runs[c.CAN_DO]
        self.assertIsNotNone(original)
        counted = [0]

        def counting(conn, payloads):
            counted[0] += len(payloads)
            original(conn, payloads)
        runs[c.CAN_DO] = counting
        self.addCleanup(runs.__setitem__, c.CAN_DO, original)
        return counted

    def test_job_is_answered_before_the_floods_are_handled(self):
        # One flooding read per turn, so what "first" means is exact.
        self.server.turn_time = 0
        probe = b'fairness-probe'
        worker, client = self.connect(), self.connect()
        wbuf, cbuf = InputBuffer(), InputBuffer()
        worker.sendall(pack(c.REQ, c.CAN_DO, probe))
        self.barrier(worker, wbuf)
        self.barrier(client, cbuf)
        client_conn = self.server_side(client)
        flooders = [self.connect() for _ in range(FLOODERS)]
        sides = [self.server_side(f) for f in flooders]
        for f in flooders:
            self.barrier(f)
        counted = self.count_can_dos()
        # The CAN_DOs handled when the client's reply was written.
        at_reply = []
        flush = self.server._flushConnection

        def recording_flush(conn):
            if conn is client_conn and conn.send_queue and not at_reply:
                at_reply.append(counted[0])
            flush(conn)
        self.server._flushConnection = recording_flush
        self.addCleanup(vars(self.server).pop, '_flushConnection')

        flood = can_do_all(name(i) for i in range(FUNCTIONS)) + BARRIER
        self.assertGreater(len(flood), RECV_SIZE)
        senders = [threading.Thread(target=f.sendall, args=(flood,),
                                    daemon=True) for f in flooders]
        submit = pack(c.REQ, c.SUBMIT_JOB, probe + b'\x00\x00data')
        # Everything waits in the kernel while the loop cannot run, so
        # its next turns see every flooder and the client together.
        with self.server.lock:
            for t in senders:
                t.start()
            client.sendall(submit)
            for side in sides:
                wait_for(lambda: unread(side.conn) >= RECV_SIZE, timeout=30,
                         message='the flood to reach the server')
            wait_for(lambda: unread(client_conn.conn) >= len(submit),
                     timeout=30, message='the submission to arrive')

        handle = self.read_until(client, cbuf, c.JOB_CREATED)[2]
        # The reply left once at most one flooder had been served: the
        # turn the loop was in when the lock was taken handles one full
        # read, and the rest of that flood is a short read, handled with
        # the client's.  Not after a full read of every flooder.
        self.assertEqual(1, len(at_reply))
        self.assertLessEqual(at_reply[0], FUNCTIONS)

        # The job's round trip completes.
        worker.sendall(pack(c.REQ, c.GRAB_JOB_UNIQ))
        assigned = self.read_until(worker, wbuf, c.JOB_ASSIGN_UNIQ)[2]
        self.assertTrue(assigned.startswith(handle + b'\x00'))
        worker.sendall(pack(c.REQ, c.WORK_COMPLETE, handle + b'\x00ok'))
        done = self.read_until(client, cbuf, c.WORK_COMPLETE)
        self.assertEqual(handle + b'\x00ok', done[2])

        # And every registration is handled, each flood before its
        # barrier.
        for f in flooders:
            self.read_until(f, InputBuffer(), c.ECHO_RES)
        for t in senders:
            t.join(30)
            self.assertFalse(t.is_alive())
        self.assertEqual(FLOODERS * FUNCTIONS, counted[0])
        for side in sides:
            self.assertEqual(FUNCTIONS, len(side.functions))
        for i in (0, FUNCTIONS - 1):
            self.assertEqual(FLOODERS,
                             self.server.queue.functions[name(i)].workers)

    def test_each_connection_keeps_its_order_across_slices(self):
        # The smallest slice: a flood's reads are spread over many turns
        # and interleaved with the other flooders'.
        self.server.turn_time = 0
        flooders = [self.connect() for _ in range(4)]
        expected = []
        streams = []
        for k, f in enumerate(flooders):
            names = [b'f%d-%05d' % (k, i) for i in range(2 * FUNCTIONS)]
            dropped = names[k::3]
            again = dropped[:50]
            # Register everything, drop some, take some of those back,
            # then forget everything and register a last few: only
            # handling the requests in order gives the final set.
            stream = (can_do_all(names) +
                      b''.join(pack(c.REQ, c.CANT_DO, n) for n in dropped) +
                      can_do_all(again))
            kept = (set(names) - set(dropped)) | set(again)
            if k % 2:
                last = [b'last-%d-%d' % (k, i) for i in range(10)]
                stream += pack(c.REQ, c.RESET_ABILITIES) + can_do_all(last)
                kept = set(last)
            streams.append(stream + BARRIER)
            expected.append(kept)
        self.assertGreater(min(len(s) for s in streams), 2 * RECV_SIZE)
        senders = [threading.Thread(target=f.sendall, args=(s,), daemon=True)
                   for f, s in zip(flooders, streams)]
        for t in senders:
            t.start()
        for f in flooders:
            self.read_until(f, InputBuffer(), c.ECHO_RES)
        for t in senders:
            t.join(30)
            self.assertFalse(t.is_alive())
        for f, kept in zip(flooders, expected):
            self.assertEqual(kept, set(self.server_side(f).functions))
        self.assertEqual({}, dict(self.server._carry))
