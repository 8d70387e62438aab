"""State transitions of GearmanJobRequest as replies arrive (no sockets).
"""

import pickle
import threading

import testtools

import gear.gearman as gearman
from tests.util import PickleDataEncoder
from gear.gearman.tracking import (
    Deadline, RequestTracker, name_text, status_number)


def request(background=False):
    return gearman.GearmanJobRequest(
        gearman.GearmanJob(None, None, 'task', 'u', b'd'),
        background=background)


class TestHelpers(testtools.TestCase):

    def test_status_number(self):
        self.assertEqual(3, status_number(b'3'))
        self.assertEqual(0, status_number(b''))
        self.assertEqual(0, status_number(None))
        self.assertEqual(0, status_number(b'x'))

    def test_name_text(self):
        self.assertEqual('H:a:1', name_text(b'H:a:1'))
        self.assertIsNone(name_text(None))
        self.assertEqual('\udcff', name_text(b'\xff'))

    def test_wire_text_decodes_like_the_bytes_it_came_from(self):
        handle = name_text(b'H:a:1')
        self.assertIsInstance(handle, str)
        self.assertEqual('H:a:1', handle.decode())
        self.assertIs(str, type(handle.decode()))
        self.assertEqual('H:a:1', handle.decode('ascii'))
        odd = name_text(b'u\xff')
        self.assertEqual('u\xff', odd.decode('latin-1'))
        self.assertRaises(UnicodeDecodeError, odd.decode)
        self.assertEqual('u\ufffd', odd.decode('utf-8', 'replace'))

    def test_deadline(self):
        self.assertIsNone(Deadline(None).remaining())
        self.assertFalse(Deadline(None).expired())
        self.assertEqual(0.0, Deadline(0).remaining())
        self.assertTrue(Deadline(0).expired())
        self.assertTrue(Deadline(-1).expired())
        self.assertGreater(Deadline(100).remaining(), 50)


class TestTransitions(testtools.TestCase):

    def setUp(self):
        super(TestTransitions, self).setUp()
        self.tracker = RequestTracker(gearman.NoopEncoder)

    def test_submit_create_complete(self):
        r = request()
        self.tracker.submitting(r)
        self.assertEqual(gearman.JOB_PENDING, r.state)
        self.tracker.created(r, b'H:x:1', 'conn')
        self.assertEqual((gearman.JOB_CREATED, 'H:x:1', 'conn'),
                         (r.state, r.job.handle, r.job.connection))
        self.tracker.work_data(r, b'd1')
        self.tracker.work_warning(r, b'w1')
        self.tracker.work_status(r, b'1', b'2')
        self.assertEqual([b'd1'], list(r.data_updates))
        self.assertEqual([b'w1'], list(r.warning_updates))
        self.assertEqual((True, True, 1, 2, 'H:x:1'),
                         (r.status['known'], r.status['running'],
                          r.status['numerator'], r.status['denominator'],
                          r.status['handle']))
        self.assertFalse(r.complete)
        self.tracker.work_complete(r, b'result')
        self.assertEqual((gearman.JOB_COMPLETE, b'result'),
                         (r.state, r.result))
        self.assertTrue(r.complete)

    def test_late_created_does_not_undo_completion(self):
        r = request()
        self.tracker.submitting(r)
        self.tracker.work_complete(r, b'')
        self.tracker.created(r, b'H:1', None)
        self.assertEqual(gearman.JOB_COMPLETE, r.state)
        self.assertEqual(b'', r.result)

    def test_empty_status_fields_are_zero(self):
        r = request()
        self.tracker.work_status(r, b'', b'')
        self.assertEqual((0, 0), (r.status['numerator'],
                                  r.status['denominator']))
        self.tracker.status_res(r, b'H:1', False, False, b'', None)
        self.assertEqual((False, False, 0, 0),
                         (r.status['known'], r.status['running'],
                          r.status['numerator'], r.status['denominator']))

    def test_status_res_keeps_last_time_received(self):
        r = request()
        r.status['last_time_received'] = None
        self.tracker.status_res(r, b'H:1', True, False, b'3', b'4')
        self.assertIn('last_time_received', r.status)
        self.assertIsNotNone(r.status['time_received'])
        self.assertEqual((True, False, 3, 4),
                         (r.status['known'], r.status['running'],
                          r.status['numerator'], r.status['denominator']))

    def test_exception_is_terminal_and_fail_after_it_ignored(self):
        r = request()
        self.tracker.submitting(r)
        self.tracker.created(r, b'H:1', None)
        self.tracker.work_exception(r, b'boom')
        self.assertEqual((gearman.JOB_FAILED, b'boom'), (r.state,
                                                         r.exception))
        self.assertTrue(r.complete)
        self.tracker.work_fail(r)
        self.tracker.work_complete(r, b'late')
        self.assertEqual((gearman.JOB_FAILED, None), (r.state, r.result))

    def test_fail(self):
        r = request()
        self.tracker.submitting(r)
        self.tracker.created(r, b'H:1', None)
        self.tracker.work_fail(r)
        self.assertEqual(gearman.JOB_FAILED, r.state)
        self.assertIsNone(r.exception)

    def test_refused(self):
        r = request(background=True)
        self.tracker.submitting(r)
        self.tracker.refused(r, b'QUEUE_ERROR', b'Job queue is full')
        self.assertEqual(gearman.JOB_FAILED, r.state)
        self.assertEqual(('QUEUE_ERROR', 'Job queue is full'), r.error)
        self.assertTrue(r.complete)
        # A new submission forgets the old refusal.
        self.tracker.submitting(r)
        self.assertIsNone(r.error)

    def test_abandoned(self):
        r = request()
        self.tracker.submitting(r)
        self.tracker.abandoned(r, timed_out=True)
        self.assertEqual((gearman.JOB_UNKNOWN, True), (r.state, r.timed_out))
        self.tracker.submitting(r)
        self.assertFalse(r.timed_out)

    def test_lost_foreground_becomes_unknown(self):
        r = request()
        self.tracker.submitting(r)
        self.tracker.created(r, b'H:1', None)
        self.tracker.lost(r)
        self.assertEqual(gearman.JOB_UNKNOWN, r.state)

    def test_lost_after_the_end_changes_nothing(self):
        done = request()
        self.tracker.work_complete(done, b'x')
        self.tracker.lost(done)
        self.assertEqual(gearman.JOB_COMPLETE, done.state)
        bg = request(background=True)
        self.tracker.submitting(bg)
        self.tracker.created(bg, b'H:2', None)
        self.tracker.lost(bg)
        self.assertEqual(gearman.JOB_CREATED, bg.state)

    def test_encoder_applies_to_every_data_field(self):
        tracker = RequestTracker(PickleDataEncoder)
        r = request()
        tracker.work_data(r, pickle.dumps({'d': 1}))
        tracker.work_warning(r, pickle.dumps(['w']))
        tracker.work_complete(r, pickle.dumps(('c',)))
        self.assertEqual([{'d': 1}], list(r.data_updates))
        self.assertEqual([['w']], list(r.warning_updates))
        self.assertEqual(('c',), r.result)
        r2 = request()
        tracker.work_exception(r2, pickle.dumps(ValueError('x').args))
        self.assertEqual(('x',), r2.exception)

    def test_undecodable_payload_is_kept_raw(self):
        tracker = RequestTracker(PickleDataEncoder)
        r = request()
        tracker.work_complete(r, b'not a pickle')
        self.assertEqual((gearman.JOB_COMPLETE, b'not a pickle'),
                         (r.state, r.result))

    def test_wait_for_wakes_on_change(self):
        r = request()
        self.tracker.submitting(r)
        self.tracker.created(r, b'H:1', None)
        started = threading.Event()
        results = []

        def waiter():
            started.set()
            results.append(self.tracker.wait_for(lambda: r.complete,
                                                 Deadline(30)))
        t = threading.Thread(target=waiter)
        t.start()
        self.assertTrue(started.wait(10))
        self.tracker.work_complete(r, b'x')
        t.join(10)
        self.assertFalse(t.is_alive())
        self.assertEqual([True], results)

    def test_wait_for_times_out(self):
        r = request()
        self.assertFalse(self.tracker.wait_for(lambda: r.complete,
                                               Deadline(0.01)))
        self.assertTrue(self.tracker.wait_for(lambda: True, Deadline(0)))
