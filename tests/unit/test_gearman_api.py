"""Names, constants, errors and job records of gear.gearman."""

import collections

import testtools

import gear
import gear.gearman as gearman
from gear.gearman import constants, errors, job


class TestExports(testtools.TestCase):

    def test_constants(self):
        self.assertEqual(4730, gearman.DEFAULT_GEARMAN_PORT)
        self.assertIsNone(gearman.PRIORITY_NONE)
        self.assertEqual('LOW', gearman.PRIORITY_LOW)
        self.assertEqual('HIGH', gearman.PRIORITY_HIGH)
        self.assertEqual(
            ('UNKNOWN', 'PENDING', 'CREATED', 'FAILED', 'COMPLETE'),
            (gearman.JOB_UNKNOWN, gearman.JOB_PENDING, gearman.JOB_CREATED,
             gearman.JOB_FAILED, gearman.JOB_COMPLETE))

    def test_version_is_gears(self):
        self.assertEqual(gear.version.__version__, gearman.__version__)
        self.assertNotEqual('2.0.2', gearman.__version__)

    def test_submodules_as_attributes(self):
        self.assertIs(errors, gearman.errors)
        self.assertIs(constants, gearman.constants)
        self.assertIs(job, gearman.job)
        self.assertIs(gearman.errors.ServerUnavailable,
                      gearman.ServerUnavailable)
        self.assertEqual(gearman.JOB_UNKNOWN, gearman.job.JOB_UNKNOWN)
        self.assertEqual(gearman.PRIORITY_HIGH,
                         gearman.constants.PRIORITY_HIGH)

    def test_python_gearman_module_names(self):
        from gear.gearman.admin_client import GearmanAdminClient
        from gear.gearman.client import GearmanClient
        from gear.gearman.worker import GearmanWorker
        self.assertIs(gearman.GearmanAdminClient, GearmanAdminClient)
        self.assertIs(gearman.GearmanClient, GearmanClient)
        self.assertIs(gearman.GearmanWorker, GearmanWorker)

    def test_all_is_complete(self):
        for name in gearman.__all__:
            self.assertTrue(hasattr(gearman, name), name)

    def test_error_hierarchy(self):
        for name in ('ConnectionError', 'ServerUnavailable', 'ProtocolError',
                     'UnknownCommandError', 'ExceededConnectionAttempts',
                     'InvalidClientState', 'InvalidWorkerState',
                     'InvalidAdminClientState', 'ServerError'):
            cls = getattr(gearman, name)
            self.assertTrue(issubclass(cls, gearman.GearmanError), name)
        self.assertTrue(issubclass(gearman.GearmanError, Exception))
        # Separate from gear's own hierarchy, as python-gearman's was.
        self.assertFalse(issubclass(gearman.GearmanError, gear.GearmanError))

    def test_server_error(self):
        e = gearman.ServerError('QUEUE_ERROR', 'Job queue is full')
        self.assertEqual(('QUEUE_ERROR', 'Job queue is full'),
                         (e.code, e.text))
        self.assertIn('QUEUE_ERROR', str(e))
        self.assertEqual('X', str(gearman.ServerError('X')))

    def test_admin_host_list_error_is_both(self):
        self.assertTrue(issubclass(errors.AdminHostListError, ValueError))
        self.assertTrue(issubclass(errors.AdminHostListError,
                                   gearman.GearmanError))


class TestGearmanJob(testtools.TestCase):

    def test_attributes_and_dict(self):
        j = gearman.GearmanJob('conn', 'H:1', 'task', 'u', b'data')
        self.assertEqual(('conn', 'H:1', 'task', 'u', b'data'),
                         (j.connection, j.handle, j.task, j.unique, j.data))
        self.assertEqual(dict(task='task', job_handle='H:1', unique='u',
                              data=b'data'), j.to_dict())
        self.assertIn('H:1', repr(j))


class TestGearmanJobRequest(testtools.TestCase):

    def make(self, **kw):
        return gearman.GearmanJobRequest(
            gearman.GearmanJob(None, None, 't', 'u1', b'd'), **kw)

    def test_initial_state(self):
        r = self.make()
        self.assertIs(r.gearman_job, r.job)
        self.assertEqual('u1', r.unique)
        self.assertIsNone(r.priority)
        self.assertFalse(r.background)
        self.assertEqual((0, 1), (r.connection_attempts,
                                  r.max_connection_attempts))
        self.assertIsNone(r.result)
        self.assertIsNone(r.exception)
        self.assertIsNone(r.error)
        self.assertEqual(collections.deque(), r.data_updates)
        self.assertEqual(collections.deque(), r.warning_updates)
        self.assertEqual({}, r.status)
        self.assertEqual(gearman.JOB_UNKNOWN, r.state)
        self.assertFalse(r.timed_out)
        self.assertFalse(r.complete)

    def test_constructor_arguments(self):
        r = self.make(initial_priority=gearman.PRIORITY_LOW, background=True,
                      max_attempts=3)
        self.assertEqual(('LOW', True, 3), (r.priority, r.background,
                                            r.max_connection_attempts))

    def test_complete_foreground(self):
        r = self.make()
        for state, done in ((gearman.JOB_UNKNOWN, False),
                            (gearman.JOB_PENDING, False),
                            (gearman.JOB_CREATED, False),
                            (gearman.JOB_FAILED, True),
                            (gearman.JOB_COMPLETE, True)):
            r.state = state
            self.assertEqual(done, r.complete, state)

    def test_complete_background(self):
        r = self.make(background=True)
        for state, done in ((gearman.JOB_UNKNOWN, False),
                            (gearman.JOB_PENDING, False),
                            (gearman.JOB_CREATED, True),
                            (gearman.JOB_FAILED, True)):
            r.state = state
            self.assertEqual(done, r.complete, state)

    def test_deprecated_status_views(self):
        r = self.make()
        self.assertEqual(collections.deque(), r.status_updates)
        r.status = dict(numerator=1, denominator=4)
        self.assertEqual(collections.deque([(1, 4)]), r.status_updates)
        self.assertIs(r.status, r.server_status)

    def test_reset(self):
        r = self.make()
        r.state = gearman.JOB_COMPLETE
        r.result = b'x'
        r.timed_out = True
        r.error = ('E', 'e')
        r.connection_attempts = 1
        r.job.handle = 'H:1'
        r.job.connection = object()
        r.data_updates.append(b'd')
        r.reset()
        self.assertEqual(gearman.JOB_UNKNOWN, r.state)
        self.assertEqual((None, False, None, 0, None, None),
                         (r.result, r.timed_out, r.error,
                          r.connection_attempts, r.job.handle,
                          r.job.connection))
        self.assertEqual(collections.deque(), r.data_updates)
        self.assertIn('UNKNOWN', repr(r))
