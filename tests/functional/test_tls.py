"""Mutual TLS and certificate ACLs end to end, with throw-away certificates.

The server runs in-process (GearServerFixture); clients are gear.Client
and gear.Worker, or a raw TLS socket where the exact reply matters.
"""

import logging
import socket
import ssl
import struct
import threading
import time

import fixtures
import testtools

import gear
from gear import constants as c
from gear import tlsutil
from gear.protocol import pack
from gear.testing import GearServerFixture
from tests.util import waiter

HOST = '127.0.0.1'
WAIT = 15.0
# A legitimate client must get through while idle peers sit on the port;
# the server's handshake deadline is set well above this, so getting
# through in time cannot be explained by the idle peers being dropped.
IDLE_PEER_BOUND = 5.0
IDLE_PEERS = 50


wait_for = waiter(WAIT, 0.01)


class Refused(Exception):
    """The server closed or failed the TLS session."""


class TLSWire(object):
    """A raw TLS Gearman connection with bounded reads."""

    def __init__(self, port, key=None, cert=None, ca=None,
                 minimum=None, maximum=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(ca)
        if cert:
            ctx.load_cert_chain(cert, key)
        if minimum:
            ctx.minimum_version = minimum
        if maximum:
            ctx.maximum_version = maximum
        raw = socket.create_connection((HOST, port), timeout=WAIT)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=HOST)
        except (ssl.SSLError, ConnectionError) as e:
            raw.close()
            raise Refused(e)
        self.buf = b''

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, ptype, *args):
        try:
            self.sock.sendall(pack(c.REQ, ptype, b'\x00'.join(args)))
        except (ssl.SSLError, ConnectionError) as e:
            raise Refused(e)

    def _fill(self, needed, deadline):
        while len(self.buf) < needed:
            self._receive(deadline)

    def _receive(self, deadline):
        """Add what arrives next to ``buf``, by ``deadline`` at the latest;
        a refusal or a close raises :class:`Refused`."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError('timed out; have %r' % (self.buf,))
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError('timed out; have %r' % (self.buf,))
        except (ssl.SSLError, ConnectionError) as e:
            raise Refused(e)
        if not data:
            raise Refused('connection closed; have %r' % (self.buf,))
        self.buf += data

    def read(self, timeout=WAIT):
        """(ptype, [arguments]) of the next packet."""
        deadline = time.monotonic() + timeout
        self._fill(12, deadline)
        magic, ptype, size = struct.unpack('!4sII', self.buf[:12])
        self._fill(12 + size, deadline)
        payload = self.buf[12:12 + size]
        self.buf = self.buf[12 + size:]
        return ptype, payload.split(b'\x00') if payload else []

    def echo(self, data=b'ping'):
        """A round trip: also proves every earlier packet was handled."""
        self.send(c.ECHO_REQ, data)
        ptype, args = self.read()
        if (ptype, args) != (c.ECHO_RES, [data]):
            raise AssertionError('expected ECHO_RES, got %s %r'
                                 % (c.types.get(ptype), args))


class TLSTestCase(testtools.TestCase):

    server_options = {}

    def setUp(self):
        super(TLSTestCase, self).setUp()
        if getattr(gear, 'Server', None) is None:
            self.skipTest('gear.Server is not available yet')
        self.useFixture(fixtures.Timeout(90, gentle=True))
        self.fixture = self.useFixture(
            GearServerFixture(ssl=True, **self.server_options))
        self.port = self.fixture.port

    def wire(self, cn, **kw):
        key, cert, ca = self.fixture.client_cert(cn)
        wire = TLSWire(self.port, key, cert, ca, **kw)
        self.addCleanup(wire.close)
        return wire

    def client(self, cn='client'):
        client = gear.Client(cn)
        self.addCleanup(client.shutdown)
        client.addServer(*self.fixture.connect_args(cn))
        client.waitForServer(WAIT)
        return client

    def worker(self, cn, *functions):
        worker = gear.Worker(cn)
        self.addCleanup(worker.shutdown)
        worker.addServer(*self.fixture.connect_args(cn))
        for name in functions:
            worker.registerFunction(name)
        worker.waitForServer(WAIT)
        return worker

    def round_trip(self, client, worker, name=b'tls-job', timeout=WAIT):
        job = gear.Job(name, b'secret data')
        client.submitJob(job, timeout=timeout)
        workerjob = worker.getJob(timeout=timeout)
        self.assertEqual(b'secret data', workerjob.arguments)
        workerjob.sendWorkComplete(b'done: ' + workerjob.arguments)
        wait_for(lambda: job.complete, timeout, 'the job to complete')
        self.assertEqual([b'done: secret data'], job.data)
        self.assertFalse(job.failure)


class TestMutualTLS(TLSTestCase):

    def test_client_and_worker_complete_a_job(self):
        client = self.client('client')
        worker = self.worker('worker', 'tls-job')
        self.round_trip(client, worker)
        subjects = sorted(conn.ssl_subject for conn in
                          self.fixture.server.connection_map.values())
        self.assertEqual(['client', 'worker'], subjects)

    def assertRefused(self, make_wire):
        """The session fails at the handshake or the first exchange;
        never does the server answer."""
        try:
            wire = make_wire()
        except Refused:
            return
        self.addCleanup(wire.close)
        self.assertRaises(Refused, wire.echo)

    def test_client_without_certificate_is_refused(self):
        self.assertRefused(lambda: TLSWire(self.port, ca=self.fixture.ssl_ca))
        # The server is unharmed.
        self.wire('after').echo()

    def test_certificate_from_another_ca_is_refused(self):
        other_dir = self.useFixture(fixtures.TempDir()).path
        other = tlsutil.CertificateAuthority(other_dir, cn='Other CA')
        stranger = other.issue('client')
        self.assertRefused(lambda: TLSWire(
            self.port, stranger.key, stranger.cert, self.fixture.ssl_ca))
        self.wire('after').echo()

    def test_tls13(self):
        wire = self.wire('modern', minimum=ssl.TLSVersion.TLSv1_3,
                         maximum=ssl.TLSVersion.TLSv1_3)
        wire.echo()
        self.assertEqual('TLSv1.3', wire.sock.version())
        # Several packets in one record, and one packet split across
        # records: buffered plaintext must not be left unread.
        wire.sock.sendall(pack(c.REQ, c.ECHO_REQ, b'a') +
                          pack(c.REQ, c.ECHO_REQ, b'b'))
        self.assertEqual((c.ECHO_RES, [b'a']), wire.read())
        self.assertEqual((c.ECHO_RES, [b'b']), wire.read())
        data = pack(c.REQ, c.ECHO_REQ, b'x' * 40000)
        wire.sock.sendall(data[:5])
        wire.sock.sendall(data[5:])
        self.assertEqual((c.ECHO_RES, [b'x' * 40000]), wire.read())

    def test_tls12(self):
        wire = self.wire('older', minimum=ssl.TLSVersion.TLSv1_2,
                         maximum=ssl.TLSVersion.TLSv1_2)
        wire.echo()
        self.assertEqual('TLSv1.2', wire.sock.version())


class TestIdlePeers(TLSTestCase):

    server_options = {'tls_handshake_timeout': 60}

    def test_idle_plain_peers_do_not_block_tls_clients(self):
        idle = []
        for _ in range(IDLE_PEERS):
            sock = socket.create_connection((HOST, self.port), timeout=WAIT)
            self.addCleanup(sock.close)
            idle.append(sock)

        client = gear.Client('client')
        self.addCleanup(client.shutdown)
        client.addServer(*self.fixture.connect_args('client'))
        worker = gear.Worker('worker')
        self.addCleanup(worker.shutdown)
        worker.addServer(*self.fixture.connect_args('worker'))
        worker.registerFunction('tls-job')
        client.waitForServer(IDLE_PEER_BOUND)
        worker.waitForServer(IDLE_PEER_BOUND)
        self.round_trip(client, worker, timeout=IDLE_PEER_BOUND)

        # The idle peers were not dropped to make room: still connected.
        for sock in idle:
            sock.setblocking(False)
            self.assertRaises(BlockingIOError, sock.recv, 1)


class TestACL(TLSTestCase):

    def setUp(self):
        acl = gear.ACL()
        acl.add(gear.ACLEntry('allowed', register='acl-', invoke='acl-'))
        acl.add(gear.ACLEntry('denied', invoke='other$', register='other$'))
        self.server_options = {'acl': acl}
        super(TestACL, self).setUp()

    def test_permitted_subject_submits_and_registers(self):
        client = self.client('allowed')
        worker = self.worker('allowed', 'acl-job')
        self.round_trip(client, worker, name=b'acl-job')

    def test_denied_submit_gets_permission_denied(self):
        wire = self.wire('denied')
        wire.send(c.SUBMIT_JOB, b'acl-job', b'', b'data')
        ptype, args = wire.read()
        self.assertEqual('ERROR', c.types.get(ptype))
        self.assertEqual(b'PERMISSION_DENIED', args[0])
        # The connection survives the denial.
        wire.echo()

    def test_subject_without_entry_is_denied(self):
        wire = self.wire('stranger')
        wire.send(c.SUBMIT_JOB_BG, b'acl-job', b'u1', b'data')
        ptype, args = wire.read()
        self.assertEqual((c.ERROR, b'PERMISSION_DENIED'), (ptype, args[0]))

    def test_denied_client_library_raises(self):
        client = self.client('denied')
        self.assertRaises(gear.GearmanError, client.submitJob,
                          gear.Job(b'acl-job', b'data'), timeout=WAIT)

    def test_denied_can_do_gets_no_jobs(self):
        logged = self.useFixture(fixtures.FakeLogger(
            name='gear.Server', level=logging.INFO,
            format='%(levelname)s %(message)s'))
        denied = self.wire('denied')
        denied.send(c.CAN_DO, b'acl-job')
        denied.echo()
        # CAN_DO has no reply, so the denial must at least be logged,
        # naming the subject and the function.
        denial = [line for line in logged.output.splitlines()
                  if line.startswith('WARNING') and 'denied' in line and
                  'acl-job' in line]
        self.assertEqual(1, len(denial), logged.output)

        submitter = self.wire('allowed')
        submitter.send(c.SUBMIT_JOB_BG, b'acl-job', b'u1', b'data')
        ptype, args = submitter.read()
        self.assertEqual(c.JOB_CREATED, ptype)
        handle = args[0]

        denied.send(c.GRAB_JOB)
        self.assertEqual((c.NO_JOB, []), denied.read())

        # The job was there all along, for a permitted worker.
        allowed = self.wire('allowed')
        allowed.send(c.CAN_DO, b'acl-job')
        allowed.send(c.GRAB_JOB)
        ptype, args = allowed.read()
        self.assertEqual(c.JOB_ASSIGN, ptype)
        self.assertEqual([handle, b'acl-job', b'data'], args)

    def test_denied_worker_library_gets_nothing(self):
        worker = self.worker('denied', 'acl-job')
        got = []

        def grab():
            try:
                got.append(worker.getJob(timeout=WAIT))
            except (gear.InterruptedError, gear.TimeoutError):
                pass
        thread = threading.Thread(target=grab, daemon=True)
        thread.start()
        self.addCleanup(thread.join, WAIT)
        self.addCleanup(worker.stopWaitingForJobs)

        # The denied worker registered first; the job still goes to the
        # permitted one, and nothing ever reaches the denied worker.
        client = self.client('allowed')
        allowed = self.worker('allowed', 'acl-job')
        self.round_trip(client, allowed, name=b'acl-job')
        self.assertEqual([], got)
