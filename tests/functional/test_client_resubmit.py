"""Client(resubmit=True): jobs of a lost server are submitted again."""

import testtools

import gear
from gear.testing import GearServerFixture
from tests.gearmand import wait_for


class TestResubmit(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.doomed = self.useFixture(GearServerFixture())
        self.survivor = self.useFixture(GearServerFixture())

    def make_client(self, **kw):
        client = gear.Client('resubmitter', **kw)
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', self.doomed.port)
        client.addServer('127.0.0.1', self.survivor.port)
        wait_for(lambda: len(client.active_connections) == 2, timeout=10)
        return client

    def submit_to_doomed(self, client):
        """Submit until a job lands on the server that will be lost.

        No worker serves that server, so the job waits there.
        """
        for attempt in range(4):
            job = gear.Job('resubmit-fn', b'payload')
            client.submitJob(job, precedence=gear.PRECEDENCE_HIGH)
            if job.connection.port == self.doomed.port:
                return job
        self.fail("round-robin never picked the first server")

    def start_worker(self):
        worker = gear.Worker('survivor-worker')
        self.addCleanup(worker.shutdown)
        worker.addServer('127.0.0.1', self.survivor.port)
        worker.registerFunction('resubmit-fn')
        worker.waitForServer(timeout=10)
        return worker

    def test_lost_job_completes_on_the_other_server(self):
        client = self.make_client(resubmit=True, resubmit_timeout=20)
        job = self.submit_to_doomed(client)
        self.assertEqual(1, len(self.doomed.server.jobs))
        self.doomed.server.shutdown()

        worker = self.start_worker()
        work = worker.getJob(timeout=20)
        self.assertEqual(b'payload', work.arguments)
        work.sendWorkComplete(b'done')

        wait_for(lambda: job.complete, timeout=20)
        self.assertFalse(job.failure)
        self.assertEqual([b'done'], job.data)
        self.assertEqual(self.survivor.port, job.connection.port)
        self.assertFalse(getattr(job, 'disconnected', False))

    def test_without_resubmit_a_lost_job_is_failed(self):
        client = self.make_client()
        job = self.submit_to_doomed(client)
        self.doomed.server.shutdown()
        wait_for(lambda: job.complete, timeout=20)
        self.assertTrue(job.failure)
        self.assertTrue(job.disconnected)
        self.assertEqual(0, len(self.survivor.server.jobs))

    def test_gives_up_after_resubmit_timeout(self):
        client = gear.Client('lonely', resubmit=True, resubmit_timeout=1)
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', self.doomed.port)
        client.waitForServer(timeout=10)
        job = gear.Job('resubmit-fn', b'x')
        client.submitJob(job)
        self.doomed.server.shutdown()
        wait_for(lambda: job.complete, timeout=20)
        self.assertTrue(job.failure)
        self.assertTrue(job.disconnected)
