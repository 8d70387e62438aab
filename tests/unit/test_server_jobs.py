"""The server's job records: compact by default, open to any attribute in
subclasses of the Server."""

import sys

import testtools

import gear
from gear import constants
from gear.server import jobs as jobstates
from gear.server.jobs import CompactServerJob, JobLinks, ServerJob
from gear.server.queue import FunctionQueue


class TestCompactServerJob(testtools.TestCase):

    def test_queued_background_job_has_no_links(self):
        job = CompactServerJob._new(b'H:1', b'fn', b'args', b'u', None,
                                    constants.PRECEDENCE_LOW, True,
                                    FunctionQueue(b'fn'))
        self.assertEqual(b'fn', job.name)
        self.assertIsNone(job._links)
        self.assertFalse(hasattr(job, '__dict__'))
        self.assertIsNone(job.clients)
        self.assertIsNone(job.worker_connection)
        self.assertEqual(0, job.retries)
        self.assertEqual(0, job.when)
        self.assertIsNone(job.numerator)
        self.assertIsNone(job._links)  # reading defaults adds nothing

    def test_unknown_attribute_is_refused(self):
        job = CompactServerJob(b'H:1', b'fn', b'args')
        self.assertRaises(AttributeError, setattr, job, 'waiting', True)

    def test_rare_fields_are_kept_and_deleted(self):
        job = CompactServerJob(b'H:1', b'fn', b'args')
        job.retries += 1
        job.when = 5
        job.numerator = b'1'
        self.assertEqual((1, 5, b'1'), (job.retries, job.when,
                                        job.numerator))
        del job.numerator
        del job.numerator  # deleting an unset field is harmless
        self.assertIsNone(job.numerator)
        job.data.append(b'x')
        self.assertEqual([b'x'], list(job.binary_data))

    def test_state_precedence_and_background_share_one_integer(self):
        job = CompactServerJob._new(b'H:1', b'fn', b'a', None, None,
                                    constants.PRECEDENCE_HIGH, False)
        job._state = (job._state & jobstates.FLAGS) | jobstates.RUNNING
        self.assertEqual('RUNNING', job.state)
        self.assertTrue(job.running)
        self.assertEqual(constants.PRECEDENCE_HIGH, job.precedence)
        self.assertFalse(job.background)
        job.background = True
        job.precedence = constants.PRECEDENCE_LOW
        self.assertEqual('RUNNING', job.state)
        self.assertEqual(constants.PRECEDENCE_LOW, job.precedence)
        self.assertTrue(job.background)

    def test_connections_live_in_links(self):
        job = CompactServerJob(b'H:1', b'fn', b'args', client_connection='c')
        self.assertEqual(['c'], job.clients)
        self.assertEqual('c', job.client_connection)
        job.worker_connection = 'w'
        self.assertIsInstance(job._links, JobLinks)
        self.assertEqual('w', job._links.worker)
        self.assertFalse(job.background)

    def test_is_a_server_job_to_gear_code(self):
        self.assertIsInstance(CompactServerJob(b'H:1', b'f', b'a'),
                              ServerJob)
        self.assertIsInstance(ServerJob(b'H:1', b'f', b'a'),
                              CompactServerJob)
        self.assertIs(ServerJob, gear.ServerJob)

    def test_compact_job_is_smaller(self):
        compact = CompactServerJob._new(b'H:1', b'f', b'a', None, None,
                                        constants.PRECEDENCE_NORMAL, True)
        full = ServerJob._new(b'H:1', b'f', b'a', None, None,
                              constants.PRECEDENCE_NORMAL, True)
        self.assertLess(sys.getsizeof(compact), sys.getsizeof(full))


class TestServerJob(testtools.TestCase):

    def test_takes_attributes_of_any_name(self):
        job = ServerJob(b'H:1', b'fn', b'args')
        job.waiting = True
        self.assertTrue(job.waiting)
        job.retries = 2
        self.assertEqual(2, job.retries)


class TestJobClassOfTheServer(testtools.TestCase):

    def make(self, cls):
        server = cls(0, host='127.0.0.1')
        self.addCleanup(server.shutdown)
        return server

    def test_plain_server_uses_compact_jobs(self):
        self.assertIs(CompactServerJob, self.make(gear.Server).core.job_class)

    def test_subclass_gets_jobs_open_to_any_attribute(self):
        class Custom(gear.Server):
            pass
        self.assertIs(ServerJob, self.make(Custom).core.job_class)

    def test_job_class_can_be_chosen(self):
        class Lean(gear.Server):
            job_class = CompactServerJob
        self.assertIs(CompactServerJob, self.make(Lean).core.job_class)
