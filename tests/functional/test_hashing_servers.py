"""Clients that hash uniques over two real servers: equal uniques meet."""

import fixtures

import gear
from gear.gearman import GearmanClient

from tests.functional.test_server_base import ServerTestCase, wait_for

WAIT = 15.0


class TestUniqueAcrossServers(ServerTestCase):

    def setUp(self):
        super(TestUniqueAcrossServers, self).setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.servers = [self.server, self.makeServer(
            job_handle_prefix='H:other')]
        self.worker = gear.Worker('w')
        self.addCleanup(self.worker.shutdown)
        for server in self.servers:
            self.worker.addServer('127.0.0.1', server.port)
        self.worker.registerFunction('fn')
        wait_for(lambda: len(self.worker.active_connections) == 2, WAIT,
                 'the worker to connect to both servers')

    def client(self, servers):
        client = gear.Client('c')
        self.addCleanup(client.shutdown)
        for server in servers:
            client.addServer('127.0.0.1', server.port)
        wait_for(lambda: len(client.active_connections) == 2, WAIT,
                 'a client to connect to both servers')
        return client

    def queued(self):
        return sum(len(server.jobs) for server in self.servers)

    def check_coalesced(self, unique, submitters):
        """Submit ``unique`` through each submitter in turn; one job runs
        and every submitter gets its result."""
        jobs = [submit(unique) for submit in submitters]
        self.assertEqual(1, self.queued())
        running = self.worker.getJob(timeout=WAIT)
        self.assertEqual(unique.encode(), running.unique)
        running.sendWorkComplete(b'the result')
        for job in jobs:
            wait_for(lambda: job.complete, WAIT, 'a client to hear')
            self.assertEqual([b'the result'], job.data)
        wait_for(lambda: self.queued() == 0, WAIT, 'the job to end')

    def gear_submitter(self, client):
        def submit(unique):
            job = gear.Job('fn', b'args', unique)
            client.submitJob(job, timeout=WAIT)
            return job
        return submit

    def test_two_clients_same_unique_either_order(self):
        # The clients list the servers in different orders: the hash
        # depends on the servers' names, not on the list's order.
        first = self.client(self.servers)
        second = self.client(self.servers[::-1])
        for i in range(6):
            submitters = [self.gear_submitter(first),
                          self.gear_submitter(second)]
            if i % 2:
                submitters.reverse()
            self.check_coalesced('shared-%d' % i, submitters)

    def test_facade_and_gear_client_meet(self):
        facade = GearmanClient(['127.0.0.1:%d' % s.port
                                for s in self.servers])
        self.addCleanup(facade.shutdown)

        def facade_submit(unique):
            request = facade.submit_job('fn', 'args', unique=unique,
                                        wait_until_complete=False,
                                        poll_timeout=WAIT)

            class Result(object):
                @property
                def complete(self):
                    return request.complete

                @property
                def data(self):
                    return [request.result]
            return Result()
        gear_client = self.gear_submitter(self.client(self.servers))
        for i in range(4):
            submitters = [facade_submit, gear_client]
            if i % 2:
                submitters.reverse()
            self.check_coalesced('mixed-%d' % i, submitters)

    def test_owner_down_then_back(self):
        client = self.client(self.servers)
        # A unique owned by the second server.
        owner = self.servers[1]
        unique = next(u for u in ('k%d' % i for i in range(100))
                      if client._connectionsFor(u.encode())[0].port
                      == owner.port)
        job = gear.Job('fn', b'', unique)
        client.submitJob(job, background=True, timeout=WAIT)
        self.assertIn(job.handle, owner.jobs)
        owner.shutdown()
        wait_for(lambda: len(client.active_connections) == 1, WAIT,
                 'the client to notice the loss')
        job = gear.Job('fn', b'', unique)
        client.submitJob(job, background=True, timeout=WAIT)
        self.assertIn(job.handle, self.servers[0].jobs)
