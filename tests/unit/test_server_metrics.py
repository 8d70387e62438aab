"""The metrics recorder, snapshots and their exposition, without sockets."""

import types

import testtools

from gear import constants
from gear.cmd import _common as common
from gear.cmd import admin_http
from gear.server import exposition
from gear.server import metrics
from gear.server.jobs import CompactServerJob
from gear.server.queue import JobQueue

PREFIX = b'H:test:'
NORMAL = constants.PRECEDENCE_NORMAL
HIGH = constants.PRECEDENCE_HIGH
LOW = constants.PRECEDENCE_LOW


class Clock(object):
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class Server(object):
    """What metrics.snapshot reads of a server."""

    def __init__(self):
        self.queue = JobQueue(PREFIX)
        self.connection_map = {}
        self.running = True
        self._persist = False

    def submit(self, recorder, name, precedence=NORMAL):
        q = self.queue
        n = q.nextHandleNumber()
        fq = q.function(name)
        job = CompactServerJob._new(PREFIX + b'%d' % n, name, b'x', None,
                                    None, precedence, True, fq)
        q.add(job, fq)
        recorder.submitted(fq, precedence)
        return job

    def start(self, recorder, job):
        recorder.started(job)
        self.queue.detach(job)
        self.queue.start(job, None)


class RecorderTestCase(testtools.TestCase):

    def setUp(self):
        super(RecorderTestCase, self).setUp()
        self.clock = Clock()
        self.server = Server()
        self.recorder = metrics.Recorder(PREFIX, 0, clock=self.clock)

    def tick(self, seconds=0.0):
        # What the server's loop does at the start of a turn.
        self.clock.now += seconds
        recorder = self.recorder
        if len(recorder.ended) != recorder.ends_noted:
            recorder.noteEnds()
        recorder.now = self.clock()
        if self.server.queue.max_handle != recorder.marked:
            recorder.mark(self.server.queue.max_handle)

    def test_wait_comes_from_the_turn_a_job_was_created_in(self):
        self.tick()
        first = self.server.submit(self.recorder, b'fn')
        self.tick(2.0)
        second = self.server.submit(self.recorder, b'fn')
        self.tick(0.4)
        self.assertEqual(100.0, self.recorder.createdAt(first))
        self.assertEqual(102.0, self.recorder.createdAt(second))
        self.server.start(self.recorder, first)
        self.server.start(self.recorder, second)
        self.tick(0.001)
        for job in (first, second):
            self.recorder.finished(job, metrics.COMPLETED)
        self.recorder.flush()
        st = self.recorder.functions[b'fn']
        self.assertEqual(2, st.counts[metrics.COMPLETED])
        self.assertEqual(1, st.wait[metrics.TIME_BOUNDS.index(2.5)])
        self.assertEqual(1, st.wait[metrics.TIME_BOUNDS.index(0.5)])
        self.assertAlmostEqual(2.8, st.wait_sum)

    def test_run_time_and_result_kinds(self):
        self.tick()
        jobs = [self.server.submit(self.recorder, b'fn') for _ in range(3)]
        for job in jobs:
            self.server.start(self.recorder, job)
        self.tick(0.02)
        for job, ptype in zip(jobs, (constants.WORK_COMPLETE,
                                     constants.WORK_FAIL,
                                     constants.WORK_EXCEPTION)):
            self.recorder.finished(job, metrics.RESULT_KINDS[ptype])
        self.recorder.flush()
        st = self.recorder.functions[b'fn']
        for kind in (metrics.COMPLETED, metrics.FAILED, metrics.EXCEPTION):
            self.assertEqual(1, st.counts[kind])
        self.assertEqual(3, st.run[metrics.TIME_BOUNDS.index(0.025)])
        self.assertAlmostEqual(0.06, st.run_sum)
        self.assertEqual(3, sum(st.wait))
        self.assertEqual(3, metrics.done(self.recorder))
        self.assertEqual([], self.recorder.ended)

    def test_ended_jobs_are_counted_by_the_sweep_before_a_capture(self):
        # A finished job is only noted; the sweep that every capture
        # runs first counts it, with the turn time it ended in.
        self.tick()
        job = self.server.submit(self.recorder, b'fn')
        self.server.start(self.recorder, job)
        self.tick(0.02)
        self.recorder.finished(job, metrics.COMPLETED)
        self.tick(5.0)
        st = self.recorder.functions[b'fn']
        self.assertEqual(0, st.counts[metrics.COMPLETED])
        self.assertEqual(1, len(self.recorder.ended))
        self.recorder.sweep()
        self.assertEqual([], self.recorder.ended)
        self.assertEqual(1, st.counts[metrics.COMPLETED])
        self.assertEqual(1, st.run[metrics.TIME_BOUNDS.index(0.025)])
        self.assertAlmostEqual(0.02, st.run_sum)
        self.assertEqual([], self.recorder.ended)

    def test_a_requeued_job_waits_from_its_requeue(self):
        self.tick()
        job = self.server.submit(self.recorder, b'fn')
        self.server.start(self.recorder, job)
        self.tick(60.0)
        self.recorder.requeued(job)
        self.server.queue.requeue(job)
        self.tick(0.004)
        self.server.start(self.recorder, job)
        self.tick(0.0008)
        self.recorder.finished(job, metrics.COMPLETED)
        self.recorder.flush()
        st = self.recorder.functions[b'fn']
        self.assertEqual(1, st.counts[metrics.REQUEUED])
        self.assertEqual(1, sum(st.wait))
        self.assertEqual(1, st.wait[metrics.TIME_BOUNDS.index(0.005)])
        self.assertEqual(1, st.run[metrics.TIME_BOUNDS.index(0.001)])

    def test_waits_match_the_marks_across_handle_widths(self):
        # The flush finds a job's mark by comparing handles as bytes
        # while they keep one width: jobs numbered from 91 to past 1000,
        # created over many marks and finished out of order, wait what
        # createdAt() says.
        self.checkWaitsOverMarks(90, 1100)

    def test_waits_match_the_marks_within_one_handle_width(self):
        # The same, with every handle of one width: the batches go the
        # bulk way (marks found by bisection over the marks' handles).
        self.checkWaitsOverMarks(100, 930)

    def test_waits_match_the_marks_of_jobs_ended_in_order(self):
        # Jobs that end in the order they were created are cut into
        # their marks' spans at once.
        self.checkWaitsOverMarks(100, 930, shuffle=False)

    def checkWaitsOverMarks(self, first, last, shuffle=True):
        import bisect
        import random
        rng = random.Random(7)
        self.server.queue.max_handle = first
        self.tick()
        jobs = []
        while self.server.queue.max_handle < last:
            for _ in range(rng.randint(1, 60)):
                jobs.append(self.server.submit(self.recorder, b'fn'))
            self.tick(rng.choice((0.0002, 0.002, 0.03)))
        self.assertGreater(len(self.recorder._mark_n), 20)
        waits = []
        for part in (jobs[::2], jobs[1::2]):
            for job in part:
                self.server.start(self.recorder, job)
                waits.append(self.clock.now - self.recorder.createdAt(job))
            self.tick(0.5)
        if shuffle:
            rng.shuffle(jobs)
        else:
            jobs.sort(key=lambda job: int(job.handle[len(PREFIX):]))
        for job in jobs:
            self.recorder.finished(job, metrics.COMPLETED)
        self.recorder.flush()
        st = self.recorder.functions[b'fn']
        expected = [0] * len(st.wait)
        for wait in waits:
            expected[bisect.bisect_left(metrics.TIME_BOUNDS, wait)] += 1
        self.assertEqual(expected, st.wait)
        self.assertAlmostEqual(sum(waits), st.wait_sum)
        self.assertEqual(len(jobs), st.counts[metrics.COMPLETED])
        self.assertEqual(len(jobs), sum(st.run))

    def test_alike_jobs_are_filed_together_and_exactly(self):
        # Jobs of one turn share their times: runs of them are filed at
        # once, split where the function or the result changes; a job
        # that never started is only counted.
        self.tick()
        a = [self.server.submit(self.recorder, b'a') for _ in range(5)]
        b = [self.server.submit(self.recorder, b'b') for _ in range(3)]
        idle = self.server.submit(self.recorder, b'b')
        self.tick(0.003)
        for job in a + b:
            self.server.start(self.recorder, job)
        self.tick(0.02)
        for job in a[:2] + b[:1] + a[2:]:
            self.recorder.finished(job, metrics.COMPLETED)
        for job in b[1:]:
            self.recorder.finished(job, metrics.FAILED)
        self.recorder.finished(idle, metrics.EXCEPTION)
        self.recorder.flush()
        sa = self.recorder.functions[b'a']
        sb = self.recorder.functions[b'b']
        self.assertEqual(5, sa.counts[metrics.COMPLETED])
        self.assertEqual((1, 2, 1), (sb.counts[metrics.COMPLETED],
                                     sb.counts[metrics.FAILED],
                                     sb.counts[metrics.EXCEPTION]))
        run = metrics.TIME_BOUNDS.index(0.025)
        wait = metrics.TIME_BOUNDS.index(0.005)
        for st, n in ((sa, 5), (sb, 3)):
            self.assertEqual(n, st.run[run])
            self.assertEqual(n, sum(st.run))
            self.assertEqual(n, st.wait[wait])
            self.assertEqual(n, sum(st.wait))
            self.assertAlmostEqual(n * 0.02, st.run_sum)
            self.assertAlmostEqual(n * 0.003, st.wait_sum)
        self.assertEqual([], self.recorder.ended)

    def test_jobs_ended_in_several_turns_take_their_turns_time(self):
        # One flush counts jobs that ended over three turns: each job's
        # run ends at the time of the turn it ended in, and its result
        # kind is its own.
        self.tick()
        jobs = [self.server.submit(self.recorder, b'fn') for _ in range(6)]
        for job in jobs:
            self.server.start(self.recorder, job)
        kinds = iter((metrics.FAILED, metrics.COMPLETED,
                      metrics.EXCEPTION, metrics.FAILED,
                      metrics.COMPLETED, metrics.FAILED))
        for step, pair in ((0.0008, jobs[:2]), (0.02, jobs[2:4]),
                           (0.7, jobs[4:])):
            self.tick(step)
            for job in pair:
                self.recorder.finished(job, next(kinds))
        self.assertEqual(0, self.recorder.functions[b'fn'].counts[
            metrics.COMPLETED])
        self.recorder.flush()
        st = self.recorder.functions[b'fn']
        self.assertEqual((2, 3, 1), (st.counts[metrics.COMPLETED],
                                     st.counts[metrics.FAILED],
                                     st.counts[metrics.EXCEPTION]))
        for bound in (0.001, 0.025, 1.0):
            self.assertEqual(2, st.run[metrics.TIME_BOUNDS.index(bound)])
        self.assertAlmostEqual(2 * (0.0008 + 0.0208 + 0.7208), st.run_sum)
        self.assertEqual(6, st.wait[0])
        self.assertEqual([], self.recorder.unsuccessful)

    def test_a_batch_with_odd_jobs_files_each_as_it_is(self):
        # A requeued job waits from its requeue, a job with an epoch time
        # from that time, one that never started is only counted; the
        # ordinary jobs of the same batch wait from their creation.
        import time
        self.tick()
        plain = [self.server.submit(self.recorder, b'fn') for _ in range(3)]
        requeued = self.server.submit(self.recorder, b'fn')
        scheduled = self.server.submit(self.recorder, b'fn')
        idle = self.server.submit(self.recorder, b'fn')
        self.tick(0.3)
        scheduled.when = time.time() - 0.2
        for job in plain + [requeued, scheduled]:
            self.server.start(self.recorder, job)
        self.recorder.requeued(requeued)
        self.server.queue.requeue(requeued)
        self.tick(0.003)
        self.server.start(self.recorder, requeued)
        self.tick(0.0005)
        for job in plain + [requeued, scheduled, idle]:
            self.recorder.finished(job, metrics.COMPLETED)
        self.recorder.flush()
        st = self.recorder.functions[b'fn']
        self.assertEqual(6, st.counts[metrics.COMPLETED])
        self.assertEqual(5, sum(st.run))
        self.assertEqual(5, sum(st.wait))
        self.assertEqual(3, st.wait[metrics.TIME_BOUNDS.index(0.5)])
        self.assertEqual(1, st.wait[metrics.TIME_BOUNDS.index(0.005)])
        # The epoch job's wait runs from its due time (0.2 s before the
        # flush, read from the wall clock), not from its creation.
        self.assertEqual(1, st.wait[metrics.TIME_BOUNDS.index(0.25)])
        self.assertEqual({}, self.recorder._requeued)

    def test_jobs_with_handles_of_other_kinds_count_from_the_start(self):
        # A job queued by hand may carry a str handle, or bytes of
        # another form: such a batch is counted job by job, and those
        # jobs wait from the start.
        self.tick()
        own = self.server.submit(self.recorder, b'fn')
        odd = []
        for handle in ('H:test:by-hand', b'elsewhere:7'):
            job = CompactServerJob._new(handle, b'fn', b'x', None, None,
                                        NORMAL, True, own._fq)
            self.recorder.submitted(own._fq, NORMAL)
            odd.append(job)
        self.tick(0.03)
        for job in [own] + odd:
            self.recorder.started(job)
        self.tick(0.0008)
        for job in [own] + odd:
            self.recorder.finished(job, metrics.COMPLETED)
        self.recorder.flush()
        st = self.recorder.functions[b'fn']
        self.assertEqual(3, st.counts[metrics.COMPLETED])
        self.assertEqual(3, st.wait[metrics.TIME_BOUNDS.index(0.05)])
        self.assertEqual(3, st.run[metrics.TIME_BOUNDS.index(0.001)])

    def test_fine_buckets_agree_with_bisection(self):
        import bisect
        for tenths in range(0, 10000, 7):
            value = (tenths + 0.3) / 10000.0
            self.assertEqual(
                bisect.bisect_left(metrics.TIME_BOUNDS, value),
                metrics._FINE_BUCKET[int(value * metrics._FINE)], value)

    def test_marks_stay_bounded_and_keep_the_start(self):
        self.tick()
        for _ in range(3 * metrics.MAX_MARKS):
            self.server.queue.max_handle += 1
            self.tick(metrics.MARK_RESOLUTION)
        self.assertLessEqual(len(self.recorder._mark_n), metrics.MAX_MARKS)
        self.assertEqual(0, self.recorder._mark_n[0])
        self.assertEqual(sorted(self.recorder._mark_n),
                         self.recorder._mark_n)
        # The newest marks are exact.
        job = types.SimpleNamespace(
            handle=PREFIX + b'%d' % self.server.queue.max_handle)
        self.assertAlmostEqual(
            self.clock.now - metrics.MARK_RESOLUTION,
            self.recorder.createdAt(job))

    def test_foreign_handles_count_from_the_start(self):
        self.tick(5.0)
        job = types.SimpleNamespace(handle=b'elsewhere:abc')
        self.assertEqual(100.0, self.recorder.createdAt(job))

    def test_the_sweep_forgets_jobs_that_ended_elsewhere(self):
        self.tick()
        job = self.server.submit(self.recorder, b'fn')
        self.server.start(self.recorder, job)
        self.recorder.requeued(job)
        self.server.queue.requeue(job)
        self.server.queue.remove(job)   # e.g. a cancel
        self.assertIn(job, self.recorder._requeued)
        self.tick(metrics.SWEEP_INTERVAL)
        self.assertNotIn(job, self.recorder._requeued)

    def test_a_running_job_keeps_its_start_on_its_links(self):
        self.tick()
        job = self.server.submit(self.recorder, b'fn')
        self.assertIsNone(self.recorder.runningSince(job))
        self.tick(0.5)
        self.server.start(self.recorder, job)
        self.assertEqual(100.5, self.recorder.runningSince(job))
        self.assertEqual(100.5, job._links.started)

    def test_snapshot_and_exposition(self):
        self.tick()
        for precedence in (HIGH, NORMAL, NORMAL, LOW):
            self.server.submit(self.recorder, b'fn\xff', precedence)
        self.tick(3.0)
        self.recorder.committed(0.002)
        # A function a worker registered and no job ever used.
        self.server.queue.function(b'idle').workers = 1
        snap = metrics.snapshot(self.server, self.recorder, '1.2.3')
        f, idle = snap['functions']
        self.assertFalse(idle['active'])
        self.assertNotIn('wait_seconds', idle)
        self.assertEqual('fn\\xff', f['name'])
        self.assertEqual({'high': 1, 'normal': 2, 'low': 1}, f['queued'])
        self.assertEqual(3.0, f['oldest_age'])
        self.assertEqual(3, len(snap['oldest']))
        self.assertEqual(4, snap['totals']['waiting'])

        from prometheus_client.parser import text_string_to_metric_families
        text = exposition.render(snap).decode('utf8')
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text)
                   for s in fam.samples}
        fn = (('function', 'fn\\xff'),)
        self.assertEqual(4, samples[('gearman_jobs', fn)])
        self.assertEqual(2, samples[('gearman_jobs_queued',
                                     (('function', 'fn\\xff'),
                                      ('priority', 'normal')))])
        self.assertEqual(1, samples[('gearman_version_info',
                                     (('version', '1.2.3'),))])
        self.assertEqual(1, samples[('gearman_store_commit_seconds_count',
                                     ())])
        idle = (('function', 'idle'),)
        self.assertEqual(1, samples[('gearman_workers', idle)])
        self.assertEqual(0, samples[('gearman_jobs', idle)])
        self.assertNotIn(('gearman_jobs_completed_total', idle), samples)
        self.assertNotIn(('gearman_job_run_seconds_count', idle), samples)


class Conn(object):
    """What a snapshot reads of a connection."""

    def __init__(self, fd, functions=(), admin=False):
        self.fd = fd
        self.host = '127.0.0.1'
        self.client_id = b'conn-%d' % fd
        self.functions = set(functions)
        self.related_jobs = {}
        self.send_queue = bytearray(b'x' * fd)
        if admin:
            self._admin = True


class SnapshotTestCase(testtools.TestCase):

    def test_connections_by_role_and_bounded_worker_listing(self):
        server = Server()
        recorder = metrics.Recorder(PREFIX)
        many = [b'fn-%d' % i for i in range(200)]
        server.connection_map = {
            1: Conn(1), 2: Conn(2, admin=True), 3: Conn(3, many),
            4: Conn(4, [b'one'])}
        snap = metrics.snapshot(server, recorder)
        self.assertEqual({'client': 1, 'admin': 1, 'worker': 2},
                         snap['connections'])
        self.assertEqual(10, snap['io']['output_queued_bytes'])
        busy, small = snap['workers']
        self.assertEqual(200, busy['function_count'])
        self.assertEqual(metrics.FUNCTIONS_LISTED, len(busy['functions']))
        self.assertEqual(['one'], small['functions'])

    def test_counters_outlive_a_dropped_function(self):
        server = Server()
        recorder = metrics.Recorder(PREFIX)
        server.submit(recorder, b'gone')
        job = next(iter(server.queue.jobs.values()))
        server.queue.remove(job)
        self.assertIsNone(server.queue.dropFunction(b'gone'))
        snap = metrics.snapshot(server, recorder)
        (entry,) = snap['functions']
        self.assertFalse(entry['present'])
        self.assertEqual(1, entry['submitted']['normal'])
        # The function comes back: same counters.
        server.submit(recorder, b'gone')
        (entry,) = metrics.snapshot(server, recorder)['functions']
        self.assertTrue(entry['present'])
        self.assertEqual(2, entry['submitted']['normal'])


class AdminHTTPTestCase(testtools.TestCase):

    def test_status_url(self):
        self.assertEqual('http://h:8/api/status.json',
                         admin_http.status_url('http://h:8'))
        self.assertEqual('http://h:8/x/api/status.json',
                         admin_http.status_url('http://h:8/x/'))
        self.assertEqual('http://h:8/api/status.json',
                         admin_http.status_url(
                             'http://h:8/api/status.json'))
        self.assertRaises(common.CliError, admin_http.status_url, 'h:8')

    def test_rows_have_the_admin_reply_shapes(self):
        status = {
            'functions': [
                {'name': 'a', 'present': True, 'total': 3, 'running': 1,
                 'workers': 2, 'scheduled': 1,
                 'queued': {'high': 1, 'normal': 0, 'low': 0}},
                {'name': 'gone', 'present': False, 'total': 0,
                 'running': 0, 'workers': 0, 'scheduled': 0,
                 'queued': {'high': 0, 'normal': 0, 'low': 0}}],
            'workers': [{'fd': 7, 'host': '::1', 'client_id': 'w',
                         'functions': ['a'], 'jobs': []}]}
        self.assertEqual([('a', 3, 1, 2)],
                         admin_http.rows('status', status))
        self.assertEqual([('a', 1, 1, 0, 2)],
                         admin_http.rows('priority-status', status))
        self.assertEqual([(7, '::1', 'w', ('a',))],
                         admin_http.rows('workers', status))
