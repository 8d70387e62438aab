"""The python-gearman facade against real servers.

Every scenario runs twice: against the C gearmand (tests/gearmand.py)
and against gear's own Server.  The examples of python-gearman's client
documentation are run as they are written there (with Python 3 print),
then the behaviours python-gearman got wrong are checked: ERROR replies,
coalesced handles, exceptions, lost connections and admin replies.
"""

import contextlib
import gc
import io
import selectors
import socket
import struct
import subprocess
import threading

import fixtures
import pytest
import testtools

import gear
import gear.gearman as gearman
from gear import constants as wire
from gear import tlsutil
from gear.gearman import JOB_UNKNOWN
from tests.gearmand import (
    GearmandFixture, free_port, skip_without, tool_path)
from tests.util import PickleDataEncoder, waiter

WAIT = 15.0


wait_for = waiter(WAIT, 0.01)


# The helper every example of python-gearman's client documentation uses.
def check_request_status(job_request):
    if job_request.complete:
        print("Job %s finished! Result: %s - %s" % (
            job_request.job.unique, job_request.state, job_request.result))
    elif job_request.timed_out:
        print("Job %s timed out!" % job_request.unique)
    elif job_request.state == JOB_UNKNOWN:
        print("Job %s connection failed!" % job_request.unique)


# Servers


class GearServer(fixtures.Fixture):
    """gear's Server on a loopback address (gear.testing's fixture).

    With ``ssl=True`` it speaks mutual TLS; :meth:`client_tls` then gives
    a client identity.
    """

    def __init__(self, ssl=False, **options):
        super(GearServer, self).__init__()
        self.ssl = ssl
        self.options = options

    def _setUp(self):
        if not hasattr(gear, 'Server'):
            raise testtools.TestCase.skipException(
                'gear.Server is not available yet')
        try:
            from gear.testing import GearServerFixture
        except ImportError:
            self._startOwnServer()
            return
        fixture = self.useFixture(GearServerFixture(ssl=self.ssl,
                                                    **self.options))
        self.server = fixture.server
        self.port = fixture.port
        self.client_tls = fixture.client_cert

    def _startOwnServer(self):
        options = dict(self.options)
        options.setdefault('host', '127.0.0.1')
        tls = (None, None, None)
        if self.ssl:
            directory = self.useFixture(fixtures.TempDir()).path
            ca, identity = tlsutil.make_server_files(directory)
            tls = (identity.key, identity.cert, identity.ca)
            self.client_tls = lambda cn: tuple(ca.issue(cn))
        self.server = gear.Server(0, *tls, **options)
        self.addCleanup(self.stop)
        self.port = self.server.port

    def stop(self):
        if self.server.running:
            self.server.shutdown()


class Proxy(fixtures.Fixture):
    """A loopback TCP relay whose current connections can be cut."""

    def __init__(self, backend_port):
        super(Proxy, self).__init__()
        self.backend_port = backend_port

    def _setUp(self):
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs = []
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        self.addCleanup(self._stop)

    def _accept(self):
        while self.running:
            try:
                front, _ = self.listener.accept()
            except OSError:
                return
            try:
                back = socket.create_connection(
                    ('127.0.0.1', self.backend_port), timeout=WAIT)
            except OSError:
                front.close()
                continue
            with self.lock:
                self.pairs.append((front, back))
            threading.Thread(target=self._pump, args=(front, back),
                             daemon=True).start()

    def _pump(self, front, back):
        sel = selectors.DefaultSelector()
        sel.register(front, selectors.EVENT_READ, back)
        sel.register(back, selectors.EVENT_READ, front)
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for sock in (front, back):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self):
        """Close every relayed connection; new ones are still accepted."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _stop(self):
        self.running = False
        self.listener.close()
        self.cut()


class SubmitBlackHole(fixtures.Fixture):
    """A loopback 'server' that hangs up on every job submission."""

    SUBMITS = frozenset(wire.SUBMIT_TYPES) if hasattr(
        wire, 'SUBMIT_TYPES') else frozenset(
        (wire.SUBMIT_JOB, wire.SUBMIT_JOB_BG, wire.SUBMIT_JOB_HIGH,
         wire.SUBMIT_JOB_HIGH_BG, wire.SUBMIT_JOB_LOW,
         wire.SUBMIT_JOB_LOW_BG))

    def _setUp(self):
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.submissions = 0
        threading.Thread(target=self._accept, daemon=True).start()
        self.addCleanup(self.listener.close)

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        buf = b''
        conn.settimeout(WAIT)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 12:
                    _, ptype, size = struct.unpack('!4sII', buf[:12])
                    if len(buf) < 12 + size:
                        break
                    buf = buf[12 + size:]
                    if ptype in self.SUBMITS:
                        self.submissions += 1
                        return
        except OSError:
            return
        finally:
            conn.close()


# Workers


class WorkerThread(fixtures.Fixture):
    """A GearmanWorker running work() in a thread until cleanup."""

    def __init__(self, host_list, tasks, worker_class=gearman.GearmanWorker,
                 client_id=None):
        super(WorkerThread, self).__init__()
        self.host_list = host_list
        self.tasks = tasks
        self.worker_class = worker_class
        self.client_id = client_id

    def _setUp(self):
        stop = self.stop = threading.Event()
        self.polls = []

        class StoppableWorker(self.worker_class):
            def after_poll(inner, any_activity):
                self.polls.append(any_activity)
                return not stop.is_set()

        self.worker = StoppableWorker(self.host_list)
        if self.client_id:
            self.worker.set_client_id(self.client_id)
        for task, callback in self.tasks.items():
            self.worker.register_task(task, callback)
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.addCleanup(self._join)

    def _run(self):
        try:
            self.worker.work(poll_timeout=0.1)
        except Exception as e:
            self.error = e

    def _join(self):
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), 'worker thread did not stop'
        assert self.error is None, self.error


def reverse(gearman_worker, gearman_job):
    return gearman_job.data[::-1]


def echo_task(gearman_worker, gearman_job):
    return b'done:' + gearman_job.data


# The scenarios


class FacadeScenarios(object):
    """Tests shared by both servers; subclasses provide startServer()."""

    def setUp(self):
        super(FacadeScenarios, self).setUp()
        self.useFixture(fixtures.Timeout(90, gentle=True))
        self.port = self.startServer()
        self.host = '127.0.0.1:%d' % self.port

    def client(self, host_list=None, cls=gearman.GearmanClient):
        client = cls(host_list or [self.host])
        self.addCleanup(client.shutdown)
        return client

    def admin(self):
        admin = gearman.GearmanAdminClient([self.host], poll_timeout=WAIT)
        self.addCleanup(admin.shutdown)
        return admin

    def worker(self, tasks, **kw):
        return self.useFixture(WorkerThread([self.host], tasks, **kw))

    def dead_host(self):
        return '127.0.0.1:%d' % free_port()

    # python-gearman's documented examples

    def test_example_blocking_submit(self):
        self.worker({'task_name': reverse})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            gm_client = gearman.GearmanClient(
                ['localhost:%d' % self.port, self.dead_host()])
            self.addCleanup(gm_client.shutdown)
            completed_job_request = gm_client.submit_job(
                "task_name", "arbitrary binary data")
            check_request_status(completed_job_request)
        self.assertEqual(gearman.JOB_COMPLETE, completed_job_request.state)
        self.assertEqual(b'atad yranib yrartibra',
                         completed_job_request.result)
        self.assertEqual('Job %s finished! Result: COMPLETE - %r\n' % (
            completed_job_request.job.unique, b'atad yranib yrartibra'),
            out.getvalue())

    def test_example_high_priority_background(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            gm_client = gearman.GearmanClient(
                ['localhost:%d' % self.port, self.dead_host()])
            self.addCleanup(gm_client.shutdown)
            submitted_job_request = gm_client.submit_job(
                "task_name", "arbitrary binary data",
                priority=gearman.PRIORITY_HIGH, background=True)
            check_request_status(submitted_job_request)
        self.assertEqual(gearman.JOB_CREATED, submitted_job_request.state)
        self.assertTrue(submitted_job_request.complete)
        self.assertIn('finished! Result: CREATED - None', out.getvalue())
        self.assertEqual(1, self.admin().get_priority_status()[0]['high'])
        # A worker then runs it.
        done = threading.Event()

        def task(worker, job):
            done.set()
            return b''
        self.worker({'task_name': task})
        self.assertTrue(done.wait(WAIT))

    def test_example_submit_multiple_jobs(self):
        self.worker({'task_name': reverse, 'other_task': echo_task})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            gm_client = gearman.GearmanClient([self.host])
            self.addCleanup(gm_client.shutdown)
            list_of_jobs = [dict(task="task_name", data="binary data"),
                            dict(task="other_task",
                                 data="other binary data")]
            submitted_requests = gm_client.submit_multiple_jobs(
                list_of_jobs, background=False, wait_until_complete=False)
            # (The example sleeps here to show that other work can be
            # done meanwhile; the results do not depend on it.)
            completed_requests = gm_client.wait_until_jobs_completed(
                submitted_requests, poll_timeout=5.0)
            for completed_job_request in completed_requests:
                check_request_status(completed_job_request)
        self.assertEqual([b'atad yranib', b'done:other binary data'],
                         [r.result for r in completed_requests])
        self.assertEqual(2, out.getvalue().count('finished! Result: '
                                                 'COMPLETE'))

    def test_example_recovering_from_failed_connections(self):
        proxy = self.useFixture(Proxy(self.port))
        backend_admin = self.admin()

        def cut_when_queued():
            # "Let's pretend our assigned requests' Gearman servers all
            # failed": once both jobs are queued, break the link.
            try:
                wait_for(lambda: sum(
                    row['queued'] for row in backend_admin.get_status()
                    if row['task'] in ('task_name', 'other_task')) >= 2,
                    message='both jobs queued')
            finally:
                proxy.cut()
        cutter = threading.Thread(target=cut_when_queued, daemon=True)
        cutter.start()

        gm_client = gearman.GearmanClient(['127.0.0.1:%d' % proxy.port])
        self.addCleanup(gm_client.shutdown)
        list_of_jobs = [dict(task="task_name", data="task binary string"),
                        dict(task="other_task", data="other binary string")]
        failed_requests = gm_client.submit_multiple_jobs(
            list_of_jobs, background=False)
        cutter.join(WAIT)
        assert all(request.state == JOB_UNKNOWN
                   for request in failed_requests), \
            "All connections didn't fail!"
        self.assertFalse(any(r.timed_out for r in failed_requests))

        self.worker({'task_name': reverse, 'other_task': echo_task})
        retried_connection_failed_requests = \
            gm_client.submit_multiple_requests(
                failed_requests, wait_until_complete=True, poll_timeout=1.0)
        # The documentation's example names this list retried_requests.
        retried_requests = retried_connection_failed_requests
        timed_out_requests = [job_request for job_request in retried_requests
                              if job_request.timed_out]
        retried_timed_out_requests = gm_client.submit_multiple_requests(
            timed_out_requests, wait_until_complete=True, poll_timeout=4.0)

        self.assertTrue(all(r.timed_out is False
                            for r in retried_timed_out_requests))
        self.assertEqual([gearman.JOB_COMPLETE] * 2,
                         [r.state for r in failed_requests])
        self.assertEqual([b'gnirts yranib ksat', b'done:other binary string'],
                         [r.result for r in failed_requests])

    def test_example_pickle_data_encoder(self):
        class PickleExampleClient(gearman.GearmanClient):
            data_encoder = PickleDataEncoder

        class PickleExampleWorker(gearman.GearmanWorker):
            data_encoder = PickleDataEncoder

        def describe(worker, job):
            worker.send_job_data(job, ['partial', 1])
            return {'received': job.data, 'type': type(job.data).__name__}
        self.worker({'task_name': describe}, worker_class=PickleExampleWorker)

        my_python_object = {'hello': 'there'}
        gm_client = PickleExampleClient([self.host])
        self.addCleanup(gm_client.shutdown)
        request = gm_client.submit_job("task_name", my_python_object)
        self.assertEqual({'received': {'hello': 'there'}, 'type': 'dict'},
                         request.result)
        self.assertEqual([['partial', 1]], list(request.data_updates))

    # Workers fed by other clients

    def test_worker_serves_a_gear_client(self):
        w = self.worker({'reverse': reverse}, client_id='facade-worker')
        client = gear.Client('gear-client')
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', self.port)
        client.waitForServer(WAIT)
        jobs = [gear.Job('reverse', b'abc%d' % i) for i in range(3)]
        for job in jobs:
            client.submitJob(job, timeout=WAIT)
        for job in jobs:
            wait_for(lambda: job.complete, message='gear job')
        self.assertEqual([[b'0cba'], [b'1cba'], [b'2cba']],
                         [job.data for job in jobs])
        self.assertEqual([False] * 3, [job.failure for job in jobs])
        self.assertTrue(any(w.polls))
        workers = [row for row in self.admin().get_workers()
                   if row['tasks'] == ('reverse',)]
        self.assertEqual(['facade-worker'],
                         [row['client_id'] for row in workers])

    def test_unsendable_result_fails_the_job_and_the_worker_lives(self):
        # python-gearman's documented worker returns reversed(data): an
        # iterator the encoder cannot send.
        def doc_reverse(gearman_worker, gearman_job):
            return reversed(gearman_job.data)
        self.worker({'doc_reverse': doc_reverse, 'reverse': reverse})
        client = self.client()
        bad = client.submit_job('doc_reverse', b'abc', poll_timeout=WAIT)
        self.assertEqual(gearman.JOB_FAILED, bad.state)
        self.assertFalse(bad.timed_out)
        good = client.submit_job('reverse', b'abc', poll_timeout=WAIT)
        self.assertEqual((gearman.JOB_COMPLETE, b'cba'),
                         (good.state, good.result))

    def test_str_data_arrives_and_returns_as_bytes(self):
        # NoopEncoder: str goes out as UTF-8; every payload comes back as
        # bytes (python-gearman's own str was a byte string).
        seen = []

        def record(gearman_worker, gearman_job):
            seen.append(gearman_job.data)
            return gearman_job.data
        self.worker({'record': record})
        request = self.client().submit_job('record', 'h\xe9llo',
                                           poll_timeout=WAIT)
        self.assertEqual([b'h\xc3\xa9llo'], seen)
        self.assertEqual(b'h\xc3\xa9llo', request.result)

    def test_handles_and_uniques_are_text_that_decodes(self):
        seen = []

        def record(gearman_worker, gearman_job):
            seen.append((gearman_job.handle, gearman_job.unique,
                         gearman_job.task))
            return b''
        self.worker({'record': record})
        request = self.client().submit_job('record', b'x', unique='u-1',
                                           poll_timeout=WAIT)
        [(handle, unique, task)] = seen
        for value in (handle, unique, task, request.job.handle):
            self.assertIsInstance(value, str)
        self.assertEqual(request.job.handle, handle)
        # Code written for pygearman/gearman3 (bytes) calls decode().
        self.assertEqual(str(handle), handle.decode())
        self.assertEqual(('u-1', 'u-1'), (unique, unique.decode('ascii')))
        self.assertEqual('record', task)

    def test_version_and_pid_are_the_raw_reply_lines(self):
        # python-gearman passed the server's line through unchanged.
        admin = self.admin()
        for line in (admin.get_version(), admin.get_pid()):
            self.assertEqual('OK', line.split(' ')[0])
            self.assertEqual(2, len(line.split(' ')), line)
        self.assertTrue(admin.get_pid().split(' ')[1].isdigit())

    @pytest.mark.interop
    def test_worker_serves_the_gearman_cli(self):
        skip_without(self, 'gearman')
        self.worker({'reverse': reverse})
        result = subprocess.run(
            [tool_path('gearman'), '-h', '127.0.0.1', '-p', str(self.port),
             '-f', 'reverse', 'hello cli'],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual(b'ilc olleh', result.stdout.strip())

    def test_worker_register_and_unregister_while_working(self):
        calls = []

        def second(worker, job):
            calls.append(job.task)
            worker.unregister_task('second')
            return b'ok'

        def first(worker, job):
            calls.append(job.task)
            worker.register_task('second', second)
            return b'ok'
        self.worker({'first': first})
        client = self.client()
        self.assertEqual(b'ok', client.submit_job(
            'first', b'', poll_timeout=WAIT).result)
        self.assertEqual(b'ok', client.submit_job(
            'second', b'', poll_timeout=WAIT).result)
        wait_for(lambda: not [row for row in self.admin().get_workers()
                              if 'second' in row['tasks']],
                 message='second unregistered')
        self.assertEqual(['first', 'second'], calls)

    def test_worker_after_job_ends_work(self):
        class OneJob(gearman.GearmanWorker):
            def after_job(self):
                return False
        worker = OneJob([self.host])
        worker.register_task('reverse', reverse)
        client = self.client()
        request = client.submit_job('reverse', b'xy',
                                    wait_until_complete=False)
        done = threading.Event()

        def run():
            worker.work(poll_timeout=1.0)
            done.set()
        threading.Thread(target=run, daemon=True).start()
        self.assertTrue(done.wait(WAIT))
        client.wait_until_jobs_completed([request], poll_timeout=WAIT)
        self.assertEqual(b'yx', request.result)
        # work() closed its connections when it returned.
        self.assertIsNone(worker._gear_worker)

    # Fixed python-gearman behaviours

    def test_exception_is_terminal(self):
        def broken(worker, job):
            worker.send_job_warning(job, 'careful')
            worker.send_job_exception(job, 'it broke')
        self.worker({'broken': broken})
        request = self.client().submit_job('broken', b'', poll_timeout=WAIT)
        self.assertEqual(gearman.JOB_FAILED, request.state)
        self.assertEqual(b'it broke', request.exception)
        self.assertEqual([b'careful'], list(request.warning_updates))
        self.assertFalse(request.timed_out)

    def test_callback_error_fails_the_job(self):
        def broken(worker, job):
            raise ValueError('nope')
        self.worker({'broken': broken})
        request = self.client().submit_job('broken', b'', poll_timeout=WAIT)
        self.assertEqual((gearman.JOB_FAILED, None),
                         (request.state, request.exception))

    def test_none_result_is_empty(self):
        self.worker({'nothing': lambda worker, job: None})
        request = self.client().submit_job('nothing', b'x',
                                           poll_timeout=WAIT)
        self.assertEqual((gearman.JOB_COMPLETE, b''),
                         (request.state, request.result))

    def test_status_updates_and_queries(self):
        release = threading.Event()

        def slow(worker, job):
            worker.send_job_status(job, 1, 4)
            release.wait(WAIT)
            return b'ok'
        self.worker({'slow': slow})
        client = self.client()
        request = client.submit_job('slow', b'', wait_until_complete=False)
        wait_for(lambda: request.status.get('numerator') == 1,
                 message='WORK_STATUS')
        self.assertEqual((True, True, 1, 4),
                         (request.status['known'], request.status['running'],
                          request.status['numerator'],
                          request.status['denominator']))
        client.get_job_status(request, poll_timeout=WAIT)
        self.assertFalse(request.timed_out)
        self.assertEqual((True, True, 1, 4),
                         (request.status['known'], request.status['running'],
                          request.status['numerator'],
                          request.status['denominator']))
        self.assertIn('last_time_received', request.status)
        release.set()
        client.wait_until_jobs_completed([request], poll_timeout=WAIT)
        self.assertEqual(b'ok', request.result)

    def test_background_status(self):
        client = self.client()
        request = client.submit_job('bg_status', b'', background=True)
        [request] = client.get_job_statuses([request], poll_timeout=WAIT)
        self.assertFalse(request.timed_out)
        self.assertEqual((True, False, 0, 0, request.job.handle),
                         (request.status['known'], request.status['running'],
                          request.status['numerator'],
                          request.status['denominator'],
                          request.status['handle']))

    def test_queue_error_fails_the_request(self):
        client = self.client()
        first = client.submit_job('limited', b'1', background=True)
        self.assertEqual(gearman.JOB_CREATED, first.state)
        self.assertEqual('OK', self.admin().send_maxqueue('limited', 1))
        refused = client.submit_job('limited', b'2', poll_timeout=WAIT)
        self.assertEqual(gearman.JOB_FAILED, refused.state)
        self.assertEqual(('QUEUE_ERROR', 'Job queue is full'), refused.error)
        self.assertFalse(refused.timed_out)
        self.assertTrue(refused.complete)
        # Background submissions, and the default endless wait, too.
        [bg] = client.submit_multiple_jobs(
            [dict(task='limited', data=b'3')], background=True)
        self.assertEqual((gearman.JOB_FAILED, 'QUEUE_ERROR'),
                         (bg.state, bg.error[0]))

    def test_coalesced_requests_both_complete(self):
        client = self.client()
        requests = client.submit_multiple_jobs(
            [dict(task='coalesce', data=b'x', unique='same-unique'),
             dict(task='coalesce', data=b'x', unique='same-unique')],
            wait_until_complete=False)
        self.assertEqual(requests[0].job.handle, requests[1].job.handle)
        runs = []

        def task(worker, job):
            runs.append(job.unique)
            worker.send_job_data(job, b'partial')
            return b'shared result'
        self.worker({'coalesce': task})
        client.wait_until_jobs_completed(requests, poll_timeout=WAIT)
        self.assertEqual([gearman.JOB_COMPLETE] * 2,
                         [r.state for r in requests])
        self.assertEqual([b'shared result'] * 2, [r.result for r in requests])
        self.assertEqual([[b'partial']] * 2,
                         [list(r.data_updates) for r in requests])
        self.assertEqual(['same-unique'], runs)

    def test_dash_unique_is_left_to_the_server(self):
        client = self.client()
        same = client.submit_multiple_jobs(
            [dict(task='dash', data=b'payload', unique='-'),
             dict(task='dash', data=b'payload', unique='-')],
            background=True)
        other = client.submit_job('dash', b'other payload', unique='-',
                                  background=True)
        self.assertEqual(['-'] * 2, [r.job.unique for r in same])
        self.assertEqual(same[0].job.handle, same[1].job.handle)
        self.assertNotEqual(same[0].job.handle, other.job.handle)

    def test_poll_timeout_sets_timed_out(self):
        client = self.client()
        request = client.submit_job('nobody_works_here', b'',
                                    poll_timeout=0.3)
        self.assertEqual((gearman.JOB_CREATED, True),
                         (request.state, request.timed_out))
        self.assertFalse(request.complete)

    def test_server_unavailable(self):
        client = self.client([self.dead_host()])
        self.assertRaises(gearman.ServerUnavailable, client.submit_job,
                          't', b'', poll_timeout=WAIT)
        worker = gearman.GearmanWorker([self.dead_host()])
        worker.register_task('t', reverse)
        self.assertRaises(gearman.ServerUnavailable, worker.work, 0.1)
        admin = gearman.GearmanAdminClient([self.dead_host()])
        self.addCleanup(admin.shutdown)
        self.assertRaises(gearman.ServerUnavailable, admin.get_status)

    def test_unreachable_servers_are_skipped(self):
        self.worker({'reverse': reverse})
        client = self.client([self.dead_host(), self.dead_host(), self.host])
        requests = client.submit_multiple_jobs(
            [dict(task='reverse', data=b'%d' % i) for i in range(4)],
            poll_timeout=WAIT)
        self.assertEqual([b'0', b'1', b'2', b'3'],
                         [r.result for r in requests])
        self.assertEqual([1] * 4, [r.connection_attempts for r in requests])

    def test_status_after_the_server_went_away(self):
        client = self.client()
        request = client.submit_job('gone', b'', background=True)
        self.stopServer()
        client.get_job_status(request, poll_timeout=2.0)
        self.assertTrue(request.timed_out)

    def test_dropped_clients_close_their_connections(self):
        def gear_threads():
            return {t for t in threading.enumerate()
                    if t.name.startswith('Gearman client') and t.is_alive()}
        before = gear_threads()
        client = gearman.GearmanClient([self.host])
        request = client.submit_job('dropped', b'', background=True)
        admin = gearman.GearmanAdminClient([self.host])
        admin.ping_server()
        # A poll and a connect thread for each of the two connections.
        started = gear_threads() - before
        self.assertEqual(4, len(started))
        del client, admin
        gc.collect()
        wait_for(lambda: not any(t.is_alive() for t in started),
                 message='connection threads to end')
        self.assertEqual(gearman.JOB_CREATED, request.state)

    def test_work_stops_when_the_server_goes_away(self):
        worker = gearman.GearmanWorker([self.host])
        worker.set_client_id('doomed-worker')
        worker.register_task('reverse', reverse)
        outcome = []

        def run():
            try:
                worker.work(poll_timeout=0.1)
            except Exception as e:
                outcome.append(e)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.addCleanup(thread.join, WAIT)
        self.addCleanup(worker.shutdown)
        admin = self.admin()
        wait_for(lambda: 'doomed-worker' in [
            row['client_id'] for row in admin.get_workers()],
            message='worker connected')
        admin.shutdown()
        self.stopServer()
        thread.join(WAIT)
        self.assertFalse(thread.is_alive())
        [error] = outcome
        self.assertIsInstance(error, gearman.ServerUnavailable)

    def test_admin_round_trip(self):
        admin = self.admin()
        self.assertIsInstance(admin.ping_server(), float)
        self.assertTrue(admin.get_version().startswith('OK '))
        self.assertTrue(admin.get_pid().startswith('OK '))
        self.assertRegex(admin.get_verbose(), '^[A-Z]+$')

        client = self.client()
        queued = client.submit_job('admin_task', b'x', unique='admin-unique',
                                   background=True)
        status = [row for row in admin.get_status()
                  if row['task'] == 'admin_task']
        self.assertEqual([dict(task='admin_task', queued=1, running=0,
                               workers=0)], status)
        prio = [row for row in admin.get_priority_status()
                if row['task'] == 'admin_task']
        self.assertEqual([dict(task='admin_task', high=0, normal=1, low=0,
                               workers=0)], prio)
        [job] = [row for row in admin.get_jobs()
                 if row['handle'] == queued.job.handle]
        self.assertEqual((0, 0, 1), (job['retries'], job['ignore_job'],
                                     job['job_queued']))
        self.assertEqual((job['retries'], job['ignore_job'],
                          job['job_queued']),
                         (job['queued'], job['canceled'], job['enabled']))
        self.assertIn({'unique': 'admin-unique'}, admin.get_unique_jobs())
        self.assertEqual('OK', admin.send_maxqueue('admin_task', 10))
        self.assertEqual('OK', admin.cancel_job(queued.job.handle))
        self.assertEqual('ERR UNKNOWN_JOB', admin.cancel_job('H:none:1'))
        self.assertNotIn(queued.job.handle,
                         [row['handle'] for row in admin.get_jobs()
                          if not row['ignore_job']])

        self.worker({'admin_worker_task': reverse}, client_id='admin-w')
        wait_for(lambda: [row for row in admin.get_workers()
                          if row['client_id'] == 'admin-w'],
                 message='worker listed')
        [row] = [row for row in admin.get_workers()
                 if row['client_id'] == 'admin-w']
        self.assertEqual(('admin_worker_task',), row['tasks'])
        self.assertIsInstance(row['file_descriptor'], str)
        self.assertIn(row['ip'], ('127.0.0.1', '::ffff:127.0.0.1'))
        self.assertIn((), [r['tasks'] for r in admin.get_workers()])

        self.assertEqual('OK', admin.create_function('made_by_admin'))
        self.assertIn('made_by_admin',
                      [row['task'] for row in admin.get_status()])
        self.assertEqual('OK', admin.drop_function('made_by_admin'))
        self.assertRaises(gearman.ServerError, admin.drop_function,
                          'made_by_admin')
        e = self.assertRaises(gearman.ServerError, admin.send_shutdown)
        self.assertEqual('UNKNOWN_COMMAND', e.code)
        # Still usable after an ERR.
        self.assertIsInstance(admin.ping_server(), float)


@pytest.mark.interop
class TestWithGearmand(FacadeScenarios, testtools.TestCase):

    def startServer(self):
        self.gearmand = self.useFixture(GearmandFixture())
        return self.gearmand.port

    def stopServer(self):
        self.gearmand.stop()

    def test_max_retries_then_exceeded(self):
        hole = self.useFixture(SubmitBlackHole())
        client = self.client(['127.0.0.1:%d' % hole.port])
        self.assertRaises(gearman.ExceededConnectionAttempts,
                          client.submit_job, 't', b'', max_retries=2,
                          poll_timeout=WAIT)
        self.assertEqual(3, hole.submissions)
        self.assertRaises(gearman.ExceededConnectionAttempts,
                          client.submit_job, 't', b'', poll_timeout=WAIT)
        self.assertEqual(4, hole.submissions)

    def test_retry_moves_on_to_a_working_server(self):
        hole = self.useFixture(SubmitBlackHole())
        self.worker({'reverse': reverse})
        client = self.client(['127.0.0.1:%d' % hole.port, self.host])
        requests = client.submit_multiple_jobs(
            [dict(task='reverse', data=b'ab%d' % i) for i in range(6)],
            max_retries=1, poll_timeout=WAIT)
        self.assertEqual([b'%dba' % i for i in range(6)],
                         [r.result for r in requests])
        self.assertEqual(6 + hole.submissions,
                         sum(r.connection_attempts for r in requests))


class TestWithGearServer(FacadeScenarios, testtools.TestCase):

    def startServer(self, **options):
        self.gear_server = self.useFixture(GearServer(**options))
        return self.gear_server.port

    def stopServer(self):
        self.gear_server.stop()

    def test_ipv6_host_with_port(self):
        if not socket.has_ipv6:
            self.skipTest('no IPv6 support')
        try:
            server = self.useFixture(GearServer(host='::1'))
        except OSError as e:
            self.skipTest('cannot listen on ::1: %s' % e)
        host = '[::1]:%d' % server.port
        self.useFixture(WorkerThread([host], {'reverse': reverse}))
        client = self.client([host])
        request = client.submit_job('reverse', b'v6', poll_timeout=WAIT)
        self.assertEqual(b'6v', request.result)

    def test_tls(self):
        server = self.useFixture(GearServer(ssl=True))
        key, cert, ca = server.client_tls('facade-client')
        entry = dict(host='127.0.0.1', port=server.port, keyfile=key,
                     certfile=cert, ca_certs=ca)
        self.useFixture(WorkerThread([entry], {'reverse': reverse}))
        client = self.client([entry])
        request = client.submit_job('reverse', b'secret', poll_timeout=WAIT)
        self.assertEqual(b'terces', request.result)
        admin = gearman.GearmanAdminClient([entry])
        self.addCleanup(admin.shutdown)
        self.assertIn('reverse', [row['task'] for row in admin.get_status()])
