"""gear's own Client and Worker against gear's Server."""

import threading

import fixtures

import gear
from gear import tlsutil

from tests.functional.test_server_base import ServerTestCase, wait_for
from tests.util import serve_jobs

WAIT = 15.0


class LibraryTestCase(ServerTestCase):

    def setUp(self):
        super(LibraryTestCase, self).setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))

    def client(self, server=None, *tls, **kw):
        client = gear.Client('test-client', **kw)
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', (server or self.server).port, *tls)
        client.waitForServer(WAIT)
        return client

    def worker(self, *functions, **kw):
        server = kw.pop('server', None) or self.server
        tls = kw.pop('tls', ())
        worker = kw.pop('cls', gear.Worker)('test-worker')
        self.addCleanup(worker.shutdown)
        worker.addServer('127.0.0.1', server.port, *tls)
        for name in functions:
            worker.registerFunction(name)
        worker.waitForServer(WAIT)
        return worker

    def runWorker(self, worker, handler):
        serve_jobs(self, worker, handler, WAIT)

    def waitJob(self, job):
        wait_for(lambda: job.complete, WAIT, 'job %r to complete' % job)


class TestClientWorker(LibraryTestCase):

    def test_job_round_trip(self):
        client = self.client()
        worker = self.worker('test')
        job = gear.Job(b'test', b'testdata')
        client.submitJob(job)
        self.assertIsNotNone(job.handle)
        self.assertEqual(1, len(self.server.normal_queue))
        workerjob = worker.getJob(timeout=WAIT)
        self.assertEqual(b'testdata', workerjob.arguments)
        workerjob.sendWorkData(b'workdata')
        workerjob.sendWorkComplete()
        self.waitJob(job)
        self.assertEqual([b'workdata'], job.data)
        self.assertFalse(job.failure)

    def test_text_job_exception_without_set_option(self):
        client = self.client()
        worker = self.worker('test', cls=gear.TextWorker)
        job = gear.TextJob('test', 'testdata')
        client.submitJob(job)
        workerjob = worker.getJob(timeout=WAIT)
        self.assertEqual('testdata', workerjob.arguments)
        workerjob.sendWorkException('boom')
        self.waitJob(job)
        self.assertTrue(job.failure)
        self.assertEqual('boom', job.exception)

    def test_many_jobs_two_workers(self):
        client = self.client()

        def reverse(job):
            job.sendWorkComplete(job.arguments[::-1])
        for name in ('w1', 'w2'):
            self.runWorker(self.worker('reverse'), reverse)
        jobs = [gear.Job(b'reverse', b'job-%d' % i) for i in range(200)]
        for job in jobs:
            client.submitJob(job)
        for job in jobs:
            self.waitJob(job)
        self.assertEqual([j.arguments[::-1] for j in jobs],
                         [j.data[0] for j in jobs])
        self.assertEqual(0, len(self.server.jobs))

    def test_background_jobs_and_status(self):
        client = self.client()
        job = gear.Job(b'later', b'data')
        client.submitJob(job, background=True)
        self.assertIsNotNone(job.unique)
        client.getStatus(job, timeout=WAIT)
        self.assertTrue(job.known)
        self.assertFalse(job.running)
        known = client.getStatusUnique(job.unique, timeout=WAIT)
        self.assertTrue(known[0])
        worker = self.worker('later')
        workerjob = worker.getJob(timeout=WAIT)
        workerjob.sendWorkStatus(1, 2)
        wait_for(lambda: self.server.jobs[job.handle].numerator == b'1',
                 WAIT, 'status')
        client.getStatus(job, timeout=WAIT)
        self.assertTrue(job.running)
        self.assertEqual(0.5, job.fraction_complete)
        workerjob.sendWorkComplete()
        wait_for(lambda: not self.server.jobs, WAIT, 'job done')

    def test_coalesced_submissions(self):
        client = self.client()
        j1 = gear.Job(b'fn', b'd', unique=b'same')
        j2 = gear.Job(b'fn', b'd', unique=b'same')
        client.submitJob(j1)
        client.submitJob(j2)
        self.assertEqual(j1.handle, j2.handle)
        worker = self.worker('fn')
        workerjob = worker.getJob(timeout=WAIT)
        workerjob.sendWorkComplete(b'r')
        self.waitJob(j1)
        self.waitJob(j2)
        self.assertEqual([b'r'], j1.data)
        self.assertEqual([b'r'], j2.data)

    def test_worker_timeout_requeues_to_another_worker(self):
        client = self.client()
        job = gear.Job(b'slow', b'd')
        client.submitJob(job)
        first = self.worker('slow', cls=gear.Worker)
        first.registerFunction('slow', timeout=1000)
        taken = first.getJob(timeout=WAIT)
        self.assertEqual(job.handle, taken.handle)
        second = self.worker('slow')
        again = second.getJob(timeout=WAIT)
        self.assertEqual(job.handle, again.handle)
        taken.sendWorkComplete(b'late')  # answered with JOB_NOT_FOUND
        again.sendWorkComplete(b'ok')
        self.waitJob(job)
        self.assertEqual([b'ok'], job.data)

    def test_admin_requests(self):
        client = self.client()
        client.submitJob(gear.Job(b'fn', b'd'), background=True)
        conn = client.active_connections[0]
        request = gear.StatusAdminRequest()
        conn.sendAdminRequest(request, timeout=WAIT)
        self.assertEqual([('fn', 1, 0, 0)], request.parse())
        request = gear.ShowJobsAdminRequest()
        conn.sendAdminRequest(request, timeout=WAIT)
        self.assertEqual(1, len(request.parse()))
        request = gear.VersionAdminRequest()
        conn.sendAdminRequest(request, timeout=WAIT)
        self.assertTrue(request.parse())

    def test_echo(self):
        client = self.client()
        conn = client.active_connections[0]
        self.assertEqual(b'ping', conn.echo(b'ping', timeout=WAIT))

    def test_gear_style_scheduling_override(self):
        class HoldingServer(gear.Server):
            hold = True

            def getJobForConnection(self, connection, peek=False):
                for queue in [self.high_queue, self.normal_queue,
                              self.low_queue]:
                    for job in queue:
                        if not hasattr(job, 'waiting'):
                            job.waiting = self.hold
                        if job.waiting:
                            continue
                        if job.name in connection.functions:
                            if not peek:
                                queue.remove(job)
                                connection.related_jobs[job.handle] = job
                                job.worker_connection = connection
                            job.running = True
                            return job
                return None

            def release(self):
                for job in self.getQueue():
                    job.waiting = False
                self.wakeConnections()

        server = HoldingServer(0, host='127.0.0.1')
        self.addCleanup(server.shutdown)
        client = self.client(server)
        job = gear.Job(b'held', b'd')
        client.submitJob(job)
        worker = self.worker('held', server=server)
        got = []
        thread = threading.Thread(
            target=lambda: got.append(worker.getJob(timeout=WAIT)),
            daemon=True)
        thread.start()
        # The held job is not handed out: the waiting worker goes to sleep.
        wait_for(lambda: worker.active_connections[0].state == 'SLEEP',
                 WAIT, 'worker asleep')
        self.assertEqual(1, len(server.normal_queue))
        server.release()
        thread.join(WAIT)
        workerjob = got[0]
        self.assertEqual(job.handle, workerjob.handle)
        self.assertEqual(0, len(server.normal_queue))
        self.assertEqual(1, server.running_jobs)
        workerjob.sendWorkComplete(b'x')
        self.waitJob(job)
        self.assertEqual(0, server.running_jobs)


class TestTLSLibrary(LibraryTestCase):

    def test_tls_and_acl(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        ca = tlsutil.CertificateAuthority(tmp)
        srv = ca.issue('localhost', name='server')
        cli = ca.issue('client', name='client')
        wrk = ca.issue('worker', name='worker')
        acl = gear.ACL()
        acl.add(gear.ACLEntry('client', invoke='tls.*'))
        acl.add(gear.ACLEntry('worker', register='tls.*'))
        server = gear.Server(0, srv.key, srv.cert, srv.ca, acl=acl,
                             host='127.0.0.1')
        self.addCleanup(server.shutdown)
        client = self.client(server, cli.key, cli.cert, cli.ca)
        worker = self.worker('tls-fn', server=server,
                             tls=(wrk.key, wrk.cert, wrk.ca))
        job = gear.Job(b'tls-fn', b'secret')
        client.submitJob(job)
        workerjob = worker.getJob(timeout=WAIT)
        workerjob.sendWorkComplete(b'ok')
        self.waitJob(job)
        self.assertEqual([b'ok'], job.data)
        denied = gear.Job(b'other', b'x')
        self.assertRaises(gear.GearmanError, client.submitJob, denied,
                          timeout=5)
