"""Worker: function registration and the per-connection grab state machine,
driven by recorded connections instead of a server."""

import threading
import warnings

import testtools

import gear
from gear import constants
from gear.protocol import Packet
from tests.gearmand import wait_for
from tests.unit.test_client import RecordingConnection


def res(ptype, data, conn):
    return Packet(constants.RES, ptype, data, conn)


class WorkerTestCase(testtools.TestCase):

    def setUp(self):
        super(WorkerTestCase, self).setUp()
        self.worker = gear.Worker('test-worker')
        self.threads = []
        self.addCleanup(self.stop)

    def stop(self):
        # Shutting down interrupts every getJob still waiting.
        self.worker.shutdown()
        for thread in self.threads:
            thread.join(10)

    def add(self, name='a'):
        conn = RecordingConnection(name)
        self.worker._onConnect(conn)
        with self.worker.connections_condition:
            self.worker.active_connections.append(conn)
        self.worker._onActiveConnection(conn)
        return conn

    def grabs(self, conn):
        return conn.sent_types().count(constants.GRAB_JOB_UNIQ)

    def start_getjob(self, timeout=10):
        result = {}

        def run():
            try:
                result['job'] = self.worker.getJob(timeout=timeout)
            except Exception as e:
                result['error'] = e
        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)
        return result

    def assign(self, conn, handle=b'H:1', name=b'fn', unique=b'u',
               data=b'args'):
        self.worker.handlePacket(res(
            constants.JOB_ASSIGN_UNIQ,
            b'\x00'.join((handle, name, unique, data)), conn))


class TestConstruction(testtools.TestCase):

    def test_client_id_required(self):
        self.assertRaises(gear.ConfigurationError, gear.Worker)

    def test_worker_id_is_a_deprecated_alias(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            worker = gear.Worker(worker_id='old')
        self.addCleanup(worker.shutdown)
        self.assertEqual(b'old', worker.client_id)
        self.assertTrue(any(issubclass(w.category, DeprecationWarning)
                            for w in caught))

    def test_attributes(self):
        worker = gear.Worker('w')
        self.addCleanup(worker.shutdown)
        self.assertTrue(repr(worker).startswith('<gear.Worker 0x'))
        self.assertIs(gear.WorkerJob, worker.job_class)
        self.assertIs(gear.TextWorkerJob, gear.TextWorker.job_class)
        self.assertEqual({}, worker.functions)
        self.assertEqual(0, worker.waiting_for_jobs)


class TestRegistration(WorkerTestCase):

    def test_timeout_types(self):
        conn = self.add()
        for timeout, wire in ((None, None), (1500, b'1500'),
                              (2.9, b'2'), ('3000', b'3000'),
                              (b'4000', b'4000')):
            self.worker.registerFunction('fn', timeout)
            packet = conn.sent[-1]
            if wire is None:
                self.assertEqual((constants.CAN_DO, b'fn'),
                                 (packet.ptype, packet.data))
            else:
                self.assertEqual((constants.CAN_DO_TIMEOUT, b'fn\x00' + wire),
                                 (packet.ptype, packet.data))

    def test_bad_timeout_is_not_recorded(self):
        for bad in ('soon', -1, float('inf'), [1], True):
            self.assertRaises((TypeError, gear.ConfigurationError),
                              self.worker.registerFunction, 'fn', bad)
        self.assertEqual({}, self.worker.functions)

    def test_on_connect_registers_everything(self):
        self.worker.registerFunction('a')
        self.worker.registerFunction('b', 1000)
        conn = RecordingConnection()
        self.worker._onConnect(conn)
        self.assertEqual([constants.SET_CLIENT_ID, constants.CAN_DO,
                          constants.CAN_DO_TIMEOUT], conn.sent_types())
        self.assertEqual('IDLE', conn.state)

    def test_unregister(self):
        conn = self.add()
        self.worker.registerFunction('fn')
        self.worker.unRegisterFunction('fn')
        self.assertEqual((constants.CANT_DO, b'fn'),
                         (conn.sent[-1].ptype, conn.sent[-1].data))
        self.assertEqual({}, self.worker.functions)

    def test_set_functions_sends_only_differences(self):
        conn = self.add()
        self.worker.setFunctions([gear.FunctionRecord('a'),
                                  gear.FunctionRecord('b')])
        del conn.sent[:]
        self.worker.setFunctions([gear.FunctionRecord('b'),
                                  gear.FunctionRecord('c', 500)])
        self.assertEqual([(constants.CANT_DO, b'a'),
                          (constants.CAN_DO_TIMEOUT, b'c\x00500')],
                         [(p.ptype, p.data) for p in conn.sent])
        self.assertEqual({b'b', b'c'}, set(self.worker.functions))
        self.assertNotIn(constants.RESET_ABILITIES, conn.sent_types())

    def test_set_functions_validates(self):
        self.assertRaises(gear.InvalidDataError, self.worker.setFunctions,
                          ['a'])

    def test_cant_do_is_sent_while_a_job_runs(self):
        conn = self.add()
        self.worker.registerFunction('fn')
        self.worker.registerFunction('other')
        waiter = self.start_getjob()
        wait_for(lambda: self.grabs(conn) == 1)
        self.assign(conn)
        wait_for(lambda: 'job' in waiter)
        job = waiter['job']
        self.worker.unRegisterFunction('fn')
        self.assertEqual(constants.CANT_DO, conn.sent_types()[-1])
        # The connection keeps grabbing for the other function.
        self.start_getjob()
        wait_for(lambda: self.grabs(conn) == 2)
        # The running job still reports, and no second CANT_DO follows.
        job.sendWorkComplete(b'done')
        self.assertEqual(constants.WORK_COMPLETE, conn.sent_types()[-1])
        self.assertEqual(1, conn.sent_types().count(constants.CANT_DO))

    def test_reregister_while_a_job_runs(self):
        conn = self.add()
        self.worker.registerFunction('fn')
        waiter = self.start_getjob()
        wait_for(lambda: self.grabs(conn) == 1)
        self.assign(conn)
        wait_for(lambda: 'job' in waiter)
        self.worker.unRegisterFunction('fn')
        self.worker.registerFunction('fn')
        waiter['job'].sendWorkComplete()
        self.assertEqual([constants.CANT_DO, constants.CAN_DO,
                          constants.WORK_COMPLETE],
                         [t for t in conn.sent_types()
                          if t in (constants.CANT_DO, constants.CAN_DO,
                                   constants.WORK_COMPLETE)][-3:])


class TestStateMachine(WorkerTestCase):

    def test_single_waiter_grabs_on_one_server_at_a_time(self):
        a, b = self.add('a'), self.add('b')
        self.assertEqual(('IDLE', 'IDLE'), (a.state, b.state))
        waiter = self.start_getjob()
        wait_for(lambda: self.grabs(a) + self.grabs(b) == 1)
        first, second = (a, b) if self.grabs(a) else (b, a)
        self.assertEqual('GRAB_WAIT', first.state)
        self.assertEqual('IDLE', second.state)
        # NO_JOB: sleep there, and try the other server.
        self.worker.handlePacket(res(constants.NO_JOB, b'', first))
        self.assertEqual('SLEEP', first.state)
        self.assertEqual(constants.PRE_SLEEP, first.sent[-1].ptype)
        self.assertEqual('GRAB_WAIT', second.state)
        self.worker.handlePacket(res(constants.NO_JOB, b'', second))
        self.assertEqual(('SLEEP', 'SLEEP'), (first.state, second.state))
        # A NOOP wakes one up and it grabs.
        self.worker.handlePacket(res(constants.NOOP, b'', second))
        self.assertEqual('GRAB_WAIT', second.state)
        self.assign(second, handle=b'H:b:1')
        wait_for(lambda: 'job' in waiter)
        self.assertEqual(b'H:b:1', waiter['job'].handle)
        self.assertIs(second, waiter['job'].connection)
        self.assertEqual(b'u', waiter['job'].unique)
        self.threads[-1].join(10)
        self.assertEqual(0, self.worker.waiting_for_jobs)
        # Nobody waits any more: parked connections become IDLE.
        self.assertEqual(('IDLE', 'IDLE'), (first.state, second.state))
        self.assertEqual(1, self.grabs(first))

    def test_noop_without_demand_marks_awake(self):
        a, b = self.add('a'), self.add('b')
        waiter = self.start_getjob()
        wait_for(lambda: self.grabs(a) + self.grabs(b) == 1)
        first, second = (a, b) if self.grabs(a) else (b, a)
        self.worker.handlePacket(res(constants.NO_JOB, b'', first))
        # first sleeps while second's grab is in flight; a NOOP on first
        # cannot be served by another grab (one waiter only).
        self.worker.handlePacket(res(constants.NOOP, b'', first))
        self.assertEqual('AWAKE', first.state)
        self.assertEqual(1, self.grabs(first))
        self.worker.handlePacket(res(constants.NO_JOB, b'', second))
        # The awake server is asked first.
        self.assertEqual('GRAB_WAIT', first.state)
        self.assertEqual(2, self.grabs(first))
        self.assign(first)
        wait_for(lambda: 'job' in waiter)

    def test_many_waiters_grab_on_every_server(self):
        conns = [self.add(name) for name in 'abc']
        waiters = [self.start_getjob() for _ in range(5)]
        wait_for(lambda: all(c.state == 'GRAB_WAIT' for c in conns))
        self.assertEqual([1, 1, 1], [self.grabs(c) for c in conns])
        for i, conn in enumerate(conns):
            self.assign(conn, handle=b'H:%d' % i)
        # Each assignment frees its connection to grab again.
        wait_for(lambda: sum(self.grabs(c) for c in conns) == 5)
        wait_for(lambda: sum('job' in w for w in waiters) == 3)

    def test_assignment_without_unique(self):
        conn = self.add()
        waiter = self.start_getjob()
        wait_for(lambda: self.grabs(conn) == 1)
        self.assign(conn, unique=b'')
        wait_for(lambda: 'job' in waiter)
        self.assertIsNone(waiter['job'].unique)

    def test_text_worker_jobs(self):
        worker = gear.TextWorker('text')
        self.addCleanup(worker.shutdown)
        conn = RecordingConnection()
        job = worker.handleJobAssignUnique(res(
            constants.JOB_ASSIGN_UNIQ, b'H:1\x00fn\x00u\x00args', conn))
        self.assertIsInstance(job, gear.TextWorkerJob)
        self.assertEqual('args', job.arguments)
        self.assertIs(job, worker.getJob(timeout=1))

    def test_get_job_timeout(self):
        self.add()
        self.assertRaises(gear.TimeoutError, self.worker.getJob, timeout=0.05)
        self.assertEqual(0, self.worker.waiting_for_jobs)

    def test_stop_waiting_for_jobs(self):
        conn = self.add()
        waiters = [self.start_getjob(timeout=None) for _ in range(2)]
        wait_for(lambda: self.worker.waiting_for_jobs == 2)
        wait_for(lambda: conn.state == 'GRAB_WAIT')

        def answer():
            wait_for(lambda: all('error' in w for w in waiters))
            self.worker.handlePacket(res(constants.NO_JOB, b'', conn))
        thread = threading.Thread(target=answer)
        thread.start()
        self.worker.stopWaitingForJobs()
        thread.join(10)
        for waiter in waiters:
            self.assertIsInstance(waiter['error'], gear.InterruptedError)
        self.assertNotEqual('GRAB_WAIT', conn.state)
        # Later callers wait normally.
        self.assertRaises(gear.TimeoutError, self.worker.getJob, timeout=0.01)

    def test_shutdown_interrupts(self):
        worker = gear.Worker('w2')
        result = {}

        def run():
            try:
                worker.getJob()
            except Exception as e:
                result['error'] = e
        thread = threading.Thread(target=run)
        thread.start()
        wait_for(lambda: worker.waiting_for_jobs == 1)
        worker.shutdown()
        thread.join(10)
        self.assertIsInstance(result['error'], gear.InterruptedError)
        self.assertRaises(gear.InterruptedError, worker.getJob)

    def test_error_is_logged_and_connection_kept(self):
        conn = self.add()
        self.worker.handlePacket(res(
            constants.ERROR, b'JOB_NOT_FOUND\x00Job given in work result not'
            b' found', conn))
        self.assertEqual([conn], self.worker.active_connections)
        self.assertTrue(conn.connected)

    def test_lost_connection_grabs_elsewhere(self):
        a, b = self.add('a'), self.add('b')
        waiter = self.start_getjob()
        wait_for(lambda: self.grabs(a) + self.grabs(b) == 1)
        first, second = (a, b) if self.grabs(a) else (b, a)
        self.worker._lostConnection(first)
        self.assertEqual('GRAB_WAIT', second.state)
        self.assign(second)
        wait_for(lambda: 'job' in waiter)

    def test_register_function_wakes_sleepers(self):
        conn = self.add()
        self.start_getjob()
        wait_for(lambda: self.grabs(conn) == 1)
        self.worker.handlePacket(res(constants.NO_JOB, b'', conn))
        self.assertEqual('SLEEP', conn.state)
        self.worker.registerFunction('new')
        self.assertEqual('GRAB_WAIT', conn.state)
        self.assertEqual(2, self.grabs(conn))
        self.assign(conn)
