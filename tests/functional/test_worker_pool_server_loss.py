"""A pool of worker threads on two servers keeps working when one server
goes away in the middle of its jobs.

The threads run the pool loop of doc/source/worker.rst.  Every thread
holds a job from the first server when that server is shut down; their
reports then go nowhere (WorkerJob.send* return False instead of
raising), and the same threads go on to serve the second server.
"""

import queue
import threading

import testtools

import gear
from gear.testing import GearServerFixture
from tests.util import wait_for

WAIT = 30.0
THREADS = 4


class TestPoolSurvivesServerLoss(testtools.TestCase):

    def setUp(self):
        super(TestPoolSurvivesServerLoss, self).setUp()
        self.doomed = self.useFixture(GearServerFixture())
        self.survivor = self.useFixture(GearServerFixture())
        self.held = queue.Queue()
        self.release = threading.Event()
        self.addCleanup(self.release.set)
        self.reports = queue.Queue()  # (job name, result of the send)

    def client(self, server):
        client = gear.Client('pool-client')
        self.addCleanup(client.shutdown)
        client.addServer(server.host, server.port)
        client.waitForServer(timeout=WAIT)
        return client

    def handle(self, job):
        if job.name == 'hold':
            self.held.put(job)
            self.release.wait(WAIT)
            self.reports.put(('data', job.sendWorkData(b'late')))
            self.reports.put(('complete', job.sendWorkComplete(b'held')))
        elif job.name == 'boom':
            raise ValueError('bad input')
        else:
            job.sendWorkComplete(job.arguments[::-1])

    def work(self, worker):
        # The pool loop of doc/source/worker.rst.
        while True:
            try:
                job = worker.getJob()
            except gear.InterruptedError:
                return
            try:
                self.handle(job)
            except Exception as e:
                job.sendWorkException(str(e).encode())

    def test_threads_survive_and_jobs_flow_through_the_other_server(self):
        worker = gear.Worker('pool')
        worker.addServer(self.doomed.host, self.doomed.port)
        worker.addServer(self.survivor.host, self.survivor.port)
        for name in ('hold', 'reverse', 'boom'):
            worker.registerFunction(name)
        wait_for(lambda: len(worker.active_connections) == 2, WAIT,
                 message='worker connected to both servers')
        pool = [threading.Thread(target=self.work, args=(worker,),
                                 name='pool-%d' % i, daemon=True)
                for i in range(THREADS)]
        for thread in pool:
            thread.start()
        self.addCleanup(lambda: [t.join(WAIT) for t in pool])
        self.addCleanup(worker.shutdown)

        doomed_client = self.client(self.doomed)
        held_jobs = [gear.Job('hold', b'%d' % i) for i in range(THREADS)]
        for job in held_jobs:
            doomed_client.submitJob(job)
        wait_for(lambda: self.held.qsize() == THREADS, WAIT,
                 message='every thread holding a job of the doomed server')

        self.doomed.server.shutdown()
        wait_for(lambda: not any(c.port == self.doomed.port
                                 for c in worker.active_connections),
                 WAIT, message='the worker noticed the server is gone')
        self.release.set()
        reports = [self.reports.get(timeout=WAIT)
                   for _ in range(2 * THREADS)]
        self.assertEqual([False] * (2 * THREADS),
                         [sent for _, sent in reports])
        wait_for(lambda: all(job.complete for job in held_jobs), WAIT,
                 message='the client saw the doomed server go')
        self.assertTrue(all(job.disconnected for job in held_jobs))

        client = self.client(self.survivor)
        jobs = [gear.Job('reverse', b'job%d' % i) for i in range(40)]
        jobs.append(gear.Job('boom', b''))
        for job in jobs:
            client.submitJob(job)
        self.assertTrue(client.waitForJobs(jobs, timeout=WAIT))
        self.assertEqual([(b'job%d' % i)[::-1] for i in range(40)],
                         [job.data[-1] for job in jobs[:-1]])
        self.assertEqual(b'bad input', jobs[-1].exception)
        self.assertEqual([True] * THREADS, [t.is_alive() for t in pool])
