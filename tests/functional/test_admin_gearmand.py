"""The admin request classes against a real gearmand.

Each command goes over a plain blocking socket: the request builds the
line, the reply bytes are fed to ``isComplete`` until it reports a whole
reply, and ``parse()`` turns it into values.  Skipped when gearmand is not
installed.
"""

import socket
import struct
import pytest
import testtools

from gear import admin
from gear import constants
from gear.errors import AdminError
from gear.protocol import join_arguments, pack
from tests.gearmand import GearmandFixture

SOCKET_TIMEOUT = 10


class AdminSocket(object):
    """A blocking admin connection that frames replies with isComplete."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port),
                                             timeout=SOCKET_TIMEOUT)
        self.pending = b''

    def close(self):
        self.sock.close()

    def _complete(self, req):
        data = self.pending
        while True:
            complete, rest = req.isComplete(data)
            if complete:
                self.pending = rest
                req.response = data[:len(data) - len(rest)]
                req.setComplete()
                return req
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError('gearmand closed the connection')
            data += chunk

    def send(self, *requests):
        """Send all requests in one write; read their replies in order."""
        self.sock.sendall(b''.join(r.getCommand() for r in requests))
        for req in requests:
            self._complete(req)
            assert req.waitForResponse(0)
        return requests[0] if len(requests) == 1 else requests


class BinarySocket(object):
    """Just enough binary protocol to make workers and queued jobs."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port),
                                             timeout=SOCKET_TIMEOUT)

    def close(self):
        self.sock.close()

    def _recvExactly(self, size):
        data = b''
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise AssertionError('gearmand closed the connection')
            data += chunk
        return data

    def request(self, ptype, *arguments):
        self.sock.sendall(pack(constants.REQ, ptype,
                               join_arguments(*arguments)))

    def reply(self):
        magic, ptype, size = struct.unpack('!4sII', self._recvExactly(12))
        assert magic == constants.RES, magic
        return ptype, self._recvExactly(size)

    def sync(self):
        """Wait until gearmand has handled everything sent so far."""
        self.request(constants.ECHO_REQ, b'sync')
        assert self.reply() == (constants.ECHO_RES, b'sync')

    def submitBackground(self, ptype, function, unique, data=b'x'):
        self.request(ptype, function, unique, data)
        rtype, handle = self.reply()
        assert rtype == constants.JOB_CREATED, rtype
        return handle


@pytest.mark.interop
class TestAdminAgainstGearmand(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.server = self.useFixture(GearmandFixture())
        self.host = getattr(self.server, 'host', '127.0.0.1')
        self.port = self.server.port
        self.admin = self.connect(AdminSocket)

    def connect(self, cls):
        conn = cls(self.host, self.port)
        self.addCleanup(conn.close)
        return conn

    def makeWorker(self, client_id, *functions):
        worker = self.connect(BinarySocket)
        worker.request(constants.SET_CLIENT_ID, client_id)
        for fn in functions:
            worker.request(constants.CAN_DO, fn)
        worker.sync()
        return worker

    def test_empty_server(self):
        self.assertEqual([], self.admin.send(
            admin.StatusAdminRequest()).parse())
        self.assertEqual([], self.admin.send(
            admin.PriorityStatusAdminRequest()).parse())
        self.assertEqual([], self.admin.send(
            admin.ShowJobsAdminRequest()).parse())
        self.assertEqual([], self.admin.send(
            admin.ShowUniqueJobsAdminRequest()).parse())
        workers = self.admin.send(admin.WorkersAdminRequest()).parse()
        # Only the asking admin connection itself.
        self.assertEqual(1, len(workers))
        fd, ip, client_id, functions = workers[0]
        self.assertIsInstance(fd, int)
        self.assertEqual(('127.0.0.1', '-', ()), (ip, client_id, functions))

    def test_status_workers_and_jobs(self):
        self.makeWorker(b'my-worker', b'fnA', b'fnB')
        client = self.connect(BinarySocket)
        h1 = client.submitBackground(constants.SUBMIT_JOB_BG, b'fnA', b'u1')
        client.submitBackground(constants.SUBMIT_JOB_HIGH_BG, b'fnA', b'u2')
        h3 = client.submitBackground(constants.SUBMIT_JOB_LOW_BG, b'fnC',
                                     b'')

        status = sorted(self.admin.send(admin.StatusAdminRequest()).parse())
        self.assertEqual([('fnA', 2, 0, 1), ('fnB', 0, 0, 1),
                          ('fnC', 1, 0, 0)], status)

        prio = sorted(self.admin.send(
            admin.PriorityStatusAdminRequest()).parse())
        self.assertEqual([('fnA', 1, 1, 0, 1), ('fnB', 0, 0, 0, 1),
                          ('fnC', 0, 0, 1, 0)], prio)

        workers = self.admin.send(admin.WorkersAdminRequest()).parse()
        by_id = {w[2]: w for w in workers}
        self.assertEqual(('fnA', 'fnB'),
                         tuple(sorted(by_id['my-worker'][3])))
        self.assertEqual((), by_id['-'][3])

        jobs = self.admin.send(admin.ShowJobsAdminRequest()).parse()
        handles = {j[0] for j in jobs}
        self.assertEqual(3, len(jobs))
        self.assertIn(h1.decode(), handles)
        for handle, retries, ignore_job, job_queued in jobs:
            self.assertEqual((0, 0, 1), (retries, ignore_job, job_queued))

        uniques = self.admin.send(admin.ShowUniqueJobsAdminRequest()).parse()
        self.assertEqual(['', 'u1', 'u2'], sorted(uniques))

        req = self.admin.send(admin.CancelJobAdminRequest(h3))
        self.assertIs(True, req.parse())
        status = dict((s[0], s[1:]) for s in self.admin.send(
            admin.StatusAdminRequest()).parse())
        self.assertEqual(2, status['fnA'][0])

    def test_cancel_unknown_job(self):
        req = self.admin.send(admin.CancelJobAdminRequest('H:nowhere:1'))
        e = self.assertRaises(AdminError, req.parse)
        self.assertEqual(('UNKNOWN_JOB', ''), (e.code, e.message))

    def test_one_line_values(self):
        version = self.admin.send(admin.VersionAdminRequest()).parse()
        self.assertTrue(version and version[0].isdigit(), version)
        pid = self.admin.send(admin.GetPidAdminRequest()).parse()
        self.assertIsInstance(pid, int)
        self.assertEqual(self.server.process.pid, pid)
        level = self.admin.send(admin.VerboseAdminRequest()).parse()
        self.assertTrue(level.isupper(), level)

    def test_maxqueue(self):
        for sizes in ((), (1,), (1, 2, 3)):
            req = self.admin.send(admin.MaxQueueAdminRequest('fnQ', *sizes))
            self.assertIs(True, req.parse())

    def test_maxqueue_limits_queue(self):
        self.makeWorker(b'w', b'fnQ')
        self.assertTrue(self.admin.send(
            admin.MaxQueueAdminRequest('fnQ', 1)).parse())
        client = self.connect(BinarySocket)
        client.submitBackground(constants.SUBMIT_JOB_BG, b'fnQ', b'a')
        client.request(constants.SUBMIT_JOB_BG, b'fnQ', b'b', b'x')
        rtype, payload = client.reply()
        self.assertEqual(constants.ERROR, rtype)
        self.assertTrue(payload.startswith(b'QUEUE_ERROR\x00'), payload)

    def test_create_and_drop_function(self):
        req = self.admin.send(admin.CreateFunctionAdminRequest('foobar'))
        self.assertIs(True, req.parse())
        status = self.admin.send(admin.StatusAdminRequest()).parse()
        # The \r\n terminator keeps the whole name.
        self.assertEqual([('foobar', 0, 0, 0)], status)
        req = self.admin.send(admin.DropFunctionAdminRequest('foobar'))
        self.assertIs(True, req.parse())
        self.assertEqual([], self.admin.send(
            admin.StatusAdminRequest()).parse())
        req = self.admin.send(admin.DropFunctionAdminRequest('foobar'))
        e = self.assertRaises(AdminError, req.parse)
        self.assertEqual(('ERR', 'function not found'), (e.code, e.message))

    def test_drop_function_with_worker(self):
        self.makeWorker(b'w', b'busy')
        req = self.admin.send(admin.DropFunctionAdminRequest('busy'))
        e = self.assertRaises(AdminError, req.parse)
        self.assertIn('workers', e.message)

    def test_unknown_command(self):
        # shutdown is refused by gearmand >= 1.1.15.
        req = self.admin.send(admin.ShutdownAdminRequest())
        e = self.assertRaises(AdminError, req.parse)
        self.assertEqual('UNKNOWN_COMMAND', e.code)
        self.assertEqual('Unknown server commandshutdown', e.message)
        # The connection stays usable afterwards.
        self.assertEqual([], self.admin.send(
            admin.ShowJobsAdminRequest()).parse())

    def test_unknown_multiline_command_completes_on_err(self):
        class BogusList(admin.ShowJobsAdminRequest):
            command = b'show bogus'
        req = self.admin.send(BogusList())
        e = self.assertRaises(AdminError, req.parse)
        self.assertEqual('UNKNOWN_SHOW_ARGUMENTS', e.code)
        # An ACL listing is a gear-server command: gearmand rejects it.
        req = self.admin.send(admin.ACLListAdminRequest())
        e = self.assertRaises(AdminError, req.parse)
        self.assertEqual('UNKNOWN_COMMAND', e.code)

    def test_pipelined(self):
        self.makeWorker(b'w', b'fnP')
        status, version, workers, pid = self.admin.send(
            admin.StatusAdminRequest(), admin.VersionAdminRequest(),
            admin.WorkersAdminRequest(), admin.GetPidAdminRequest())
        self.assertEqual([('fnP', 0, 0, 1)], status.parse())
        self.assertTrue(version.parse()[0].isdigit())
        self.assertEqual(2, len(workers.parse()))
        self.assertIsInstance(pid.parse(), int)
        self.assertEqual(b'', self.admin.pending)
