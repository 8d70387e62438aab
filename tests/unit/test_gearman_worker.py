"""GearmanWorker job handling, driven with gear WorkerJobs on a fake
connection that records the packets sent."""

import pickle

import testtools

import gear
import gear.gearman as gearman
from gear import constants
from tests.util import PickleDataEncoder


class RecordingConnection(object):

    def __init__(self, fail=False):
        self.sent = []
        self.fail = fail

    def sendPacket(self, packet):
        if self.fail:
            raise gear.ConnectionError('gone')
        self.sent.append((constants.types[packet.ptype], bytes(packet.data)))


def assigned(name=b'task', data=b'data', unique=b'u1', handle=b'H:t:1',
             connection=None):
    job = gear.WorkerJob(handle, name, data, unique)
    job.connection = connection or RecordingConnection()
    return job


class TestRegistration(testtools.TestCase):

    def test_register_and_unregister(self):
        worker = gearman.GearmanWorker(['127.0.0.1:4730'])
        cb = lambda w, j: None  # noqa: E731
        self.assertEqual('t', worker.register_task('t', cb))
        self.assertEqual({'t': cb}, worker.worker_abilities)
        self.assertEqual('t', worker.unregister_task('t'))
        self.assertEqual({}, worker.worker_abilities)
        self.assertEqual('me', worker.set_client_id('me'))
        self.assertEqual('me', worker.worker_client_id)

    def test_no_servers(self):
        worker = gearman.GearmanWorker()
        self.assertRaises(gearman.ServerUnavailable, worker.work, 0.01)


class TestJobs(testtools.TestCase):

    def run_job(self, worker, gear_job):
        worker._run(gear_job)
        return gear_job.connection.sent

    def test_result_is_sent(self):
        worker = gearman.GearmanWorker()
        seen = []

        def cb(gearman_worker, gearman_job):
            seen.append((gearman_worker, gearman_job.task, gearman_job.handle,
                         gearman_job.unique, gearman_job.data))
            gearman_worker.send_job_data(gearman_job, b'part')
            gearman_worker.send_job_warning(gearman_job, 'careful')
            gearman_worker.send_job_status(gearman_job, 1, 2)
            return gearman_job.data.upper()
        worker.register_task('task', cb)
        sent = self.run_job(worker, assigned())
        self.assertEqual([(worker, 'task', 'H:t:1', 'u1', b'data')], seen)
        self.assertEqual([('WORK_DATA', b'H:t:1\x00part'),
                          ('WORK_WARNING', b'H:t:1\x00careful'),
                          ('WORK_STATUS', b'H:t:1\x001\x002'),
                          ('WORK_COMPLETE', b'H:t:1\x00DATA')], sent)
        self.assertFalse(worker.has_job_lock())

    def test_task_keeps_its_registered_type(self):
        worker = gearman.GearmanWorker()
        tasks = []
        worker.register_task(b'btask', lambda w, j: tasks.append(j.task))
        self.run_job(worker, assigned(name=b'btask'))
        self.assertEqual([b'btask'], tasks)

    def test_none_result_is_empty_data(self):
        worker = gearman.GearmanWorker()
        worker.register_task('task', lambda w, j: None)
        self.assertEqual([('WORK_COMPLETE', b'H:t:1\x00')],
                         self.run_job(worker, assigned()))

    def test_missing_unique_is_empty_string(self):
        worker = gearman.GearmanWorker()
        uniques = []
        worker.register_task('task', lambda w, j: uniques.append(j.unique))
        self.run_job(worker, assigned(unique=None))
        self.assertEqual([''], uniques)

    def test_callback_exception_sends_fail(self):
        worker = gearman.GearmanWorker()

        def cb(w, j):
            raise RuntimeError('boom')
        worker.register_task('task', cb)
        self.assertEqual([('WORK_FAIL', b'H:t:1')],
                         self.run_job(worker, assigned()))
        self.assertFalse(worker.has_job_lock())

    def test_send_job_exception_sends_only_work_exception(self):
        worker = gearman.GearmanWorker()

        def cb(w, j):
            w.send_job_exception(j, 'it broke')
        worker.register_task('task', cb)
        # The callback's return value (None) would be a second final
        # packet; it is not sent.
        self.assertEqual([('WORK_EXCEPTION', b'H:t:1\x00it broke')],
                         self.run_job(worker, assigned()))

    def test_exception_after_explicit_failure_sends_nothing_more(self):
        worker = gearman.GearmanWorker()

        def cb(w, j):
            w.send_job_failure(j)
            raise RuntimeError('and then it raised')
        worker.register_task('task', cb)
        self.assertEqual([('WORK_FAIL', b'H:t:1')],
                         self.run_job(worker, assigned()))
        self.assertEqual(set(), worker._finished)

    def test_encoder_both_ways(self):
        class PickleWorker(gearman.GearmanWorker):
            data_encoder = PickleDataEncoder
        worker = PickleWorker()
        worker.register_task('task', lambda w, j: {'got': j.data})
        sent = self.run_job(worker, assigned(data=pickle.dumps([1, 2])))
        [(ptype, payload)] = sent
        self.assertEqual('WORK_COMPLETE', ptype)
        handle, _, data = payload.partition(b'\x00')
        self.assertEqual({'got': [1, 2]}, pickle.loads(data))

    def test_undecodable_data_fails_the_job(self):
        class PickleWorker(gearman.GearmanWorker):
            data_encoder = PickleDataEncoder
        worker = PickleWorker()
        calls = []
        worker.register_task('task', lambda w, j: calls.append(j))
        self.assertEqual([('WORK_FAIL', b'H:t:1')],
                         self.run_job(worker, assigned(data=b'garbage')))
        self.assertEqual([], calls)

    def test_status_needs_numbers(self):
        worker = gearman.GearmanWorker()
        job = gearman.GearmanJob(RecordingConnection(), 'H:1', 't', 'u', b'')
        self.assertRaises(gearman.GearmanError, worker.send_job_status, job,
                          '1', 2)
        worker.send_job_status(job, 1.5, 3)
        self.assertEqual([('WORK_STATUS', b'H:1\x001.5\x003')],
                         job.connection.sent)

    def test_hand_made_job_can_be_reported_on(self):
        worker = gearman.GearmanWorker()
        job = gearman.GearmanJob(RecordingConnection(), 'H:9', 't', 'u', b'')
        worker.send_job_complete(job, b'done')
        self.assertEqual([('WORK_COMPLETE', b'H:9\x00done')],
                         job.connection.sent)

    def test_send_failure_goes_to_handle_error(self):
        errors = []

        class W(gearman.GearmanWorker):
            def handle_error(self, connection):
                errors.append(connection)
        worker = W()
        worker.register_task('task', lambda w, j: b'x')
        conn = RecordingConnection(fail=True)
        worker._run(assigned(connection=conn))
        self.assertEqual([conn], errors)

    def test_create_job_is_used(self):
        made = []

        class W(gearman.GearmanWorker):
            def create_job(self, command_handler, job_handle, task, unique,
                           data):
                job = super(W, self).create_job(command_handler, job_handle,
                                                task, unique, data)
                made.append(job)
                return job
        worker = W()
        worker.register_task('task', lambda w, j: b'')
        gear_job = assigned()
        worker._run(gear_job)
        [job] = made
        self.assertIs(gear_job.connection, job.connection)
        self.assertIsInstance(job, gearman.GearmanJob)


class TestJobLock(testtools.TestCase):

    def test_lock_rules(self):
        worker = gearman.GearmanWorker()
        a, b = object(), object()
        self.assertFalse(worker.has_job_lock())
        self.assertTrue(worker.set_job_lock(a, lock=True))
        self.assertTrue(worker.has_job_lock())
        self.assertTrue(worker.check_job_lock(a))
        self.assertFalse(worker.check_job_lock(b))
        self.assertFalse(worker.set_job_lock(b, lock=True))
        self.assertFalse(worker.set_job_lock(b, lock=False))
        self.assertTrue(worker.set_job_lock(a, lock=False))
        self.assertFalse(worker.has_job_lock())
