"""Backpressure: a peer that does not read its replies is paused, not fed.

The server stops reading the requests of a peer whose unread replies pass
``output_high_water``, and resumes once it has read most of them, so a
flooding client costs bounded memory and loses nothing.
"""

import socket
import threading

import pytest
import testtools

from gear import constants as c
from gear.protocol import InputBuffer, pack
from gear.testing import GearServerFixture
from tests.util import wait_for

# Far more than loopback socket buffers hold, so the pause shows.
REQUESTS = 400000


def submit(name, data, unique=b''):
    return pack(c.REQ, c.SUBMIT_JOB, b'\x00'.join((name, unique, data)))


class TestBackpressure(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.fixture = self.useFixture(GearServerFixture(
            max_output_buffer=64 * 1024 * 1024))
        self.server = self.fixture.server

    def connect(self, rcvbuf=None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(30)
        sock.connect(('127.0.0.1', self.fixture.port))
        self.addCleanup(sock.close)
        return sock

    def server_side(self, sock):
        port = sock.getsockname()[1]
        for conn in list(self.server.connection_map.values()):
            if getattr(conn, 'port', None) == port:
                return conn
        return None

    def read_packets(self, sock, count, buf=None):
        buf = buf or InputBuffer()
        got = []
        while len(got) < count:
            data = sock.recv(1 << 20)
            self.assertTrue(data, "the server closed the connection")
            buf.feed(data)
            while True:
                packet = buf.readPacket()
                if packet is None:
                    break
                got.append(packet)
        return got

    @pytest.mark.slow
    def test_flooding_reader_is_paused_and_loses_nothing(self):
        flood = self.connect(rcvbuf=4096)
        batch = b''.join(submit(b'flood', b'x') for _ in range(1000))
        sent = threading.Event()

        def send_all():
            for _ in range(REQUESTS // 1000):
                flood.sendall(batch)
            sent.set()
        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()

        conn = wait_for(lambda: self.server_side(flood), timeout=30,
                        message='the flooder to be accepted')
        wait_for(lambda: conn._paused, timeout=30,
                 message='reading from the flooder to pause')
        # Paused with its unread replies bounded far below the cap.
        self.assertLess(len(conn.send_queue), self.server.max_output_buffer)
        self.assertLess(len(conn.send_queue),
                        2 * self.server.output_high_water)
        # It stopped taking the flooder's requests: fewer jobs exist than
        # were sent (the rest wait, unread, in the socket buffers).
        accepted = self.server.queue.functions[b'flood'].queued[
            c.PRECEDENCE_NORMAL]
        self.assertLess(accepted, REQUESTS)

        # Everybody else is served meanwhile.
        bystander = self.connect()
        bystander.sendall(submit(b'other', b'mine'))
        (created,) = self.read_packets(bystander, 1)
        self.assertEqual(c.JOB_CREATED, created[1])
        worker = self.connect()
        worker.sendall(pack(c.REQ, c.CAN_DO, b'other') +
                       pack(c.REQ, c.GRAB_JOB_UNIQ))
        (assign,) = self.read_packets(worker, 1)
        self.assertEqual(c.JOB_ASSIGN_UNIQ, assign[1])
        handle = assign[2].split(b'\x00')[0]
        worker.sendall(pack(c.REQ, c.WORK_COMPLETE, handle + b'\x00ok'))
        (done,) = self.read_packets(bystander, 1)
        self.assertEqual((c.WORK_COMPLETE, handle + b'\x00ok'),
                         (done[1], done[2]))

        # Once the flooder reads, the server resumes and every one of
        # its requests is answered.
        replies = self.read_packets(flood, REQUESTS)
        self.assertEqual({c.JOB_CREATED}, {p[1] for p in replies})
        self.assertEqual(REQUESTS, len({p[2] for p in replies}))
        sender.join(30)
        self.assertTrue(sent.is_set())
        self.assertFalse(conn._paused)
        self.assertFalse(conn.closed)
