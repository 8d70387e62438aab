"""GearmanClient request building and submission logic, without sockets.

The per-server gear Clients are replaced by fakes whose submitJob()
succeeds, is refused, or loses its link, so that the retry accounting and
state changes can be checked exactly.
"""

import string

import testtools

import gear
import gear.gearman as gearman


class FakeServerClient(object):
    """Stands in for one server's gear Client."""

    def __init__(self, address, outcomes):
        self.address = address
        self.outcomes = list(outcomes)
        self.submitted = []

    def submitJob(self, job, background=False, precedence=0, timeout=30):
        self.submitted.append((job, background, precedence, timeout))
        outcome = self.outcomes.pop(0)
        if outcome == 'ok':
            job.handle = b'H:fake:%d' % len(self.submitted)
            return
        if outcome == 'refused':
            job.refusal = (b'QUEUE_ERROR', b'Job queue is full')
        if outcome == 'unconnected':
            raise gear.NoConnectedServersError()
        raise gear.GearmanError('Unable to submit job')


class FakeClient(gearman.GearmanClient):

    def __init__(self, outcomes, **kw):
        super(FakeClient, self).__init__(['127.0.0.1:1'], **kw)
        self.fake = FakeServerClient(self.host_list[0], outcomes)

    def _choose_client(self, request, deadline):
        return self.fake


class TestRequests(testtools.TestCase):

    def test_generated_uniques(self):
        client = gearman.GearmanClient()
        r1 = client._create_request_from_dictionary(dict(task='t', data='d'))
        r2 = client._create_request_from_dictionary(dict(task='t', data='d'))
        self.assertEqual(32, len(r1.job.unique))
        self.assertTrue(set(r1.job.unique) <= set(string.hexdigits))
        self.assertNotEqual(r1.job.unique, r2.job.unique)
        short = gearman.GearmanClient(random_unique_bytes=4)
        r3 = short._create_request_from_dictionary(dict(task='t', data='d'))
        self.assertEqual(8, len(r3.job.unique))

    def test_given_unique_is_kept(self):
        client = gearman.GearmanClient()
        r = client._create_request_from_dictionary(
            dict(task='t', data='d', unique='mine',
                 priority=gearman.PRIORITY_HIGH), background=True,
            max_retries=2)
        self.assertEqual(('t', 'd', 'mine', 'HIGH', True, 3),
                         (r.job.task, r.job.data, r.job.unique, r.priority,
                          r.background, r.max_connection_attempts))

    def test_job_and_request_classes_are_honoured(self):
        class MyJob(gearman.GearmanJob):
            pass

        class MyRequest(gearman.GearmanJobRequest):
            pass

        class MyClient(FakeClient):
            job_class = MyJob
            job_request_class = MyRequest

        client = MyClient(['ok'])
        r = client.submit_job('t', b'd', wait_until_complete=False)
        self.assertIsInstance(r, MyRequest)
        self.assertIsInstance(r.job, MyJob)

    def test_bad_priority(self):
        client = gearman.GearmanClient()
        self.assertRaises(gearman.GearmanError, client.submit_job, 't', b'd',
                          priority='URGENT')

    def test_many_needs_a_collection(self):
        client = gearman.GearmanClient()
        self.assertRaises(TypeError, client.submit_multiple_jobs,
                          dict(task='t', data='d'))
        self.assertRaises(TypeError, client.submit_multiple_requests,
                          iter([]))

    def test_no_servers(self):
        client = gearman.GearmanClient()
        self.assertRaises(gearman.ServerUnavailable, client.submit_job,
                          't', b'd')

    def test_encoder_failure_reaches_caller(self):
        client = FakeClient(['ok'])
        self.assertRaises(TypeError, client.submit_job, 't', 12345)
        self.assertEqual([], client.fake.submitted)


class TestSubmission(testtools.TestCase):

    def test_created(self):
        client = FakeClient(['ok'])
        r = client.submit_job('t', 'data', priority=gearman.PRIORITY_LOW,
                              background=True)
        self.assertEqual(gearman.JOB_CREATED, r.state)
        self.assertTrue(r.complete)
        self.assertEqual('H:fake:1', r.job.handle)
        self.assertEqual(1, r.connection_attempts)
        [(job, background, precedence, timeout)] = client.fake.submitted
        self.assertEqual((b'data', True, gear.PRECEDENCE_LOW, None),
                         (job.arguments, background, precedence, timeout))
        self.assertEqual(r.job.unique.encode('ascii'), job.unique)

    def test_refused_submission_fails_with_error(self):
        client = FakeClient(['refused'])
        r = client.submit_job('t', b'd', poll_timeout=5)
        self.assertEqual(gearman.JOB_FAILED, r.state)
        self.assertEqual(('QUEUE_ERROR', 'Job queue is full'), r.error)
        self.assertFalse(r.timed_out)
        self.assertTrue(r.complete)

    def test_lost_link_uses_up_attempts(self):
        client = FakeClient(['lost', 'lost'])
        e = self.assertRaises(gearman.ExceededConnectionAttempts,
                              client.submit_job, 't', b'd', max_retries=1)
        self.assertIn('2', str(e))
        self.assertEqual(2, len(client.fake.submitted))

    def test_retry_after_lost_link(self):
        client = FakeClient(['lost', 'ok'])
        r = client.submit_job('t', b'd', max_retries=1, background=True)
        self.assertEqual(gearman.JOB_CREATED, r.state)
        self.assertEqual(2, r.connection_attempts)

    def test_link_gone_before_sending_is_no_attempt(self):
        client = FakeClient(['unconnected', 'ok'])
        r = client.submit_job('t', b'd', background=True)
        self.assertEqual(gearman.JOB_CREATED, r.state)
        self.assertEqual(1, r.connection_attempts)

    def test_explicit_resubmission_gets_a_fresh_budget(self):
        client = FakeClient(['ok', 'ok'])
        r = client.submit_job('t', b'd', background=True)
        r.state = gearman.JOB_UNKNOWN     # as after a lost connection
        client.submit_multiple_requests([r], poll_timeout=5)
        self.assertEqual(gearman.JOB_CREATED, r.state)
        self.assertEqual(2, len(client.fake.submitted))

    def test_accepted_requests_are_not_resent(self):
        client = FakeClient(['ok'])
        r = client.submit_job('t', b'd', background=True)
        client.wait_until_jobs_accepted([r], poll_timeout=1)
        self.assertEqual(1, len(client.fake.submitted))

    def test_expired_deadline_marks_timed_out(self):
        client = gearman.GearmanClient(['127.0.0.1:1'])
        r = client.submit_job('t', b'd', poll_timeout=0)
        self.assertEqual((gearman.JOB_UNKNOWN, True), (r.state, r.timed_out))
        client.shutdown()

    def test_foreground_poll_timeout(self):
        client = FakeClient(['ok'])
        r = client.submit_job('t', b'd', poll_timeout=0.05)
        self.assertEqual((gearman.JOB_CREATED, True), (r.state, r.timed_out))
        self.assertFalse(r.complete)

    def test_unknown_requests_do_not_block_completion_wait(self):
        client = gearman.GearmanClient()
        r = client._create_request_from_dictionary(dict(task='t', data='d'))
        client.wait_until_jobs_completed([r])
        self.assertEqual((gearman.JOB_UNKNOWN, False), (r.state, r.timed_out))

    def test_status_of_an_unsent_request_times_out(self):
        client = gearman.GearmanClient()
        r = client._create_request_from_dictionary(dict(task='t', data='d'))
        self.assertIs(r, client.get_job_status(r))
        self.assertTrue(r.timed_out)
        self.assertIsNone(r.status['last_time_received'])
