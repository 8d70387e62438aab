"""The two job semantics of gear.Server, spoken to in raw packets.

``Server()`` keeps gear 0.16's observable semantics where its callers
(Zuul, Nodepool) depend on them; ``Server(semantics='gearmand')``, which
geard runs, follows gearmand.
"""

import gear
from gear import constants as c
from gear.cmd import geard

from tests.functional.test_server_base import ServerTestCase, wait_for


class PolicyTestCase(ServerTestCase):

    def running(self, name=b'fn', ptype=c.SUBMIT_JOB):
        """A client, a worker and a job of ``name`` the worker holds."""
        client = self.connect()
        worker = self.connect()
        handle = client.submit(name, b'data', b'', ptype)
        worker.canDo(name)
        self.assertEqual(handle, worker.grab()[0])
        return client, worker, handle

    def assertNothingFor(self, peer):
        """Nothing was sent to ``peer`` before an echo round trip."""
        peer.sync()


class SharedSemantics(object):
    """What both semantics share: gear 0.16's server attributes and
    handlePacket hook, and the requeue of a lost worker's background job.
    """

    def test_lost_worker_requeues_a_running_background_job(self):
        # gear 0.16 lost the job; keeping it is the safe behaviour.
        client, worker, handle = self.running(ptype=c.SUBMIT_JOB_BG)
        worker.close()
        other = self.connect()
        other.canDo(b'fn')
        wait_for(lambda: other.grab(), message='the job to be requeued')

    def test_functions_is_a_set(self):
        worker = self.connect()
        worker.canDo(b'fn')
        worker.sync()
        self.assertIsInstance(self.server.functions, set)
        self.assertIn(b'fn', self.server.functions)
        self.server.functions.add(b'added')
        self.assertIn(b'added', self.server.functions)

    def test_grab_follows_functions_edited_outside_hooks(self):
        # Zuul's GearServer edits connection.functions itself.
        client = self.connect()
        worker = self.connect()
        handle = client.submit(b'fn', b'data', b'u', c.SUBMIT_JOB_BG)
        worker.sync()
        port = worker.sock.getsockname()[1]
        conn, = [conn for conn in self.server.active_connections
                 if conn.port == port]
        with self.server.lock:
            conn.functions.add(b'fn')
        self.assertEqual(handle, worker.grab()[0])
        with self.server.lock:
            conn.functions = set()
        worker.send(c.WORK_COMPLETE, handle, b'')
        client.submit(b'fn', b'more', b'', c.SUBMIT_JOB_BG)
        self.assertIsNone(worker.grab())

    def test_unknown_packet_types_reach_handle_packet(self):
        seen = []

        class Recording(gear.Server):
            def handlePacket(self, packet):
                seen.append(packet.ptype)
                if packet.ptype == 101:
                    return None
                return super(Recording, self).handlePacket(packet)

        server = Recording(0, host='127.0.0.1', **self.server_options)
        self.addCleanup(server.shutdown)
        peer = self.connect(server)
        peer.send(101, b'a', b'b')
        peer.sync()
        self.assertEqual([101, c.ECHO_REQ], seen)


class TestGearSemantics(SharedSemantics, PolicyTestCase):
    """The default: gear 0.16's semantics."""

    def test_default(self):
        self.assertEqual('gear', self.server.semantics)

    def test_unknown_semantics_are_refused(self):
        self.assertRaises(gear.ConfigurationError, gear.Server, 0,
                          semantics='gearman')

    def test_cancel_queued_job_is_silent(self):
        admin = self.connect()
        client = self.connect()
        handle = client.submit(b'fn', b'd')
        self.assertEqual(b'OK', admin.admin(b'cancel job ' + handle).strip())
        self.assertNotIn(handle, self.server.jobs)
        self.assertNothingFor(client)

    def test_cancel_running_job_is_refused(self):
        admin = self.connect()
        client, worker, handle = self.running()
        self.assertTrue(admin.admin(b'cancel job ' + handle).startswith(
            b'ERR UNKNOWN_JOB'))
        self.assertNothingFor(client)
        worker.send(c.WORK_COMPLETE, handle, b'result')
        client.expect(c.WORK_COMPLETE, handle + b'\x00result')

    def test_cant_do_leaves_the_running_job_alone(self):
        client, worker, handle = self.running()
        other = self.connect()
        other.canDo(b'fn')
        worker.send(c.CANT_DO, b'fn')
        worker.sync()
        # Not requeued: nobody else gets it...
        self.assertIsNone(other.grab())
        # ...and its worker's result still reaches the client.
        worker.send(c.WORK_COMPLETE, handle, b'late')
        client.expect(c.WORK_COMPLETE, handle + b'\x00late')

    def test_lost_worker_fails_a_running_foreground_job(self):
        client, worker, handle = self.running()
        other = self.connect()
        other.canDo(b'fn')
        worker.close()
        client.expect(c.WORK_FAIL, handle)
        self.assertNotIn(handle, self.server.jobs)
        self.assertIsNone(other.grab())


class TestGearmandSemantics(SharedSemantics, PolicyTestCase):
    """``semantics='gearmand'``, what geard runs."""

    server_options = {'semantics': 'gearmand'}

    def test_geard_runs_gearmand_semantics(self):
        kwargs = geard.server_kwargs(geard.parse_args([], environ={}))
        self.assertEqual('gearmand', kwargs['semantics'])
        kwargs = geard.server_kwargs(
            geard.parse_args(['--semantics', 'gear'], environ={}))
        self.assertEqual('gear', kwargs['semantics'])

    def test_cancel_queued_job_fails_its_clients(self):
        admin = self.connect()
        client = self.connect()
        handle = client.submit(b'fn', b'd')
        self.assertEqual(b'OK', admin.admin(b'cancel job ' + handle).strip())
        client.expect(c.WORK_FAIL, handle)
        self.assertNotIn(handle, self.server.jobs)

    def test_cancel_running_job_fails_its_clients(self):
        admin = self.connect()
        client, worker, handle = self.running()
        self.assertEqual(b'OK', admin.admin(b'cancel job ' + handle).strip())
        client.expect(c.WORK_FAIL, handle)
        # The worker's late result goes nowhere.
        worker.send(c.WORK_COMPLETE, handle, b'late')
        worker.sync()
        self.assertNothingFor(client)

    def test_cant_do_requeues_the_running_job(self):
        client, worker, handle = self.running()
        worker.send(c.CANT_DO, b'fn')
        worker.sync()
        other = self.connect()
        other.canDo(b'fn')
        self.assertEqual(handle, other.grab()[0])

    def test_lost_worker_requeues_a_running_foreground_job(self):
        client, worker, handle = self.running()
        worker.close()
        other = self.connect()
        other.canDo(b'fn')
        assignment = wait_for(lambda: other.grab(),
                              message='the job to be requeued')
        self.assertEqual(handle, assignment[0])
        other.send(c.WORK_COMPLETE, handle, b'second try')
        client.expect(c.WORK_COMPLETE, handle + b'\x00second try')


class TestGearmandRetryLimit(PolicyTestCase):

    server_options = {'semantics': 'gearmand', 'job_retries': 0}

    def test_lost_worker_fails_the_job_past_the_retry_limit(self):
        client, worker, handle = self.running()
        worker.close()
        client.expect(c.WORK_FAIL, handle)
        self.assertNotIn(handle, self.server.jobs)
