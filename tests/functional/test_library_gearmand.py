"""gear's Client and Worker against the C gearmand."""

import threading
import time

import fixtures
import pytest
import testtools

import gear
from tests.gearmand import GearmandFixture, skip_without_gearmand, wait_for

WAIT = 15.0


class WorkerThread(fixtures.Fixture):
    """A Worker with a thread that runs ``handler(job)`` for every job."""

    def __init__(self, ports, handler, functions=('reverse',),
                 worker_class=gear.Worker, name='worker'):
        super(WorkerThread, self).__init__()
        self.ports = ports
        self.handler = handler
        self.functions = functions
        self.worker_class = worker_class
        self.name = name
        self.jobs = []

    def _setUp(self):
        self.worker = self.worker_class(self.name)
        self.addCleanup(self.worker.shutdown)
        for port in self.ports:
            self.worker.addServer('127.0.0.1', port)
        for name in self.functions:
            self.worker.registerFunction(name)
        wait_for(lambda: len(self.worker.active_connections) ==
                 len(self.ports), WAIT)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        # Shut down first (it interrupts getJob now and later), then join.
        self.addCleanup(self.thread.join, WAIT)
        self.addCleanup(self.worker.shutdown)

    def _run(self):
        while True:
            try:
                job = self.worker.getJob()
            except gear.InterruptedError:
                return
            self.jobs.append(job)
            try:
                self.handler(job)
            except Exception:
                job.sendWorkException(b'handler failed')


class RecordingWorker(gear.Worker):
    def __init__(self, *args, **kw):
        self.errors = []
        super(RecordingWorker, self).__init__(*args, **kw)

    def handleError(self, packet):
        self.errors.append(packet.getArgument(0))
        return super(RecordingWorker, self).handleError(packet)


def reverse(job):
    job.sendWorkComplete(job.binary_arguments[::-1])


@pytest.mark.interop
class GearmandTestCase(testtools.TestCase):

    def setUp(self):
        super(GearmandTestCase, self).setUp()
        skip_without_gearmand(self)
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.gearmand = self.useFixture(GearmandFixture())

    def client(self, *ports, **kw):
        client = gear.Client('test-client', **kw)
        self.addCleanup(client.shutdown)
        for port in ports or (self.gearmand.port,):
            client.addServer('127.0.0.1', port)
        wait_for(lambda: len(client.active_connections) ==
                 len(ports or (1,)), WAIT)
        return client

    def worker(self, handler=reverse, ports=None, **kw):
        return self.useFixture(WorkerThread(
            ports or [self.gearmand.port], handler, **kw))

    def wait_complete(self, *jobs):
        wait_for(lambda: all(job.complete for job in jobs), WAIT,
                 message="jobs did not complete: %r" % (jobs,))


class TestJobs(GearmandTestCase):

    def test_foreground_every_precedence(self):
        client = self.client()
        self.worker()
        for precedence in (gear.PRECEDENCE_NORMAL, gear.PRECEDENCE_LOW,
                           gear.PRECEDENCE_HIGH):
            job = gear.Job('reverse', b'abc%d' % precedence)
            client.submitJob(job, precedence=precedence)
            self.assertTrue(job.handle)
            self.wait_complete(job)
            self.assertFalse(job.failure)
            self.assertEqual([b'%dcba' % precedence], job.data)
            self.assertEqual({}, job.connection.related_jobs)

    def test_background_every_precedence(self):
        client = self.client()
        worker = self.worker()
        for precedence in (gear.PRECEDENCE_NORMAL, gear.PRECEDENCE_LOW,
                           gear.PRECEDENCE_HIGH):
            job = gear.Job('reverse', b'bg')
            client.submitJob(job, background=True, precedence=precedence)
            self.assertTrue(job.handle)
            self.assertEqual({}, job.connection.related_jobs)
        wait_for(lambda: len(worker.jobs) == 3, WAIT)
        for job in worker.jobs:
            # A unique was generated for each background job.
            self.assertEqual(32, len(job.unique))

    def test_work_updates_and_exception(self):
        release = threading.Event()

        def chatty(job):
            job.sendWorkData(b'workdata')
            job.sendWorkWarning(b'careful')
            job.sendWorkStatus(1, 2)
            release.wait(WAIT)
            job.sendWorkException(b'it broke')
        client = self.client()
        self.worker(chatty)
        job = gear.Job('reverse', b'x')
        client.submitJob(job)
        wait_for(lambda: job.fraction_complete is not None, WAIT)
        self.assertEqual([b'workdata', b'careful'], job.data)
        self.assertTrue(job.warning)
        self.assertEqual((b'1', b'2', 0.5), (job.numerator, job.denominator,
                                             job.fraction_complete))
        release.set()
        self.wait_complete(job)
        self.assertTrue(job.failure)
        self.assertEqual(b'it broke', job.exception)

    def test_exception_without_option_is_a_failure(self):
        client = self.client(exceptions=False)

        def broken(job):
            job.sendWorkException(b'nope')
        self.worker(broken)
        job = gear.Job('reverse', b'x')
        client.submitJob(job)
        self.wait_complete(job)
        self.assertTrue(job.failure)
        self.assertIsNone(job.exception)

    def test_work_fail_and_empty_complete(self):
        def handler(job):
            if job.binary_arguments == b'fail':
                job.sendWorkFail()
            else:
                job.sendWorkData(b'workdata')
                job.sendWorkComplete()
        client = self.client()
        self.worker(handler)
        failing = gear.Job('reverse', b'fail')
        ok = gear.Job('reverse', b'ok')
        client.submitJob(failing)
        client.submitJob(ok)
        self.wait_complete(failing, ok)
        self.assertTrue(failing.failure)
        self.assertFalse(ok.failure)
        self.assertEqual([b'workdata'], ok.data)

    def test_text_job_and_worker(self):
        def handler(job):
            job.sendWorkData(job.arguments.upper())
            job.sendWorkException('über')
        client = self.client()
        worker = self.worker(handler, worker_class=gear.TextWorker)
        job = gear.TextJob('reverse', 'hello', 'unique-1')
        client.submitJob(job)
        self.wait_complete(job)
        self.assertEqual(['HELLO'], job.data)
        self.assertEqual('über', job.exception)
        self.assertEqual('unique-1', worker.jobs[0].unique)
        self.assertEqual('hello', worker.jobs[0].arguments)

    def test_epoch_job_in_the_past_runs(self):
        client = self.client()
        worker = self.worker()
        job = gear.Job('reverse', b'when')
        client.submitJob(job, background=True, when=time.time() - 10)
        wait_for(lambda: worker.jobs, WAIT)
        self.assertEqual(b'when', worker.jobs[0].binary_arguments)

    def test_concurrent_submitters(self):
        client = self.client()
        self.worker()
        self.worker(name='worker-2')
        jobs = [gear.Job('reverse', b'job-%03d' % i) for i in range(60)]
        errors = []

        def submit(chunk):
            try:
                for job in chunk:
                    client.submitJob(job)
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=submit, args=(jobs[i::4],))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        self.assertEqual([], errors)
        self.wait_complete(*jobs)
        for job in jobs:
            self.assertEqual([job.binary_arguments[::-1]], job.data)
        self.assertEqual(60, len({job.handle for job in jobs}))


class TestStatus(GearmandTestCase):

    def test_get_status_and_unique(self):
        started = threading.Event()
        release = threading.Event()

        def slow(job):
            job.sendWorkStatus(3, 4)
            started.set()
            release.wait(WAIT)
            job.sendWorkComplete(b'')
        client = self.client()
        self.worker(slow)
        job = gear.Job('reverse', b'x', b'status-unique')
        client.submitJob(job, background=True)
        self.assertTrue(started.wait(WAIT))
        self.assertIs(job, client.getStatus(job, timeout=WAIT))
        self.assertEqual((True, True, b'3', b'4', 0.75),
                         (job.known, job.running, job.numerator,
                          job.denominator, job.fraction_complete))
        self.assertEqual((True, True, b'3', b'4', 0),
                         client.getStatusUnique('status-unique',
                                                timeout=WAIT))
        release.set()

        def finished():
            client.getStatus(job, timeout=WAIT)
            return job.known is False
        wait_for(finished, WAIT)
        self.assertEqual((False, False, b'0', b'0', 0),
                         client.getStatusUnique('status-unique',
                                                timeout=WAIT))
        self.assertEqual({}, job.connection.related_jobs)

    def test_echo_and_options(self):
        client = self.client()
        conn = client.getConnection()
        self.assertEqual(b'hello\x00world', conn.echo(b'hello\x00world',
                                                      timeout=WAIT))
        self.assertEqual(32, len(conn.echo(timeout=WAIT)))
        self.assertTrue(client.setOption('exceptions', timeout=WAIT))
        self.assertFalse(client.setOption('no-such-option', timeout=WAIT))
        # The refused option did not disturb the connection.
        self.assertEqual(b'again', conn.echo(b'again', timeout=WAIT))
        self.assertEqual([conn], client.active_connections)


class TestAdmin(GearmandTestCase):

    def test_admin_requests_on_a_client_connection(self):
        client = self.client()
        self.worker()
        conn = client.getConnection()
        status = conn.sendAdminRequest(gear.StatusAdminRequest(),
                                       timeout=WAIT)
        names = [row[0] for row in status.parse()]
        self.assertIn('reverse', names)
        # Admin and binary traffic interleave on one connection.
        job = gear.Job('reverse', b'mixed')
        client.submitJob(job)
        version = conn.sendAdminRequest(gear.VersionAdminRequest(),
                                        timeout=WAIT)
        self.assertTrue(version.response.startswith(b'OK '))
        self.wait_complete(job)
        self.assertEqual([b'dexim'], job.data)
        self.assertEqual([], conn.admin_requests)


class TestCoalescing(GearmandTestCase):

    def test_two_jobs_one_handle_both_complete(self):
        release = threading.Event()

        def held(job):
            release.wait(WAIT)
            job.sendWorkData(b'data')
            job.sendWorkComplete(b'done')
        client = self.client()
        worker = self.worker(held)
        first = gear.Job('reverse', b'x', b'same-unique')
        second = gear.Job('reverse', b'x', b'same-unique')
        client.submitJob(first)
        client.submitJob(second)
        self.assertEqual(first.handle, second.handle)
        release.set()
        self.wait_complete(first, second)
        for job in (first, second):
            self.assertFalse(job.failure)
            self.assertEqual([b'data', b'done'], job.data)
        self.assertEqual(1, len(worker.jobs))
        self.assertEqual({}, first.connection.related_jobs)


class TestWorkerBehaviour(GearmandTestCase):

    def test_worker_sleeps_and_wakes(self):
        client = self.client()
        worker = self.worker()
        conn = worker.worker.active_connections[0]
        wait_for(lambda: conn.state == 'SLEEP', WAIT)
        job = gear.Job('reverse', b'wake')
        client.submitJob(job)
        self.wait_complete(job)
        self.assertEqual([b'ekaw'], job.data)

    def test_can_do_timeout_requeue_and_late_result(self):
        client = self.client()
        slow = RecordingWorker('slow-worker')
        self.addCleanup(slow.shutdown)
        slow.addServer('127.0.0.1', self.gearmand.port)
        slow.registerFunction('timed', 1000)
        wait_for(lambda: slow.active_connections, WAIT)
        job = gear.Job('timed', b'payload')
        client.submitJob(job)
        first = slow.getJob(timeout=WAIT)
        # A second worker picks the job up once gearmand requeues it.
        backup = self.worker(reverse, functions=('timed',), name='backup')
        self.wait_complete(job)
        self.assertEqual([b'daolyap'], job.data)
        self.assertEqual(1, len(backup.jobs))
        # The first worker's late result is refused with an ERROR; the
        # worker logs it and stays connected.
        conn = slow.active_connections[0]
        first.sendWorkComplete(b'too late')
        wait_for(lambda: slow.errors, WAIT)
        self.assertEqual([b'JOB_NOT_FOUND'], slow.errors)
        self.assertEqual(b'ping', conn.echo(b'ping', timeout=WAIT))
        self.assertEqual([conn], slow.active_connections)
        self.assertTrue(conn.connected)

    def test_stop_waiting_for_jobs(self):
        worker = gear.Worker('stopper')
        self.addCleanup(worker.shutdown)
        worker.addServer('127.0.0.1', self.gearmand.port)
        worker.registerFunction('nothing')
        worker.waitForServer(WAIT)
        result = {}

        def wait():
            try:
                worker.getJob()
            except Exception as e:
                result['error'] = e
        thread = threading.Thread(target=wait)
        thread.start()
        wait_for(lambda: worker.active_connections[0].state == 'SLEEP',
                 WAIT)
        worker.stopWaitingForJobs()
        thread.join(WAIT)
        self.assertIsInstance(result['error'], gear.InterruptedError)

    def test_set_functions(self):
        client = self.client()
        worker = self.worker(functions=('a',))
        worker.worker.setFunctions([gear.FunctionRecord('b')])
        job = gear.Job('b', b'xyz')
        client.submitJob(job)
        self.wait_complete(job)
        self.assertEqual([b'zyx'], job.data)


class TestTwoServers(GearmandTestCase):

    def test_failover_and_reconnect(self):
        other = self.useFixture(GearmandFixture())
        ports = [self.gearmand.port, other.port]
        client = self.client(*ports)
        worker = self.worker(ports=ports)

        def run_jobs(count, tag):
            jobs = [gear.Job('reverse', b'%s-%d' % (tag, i))
                    for i in range(count)]
            for job in jobs:
                client.submitJob(job)
            self.wait_complete(*jobs)
            for job in jobs:
                self.assertEqual([job.binary_arguments[::-1]], job.data)
            return jobs

        jobs = run_jobs(6, b'before')
        self.assertEqual(2, len({job.connection for job in jobs}))

        other.stop()
        wait_for(lambda: len(client.active_connections) == 1, WAIT)
        wait_for(lambda: len(worker.worker.active_connections) == 1, WAIT)
        jobs = run_jobs(6, b'during')
        self.assertEqual(1, len({job.connection for job in jobs}))

        other.start()
        wait_for(lambda: len(worker.worker.active_connections) == 2, WAIT)
        wait_for(lambda: len(client.active_connections) == 2, WAIT)
        only_other = self.client(other.port)
        job = gear.Job('reverse', b'after')
        only_other.submitJob(job)
        self.wait_complete(job)
        self.assertEqual([b'retfa'], job.data)

    def test_in_flight_job_is_reported_lost(self):
        release = threading.Event()

        def held(job):
            release.wait(WAIT)
            try:
                job.sendWorkComplete(b'')
            except Exception:
                pass
        client = self.client()
        self.worker(held)
        job = gear.Job('reverse', b'x')
        client.submitJob(job)
        self.gearmand.stop()
        self.wait_complete(job)
        self.assertTrue(job.failure)
        self.assertTrue(job.disconnected)
        release.set()
        self.assertRaises(gear.NoConnectedServersError, client.submitJob,
                          gear.Job('reverse', b'y'))
