"""ServerConnection and ServerAdminRequest with a fake socket."""

import errno
import socket

import testtools

import gear
from gear import constants
from gear.server.connection import ServerAdminRequest, subject_from_cert


def _eagain():
    e = socket.error("Resource temporarily unavailable")
    e.errno = errno.EAGAIN
    raise e


class FakeSocket(object):
    """Hands out data chunk by chunk, then EAGAIN (non-blocking)."""

    def __init__(self):
        self.packets = []
        self.packet_num = 0
        self.packet_pos = 0
        self.blocking = 1
        self.sent = b''

    def _set_data(self, data):
        self.packets = data

    def setblocking(self, blocking):
        self.blocking = blocking

    def connect(self, addr):
        pass

    def recv(self, count):
        if self.packet_num + 1 > len(self.packets):
            if self.blocking:
                raise Exception("End of data reached in blocking mode")
            _eagain()
        packet = self.packets[self.packet_num]
        if self.packet_pos + 1 > len(packet):
            self.packet_num += 1
            self.packet_pos = 0
            if not self.blocking:
                _eagain()
        start = self.packet_pos
        end = min(start + count, len(packet))
        self.packet_pos = end
        return bytes(packet[start:end])


class SendingSocket(FakeSocket):

    def __init__(self, accept=None):
        super(SendingSocket, self).__init__()
        self.accept = accept

    def send(self, data):
        n = len(data) if self.accept is None else min(self.accept,
                                                      len(data))
        self.sent += bytes(data[:n])
        return n


def work_complete(size):
    return gear.Packet(constants.REQ, constants.WORK_COMPLETE,
                       b'H:127.0.0.1:11\x00' + b'x' * size)


class TestServerConnection(testtools.TestCase):

    def setUp(self):
        super(TestServerConnection, self).setUp()
        self.socket = FakeSocket()
        self.conn = gear.ServerConnection('127.0.0.1', self.socket, False,
                                          'test')

    def assertEndOfData(self):
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)

    def test_constructor_contract(self):
        self.assertEqual(0, self.socket.blocking)
        self.assertEqual('1', self.conn.host)
        self.assertEqual('2', self.conn.port)
        self.assertIsNone(self.conn.client_id)
        self.assertEqual(set(), self.conn.functions)
        self.assertEqual({}, self.conn.related_jobs)
        self.assertIsNone(self.conn.ssl_subject)
        self.assertTrue(repr(self.conn).endswith(
            'name: test host: 1 port: 2>'))
        self.assertIsInstance(self.conn._getAdminRequest(),
                              gear.ServerAdminRequest)

    def test_readPacket_admin(self):
        self.socket._set_data([b'status\n'])
        r1 = self.conn.readPacket()
        self.assertEqual(b'status', r1.command)
        self.assertIs(self.conn, r1.connection)
        self.assertEndOfData()

    def test_readPacket_admin_crlf(self):
        self.socket._set_data([b'status\r\n'])
        self.assertEqual(b'status', self.conn.readPacket().command)

    def test_readPacket_admin_mix(self):
        p1 = work_complete(5000)
        p2 = work_complete(5000)
        self.socket._set_data([p1.toBinary() + b'status\n' + p2.toBinary()])
        self.assertEqual(p1, self.conn.readPacket())
        self.assertEqual(b'status', self.conn.readPacket().command)
        self.assertEqual(p2, self.conn.readPacket())
        self.assertEndOfData()

    def test_readPacket_large(self):
        p1 = work_complete(10000)
        self.socket._set_data([p1.toBinary()])
        self.assertEqual(p1, self.conn.readPacket())
        self.assertEndOfData()

    def test_readPacket_multi_pdu(self):
        p1 = work_complete(2600)
        p2 = gear.Packet(constants.REQ, constants.GRAB_JOB_UNIQ, b'')
        self.socket._set_data([p1.toBinary()[:1448],
                               p1.toBinary()[1448:] + p2.toBinary()])
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)
        r1 = self.conn.readPacket()
        self.assertEqual(p1, r1)
        self.assertIs(self.conn, r1.connection)
        self.assertEqual(p2, self.conn.readPacket())
        self.assertEndOfData()

    def test_readPacket_bad_magic(self):
        self.socket._set_data([b'\x00BAD' + b'\x00' * 8])
        self.assertRaises(gear.ProtocolError, self.conn.readPacket)

    def test_send_without_server_flushes(self):
        sock = SendingSocket(accept=5)
        conn = gear.ServerConnection(('127.0.0.1', 4730), sock, False, 't')
        conn.sendRaw(b'0123456789')
        self.assertEqual(b'01234', sock.sent)
        self.assertEqual(bytearray(b'56789'), conn.send_queue)
        sock.accept = None
        self.assertTrue(conn.sendQueuedData())
        self.assertEqual(b'0123456789', sock.sent)

    def test_send_with_server_notifies(self):
        sock = SendingSocket()
        conn = gear.ServerConnection(('127.0.0.1', 4730), sock, False, 't')
        notified = []
        conn._notify = notified.append
        conn.sendPacket(gear.Packet(constants.RES, constants.NOOP, b''))
        self.assertEqual([conn], notified)
        self.assertEqual(b'', sock.sent)
        self.assertEqual(12, len(conn.send_queue))


class TestServerAdminRequest(testtools.TestCase):

    def test_isComplete(self):
        req = ServerAdminRequest('conn')
        self.assertEqual((False, None), req.isComplete(b'stat'))
        self.assertEqual((True, b'rest'), req.isComplete(b'status\r\nrest'))
        self.assertEqual(b'status', req.command)
        # A request received, not one a client sends: none of a client
        # AdminRequest's members that could not work here.
        self.assertNotIsInstance(req, gear.AdminRequest)
        self.assertFalse(hasattr(req, 'waitForResponse'))


class TestSubject(testtools.TestCase):

    def test_subject_from_cert(self):
        cert = {'subject': ((('countryName', 'XX'),),
                            (('commonName', 'worker-1'),))}
        self.assertEqual('worker-1', subject_from_cert(cert))
        self.assertIsNone(subject_from_cert({}))
        self.assertIsNone(subject_from_cert(None))
