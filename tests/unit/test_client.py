"""BaseClientServer, BaseClient and Client without a real server.

Connections here are real Connection objects whose sends are recorded
(and optionally answered at once), injected into the client's active
list; a socketpair stands in for a server where the poll thread matters.
"""

import socket
import threading

import testtools

import gear
from gear import constants
from gear.protocol import Packet
from tests.gearmand import wait_for


class RecordingConnection(gear.Connection):
    """A connected-looking Connection that records what is sent.

    ``on_send(conn, packet)`` may answer by calling the client's
    handlePacket, as the poll thread would.
    """

    def __init__(self, name='fake', on_send=None):
        super(RecordingConnection, self).__init__('127.0.0.1', name)
        self.connected = True
        self.sent = []
        self.on_send = on_send

    def sendRaw(self, data):
        data = bytes(data)
        packet = Packet(data[:4], int.from_bytes(data[4:8], 'big'),
                        data[12:])
        self.sent.append(packet)
        if self.on_send is not None:
            self.on_send(self, packet)

    def disconnect(self):
        self._failOutstanding()
        self._init()

    def sent_types(self):
        return [p.ptype for p in self.sent]


def res(ptype, data, conn):
    return Packet(constants.RES, ptype, data, conn)


class ClientTestCase(testtools.TestCase):

    def setUp(self):
        super(ClientTestCase, self).setUp()
        self.client = gear.Client('test')
        self.addCleanup(self.client.shutdown)

    def add(self, conn):
        with self.client.connections_condition:
            self.client.active_connections.append(conn)
        return conn

    def answer_created(self, handles):
        """An on_send that answers SUBMITs with the given handles."""
        handles = list(handles)

        def on_send(conn, packet):
            if packet.ptype in constants.SUBMIT_TYPES or \
                    packet.ptype == constants.SUBMIT_JOB_EPOCH:
                self.client.handlePacket(
                    res(constants.JOB_CREATED, handles.pop(0), conn))
        return on_send


class TestClientBasics(testtools.TestCase):

    def test_no_argument_constructor_and_double_shutdown(self):
        client = gear.Client()
        self.assertTrue(repr(client).startswith('<gear.Client 0x'))
        self.assertEqual(set(), client.options)
        client.shutdown()
        client.shutdown()
        self.assertFalse(client.poll_thread.is_alive())
        self.assertFalse(client.connect_thread.is_alive())

    def test_threads(self):
        client = gear.Client()
        self.addCleanup(client.shutdown)
        self.assertEqual("Gearman client poll", client.poll_thread.name)
        self.assertEqual("Gearman client connect",
                         client.connect_thread.name)
        self.assertTrue(client.poll_thread.daemon)
        self.assertTrue(client.connect_thread.daemon)

    def test_wait_for_server_times_out(self):
        client = gear.Client()
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', 0)
        self.assertRaises(gear.TimeoutError, client.waitForServer, timeout=1)

    def test_duplicate_server_and_positional_tls_files(self):
        client = gear.Client()
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', 0, 'key', 'cert', 'ca')
        self.assertRaises(gear.ConfigurationError, client.addServer,
                          '127.0.0.1', 0)
        conn = client.inactive_connections[0]
        self.assertEqual(('key', 'cert', 'ca'),
                         (conn.ssl_key, conn.ssl_cert, conn.ssl_ca))
        self.assertTrue(conn.use_ssl)

    def test_get_connection_without_servers(self):
        client = gear.Client()
        self.addCleanup(client.shutdown)
        error = self.assertRaises(gear.NoConnectedServersError,
                                  client.getConnection)
        self.assertIsInstance(error, gear.GearmanError)

    def test_handle_status_res_with_replaced_get_job(self):
        client = gear.Client()
        self.addCleanup(client.shutdown)
        for running, expected in ((b'1', True), (b'0', False)):
            packet = Packet(constants.RES, constants.STATUS_RES,
                            b'H:127.0.0.1:11\x001\x00' + running +
                            b'\x00\x00')
            packet.getJob = lambda: gear.Job(b"", b"")
            job = client.handleStatusRes(packet)
            self.assertTrue(job.known)
            self.assertEqual(expected, job.running)
            self.assertIsNone(job.fraction_complete)

    def test_worker_id_alias(self):
        with testtools.ExpectedException(gear.ConfigurationError):
            gear.Worker()


class TestDispatch(ClientTestCase):

    def test_every_type_has_a_hook(self):
        for ptype, name in gear.base.PACKET_HANDLERS.items():
            self.assertTrue(callable(getattr(gear.BaseClientServer, name)),
                            name)
        self.assertEqual(41, len(gear.base.PACKET_HANDLERS))

    def test_timing_reported_and_unknown_type_logged(self):
        seen = []
        self.client.reportTimingStats = \
            lambda ptype, duration: seen.append((ptype, duration >= 0))
        self.client.handlePacket(Packet(constants.RES, 5, b''))
        self.client.handlePacket(Packet(constants.RES, constants.NOOP, b''))
        self.assertEqual([(5, True), (constants.NOOP, True)], seen)

    def test_client_ignores_server_side_packets(self):
        # A default hook logs and returns None, it never raises.
        self.assertIsNone(self.client.handleSubmitJob(
            Packet(constants.REQ, constants.SUBMIT_JOB, b'f\x00\x00')))


class TestSubmit(ClientTestCase):

    def test_no_connected_servers(self):
        error = self.assertRaises(gear.NoConnectedServersError,
                                  self.client.submitJob, gear.Job('f', b''))
        self.assertIsInstance(error, gear.GearmanError)

    def test_bad_precedence_and_when(self):
        self.add(RecordingConnection())
        job = gear.Job('f', b'')
        self.assertRaises(gear.ConfigurationError, self.client.submitJob,
                          job, precedence=7)
        self.assertRaises(gear.ConfigurationError, self.client.submitJob,
                          job, when=100)
        self.assertRaises(gear.ConfigurationError, self.client.submitJob,
                          job, background=True,
                          precedence=gear.PRECEDENCE_HIGH, when=100)

    def test_foreground_submit_every_precedence(self):
        conn = self.add(RecordingConnection())
        conn.on_send = self.answer_created([b'H:1', b'H:2', b'H:3'])
        expected = []
        for handle, precedence, ptype in (
                (b'H:1', gear.PRECEDENCE_NORMAL, constants.SUBMIT_JOB),
                (b'H:2', gear.PRECEDENCE_LOW, constants.SUBMIT_JOB_LOW),
                (b'H:3', gear.PRECEDENCE_HIGH, constants.SUBMIT_JOB_HIGH)):
            job = gear.Job('fn', b'args', b'u')
            self.client.submitJob(job, precedence=precedence)
            self.assertEqual(handle, job.handle)
            self.assertIs(conn, job.connection)
            self.assertIs(job, conn.related_jobs[handle])
            expected.append(ptype)
        self.assertEqual(expected, conn.sent_types())
        self.assertEqual(b'fn\x00u\x00args', conn.sent[0].data)

    def test_background_job_gets_unique_and_is_not_kept(self):
        conn = self.add(RecordingConnection())
        conn.on_send = self.answer_created([b'H:1', b'H:2'])
        job = gear.Job('fn', b'args')
        self.client.submitJob(job, background=True,
                              precedence=gear.PRECEDENCE_LOW)
        self.assertEqual(constants.SUBMIT_JOB_LOW_BG, conn.sent[0].ptype)
        self.assertEqual(32, len(job.unique))
        int(job.unique, 16)
        self.assertEqual(b'H:1', job.handle)
        self.assertEqual({}, conn.related_jobs)
        text = gear.TextJob('fn', 'args')
        self.client.submitJob(text, background=True)
        self.assertIsInstance(text.unique, str)
        self.assertEqual(32, len(text.unique))

    def test_epoch_submit(self):
        conn = self.add(RecordingConnection())
        conn.on_send = self.answer_created([b'H:1'])
        job = gear.Job('fn', b'data', b'u')
        self.client.submitJob(job, background=True, when=1234567890.5)
        self.assertEqual(constants.SUBMIT_JOB_EPOCH, conn.sent[0].ptype)
        self.assertEqual(b'fn\x00u\x001234567890\x00data', conn.sent[0].data)

    def test_error_reply_fails_over_to_next_server(self):
        def refuse(conn, packet):
            self.client.handlePacket(res(
                constants.ERROR, b'QUEUE_ERROR\x00Job queue is full', conn))
        first = self.add(RecordingConnection('a', refuse))
        second = self.add(RecordingConnection('b'))
        second.on_send = self.answer_created([b'H:b:1', b'H:b:2'])
        for _ in range(2):
            self.client.connection_index = -1
            job = gear.Job('fn', b'')
            self.client.submitJob(job)
            self.assertIs(second, job.connection)
        self.assertIn(first, self.client.active_connections)

    def test_all_servers_refuse(self):
        def refuse(conn, packet):
            self.client.handlePacket(res(constants.ERROR, b'X\x00no', conn))
        self.add(RecordingConnection('a', refuse))
        error = self.assertRaises(gear.GearmanError, self.client.submitJob,
                                  gear.Job('fn', b''))
        self.assertNotIsInstance(error, gear.NoConnectedServersError)

    def test_round_robin(self):
        a = self.add(RecordingConnection('a'))
        b = self.add(RecordingConnection('b'))
        a.on_send = self.answer_created([b'H:a:1', b'H:a:2'])
        b.on_send = self.answer_created([b'H:b:1', b'H:b:2'])
        used = []
        for _ in range(4):
            job = gear.Job('fn', b'')
            self.client.submitJob(job)
            used.append(job.connection)
        self.assertEqual(2, used.count(a))
        self.assertEqual(2, used.count(b))

    def test_timeout_abandons_only_that_submission(self):
        self.client.probe_timeout = 0.01
        silent = self.add(RecordingConnection('a'))
        other = self.add(RecordingConnection('b'))
        other.on_send = self.answer_created([b'H:b:1'])
        self.client.connection_index = -1
        job = gear.Job('fn', b'')
        self.client.submitJob(job, timeout=0.05)
        self.assertIs(other, job.connection)
        self.assertEqual(b'H:b:1', job.handle)
        # The silent server did not answer the echo probe either.
        self.assertEqual([other], self.client.active_connections)
        self.assertIn(silent, self.client.inactive_connections)

    def test_late_job_created_is_consumed(self):
        conn = self.add(RecordingConnection())
        job = gear.Job('fn', b'')
        task = gear.SubmitJobTask(job)
        conn.pending_tasks.append(task)
        self.assertTrue(task.abandon())
        self.assertIsNone(self.client.handlePacket(
            res(constants.JOB_CREATED, b'H:late', conn)))
        self.assertIsNone(job.handle)
        self.assertEqual({}, conn.related_jobs)
        self.assertEqual(0, len(conn.pending_tasks))

    def test_concurrent_submitters_get_their_own_handles(self):
        counter = iter(range(1000))
        lock = threading.Lock()

        def on_send(conn, packet):
            # Answer from another thread, in order, like a server would.
            with lock:
                handle = b'H:%d:' % next(counter) + packet.getArgument(1)
            threading.Thread(target=self.client.handlePacket, args=(
                res(constants.JOB_CREATED, handle, conn),)).start()
        conn = self.add(RecordingConnection('a'))
        conn.on_send = on_send
        jobs = [gear.Job('fn', b'', b'u%d' % i) for i in range(40)]

        def submit(chunk):
            for job in chunk:
                self.client.submitJob(job, timeout=10)
        threads = [threading.Thread(target=submit, args=(jobs[i::4],))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for job in jobs:
            self.assertTrue(job.handle.endswith(b':' + job.unique), job)


class TestReplies(ClientTestCase):

    def track(self, conn, handle, *jobs):
        for job in jobs:
            task = gear.SubmitJobTask(job)
            conn.pending_tasks.append(task)
            self.client.handlePacket(res(constants.JOB_CREATED, handle, conn))

    def test_work_packets_update_job(self):
        conn = self.add(RecordingConnection())
        job = gear.Job('fn', b'')
        self.track(conn, b'H:1', job)
        handle = self.client.handlePacket
        handle(res(constants.WORK_DATA, b'H:1\x00workdata', conn))
        handle(res(constants.WORK_WARNING, b'H:1\x00', conn))
        handle(res(constants.WORK_STATUS, b'H:1\x001\x004', conn))
        self.assertTrue(job.warning)
        self.assertEqual(b'1', job.numerator)
        self.assertEqual(b'4', job.denominator)
        self.assertEqual(0.25, job.fraction_complete)
        self.assertFalse(job.complete)
        handle(res(constants.WORK_COMPLETE, b'H:1\x00', conn))
        self.assertEqual([b'workdata'], job.data)
        self.assertTrue(job.complete)
        self.assertFalse(job.failure)
        self.assertEqual({}, conn.related_jobs)

    def test_handlers_return_the_job(self):
        conn = self.add(RecordingConnection())
        job = gear.Job('fn', b'')
        self.track(conn, b'H:1', job)
        for ptype, data in ((constants.WORK_DATA, b'H:1\x00d'),
                            (constants.WORK_WARNING, b'H:1\x00w'),
                            (constants.WORK_STATUS, b'H:1\x001\x002')):
            method = getattr(self.client,
                             gear.base.PACKET_HANDLERS[ptype])
            self.assertIs(job, method(res(ptype, data, conn)))
        self.assertIs(job, self.client.handleWorkException(
            res(constants.WORK_EXCEPTION, b'H:1\x00boom', conn)))
        self.assertEqual(b'boom', job.exception)
        self.assertTrue(job.failure)

    def test_work_fail_with_trailing_nul(self):
        conn = self.add(RecordingConnection())
        job = gear.Job('fn', b'')
        self.track(conn, b'H:1', job)
        self.assertIs(job, self.client.handleWorkFail(
            res(constants.WORK_FAIL, b'H:1\x00', conn)))
        self.assertTrue(job.complete)
        self.assertTrue(job.failure)

    def test_unknown_handle_does_not_raise(self):
        conn = self.add(RecordingConnection())
        self.assertIsNone(self.client.handleWorkComplete(
            res(constants.WORK_COMPLETE, b'H:9\x00x', conn)))

    def test_coalesced_jobs_each_complete_once(self):
        conn = self.add(RecordingConnection())
        first, second = gear.Job('fn', b'', b'u'), gear.Job('fn', b'', b'u')
        self.track(conn, b'H:1', first, second)
        self.assertIs(first, conn.related_jobs[b'H:1'])
        handle = self.client.handlePacket
        handle(res(constants.WORK_DATA, b'H:1\x00d', conn))
        handle(res(constants.WORK_DATA, b'H:1\x00d', conn))
        handle(res(constants.WORK_COMPLETE, b'H:1\x00r', conn))
        self.assertIs(second, conn.related_jobs[b'H:1'])
        handle(res(constants.WORK_COMPLETE, b'H:1\x00r', conn))
        for job in (first, second):
            self.assertTrue(job.complete)
            self.assertEqual([b'd', b'r'], job.data)
        self.assertEqual({}, conn.related_jobs)
        self.assertEqual({}, conn.coalesced_jobs)

    def test_status_res_updates_the_queried_job(self):
        conn = self.add(RecordingConnection())
        job = gear.Job('fn', b'')
        job.handle = b'H:bg'
        job.connection = conn

        def on_send(conn, packet):
            self.client.handlePacket(res(
                constants.STATUS_RES, b'H:bg\x001\x000\x003\x006', conn))
        conn.on_send = on_send
        self.assertIs(job, self.client.getStatus(job, timeout=5))
        self.assertEqual((True, False, b'3', b'6', 0.5),
                         (job.known, job.running, job.numerator,
                          job.denominator, job.fraction_complete))
        self.assertEqual({}, conn.related_jobs)

    def test_get_status_needs_handle(self):
        self.assertRaises(gear.UnknownJobError, self.client.getStatus,
                          gear.Job('fn', b''))

    def test_get_status_unique(self):
        conn = self.add(RecordingConnection())

        def on_send(conn, packet):
            self.assertEqual(constants.GET_STATUS_UNIQUE, packet.ptype)
            self.client.handlePacket(res(
                constants.STATUS_RES_UNIQUE,
                packet.data + b'\x001\x001\x002\x005\x003', conn))
        conn.on_send = on_send
        self.assertEqual((True, True, b'2', b'5', 3),
                         self.client.getStatusUnique('u1', timeout=5))

    def test_error_matches_oldest_request_on_that_connection(self):
        a = self.add(RecordingConnection('a'))
        b = self.add(RecordingConnection('b'))
        a_first, a_second = gear.OptionReqTask(b'x'), gear.OptionReqTask(b'y')
        b_task = gear.OptionReqTask(b'z')
        a.pending_tasks.extend([a_first, a_second])
        b.pending_tasks.append(b_task)
        self.client.handlePacket(res(constants.ERROR,
                                     b'UNKNOWN_OPTION\x00nope', a))
        self.assertTrue(a_first.failed)
        self.assertEqual((b'UNKNOWN_OPTION', b'nope'), a_first.error)
        self.assertFalse(a_second.failed)
        self.assertFalse(b_task.failed)
        self.assertEqual([a, b], self.client.active_connections)

    def test_error_without_request_keeps_connection(self):
        a = self.add(RecordingConnection('a'))
        self.assertIsNone(self.client.handlePacket(res(
            constants.ERROR, b'JOB_NOT_FOUND\x00gone', a)))
        self.assertEqual([a], self.client.active_connections)

    def test_job_not_found_never_takes_a_request(self):
        conn = self.add(RecordingConnection())
        echo = gear.connection.EchoTask(b'x')
        conn.pending_tasks.append(echo)
        self.client.handlePacket(res(
            constants.ERROR, b'JOB_NOT_FOUND\x00Job given in work result'
            b' not found', conn))
        self.assertFalse(echo.failed)
        self.assertEqual([echo], list(conn.pending_tasks))

    def test_reply_retires_skipped_requests(self):
        conn = self.add(RecordingConnection())
        option = gear.OptionReqTask(b'exceptions')
        conn.pending_tasks.append(option)
        job = gear.Job('fn', b'')
        self.track(conn, b'H:1', job)
        self.assertTrue(option.failed)
        self.assertEqual(b'H:1', job.handle)

    def test_set_option(self):
        conn = self.add(RecordingConnection())

        def accept(conn, packet):
            self.client.handlePacket(res(constants.OPTION_RES, packet.data,
                                         conn))
        conn.on_send = accept
        self.assertTrue(self.client.setOption('exceptions', timeout=5))
        self.assertIn(b'exceptions', conn.options)
        self.assertIn(b'exceptions', self.client.options)

        def refuse(conn, packet):
            self.client.handlePacket(res(constants.ERROR,
                                         b'UNKNOWN_OPTION\x00no', conn))
        conn.on_send = refuse
        self.assertFalse(self.client.setOption('bogus', timeout=5))
        conn.on_send = None
        self.assertFalse(self.client.setOption('silent', timeout=0.01))

    def test_on_connect_sends_client_id_and_exceptions(self):
        conn = RecordingConnection()
        self.client._onConnect(conn)
        self.assertEqual([constants.SET_CLIENT_ID, constants.OPTION_REQ],
                         conn.sent_types())
        self.assertEqual(b'test', conn.sent[0].data)
        self.assertEqual(b'exceptions', conn.sent[1].data)
        self.assertEqual(1, len(conn.pending_tasks))
        quiet = gear.Client('q', exceptions=False)
        self.addCleanup(quiet.shutdown)
        conn = RecordingConnection()
        quiet._onConnect(conn)
        self.assertEqual([constants.SET_CLIENT_ID], conn.sent_types())

    def test_lost_connection_fails_jobs_and_waiters(self):
        conn = self.add(RecordingConnection())
        first, second = gear.Job('fn', b'', b'u'), gear.Job('fn', b'', b'u')
        self.track(conn, b'H:1', first, second)
        pending = gear.SubmitJobTask(gear.Job('fn', b''))
        conn.pending_tasks.append(pending)
        self.client._lostConnection(conn)
        for job in (first, second):
            self.assertTrue(job.complete)
            self.assertTrue(job.failure)
            self.assertTrue(job.disconnected)
        self.assertTrue(pending.failed)
        self.assertEqual([], self.client.active_connections)
        self.assertIn(conn, self.client.inactive_connections)


class TestPollThread(testtools.TestCase):
    """The poll thread against a socketpair standing in for a server."""

    def setUp(self):
        super(TestPollThread, self).setUp()
        self.client = gear.Client('poll')
        self.addCleanup(self.client.shutdown)
        ours, self.server = socket.socketpair()
        self.addCleanup(self.server.close)
        ours.setblocking(False)
        self.conn = gear.Connection('127.0.0.1', 'pair')
        self.conn.conn = ours
        self.conn.connected = True
        with self.client.connections_condition:
            self.client.active_connections.append(self.conn)
        self.client._wake()

    def test_handler_exception_does_not_stop_the_loop(self):
        calls = []

        def explode(packet):
            calls.append(packet)
            raise RuntimeError("handler bug")
        self.client._packet_handlers[constants.NOOP] = explode
        noop = Packet(constants.RES, constants.NOOP, b'').toBinary()
        self.server.sendall(noop)
        wait_for(lambda: len(calls) == 1)
        self.server.sendall(noop + noop)
        wait_for(lambda: len(calls) == 3)
        self.assertEqual([self.conn], self.client.active_connections)

    def test_corrupt_stream_drops_only_that_connection(self):
        self.server.sendall(b'\x00BAD' + b'\x00' * 8)
        wait_for(lambda: not self.client.active_connections)
        self.assertTrue(self.client.poll_thread.is_alive())

    def test_eof_drops_connection(self):
        self.server.close()
        wait_for(lambda: not self.client.active_connections)
        self.assertIn(self.conn, self.client.inactive_connections)

    def test_unsolicited_admin_text_ignored(self):
        seen = []
        self.client._packet_handlers[constants.NOOP] = seen.append
        self.server.sendall(b'OK hello\n' + Packet(
            constants.RES, constants.NOOP, b'').toBinary())
        wait_for(lambda: seen)
        self.assertEqual([self.conn], self.client.active_connections)
