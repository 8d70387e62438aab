"""gear's Client and Worker against Perl's Gearman::Server.

That server (Debian package gearman-server) knows GRAB_JOB but not
GRAB_JOB_UNIQ, which it answers with an ERROR: the worker must fall back
to GRAB_JOB on that connection, and remember it.  Skipped when the
server is not installed.
"""

import fixtures
import pytest
import testtools

import gear
from tests.gearmand import PerlGearmandFixture
from tests.util import serve_jobs

pytestmark = pytest.mark.interop

WAIT = 30.0


class TestPerlGearmanServer(testtools.TestCase):

    def setUp(self):
        super(TestPerlGearmanServer, self).setUp()
        self.server = self.useFixture(PerlGearmandFixture())
        self.log = self.useFixture(fixtures.FakeLogger('gear.Worker'))

    def connect(self, thing):
        self.addCleanup(thing.shutdown)
        thing.addServer('127.0.0.1', self.server.port)
        thing.waitForServer(timeout=WAIT)
        return thing

    def test_worker_falls_back_to_grab_job_once(self):
        worker = gear.Worker('perl-server-worker')
        worker.registerFunction('reverse')
        self.connect(worker)
        serve_jobs(self, worker,
                   lambda job: job.sendWorkComplete(job.arguments[::-1]),
                   WAIT)
        client = self.connect(gear.Client('perl-server-client'))
        jobs = [gear.Job('reverse', b'job%d' % i) for i in range(10)]
        for job in jobs:
            client.submitJob(job)
        self.assertTrue(client.waitForJobs(jobs, timeout=WAIT))
        self.assertEqual([(b'job%d' % i)[::-1] for i in range(10)],
                         [job.data[-1] for job in jobs])
        self.assertEqual([False] * 10, [job.failure for job in jobs])
        # One ERROR, then GRAB_JOB for good on that connection.
        self.assertEqual(1, self.log.output.count('refused GRAB_JOB_UNIQ'))
        self.assertEqual(1, len(worker._plain_grab))

    def test_get_job_with_a_timeout(self):
        worker = self.connect(gear.Worker('perl-server-waiter'))
        worker.registerFunction('idle')
        self.assertRaises(gear.TimeoutError, worker.getJob, timeout=0.5)
        client = self.connect(gear.Client('perl-server-client'))
        job = gear.Job('idle', b'x')
        client.submitJob(job)
        assigned = worker.getJob(timeout=WAIT)
        self.assertEqual(b'x', assigned.arguments)
        self.assertTrue(assigned.sendWorkComplete(b'y'))
        self.assertTrue(job.wait(WAIT))
        self.assertEqual([b'y'], job.data)
