"""Waiting for jobs and following them through one callback, against a
gear server on a real socket: Job.wait, Client.waitForJobs,
Client.job_callback / handleJobEvent, and waitForServer's message."""

import threading

import testtools

import gear
from gear.testing import GearServerFixture
from tests.util import serve_jobs, wait_for

WAIT = 30.0
# Long enough that a job nobody serves is surely still waiting.
SHORT = 0.3


def talkative(job):
    """A worker job handler that sends one of each kind of update."""
    args = job.arguments
    if args == b'fail':
        job.sendWorkFail()
        return
    if args == b'raise':
        job.sendWorkException(b'it broke')
        return
    job.sendWorkData(b'part')
    job.sendWorkWarning(b'careful')
    job.sendWorkStatus(1, 2)
    job.sendWorkComplete(args[::-1])


class RecordingClient(gear.Client):
    """Records events through the override, and keeps a gear 0.16-style
    handleWorkComplete override to show both still run."""

    def __init__(self, *args, **kwargs):
        super(RecordingClient, self).__init__(*args, **kwargs)
        self.events = []
        self.old_style_completions = []

    def handleJobEvent(self, job, event, data):
        self.events.append((job.arguments, event, data))
        super(RecordingClient, self).handleJobEvent(job, event, data)

    def handleWorkComplete(self, packet):
        job = super(RecordingClient, self).handleWorkComplete(packet)
        self.old_style_completions.append(job)
        return job


class WaitingTestCase(testtools.TestCase):

    def setUp(self):
        super(WaitingTestCase, self).setUp()
        self.server = self.useFixture(GearServerFixture())

    def client(self, client_class=gear.Client, **kwargs):
        client = client_class('waiter', **kwargs)
        self.addCleanup(client.shutdown)
        client.addServer(self.server.host, self.server.port)
        client.waitForServer(timeout=WAIT)
        return client

    def worker(self, handler=talkative, function='talk'):
        worker = gear.Worker('waited-on')
        self.addCleanup(worker.shutdown)
        worker.addServer(self.server.host, self.server.port)
        worker.registerFunction(function)
        worker.waitForServer(timeout=WAIT)
        serve_jobs(self, worker, handler, WAIT)
        return worker


class TestJobWait(WaitingTestCase):

    def test_wait_returns_true_once_the_job_completed(self):
        self.worker()
        client = self.client()
        job = gear.Job('talk', b'abc')
        client.submitJob(job)
        self.assertTrue(job.wait(WAIT))
        self.assertEqual((True, False), (job.complete, job.failure))
        self.assertEqual([b'part', b'careful', b'cba'], job.data)
        # Waiting again on an ended job returns at once.
        self.assertTrue(job.wait(0))

    def test_wait_ends_on_fail_and_exception(self):
        self.worker()
        client = self.client()
        failed = gear.Job('talk', b'fail')
        raised = gear.Job('talk', b'raise')
        client.submitJob(failed)
        client.submitJob(raised)
        self.assertTrue(failed.wait(WAIT))
        self.assertTrue(raised.wait(WAIT))
        self.assertEqual((True, True, None),
                         (failed.complete, failed.failure, failed.exception))
        self.assertEqual((True, True, b'it broke'),
                         (raised.complete, raised.failure, raised.exception))

    def test_wait_times_out_while_nobody_serves_the_job(self):
        client = self.client()
        job = gear.Job('nobody_serves_this', b'x')
        client.submitJob(job)
        self.assertFalse(job.wait(SHORT))
        self.assertFalse(job.complete)

    def test_wait_ends_when_the_server_goes_away(self):
        client = self.client()
        job = gear.Job('nobody_serves_this', b'x')
        client.submitJob(job)
        waiter = threading.Thread(target=job.wait, daemon=True)
        waiter.start()
        self.server.server.shutdown()
        self.assertTrue(job.wait(WAIT))
        waiter.join(WAIT)
        self.assertFalse(waiter.is_alive())
        self.assertEqual((True, True, True),
                         (job.complete, job.failure, job.disconnected))

    def test_shutdown_wakes_waiters(self):
        client = self.client()
        job = gear.Job('nobody_serves_this', b'x')
        client.submitJob(job)
        results = []
        waiter = threading.Thread(
            target=lambda: results.append(job.wait()), daemon=True)
        waiter.start()
        client.shutdown()
        waiter.join(WAIT)
        self.assertEqual([True], results)
        self.assertTrue(job.disconnected)


class TestWaitForJobs(WaitingTestCase):

    def test_all_jobs_end(self):
        self.worker()
        client = self.client()
        jobs = [gear.Job('talk', b'job%d' % i) for i in range(20)]
        for job in jobs:
            client.submitJob(job)
        self.assertTrue(client.waitForJobs(jobs, timeout=WAIT))
        self.assertEqual([(b'job%d' % i)[::-1] for i in range(20)],
                         [job.data[-1] for job in jobs])

    def test_false_when_one_job_is_left(self):
        self.worker()
        client = self.client()
        done = gear.Job('talk', b'a')
        left = gear.Job('nobody_serves_this', b'b')
        client.submitJob(done)
        client.submitJob(left)
        self.assertTrue(done.wait(WAIT))
        self.assertFalse(client.waitForJobs([done, left], timeout=SHORT))
        self.assertEqual([left], [j for j in (done, left) if not j.complete])

    def test_empty_list(self):
        self.assertTrue(self.client().waitForJobs([], timeout=0))


class TestJobEvents(WaitingTestCase):

    def test_callback_sees_every_update_in_order(self):
        self.worker()
        events = []
        client = self.client(
            job_callback=lambda job, event, data: events.append(
                (event, data, job.numerator if event == 'status' else None)))
        job = gear.Job('talk', b'xy')
        client.submitJob(job)
        self.assertTrue(job.wait(WAIT))
        self.assertEqual([('data', b'part', None),
                          ('warning', b'careful', None),
                          ('status', None, b'1'),
                          ('complete', b'yx', None)], events)

    def test_final_events_for_fail_exception_and_lost(self):
        self.worker()
        client = self.client(client_class=RecordingClient)
        jobs = [gear.Job('talk', b'fail'), gear.Job('talk', b'raise'),
                gear.Job('nobody_serves_this', b'lost')]
        for job in jobs:
            client.submitJob(job)
        self.assertTrue(client.waitForJobs(jobs[:2], timeout=WAIT))
        self.server.server.shutdown()
        self.assertTrue(jobs[2].wait(WAIT))
        self.assertEqual(sorted([(b'fail', 'fail', None),
                                 (b'raise', 'exception', b'it broke'),
                                 (b'lost', 'lost', None)]),
                         sorted(client.events))

    def test_old_style_overrides_still_run(self):
        self.worker()
        client = self.client(client_class=RecordingClient)
        job = gear.Job('talk', b'ab')
        client.submitJob(job)
        self.assertTrue(job.wait(WAIT))
        self.assertEqual([job], client.old_style_completions)
        self.assertIn((b'ab', 'complete', b'ba'), client.events)

    def test_a_failing_callback_is_logged_and_the_job_still_ends(self):
        self.worker()

        def broken(job, event, data):
            raise RuntimeError('callback bug')
        client = self.client(job_callback=broken)
        jobs = [gear.Job('talk', b'one'), gear.Job('talk', b'two')]
        for job in jobs:
            client.submitJob(job)
        self.assertTrue(client.waitForJobs(jobs, timeout=WAIT))
        self.assertEqual([b'eno', b'owt'], [job.data[-1] for job in jobs])


class TestErrorsWithWords(testtools.TestCase):

    def test_wait_for_server_names_the_servers_and_the_timeout(self):
        client = gear.Client('lonely')
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', 1)
        error = self.assertRaises(gear.TimeoutError,
                                  client.waitForServer, timeout=0.5)
        message = str(error)
        self.assertIn('127.0.0.1:1', message)
        self.assertIn('0.5s', message)
        wait_for(lambda: 'refused' in str(self.assertRaises(
            gear.TimeoutError, client.waitForServer, timeout=0)).lower(),
            timeout=WAIT, message='the connect error in the message')

    def test_timeout_and_connection_errors_are_gearman_errors(self):
        for error in (gear.TimeoutError, gear.ConnectionError,
                      gear.NoConnectedServersError, gear.AdminError):
            self.assertTrue(issubclass(error, gear.GearmanError), error)
        try:
            raise gear.TimeoutError('x')
        except gear.TimeoutError as e:  # gear 0.16's clause still works
            self.assertIsInstance(e, gear.GearmanError)
