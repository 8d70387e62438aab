"""Bad input closes (only) the offending connection; the server lives on.
"""

import socket
import ssl
import struct

from gear import constants as c
from gear import tlsutil

from tests.functional.test_server_base import (
    RawClient, ServerTestCase, wait_for)


class TestBadInput(ServerTestCase):

    # A worker closed for its garbage gives its job back to the queue
    # (gearmand's semantics), so the control job outlives every abuse.
    server_options = {'semantics': 'gearmand'}

    def setUp(self):
        super(TestBadInput, self).setUp()
        # A control client with a job in flight, checked after each abuse.
        self.control = self.connect()
        self.handle = self.control.submit(b'fn', b'd', b'u')

    def assertControlWorks(self):
        self.control.sync()
        self.assertEqual(b'fn\t1\t0\t0\n.\n',
                         self.control.adminList(b'status'))
        self.assertIn(self.handle, self.server.jobs)

    def test_bad_magic_closes(self):
        bad = self.connect()
        bad.sendRaw(b'\x00XYZ' + struct.pack('!II', c.ECHO_REQ, 0))
        bad.assertClosed()
        self.assertControlWorks()

    def test_type_zero_and_too_high_close(self):
        for ptype in (0, 43, 0xffffffff):
            bad = self.connect()
            bad.sendRaw(c.REQ + struct.pack('!II', ptype, 0))
            bad.assertClosed()
        self.assertControlWorks()

    def test_huge_length_rejected_without_buffering(self):
        bad = self.connect()
        bad.sendRaw(c.REQ + struct.pack('!II', c.SUBMIT_JOB, 0xffffffff) +
                    b'fn\x00')
        magic, ptype, data = bad.read()
        self.assertEqual((c.RES, c.ERROR), (magic, ptype))
        self.assertTrue(data.startswith(b'ARGUMENT_TOO_LARGE\x00'))
        bad.assertClosed()
        self.assertControlWorks()

    def test_configured_max_packet_size(self):
        server = self.makeServer(max_packet_size=1000)
        client = self.connect(server)
        client.send(c.ECHO_REQ, b'x' * 1000)
        client.expect(c.ECHO_RES, b'x' * 1000)
        client.send(c.ECHO_REQ, b'x' * 1001)
        self.assertEqual(c.ERROR, client.read()[1])
        client.assertClosed()

    def test_garbage_binary(self):
        bad = self.connect()
        bad.sendRaw(b'\x00' + bytes(range(256)) * 8)
        bad.assertClosed()
        self.assertControlWorks()

    def test_garbage_text_gets_answers(self):
        bad = self.connect()
        bad.sendRaw(b'\xff\xfe garbage \x01\x02\n')
        self.assertTrue(bad.readText(end=b'\r\n').startswith(
            b'ERR UNKNOWN_COMMAND '))
        bad.sync()
        self.assertControlWorks()

    def test_endless_admin_line_closes(self):
        bad = self.connect()
        try:
            bad.sendRaw(b'x' * (1024 * 1024))
        except OSError:
            pass
        bad.assertClosed()
        self.assertControlWorks()

    def test_truncated_packets_then_close(self):
        for cut in (1, 5, 12, 15):
            bad = self.connect()
            data = c.REQ + struct.pack('!II', c.SUBMIT_JOB, 20) + b'fn\x00u'
            bad.sendRaw(data[:cut])
            bad.close()
        self.assertControlWorks()

    def test_malformed_submit_closes(self):
        bad = self.connect()
        bad.send(c.SUBMIT_JOB, b'only-a-name')
        bad.assertClosed()
        self.assertControlWorks()

    def test_worker_holding_job_sends_garbage(self):
        worker = self.connect()
        worker.canDo(b'fn')
        self.assertEqual(self.handle, worker.grab()[0])
        worker.sendRaw(b'\x00BAD' + b'\x00' * 8)
        worker.assertClosed()
        # The job went back to the queue; the client is unaffected.
        self.assertControlWorks()

    def test_many_connections_come_and_go(self):
        for _ in range(50):
            RawClient(self.server.port).close()
        wait_for(lambda: len(self.server.connection_map) == 1,
                 message='connections reaped')
        self.assertControlWorks()

    def test_max_connections(self):
        server = self.makeServer(max_connections=1)
        first = self.connect(server)
        first.sync()
        second = self.connect(server)
        second.assertClosed()
        first.sync()

    def test_slow_reader_is_disconnected(self):
        server = self.makeServer(max_output_buffer=1,
                                 max_packet_size=64 * 1024)
        reader = RawClient(server.port)
        self.addCleanup(reader.close)
        reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        payload = b'x' * 60000
        # Ask for far more output than the socket buffers hold, never read.
        try:
            for _ in range(400):
                reader.send(c.ECHO_REQ, payload)
        except OSError:
            pass
        wait_for(lambda: not server.connection_map,
                 message='slow reader dropped')
        other = self.connect(server)
        other.sync()


class TestTLS(ServerTestCase):

    def setUp(self):
        super(TestTLS, self).setUp()
        tmp = self.useFixture(__import__('fixtures').TempDir()).path
        ca = tlsutil.CertificateAuthority(tmp)
        self.server_id = ca.issue('localhost', name='server')
        self.client_id = ca.issue('client-cn', name='client')
        self.tls_server = self.makeServer(
            ssl_key=self.server_id.key, ssl_cert=self.server_id.cert,
            ssl_ca=self.server_id.ca, tls_handshake_timeout=0.5)

    def tlsClient(self, identity=None):
        identity = identity or self.client_id
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(identity.ca)
        ctx.load_cert_chain(identity.cert, identity.key)
        client = RawClient(self.tls_server.port)
        client.sock = ctx.wrap_socket(client.sock)
        self.addCleanup(client.close)
        return client

    def test_mutual_tls_and_subject(self):
        client = self.tlsClient()
        client.sync()
        handle = client.submit(b'fn', b'd' * 100000)
        conns = [conn for conn in self.tls_server.connection_map.values()]
        self.assertEqual(['client-cn'], [conn.ssl_subject for conn in conns])
        worker = self.tlsClient()
        worker.canDo(b'fn')
        self.assertEqual([handle, b'fn', b'', b'd' * 100000], worker.grab())

    def test_idle_peer_does_not_block_others(self):
        idle = RawClient(self.tls_server.port)
        self.addCleanup(idle.close)
        # A real client connects while the idle one sits in its handshake.
        client = self.tlsClient()
        client.sync()
        # The idle peer is dropped at its deadline.
        idle.assertClosed()

    def test_no_client_certificate_refused(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.server_id.ca)
        client = RawClient(self.tls_server.port)
        self.addCleanup(client.close)
        try:
            client.sock = ctx.wrap_socket(client.sock)
            client.sync()
        except (ssl.SSLError, OSError, EOFError, AssertionError):
            pass
        else:
            self.fail('a client without a certificate was served')
        other = self.tlsClient()
        other.sync()

    def test_plain_text_on_tls_port(self):
        plain = RawClient(self.tls_server.port)
        self.addCleanup(plain.close)
        plain.sendRaw(b'status\n')
        plain.assertClosed()
        self.tlsClient().sync()


class TestPortablePoller(ServerTestCase):
    """The selectors fallback used where epoll does not exist."""

    def test_round_trip_without_epoll(self):
        import fixtures
        self.useFixture(fixtures.MonkeyPatch(
            'gear.server.loop._HAS_EPOLL', False))
        server = self.makeServer()
        self.assertFalse(hasattr(server.poll, '_epoll'))
        client = self.connect(server)
        worker = self.connect(server)
        handle = client.submit(b'fn', b'x' * 300000)
        worker.canDo(b'fn')
        self.assertEqual([handle, b'fn', b'', b'x' * 300000], worker.grab())
        worker.send(c.WORK_COMPLETE, handle, b'y' * 300000)
        client.expect(c.WORK_COMPLETE, handle + b'\x00' + b'y' * 300000)
