"""Replies reach the requests that asked for them, and CANT_DO goes out
at once: gear's Client and Worker against a real Server.

Each race is made certain rather than likely: the client's poll thread
handles the first reply only once the concurrent request awaits its own
reply on the same connection.
"""

import threading

import gear
from gear import constants

from tests.functional.test_server_library import LibraryTestCase
from tests.util import wait_for

WAIT = 15.0


def _pending(conn, name):
    return any(type(task).__name__ == name
               for task in list(conn.pending_tasks))


class HeldClient(gear.Client):
    """Handles the first STATUS_RES or ERROR only once a request of
    class ``awaiting`` is pending on that connection."""

    awaiting = 'SubmitJobTask'

    def __init__(self, *args, **kw):
        super(HeldClient, self).__init__(*args, **kw)
        self.held = threading.Event()
        self.status_replies = []
        self.unknown_status = []
        self.errors = []

    def _hold(self, packet):
        if not self.held.is_set():
            self.held.set()
            wait_for(lambda: _pending(packet.connection, self.awaiting),
                     WAIT, message='a %s in flight' % self.awaiting)

    def handleStatusRes(self, packet):
        self._hold(packet)
        try:
            job = super(HeldClient, self).handleStatusRes(packet)
        except gear.UnknownJobError:
            self.unknown_status.append(packet.getArgument(0))
            raise
        self.status_replies.append((packet.getArgument(0), job))
        return job

    def handleError(self, packet):
        self._hold(packet)
        self.errors.append(packet.getArgument(0))
        return super(HeldClient, self).handleError(packet)


class TestReplyMatching(LibraryTestCase):

    def heldClient(self):
        client = HeldClient('held-client')
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', self.server.port)
        client.waitForServer(WAIT)
        return client

    def submitted(self, client, name=b'queued'):
        job = gear.Job(name, b'args')
        client.submitJob(job, timeout=WAIT)
        return job

    def test_untracked_status_probe_leaves_a_submission_alone(self):
        client = self.heldClient()
        probed = self.submitted(client)
        probed.connection.sendPacket(gear.Packet(
            constants.REQ, constants.GET_STATUS, probed.handle))
        second = self.submitted(client)
        self.assertIsNotNone(second.handle)
        self.assertNotEqual(probed.handle, second.handle)
        wait_for(lambda: client.status_replies, WAIT)
        self.assertEqual([(probed.handle, probed)], client.status_replies)
        self.assertTrue(probed.known)
        self.assertFalse(probed.running)
        self.assertEqual(0, len(probed.connection.pending_tasks))

    def test_untracked_status_reply_for_an_unknown_job_raises(self):
        client = self.heldClient()
        job = self.submitted(client)
        job.connection.sendPacket(gear.Packet(
            constants.REQ, constants.GET_STATUS, b'H:test:999999'))
        second = self.submitted(client)
        self.assertIsNotNone(second.handle)
        wait_for(lambda: client.unknown_status, WAIT)
        self.assertEqual([b'H:test:999999'], client.unknown_status)

    def test_error_for_an_untracked_request_leaves_a_submission_alone(self):
        client = self.heldClient()
        job = self.submitted(client)
        # A handle longer than the server accepts: it answers ERROR.
        job.connection.sendPacket(gear.Packet(
            constants.REQ, constants.GET_STATUS, b'H:' + b'x' * 100))
        second = self.submitted(client)
        self.assertIsNotNone(second.handle)
        self.assertEqual([b'ARGUMENT_TOO_LARGE'], client.errors)
        self.assertEqual(0, len(job.connection.pending_tasks))

    def test_status_reply_goes_to_the_job_it_names(self):
        client = self.heldClient()
        client.awaiting = 'GetStatusTask'
        queued = self.submitted(client)
        queued.connection.sendPacket(gear.Packet(
            constants.REQ, constants.GET_STATUS, queued.handle))
        stranger = gear.Job(b'queued', b'args')
        stranger.handle = b'H:test:999999'
        stranger.connection = queued.connection
        client.getStatus(stranger, timeout=WAIT)
        self.assertFalse(stranger.known)
        wait_for(lambda: client.status_replies, WAIT)
        self.assertTrue(queued.known)

    def test_error_fails_the_oldest_request(self):
        client = self.client()
        job = gear.Job(b'queued', b'args', unique=b'u' * 100)
        self.assertRaises(gear.GearmanError, client.submitJob, job,
                          timeout=WAIT)
        # The connection is kept and the next submission works.
        self.assertIsNotNone(self.submitted(client).handle)

    def test_untracked_echo_reaches_the_handler(self):
        client = self.client()
        conn = client.active_connections[0]
        conn.sendPacket(gear.Packet(constants.REQ, constants.ECHO_REQ,
                                    b'ping'))
        self.assertIsNotNone(self.submitted(client).handle)
        self.assertEqual(0, len(conn.pending_tasks))


class TestUnregisterWhileRunning(LibraryTestCase):

    def registered(self, name):
        """The functions the server lists for ``name``'s connections."""
        client = self.client()
        request = gear.WorkersAdminRequest()
        client.active_connections[0].sendAdminRequest(request, WAIT)
        functions = set()
        for line in request.response.decode('utf8').splitlines():
            head, _, tail = line.partition(' : ')
            if head.split()[-1:] == [name]:
                functions.update(tail.split())
        return functions

    def test_cant_do_goes_out_at_once_and_grabs_go_on(self):
        client = self.client()
        worker = self.worker('build', 'stop')
        build = gear.Job(b'build', b'')
        client.submitJob(build, timeout=WAIT)
        running = worker.getJob(timeout=WAIT)
        self.assertEqual('build', running.name)
        worker.unRegisterFunction('build')
        wait_for(lambda: self.registered('test-worker') == {'stop'}, WAIT,
                 message='the server to drop build for the worker')
        # The connection still takes jobs of the other function.
        stop = gear.Job(b'stop', b'')
        client.submitJob(stop, timeout=WAIT)
        self.assertEqual('stop', worker.getJob(timeout=WAIT).name)
