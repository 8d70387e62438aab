"""Connection and NonBlockingConnection, driven by scripted fake sockets."""

import errno
import socket
import ssl
import threading

import fixtures
import testtools

import gear
from gear import tlsutil
from gear import constants
from gear.connection import (
    Connection, EchoTask, GetStatusTask, NonBlockingConnection,
    OptionReqTask, SubmitJobTask, UntrackedRequest, reply_key)
from gear.protocol import Packet
from tests.gearmand import wait_for


class EndOfScript(Exception):
    """The scripted socket has no more data (blocking mode)."""


class ScriptedSocket(object):
    """A socket that returns pre-recorded chunks, one recv per chunk end.

    Like a real socket it never returns more than the chunk being read,
    so a chunk boundary is a read boundary.  In non-blocking mode the end
    of each chunk raises EAGAIN; in blocking mode the end of the script
    raises EndOfScript.  It offers only what gear's own fake offered:
    ``connect``, ``recv`` and ``setblocking``.
    """

    def __init__(self, family=None, socktype=None, proto=None):
        self.chunks = []
        self.index = 0
        self.offset = 0
        self.blocking = True
        self.recv_calls = 0

    def script(self, chunks):
        self.chunks = list(chunks)

    def connect(self, address):
        self.address = address

    def setblocking(self, flag):
        self.blocking = bool(flag)

    def _eagain(self):
        error = OSError("Resource temporarily unavailable")
        error.errno = errno.EAGAIN
        raise error

    def recv(self, count):
        self.recv_calls += 1
        while True:
            if self.index >= len(self.chunks):
                if not self.blocking:
                    self._eagain()
                raise EndOfScript()
            chunk = self.chunks[self.index]
            if self.offset >= len(chunk):
                self.index += 1
                self.offset = 0
                if not self.blocking:
                    self._eagain()
                continue
            break
        data = chunk[self.offset:self.offset + count]
        self.offset += len(data)
        return data


class SendingSocket(ScriptedSocket):
    """Also accepts sends, a few bytes at a time, with EAGAIN stalls."""

    def __init__(self, *args, **kw):
        super(SendingSocket, self).__init__(*args, **kw)
        self.sent = bytearray()
        self.limit = 7
        self.stall_every = 0
        self.sends = 0

    def send(self, data):
        self.sends += 1
        if self.stall_every and self.sends % self.stall_every == 0:
            self._eagain()
        data = bytes(data[:self.limit])
        self.sent += data
        return len(data)


def work_complete(size, handle=b'H:127.0.0.1:11'):
    return Packet(constants.RES, constants.WORK_COMPLETE,
                  handle + b'\x00' + b'x' * size)


class FakeStatusRequest(object):
    """The minimal admin-request shape the connection relies on."""

    def __init__(self):
        self.response = None
        self.complete = threading.Event()

    def isComplete(self, data):
        end = data.find(b'\n.\n')
        if end < 0:
            return False, None
        return True, data[end + 3:]

    def setComplete(self):
        self.complete.set()

    def waitForResponse(self, timeout=None):
        return self.complete.wait(timeout)

    def getCommand(self):
        return b'status\n'


class TestConnectionRepr(testtools.TestCase):

    def test_repr_ends_with_host_and_port(self):
        for host, port in (('hostname', '80'), ('hostname', 80),
                           (None, '80')):
            conn = Connection(host, port)
            self.assertTrue(repr(conn).endswith(
                'host: %s port: %s>' % (host, port)), repr(conn))
            self.assertTrue(repr(conn).startswith('<gear.Connection 0x'))

    def test_use_ssl_needs_all_three_files(self):
        self.assertFalse(Connection('h', 1, 'k', 'c').use_ssl)
        self.assertTrue(Connection('h', 1, 'k', 'c', 'a').use_ssl)

    def test_change_state(self):
        conn = Connection('h', 1)
        self.assertEqual('INIT', conn.state)
        conn.changeState('IDLE')
        self.assertEqual('IDLE', conn.state)
        self.assertIsNotNone(conn.state_time)


class TestConnectionRead(testtools.TestCase):

    def setUp(self):
        super(TestConnectionRead, self).setUp()
        original = socket.socket
        socket.socket = ScriptedSocket
        self.addCleanup(setattr, socket, 'socket', original)
        self.conn = Connection('127.0.0.1', 4730)
        self.conn.connect()
        self.sock = self.conn.conn

    def assertEndOfData(self):
        self.assertRaises(EndOfScript, self.conn.readPacket)

    def test_connect_uses_only_connect(self):
        self.assertIsInstance(self.sock, ScriptedSocket)
        self.assertTrue(self.conn.connected)
        self.assertTrue(self.sock.blocking)

    def test_large_packet(self):
        p1 = work_complete(10000)
        self.sock.script([p1.toBinary()])
        self.assertEqual(p1, self.conn.readPacket())
        self.assertEndOfData()

    def test_packet_split_at_1448_with_next_packet_in_same_read(self):
        p1 = work_complete(2600)
        p2 = Packet(constants.REQ, constants.GRAB_JOB_UNIQ, b'')
        data = p1.toBinary()
        self.sock.script([data[:1448], data[1448:] + p2.toBinary()])
        self.assertEqual(p1, self.conn.readPacket())
        calls = self.sock.recv_calls
        self.assertEqual(p2, self.conn.readPacket())
        # The second packet was already buffered: no socket read for it.
        self.assertEqual(calls, self.sock.recv_calls)
        self.assertEndOfData()

    def test_split_at_every_byte_boundary(self):
        p1 = Packet(constants.RES, constants.JOB_CREATED, b'H:lap:1')
        p2 = work_complete(30)
        stream = p1.toBinary() + p2.toBinary()
        for cut in range(1, len(stream)):
            conn = Connection('127.0.0.1', 4730)
            conn.connect()
            conn.conn.script([stream[:cut], stream[cut:]])
            self.assertEqual(p1, conn.readPacket(), cut)
            self.assertEqual(p2, conn.readPacket(), cut)
            self.assertRaises(EndOfScript, conn.readPacket)

    def test_one_byte_per_read(self):
        p1 = work_complete(100)
        data = p1.toBinary()
        self.sock.script([data[i:i + 1] for i in range(len(data))])
        self.assertEqual(p1, self.conn.readPacket())
        self.assertEndOfData()

    def test_returned_packet_knows_its_connection(self):
        p1 = work_complete(1)
        self.sock.script([p1.toBinary()])
        self.assertIs(self.conn, self.conn.readPacket().connection)

    def test_admin_reply(self):
        response = b'test\t0\t0\t1\n.\n'
        req = FakeStatusRequest()
        self.sock.script([response])
        self.conn.admin_requests.append(req)
        r1 = self.conn.readPacket()
        self.assertIs(req, r1)
        self.assertEqual(response, r1.response)
        self.assertEqual([], self.conn.admin_requests)
        self.assertEndOfData()

    def test_admin_reply_with_real_request(self):
        response = b'test\t0\t0\t1\n.\n'
        req = gear.StatusAdminRequest()
        self.sock.script([response[:5], response[5:]])
        self.conn.admin_requests.append(req)
        r1 = self.conn.readPacket()
        self.assertEqual(response, r1.response)
        self.assertEndOfData()

    def test_admin_and_binary_interleaved(self):
        p1 = work_complete(5000)
        response = b'test\t0\t0\t1\n.\n'
        p2 = work_complete(5000)
        req = FakeStatusRequest()
        self.conn.admin_requests.append(req)
        self.sock.script([p1.toBinary() + response + p2.toBinary()])
        self.assertEqual(p1, self.conn.readPacket())
        self.assertEqual(response, self.conn.readPacket().response)
        self.assertEqual(p2, self.conn.readPacket())
        self.assertEndOfData()

    def test_two_admin_replies_matched_in_order(self):
        first, second = FakeStatusRequest(), FakeStatusRequest()
        self.conn.admin_requests.extend([first, second])
        self.sock.script([b'a\t1\t0\t0\n.\nb\t2\t0\t0\n.\n'])
        self.assertIs(first, self.conn.readPacket())
        self.assertIs(second, self.conn.readPacket())
        self.assertEqual(b'a\t1\t0\t0\n.\n', first.response)
        self.assertEqual(b'b\t2\t0\t0\n.\n', second.response)

    def test_unsolicited_admin_text_is_dropped(self):
        p1 = work_complete(10)
        self.sock.script([b'OK stray\n' + p1.toBinary()])
        self.assertEqual(p1, self.conn.readPacket())
        self.assertEndOfData()

    def test_unsolicited_text_without_newline_before_packet(self):
        p1 = work_complete(10)
        self.sock.script([b'junk' + p1.toBinary()])
        self.assertEqual(p1, self.conn.readPacket())

    def test_oversized_header_is_rejected_and_closes(self):
        self.conn.max_packet_size = 1024
        header = Packet(constants.RES, constants.WORK_DATA,
                        b'x' * 2048).toBinary()[:12]
        self.sock.script([header])
        self.assertRaises(gear.ProtocolError, self.conn.readPacket)
        self.assertFalse(self.conn.connected)

    def test_bad_magic_is_rejected(self):
        self.sock.script([b'\x00XYZ' + b'\x00' * 8])
        self.assertRaises(gear.ProtocolError, self.conn.readPacket)

    def test_eof_returns_none(self):
        self.sock.script([b''])
        self.sock.chunks = []

        def eof(count):
            return b''
        self.sock.recv = eof
        self.assertIsNone(self.conn.readPacket())

    def test_has_pending_data(self):
        p1 = work_complete(10)
        p2 = work_complete(20)
        self.sock.script([p1.toBinary() + p2.toBinary()[:5]])
        self.assertFalse(self.conn.hasPendingData())
        self.conn.readPacket()
        self.assertTrue(self.conn.hasPendingData())

    def test_disconnect_resets_state(self):
        task = SubmitJobTask(object())
        self.conn.pending_tasks.append(task)
        self.conn.related_jobs[b'H:1'] = object()
        self.conn.admin_requests.append(FakeStatusRequest())
        self.conn.options.add(b'exceptions')
        self.conn.changeState('IDLE')
        self.conn.disconnect()
        self.assertTrue(task.failed)
        self.assertTrue(task.wait(0))
        self.assertEqual({}, self.conn.related_jobs)
        self.assertEqual([], self.conn.admin_requests)
        self.assertEqual(set(), self.conn.options)
        self.assertEqual(0, len(self.conn.pending_tasks))
        self.assertEqual('INIT', self.conn.state)
        self.assertIsNone(self.conn.conn)
        self.assertFalse(self.conn.connected)


class TestNonBlockingRead(testtools.TestCase):

    def setUp(self):
        super(TestNonBlockingRead, self).setUp()
        original = socket.socket
        socket.socket = ScriptedSocket
        self.addCleanup(setattr, socket, 'socket', original)
        self.conn = NonBlockingConnection('127.0.0.1', 4730)
        self.conn.connect()
        self.sock = self.conn.conn
        self.assertFalse(self.sock.blocking)

    def assertEndOfData(self):
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)

    def test_retry_mid_packet_keeps_input(self):
        p1 = work_complete(2600)
        p2 = Packet(constants.REQ, constants.GRAB_JOB_UNIQ, b'')
        data = p1.toBinary()
        self.sock.script([data[:1448], data[1448:] + p2.toBinary()])
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)
        self.assertTrue(self.conn.hasPendingData())
        self.assertTrue(self.conn.need_bytes)
        self.assertEqual(p1, self.conn.readPacket())
        self.assertEqual(p2, self.conn.readPacket())
        self.assertEndOfData()

    def test_retry_inside_header(self):
        p1 = work_complete(10)
        data = p1.toBinary()
        self.sock.script([data[:3], data[3:9], data[9:]])
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)
        self.assertEqual(p1, self.conn.readPacket())
        self.assertEndOfData()

    def test_admin_mix(self):
        p1 = work_complete(5000)
        response = b'test\t0\t0\t1\n.\n'
        p2 = work_complete(5000)
        req = FakeStatusRequest()
        self.conn.admin_requests.append(req)
        self.sock.script([p1.toBinary() + response[:4],
                          response[4:] + p2.toBinary()])
        self.assertEqual(p1, self.conn.readPacket())
        self.assertRaises(gear.RetryIOError, self.conn.readPacket)
        self.assertEqual([req], self.conn.admin_requests)
        self.assertIs(req, self.conn.readPacket())
        self.assertEqual(p2, self.conn.readPacket())
        self.assertEndOfData()

    def test_ssl_want_read_is_retry(self):
        def want_read(count):
            raise ssl.SSLError(ssl.SSL_ERROR_WANT_READ, 'want read')
        self.sock.recv = want_read
        self.assertEndOfData()


class TestSending(testtools.TestCase):

    def setUp(self):
        super(TestSending, self).setUp()
        original = socket.socket
        socket.socket = SendingSocket
        self.addCleanup(setattr, socket, 'socket', original)

    def test_blocking_send_continues_from_offset(self):
        conn = Connection('127.0.0.1', 4730)
        conn.connect()
        packet = work_complete(1000)
        conn.sendPacket(packet)
        self.assertEqual(packet.toBinary(), bytes(conn.conn.sent))
        self.assertGreater(conn.conn.sends, 100)

    def test_nonblocking_queue_and_flush(self):
        conn = NonBlockingConnection('127.0.0.1', 4730)
        conn.connect()
        sock = conn.conn
        sock.stall_every = 4
        expected = b''
        for i in range(20):
            packet = work_complete(i)
            expected += packet.toBinary()
            conn.sendPacket(packet)
        for attempt in range(1000):
            if conn.sendQueuedData():
                break
        self.assertEqual(0, len(conn.send_queue))
        self.assertEqual(expected, bytes(sock.sent))

    def test_requests_sent_without_a_task_keep_their_place(self):
        conn = Connection('127.0.0.1', 4730)
        conn.connect()
        conn.sendPacket(Packet(constants.REQ, constants.GET_STATUS,
                               b'H:1'))
        conn.sendPacket(work_complete(1))
        task = conn.sendRequest(Packet(constants.REQ, constants.SUBMIT_JOB,
                                       b'f\x00\x00'),
                                SubmitJobTask(object()))
        untracked, submit = conn.pending_tasks
        self.assertIsInstance(untracked, UntrackedRequest)
        self.assertEqual((constants.STATUS_RES, b'H:1'),
                         (untracked.reply_type, untracked.key))
        self.assertIs(task, submit)
        self.assertIs(untracked, conn._takeReplyTask(constants.STATUS_RES,
                                                     b'H:1'))
        self.assertIs(submit, conn._takeReplyTask(constants.JOB_CREATED))

    def test_send_request_is_recorded_and_removed_on_failure(self):
        conn = Connection('127.0.0.1', 4730)
        conn.connect()

        def broken(data):
            raise OSError(errno.EPIPE, 'broken pipe')
        conn.conn.send = broken
        task = OptionReqTask(b'exceptions')
        self.assertRaises(OSError, conn.sendRequest,
                          Packet(constants.REQ, constants.OPTION_REQ,
                                 b'exceptions'), task)
        self.assertEqual(0, len(conn.pending_tasks))


class TestReplyMatching(testtools.TestCase):

    def test_reply_takes_oldest_and_retires_skipped(self):
        conn = Connection('h', 1)
        option = OptionReqTask(b'exceptions')
        submit = SubmitJobTask(object())
        conn.pending_tasks.extend([option, submit])
        self.assertIs(submit, conn._takeReplyTask(constants.JOB_CREATED))
        self.assertTrue(option.failed)
        self.assertFalse(submit.failed)
        self.assertEqual(0, len(conn.pending_tasks))

    def test_error_answers_the_head(self):
        conn = Connection('h', 1)
        first, second = EchoTask(b'a'), EchoTask(b'b')
        conn.pending_tasks.extend([first, second])
        self.assertIs(first, conn._takeReplyTask(constants.ERROR))
        self.assertEqual([second], list(conn.pending_tasks))

    def test_no_task(self):
        self.assertIsNone(Connection('h', 1)._takeReplyTask(constants.ERROR))

    def test_reply_goes_to_the_request_naming_its_key(self):
        conn = Connection('h', 1)
        one, two = gear.Job(b'f', b''), gear.Job(b'f', b'')
        one.handle, two.handle = b'H:1', b'H:2'
        first, second = GetStatusTask(one), GetStatusTask(two)
        conn.pending_tasks.extend([first, second])
        reply = Packet(constants.RES, constants.STATUS_RES,
                       b'H:2\x001\x000\x000\x000')
        self.assertIs(second, conn._takeReplyTask(constants.STATUS_RES,
                                                  reply_key(reply)))
        # The server answered a later request: the earlier was skipped.
        self.assertTrue(first.failed)
        self.assertEqual(0, len(conn.pending_tasks))

    def test_unmatched_reply_takes_nothing(self):
        conn = Connection('h', 1)
        submit = SubmitJobTask(object())
        conn.pending_tasks.append(submit)
        self.assertIsNone(conn._takeReplyTask(constants.STATUS_RES, b'H:1'))
        self.assertEqual([submit], list(conn.pending_tasks))
        self.assertFalse(submit.failed)

    def test_option_names_match_without_case(self):
        conn = Connection('h', 1)
        task = OptionReqTask(b'Exceptions')
        conn.pending_tasks.append(task)
        reply = Packet(constants.RES, constants.OPTION_RES, b'exceptions')
        self.assertIs(task, conn._takeReplyTask(constants.OPTION_RES,
                                                reply_key(reply)))

    def test_abandon_and_claim(self):
        task = SubmitJobTask(None)
        self.assertTrue(task.abandon())
        self.assertFalse(task.claim())
        task = SubmitJobTask(None)
        self.assertTrue(task.claim())
        self.assertFalse(task.abandon())


class TestEcho(testtools.TestCase):

    def setUp(self):
        super(TestEcho, self).setUp()
        original = socket.socket
        socket.socket = SendingSocket
        self.addCleanup(setattr, socket, 'socket', original)
        self.conn = Connection('127.0.0.1', 4730)
        self.conn.connect()
        self.conn.conn.limit = 1 << 20

    def test_echo_returns_data_when_answered(self):
        def answer():
            for _ in range(1000):
                if self.conn.handleEchoRes(b'ping'):
                    return
                threading.Event().wait(0.01)
        thread = threading.Thread(target=answer)
        thread.start()
        self.assertEqual(b'ping', self.conn.echo(b'ping', timeout=10))
        thread.join(10)
        self.assertEqual({}, self.conn.echo_conditions)
        self.assertEqual(1, len(self.conn.pending_tasks))

    def test_echo_timeout_removes_waiter(self):
        self.assertRaises(gear.TimeoutError, self.conn.echo, b'x',
                          timeout=0.01)
        self.assertEqual({}, self.conn.echo_conditions)
        # The same data may be used again afterwards.
        self.assertRaises(gear.TimeoutError, self.conn.echo, b'x',
                          timeout=0.01)

    def test_echo_duplicate_data_rejected(self):
        self.conn.echo_conditions[b'dup'] = object()
        self.assertRaises(gear.InvalidDataError, self.conn.echo, b'dup')

    def test_echo_default_data_is_random(self):
        sent = []
        self.conn.sendEchoReq = sent.append
        self.assertRaises(gear.TimeoutError, self.conn.echo, timeout=0.01)
        self.assertEqual(32, len(sent[0]))

    def test_echo_fails_on_disconnect(self):
        def drop():
            for _ in range(1000):
                if self.conn.echo_conditions:
                    self.conn.disconnect()
                    return
                threading.Event().wait(0.01)
        thread = threading.Thread(target=drop)
        thread.start()
        self.assertRaises(gear.ConnectionError, self.conn.echo, b'y',
                          timeout=10)
        thread.join(10)


class TestAdminRequestTimeout(testtools.TestCase):

    def test_timed_out_request_is_removed(self):
        original = socket.socket
        socket.socket = SendingSocket
        self.addCleanup(setattr, socket, 'socket', original)
        conn = Connection('127.0.0.1', 4730)
        conn.connect()
        req = FakeStatusRequest()
        self.assertRaises(gear.TimeoutError, conn.sendAdminRequest, req,
                          timeout=0.01)
        self.assertEqual([], conn.admin_requests)
        self.assertEqual(b'status\n', bytes(conn.conn.sent))


class TestTLS(testtools.TestCase):
    """Mutual TLS against a minimal TLS peer, with throw-away certs."""

    def setUp(self):
        super(TestTLS, self).setUp()
        directory = self.useFixture(fixtures.TempDir()).path
        ca, self.server_id = tlsutil.make_server_files(directory)
        self.client_id = ca.issue('client')
        self.listener = socket.socket()
        self.addCleanup(self.listener.close)
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.context = gear.create_ssl_context(
            self.server_id.key, self.server_id.cert, self.server_id.ca,
            server_side=True)
        self.peer = {}

    def serve(self, payload, keep_open=None):
        def run():
            raw, _ = self.listener.accept()
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except Exception as e:
                self.peer['error'] = e
                raw.close()
                return
            self.peer['cert'] = conn.getpeercert()
            conn.sendall(payload)
            if keep_open is not None:
                keep_open.wait(10)
            conn.close()
        thread = threading.Thread(target=run)
        thread.start()
        self.addCleanup(thread.join, 10)

    def test_packets_across_records(self):
        packets = [work_complete(size) for size in (1, 20000, 70000, 3)]
        self.serve(b''.join(p.toBinary() for p in packets))
        conn = Connection('127.0.0.1', self.port, *self.client_id)
        self.assertTrue(conn.use_ssl)
        conn.connect()
        self.addCleanup(conn.disconnect)
        for packet in packets:
            self.assertEqual(packet, conn.readPacket())
        self.assertIsNone(conn.readPacket())
        subject = dict(x[0] for x in self.peer['cert']['subject'])
        self.assertEqual('client', subject['commonName'])

    def test_client_from_another_ca_is_refused(self):
        other = tlsutil.CertificateAuthority(
            self.useFixture(fixtures.TempDir()).path)
        stranger = other.issue('stranger')
        self.serve(work_complete(1).toBinary())
        conn = Connection('127.0.0.1', self.port, stranger.key,
                          stranger.cert, self.server_id.ca)
        try:
            conn.connect()
            # With TLS 1.3 the refusal shows on the first read.
            result = conn.readPacket()
        except (gear.ConnectionError, ssl.SSLError, OSError):
            result = None
        conn.disconnect()
        self.assertIsNone(result)
        wait_for(lambda: 'error' in self.peer, 10)

    def test_poll_loop_dispatches_buffered_tls_data(self):
        release = threading.Event()
        noops = Packet(constants.RES, constants.NOOP, b'').toBinary() * 50
        self.serve(noops, keep_open=release)
        self.addCleanup(release.set)
        seen = []

        class Counting(gear.Client):
            def handleNoop(self, packet):
                seen.append(packet)
        client = Counting('tls', exceptions=False)
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', self.port, *self.client_id)
        client.waitForServer(10)
        wait_for(lambda: len(seen) == 50, 10)


class TestSelfConnection(testtools.TestCase):

    def test_connection_to_itself_is_refused(self):
        # Connecting to a free port in the ephemeral range can, on retry,
        # connect the socket to itself.  Force that with an explicit bind.
        probe = socket.socket()
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
        probe.close()
        original = socket.socket

        def bound_socket(*args):
            sock = original(*args)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(('127.0.0.1', port))
            return sock
        socket.socket = bound_socket
        self.addCleanup(setattr, socket, 'socket', original)
        conn = Connection('127.0.0.1', port)
        error = self.assertRaises(gear.ConnectionError, conn.connect)
        self.assertIn('itself', str(error))
