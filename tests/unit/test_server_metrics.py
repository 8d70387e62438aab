"""The metrics recorder, snapshots and their exposition, without sockets."""

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

    def submit(self, recorder, name, precedence=NORMAL, when=0):
        q = self.queue
        n = q.nextHandleNumber()
        fq = q.function(name)
        job = TIMED._new(PREFIX + b'%d' % n, name, b'x', None, None,
                         precedence, True, fq)
        q.add(job, fq)
        recorder.submitted(job, precedence, when)
        return job

    def start(self, recorder, job):
        recorder.started(job)
        self.queue.detach(job)
        self.queue.start(job, None)


TIMED = metrics.timed_class(CompactServerJob)


class RecorderTestCase(testtools.TestCase):

    def setUp(self):
        super(RecorderTestCase, self).setUp()
        self.clock = Clock()
        self.server = Server()
        self.recorder = metrics.Recorder(clock=self.clock)
        self.server.queue.new_stats = self.recorder.stats

    def tick(self, seconds=0.0):
        # The recorder's time moves on, as the server's loop moves it.
        self.clock.now += seconds
        self.recorder.advance(self.clock())

    def test_wait_runs_from_the_turn_a_job_was_submitted_in(self):
        self.tick()
        first = self.server.submit(self.recorder, b'fn')
        self.tick(2.0)
        second = self.server.submit(self.recorder, b'fn')
        self.tick(0.4)
        self.assertEqual(100.0, self.recorder.queuedSince(first))
        self.assertEqual(102.0, self.recorder.queuedSince(second))
        self.server.start(self.recorder, first)
        self.server.start(self.recorder, second)
        self.tick(0.001)
        for job in (first, second):
            self.recorder.finished(job, metrics.COMPLETED)
        self.tick()
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
        st = self.recorder.functions[b'fn']
        # A failure is filed at once; a completion at the turn's end.
        self.assertEqual((0, 1, 1), (st.counts[metrics.COMPLETED],
                                     st.counts[metrics.FAILED],
                                     st.counts[metrics.EXCEPTION]))
        self.tick()
        for kind in (metrics.COMPLETED, metrics.FAILED, metrics.EXCEPTION):
            self.assertEqual(1, st.counts[kind])
        self.assertEqual(3, st.run[metrics.TIME_BOUNDS.index(0.025)])
        self.assertAlmostEqual(0.06, st.run_sum)
        self.assertEqual(3, sum(st.wait))
        self.assertEqual(3, metrics.done(self.recorder))
        self.assertEqual([], self.recorder.ended)

    def test_completions_are_counted_by_a_capture_too(self):
        self.tick()
        job = self.server.submit(self.recorder, b'fn')
        self.server.start(self.recorder, job)
        self.tick(0.02)
        self.recorder.finished(job, metrics.COMPLETED)
        st = self.recorder.functions[b'fn']
        self.assertEqual(0, st.counts[metrics.COMPLETED])
        self.assertEqual(1, len(self.recorder.ended))
        metrics.capture(self.server, self.recorder)
        self.assertEqual([], self.recorder.ended)
        self.assertEqual(1, st.counts[metrics.COMPLETED])
        self.assertEqual(1, st.run[metrics.TIME_BOUNDS.index(0.025)])
        self.assertAlmostEqual(0.02, st.run_sum)

    def test_a_requeued_job_waits_from_its_requeue(self):
        self.tick()
        job = self.server.submit(self.recorder, b'fn')
        self.server.start(self.recorder, job)
        self.tick(60.0)
        self.recorder.requeued(job)
        self.server.queue.requeue(job)
        self.assertEqual(160.0, self.recorder.queuedSince(job))
        self.tick(0.004)
        self.server.start(self.recorder, job)
        self.tick(0.0008)
        self.recorder.finished(job, metrics.COMPLETED)
        self.tick()
        st = self.recorder.functions[b'fn']
        self.assertEqual(1, st.counts[metrics.REQUEUED])
        self.assertEqual(1, sum(st.wait))
        self.assertEqual(1, st.wait[metrics.TIME_BOUNDS.index(0.005)])
        self.assertEqual(1, st.run[metrics.TIME_BOUNDS.index(0.001)])

    def test_a_scheduled_job_waits_from_its_due_time(self):
        import time
        self.tick()
        job = self.server.submit(self.recorder, b'fn',
                                 when=time.time() + 30.0)
        self.assertAlmostEqual(130.0, self.recorder.queuedSince(job),
                               delta=1.0)
        # Handed out before the estimate of its due time: no wait.
        self.tick(29.0)
        self.server.start(self.recorder, job)
        self.assertEqual(0.0, job._links.started.wait)
        # A time in the past is no later than the submission.
        past = self.server.submit(self.recorder, b'fn',
                                  when=time.time() - 30.0)
        self.assertEqual(129.0, self.recorder.queuedSince(past))

    def test_jobs_alike_share_one_timing_and_are_filed_at_once(self):
        # Jobs of one function queued in one turn and handed out in one
        # turn share a Timing; another function, another queueing turn
        # or another start turn makes a new one.
        self.tick()
        a = [self.server.submit(self.recorder, b'a') for _ in range(5)]
        b = [self.server.submit(self.recorder, b'b') for _ in range(3)]
        self.tick(0.0035)
        late = self.server.submit(self.recorder, b'a')
        self.tick(0.0005)
        for job in a + b + [late]:
            self.server.start(self.recorder, job)
        timings = [job._links.started for job in a + b + [late]]
        self.assertEqual(3, len(set(map(id, timings))))
        self.assertTrue(all(t is timings[0] for t in timings[:5]))
        self.tick(0.02)
        for job in a[:2] + b + a[2:] + [late]:
            self.recorder.finished(job, metrics.COMPLETED)
        self.tick()
        sa = self.recorder.functions[b'a']
        sb = self.recorder.functions[b'b']
        self.assertEqual(6, sa.counts[metrics.COMPLETED])
        self.assertEqual(3, sb.counts[metrics.COMPLETED])
        run = metrics.TIME_BOUNDS.index(0.025)
        self.assertEqual(6, sa.run[run])
        self.assertEqual(3, sb.run[run])
        self.assertEqual(5, sa.wait[metrics.TIME_BOUNDS.index(0.005)])
        self.assertEqual(1, sa.wait[metrics.TIME_BOUNDS.index(0.001)])
        self.assertEqual(3, sb.wait[metrics.TIME_BOUNDS.index(0.005)])
        self.assertAlmostEqual(5 * 0.004 + 0.0005, sa.wait_sum)
        self.assertAlmostEqual(6 * 0.02, sa.run_sum)
        # A later turn does not reuse the Timing.
        self.tick(0.5)
        other = self.server.submit(self.recorder, b'a')
        self.server.start(self.recorder, other)
        self.assertIsNot(timings[0], other._links.started)

    def test_jobs_ended_in_several_turns_take_their_turns_time(self):
        self.tick()
        jobs = [self.server.submit(self.recorder, b'fn') for _ in range(6)]
        for job in jobs:
            self.server.start(self.recorder, job)
        for step, pair in ((0.0008, jobs[:2]), (0.02, jobs[2:4]),
                           (0.7, jobs[4:])):
            self.tick(step)
            for job in pair:
                self.recorder.finished(job, metrics.COMPLETED)
        self.tick()
        st = self.recorder.functions[b'fn']
        self.assertEqual(6, st.counts[metrics.COMPLETED])
        for bound in (0.001, 0.025, 1.0):
            self.assertEqual(2, st.run[metrics.TIME_BOUNDS.index(bound)])
        self.assertAlmostEqual(2 * (0.0008 + 0.0208 + 0.7208), st.run_sum)
        self.assertEqual(6, st.wait[0])

    def test_a_job_of_a_class_without_the_slot_waits_from_the_start(self):
        # A job queued by hand, not through the server's requests.
        self.tick(5.0)
        own = self.server.submit(self.recorder, b'fn')
        odd = CompactServerJob._new(b'H:test:by-hand', b'fn', b'x', None,
                                    None, NORMAL, True, own._fq)
        self.server.queue.add(odd, own._fq)
        self.assertEqual(100.0, self.recorder.queuedSince(odd))
        self.tick(0.03)
        for job in (own, odd):
            self.server.start(self.recorder, job)
        self.tick(0.0008)
        for job in (own, odd):
            self.recorder.finished(job, metrics.COMPLETED)
        self.tick()
        st = self.recorder.functions[b'fn']
        self.assertEqual(2, st.counts[metrics.COMPLETED])
        self.assertEqual(1, st.wait[metrics.TIME_BOUNDS.index(0.05)])
        self.assertEqual(1, st.wait[metrics.TIME_BOUNDS.index(10.0)])
        self.assertEqual(2, st.run[metrics.TIME_BOUNDS.index(0.001)])

    def test_fine_buckets_agree_with_bisection(self):
        import bisect
        for tenths in range(0, 10000, 7):
            value = (tenths + 0.3) / 10000.0
            self.assertEqual(
                bisect.bisect_left(metrics.TIME_BOUNDS, value),
                metrics.time_bucket(value), value)
            self.assertEqual(
                bisect.bisect_left(metrics.TIME_BOUNDS, value),
                metrics.Timing(None, 0.0, value).wait_bucket, value)
        for value in (1.0, 1.5, 59.9, 4000.0):
            self.assertEqual(bisect.bisect_left(metrics.TIME_BOUNDS, value),
                             metrics.time_bucket(value), value)

    def test_a_running_job_keeps_its_timing_on_its_links(self):
        self.tick()
        job = self.server.submit(self.recorder, b'fn')
        self.assertIsNone(self.recorder.runningSince(job))
        self.tick(0.5)
        self.server.start(self.recorder, job)
        self.assertEqual(100.5, self.recorder.runningSince(job))
        self.assertEqual(100.5, job._links.started.start)
        self.assertEqual(0.5, job._links.started.wait)

    def test_timed_classes_add_one_slot(self):
        from gear.server.jobs import ServerJob
        self.assertIs(TIMED, metrics.timed_class(CompactServerJob))
        self.assertIs(TIMED, metrics.timed_class(TIMED))
        self.assertEqual(('_since',), TIMED.__slots__)
        self.assertFalse(hasattr(TIMED._new(b'h', b'f', b'', None, None,
                                            NORMAL, True), '__dict__'))
        self.assertIsInstance(TIMED._new(b'h', b'f', b'', None, None,
                                         NORMAL, True), ServerJob)
        loose = metrics.timed_class(ServerJob)
        job = loose._new(b'h', b'f', b'', None, None, NORMAL, True)
        job.anything = 1
        self.assertEqual('ServerJob', loose.__name__)

    def test_job_created_replies_are_counted_with_the_submissions(self):
        self.tick()
        for _ in range(3):
            self.server.submit(self.recorder, b'fn')
        self.recorder.packets_out += 2
        self.assertEqual(5, self.recorder.packetsOut())
        self.assertEqual(0, self.recorder.packets_in)

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

    def scrape_with_budget(self, names, budget):
        """The samples of /metrics with ``budget`` once a job of each of
        ``names`` has been queued: [(name, labels, value), ...]."""
        from prometheus_client.parser import text_string_to_metric_families
        self.tick()
        for name in names:
            self.server.submit(self.recorder, name)
        self.tick(3.0)
        snap = metrics.snapshot(self.server, self.recorder)
        text = exposition.render(snap, budget).decode('utf8')
        return [(s.name, s.labels, s.value)
                for fam in text_string_to_metric_families(text)
                for s in fam.samples]

    def test_a_budget_of_none_shares_every_histogram(self):
        samples = self.scrape_with_budget(
            (b'one', b'two', b'two'), exposition.HistogramBudget(0))
        buckets = {labels['function']: value
                   for name, labels, value in samples
                   if name == 'gearman_job_queue_wait_seconds_bucket'
                   and labels['le'] == '+Inf'}
        # Queued jobs are in no histogram yet, but the shared series is
        # there from the start.
        self.assertEqual({exposition.OTHER_FUNCTIONS: 0}, buckets)
        self.assertRaises(ValueError, exposition.HistogramBudget, -1)

    def test_a_function_named_like_the_shared_series_shares_it(self):
        budget = exposition.HistogramBudget(1)
        self.assertTrue(budget.owns('kept'))
        samples = self.scrape_with_budget(
            (b'(other)', b'beyond', b'kept'), budget)
        counts = [labels['function'] for name, labels, _ in samples
                  if name == 'gearman_job_run_seconds_count']
        # One series per label: the scrape stays valid.
        self.assertEqual(['kept', exposition.OTHER_FUNCTIONS], counts)


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
        recorder = metrics.Recorder()
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
        recorder = metrics.Recorder()
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
