"""Unit tests for the server's queue structures (no sockets)."""

import testtools

from gear import constants
from gear.server.jobs import ServerJob
from gear.server.queue import JobQueue, unique_key

HIGH = constants.PRECEDENCE_HIGH
NORMAL = constants.PRECEDENCE_NORMAL
LOW = constants.PRECEDENCE_LOW


class Tripwire(object):
    """Fails the test if anything touches it."""

    def __getattr__(self, name):
        raise AssertionError('unrelated queue touched: %s' % name)

    def __getitem__(self, key):
        raise AssertionError('unrelated queue touched: [%r]' % (key,))

    def __len__(self):
        raise AssertionError('unrelated queue touched: len')


class QueueTestCase(testtools.TestCase):

    def setUp(self):
        super(QueueTestCase, self).setUp()
        self.q = JobQueue()

    def submit(self, name, precedence=NORMAL, unique=None, data=b'x',
               when=0, now=None, background=True):
        n = self.q.nextHandleNumber()
        job = ServerJob._new(b'H:test:%d' % n, name, data, unique,
                             None if background else [object()],
                             precedence, background)
        if when:
            job.when = when
        fq = self.q.function(name)
        self.q.add(job, fq, unique_key(unique, data), now)
        return job

    def fqs(self, *names):
        # A worker's rotation: insertion-ordered, O(1) to move an entry.
        return dict.fromkeys(self.q.function(n) for n in names)


class TestSelection(QueueTestCase):

    def test_fifo_within_function_and_precedence(self):
        jobs = [self.submit(b'f') for _ in range(5)]
        fqs = self.fqs(b'f')
        got = [self.q.take(fqs) for _ in range(5)]
        self.assertEqual(jobs, got)
        self.assertIsNone(self.q.take(fqs))

    def test_global_priority_across_functions(self):
        low = self.submit(b'a', LOW)
        normal = self.submit(b'b', NORMAL)
        high = self.submit(b'c', HIGH)
        fqs = self.fqs(b'a', b'b', b'c')
        self.assertEqual([high, normal, low],
                         [self.q.take(fqs) for _ in range(3)])

    def test_round_robin_across_functions(self):
        a = [self.submit(b'a') for _ in range(3)]
        b = [self.submit(b'b') for _ in range(3)]
        fqs = self.fqs(b'a', b'b')
        got = [self.q.take(fqs) for _ in range(6)]
        self.assertEqual([a[0], b[0], a[1], b[1], a[2], b[2]], got)

    def test_only_the_workers_functions(self):
        self.submit(b'other')
        mine = self.submit(b'mine')
        self.assertIs(mine, self.q.take(self.fqs(b'mine')))
        self.assertIsNone(self.q.take(self.fqs(b'mine')))
        self.assertEqual(1, len(self.q.normal_queue))

    def test_peek_does_not_take(self):
        job = self.submit(b'f')
        fqs = self.fqs(b'f')
        self.assertIs(job, self.q.peek(fqs))
        self.assertIs(job, self.q.peek(fqs))
        self.assertIs(job, self.q.take(fqs))
        self.assertIsNone(self.q.peek(fqs))

    def test_epoch_job_waits_until_due(self):
        later = self.submit(b'f', when=1000, now=500)
        now_job = self.submit(b'f', now=500)
        fqs = self.fqs(b'f')
        fq = self.q.function(b'f')
        self.assertEqual(1, fq.epoch_count)
        self.assertEqual(2, fq.waiting(NORMAL))
        self.assertEqual(2, fq.total)
        self.assertIs(now_job, self.q.take(fqs))
        self.assertIsNone(self.q.take(fqs))
        self.assertEqual(1000, fq.nextEpoch())
        self.assertEqual([], self.q.promoteDue(fq, 999))
        self.assertEqual(1, len(self.q.promoteDue(fq, 1000)))
        self.assertIs(later, self.q.take(fqs))

    def test_past_epoch_is_runnable_at_once(self):
        job = self.submit(b'f', when=100, now=500)
        self.assertIs(job, self.q.take(self.fqs(b'f')))

    def test_grab_ignores_huge_unrelated_queues(self):
        for i in range(100000):
            self.submit(b'busy%d' % (i % 3), HIGH if i % 2 else LOW)
        mine = self.submit(b'mine')
        # Nothing but the worker's own function may be looked at.
        for name in (b'busy0', b'busy1', b'busy2'):
            fq = self.q.functions[name]
            fq.fifos = Tripwire()
            fq.stale = Tripwire()
            fq.epoch = Tripwire()
            fq.uniques = Tripwire()
            # The counters are read only for the worker's own functions.
            fq.queued = Tripwire()
        fqs = self.fqs(b'mine')
        self.assertIs(mine, self.q.peek(fqs))
        self.assertIs(mine, self.q.take(fqs))
        self.q.start(mine, 'conn')
        self.q.remove(mine)
        self.assertIsNone(self.q.take(fqs))
        self.assertEqual(100000, len(self.q.jobs))


class TestLifecycle(QueueTestCase):

    def test_start_and_remove_counters(self):
        job = self.submit(b'f', HIGH)
        fq = self.q.functions[b'f']
        self.assertEqual([0, 0, 1], fq.queued)
        taken = self.q.take([fq])
        self.q.start(taken, 'w')
        self.q.start(taken, 'w')  # idempotent
        self.assertEqual(1, fq.running)
        self.assertEqual(1, self.q.running)
        self.assertEqual('w', job.worker_connection)
        self.assertTrue(job.running)
        self.q.remove(job)
        self.q.remove(job)  # idempotent
        self.assertEqual(0, fq.running)
        self.assertEqual(0, fq.total)
        self.assertNotIn(job.handle, self.q.jobs)
        self.assertEqual('DONE', job.state)

    def test_requeue_goes_to_tail(self):
        first = self.submit(b'f')
        second = self.submit(b'f')
        fqs = self.fqs(b'f')
        self.q.start(self.q.take(fqs), 'w')
        self.assertTrue(self.q.requeue(first))
        self.assertIsNone(first.worker_connection)
        self.assertFalse(first.running)
        self.assertEqual([second, first], list(self.q.normal_queue))
        self.assertIs(second, self.q.take(fqs))
        self.assertIs(first, self.q.take(fqs))

    def test_requeue_of_queued_job_refused(self):
        job = self.submit(b'f')
        self.assertFalse(self.q.requeue(job))

    def test_lazy_removal_skips_dead_entries(self):
        jobs = [self.submit(b'f') for _ in range(4)]
        self.q.remove(jobs[0])
        self.q.remove(jobs[2])
        fq = self.q.functions[b'f']
        self.assertEqual(2, fq.queued[NORMAL])
        self.assertEqual(2, fq.stale[NORMAL])
        self.assertEqual([jobs[1], jobs[3]], list(self.q.normal_queue))
        self.assertIs(jobs[1], self.q.peek([fq]))
        self.assertIs(jobs[1], self.q.take([fq]))
        self.assertIs(jobs[3], self.q.take([fq]))
        self.assertIsNone(self.q.take([fq]))
        self.assertEqual(0, fq.stale[NORMAL])

    def test_compaction(self):
        jobs = [self.submit(b'f') for _ in range(3000)]
        for job in jobs[:2000]:
            self.q.remove(job)
        fq = self.q.functions[b'f']
        self.assertLess(len(fq.fifos[NORMAL]), 2000)
        self.assertEqual(1000, fq.queued[NORMAL])
        self.assertIs(jobs[2000], self.q.take([fq]))

    def test_remove_epoch_job(self):
        job = self.submit(b'f', when=1000, now=1)
        fq = self.q.functions[b'f']
        self.q.remove(job)
        self.assertEqual(0, fq.total)
        self.assertEqual([], self.q.promoteDue(fq, 2000))
        self.assertIsNone(fq.nextEpoch())


class TestUniques(QueueTestCase):

    def test_unique_key(self):
        self.assertIsNone(unique_key(None, b'x'))
        self.assertIsNone(unique_key(b'', b'x'))
        self.assertIsNone(unique_key(b'-', b''))
        self.assertEqual(b'u1', unique_key(b'u1', b'x'))
        self.assertEqual(unique_key(b'-', b'data'), unique_key(b'-', b'data'))
        self.assertNotEqual(unique_key(b'-', b'a'), unique_key(b'-', b'b'))

    def test_index_and_release(self):
        job = self.submit(b'f', unique=b'u1')
        fq = self.q.functions[b'f']
        self.assertIs(job, fq.uniques[b'u1'])
        self.q.remove(job)
        self.assertNotIn(b'u1', fq.uniques)

    def test_dash_unique_released(self):
        job = self.submit(b'f', unique=b'-', data=b'payload')
        fq = self.q.functions[b'f']
        self.assertEqual(1, len(fq.uniques))
        self.q.releaseUnique(job)
        self.assertEqual(0, len(fq.uniques))


class TestLimits(QueueTestCase):

    def test_limits_kept_for_future_functions(self):
        self.q.setLimits(b'later', [2, 1, 3])
        fq = self.q.function(b'later')
        self.assertFalse(self.q.isFull(fq, LOW))
        self.submit(b'later')
        self.assertTrue(self.q.isFull(fq, LOW))
        self.assertFalse(self.q.isFull(fq, NORMAL))
        self.submit(b'later')
        self.assertTrue(self.q.isFull(fq, NORMAL))
        self.assertFalse(self.q.isFull(fq, HIGH))

    def test_zero_is_unlimited_and_reset(self):
        self.q.setLimits(b'f', [0, 0, 0])
        fq = self.q.function(b'f')
        self.submit(b'f')
        self.assertFalse(self.q.isFull(fq, NORMAL))
        self.q.setLimits(b'f', [1, 1, 1])
        self.assertTrue(self.q.isFull(fq, NORMAL))
        self.q.setLimits(b'f', None)
        self.assertFalse(self.q.isFull(fq, NORMAL))

    def test_drop_function(self):
        self.assertEqual('missing', self.q.dropFunction(b'nope'))
        job = self.submit(b'f')
        self.assertEqual('busy', self.q.dropFunction(b'f'))
        self.q.remove(job)
        self.assertIsNone(self.q.dropFunction(b'f'))
        self.assertNotIn(b'f', self.q.functions)


class TestViews(QueueTestCase):

    def test_views_len_iter_contains(self):
        h = self.submit(b'a', HIGH)
        n1 = self.submit(b'b', NORMAL)
        n2 = self.submit(b'a', NORMAL)
        lo = self.submit(b'a', LOW)
        self.assertEqual(1, len(self.q.high_queue))
        self.assertEqual(2, len(self.q.normal_queue))
        self.assertEqual(1, len(self.q.low_queue))
        # FIFO across functions by submission order.
        self.assertEqual([n1, n2], list(self.q.normal_queue))
        self.assertIn(h, self.q.high_queue)
        self.assertNotIn(h, self.q.normal_queue)
        self.assertIn(lo, self.q.low_queue)
        self.assertIs(n1, self.q.normal_queue[0])

    def test_gear_style_override_walk(self):
        # A gear-style scheduler: iterate, remove, do bookkeeping itself.
        jobs = [self.submit(b'f') for _ in range(3)]
        for job in self.q.normal_queue:
            if job is jobs[1]:
                self.q.normal_queue.remove(job)
                job.worker_connection = 'w'
                job.running = True
        self.assertEqual([jobs[0], jobs[2]], list(self.q.normal_queue))
        self.assertEqual(2, len(self.q.normal_queue))
        self.assertEqual('DETACHED', jobs[1].state)
        self.q.start(jobs[1], 'w')
        self.assertEqual(1, self.q.functions[b'f'].running)
        self.assertRaises(ValueError, self.q.normal_queue.remove, jobs[1])

    def test_append_moves_between_views(self):
        job = self.submit(b'f', NORMAL)
        woken = []
        self.q.on_enqueue = woken.append
        self.q.normal_queue.remove(job)
        self.q.high_queue.append(job)
        self.assertEqual([job], list(self.q.high_queue))
        self.assertEqual(HIGH, job.precedence)
        self.assertEqual([self.q.functions[b'f']], woken)
        self.assertIs(job, self.q.take(self.fqs(b'f')))

    def test_append_new_job(self):
        job = ServerJob(b'H:x:1', 'fn', b'args', None, 'u')
        self.q.low_queue.append(job)
        self.assertEqual(b'fn', job.name)
        self.assertIs(job, self.q.jobs[b'H:x:1'])
        self.assertIs(job, self.q.functions[b'fn'].uniques[b'u'])
        self.assertEqual([job], list(self.q.low_queue))
        self.assertRaises(ValueError, self.q.low_queue.append, job)

    def test_append_finished_job_again(self):
        job = self.submit(b'f')
        other = self.submit(b'f')
        self.q.remove(job)  # leaves a dead entry behind
        self.q.normal_queue.append(job)
        fqs = self.fqs(b'f')
        self.assertIs(other, self.q.take(fqs))
        self.assertIs(job, self.q.take(fqs))
        self.assertIsNone(self.q.take(fqs))

    def test_iteration_snapshot_allows_removal(self):
        jobs = [self.submit(b'f') for _ in range(5)]
        for job in self.q.normal_queue:
            self.q.normal_queue.remove(job)
        self.assertEqual(0, len(self.q.normal_queue))
        self.assertEqual('DETACHED', jobs[4].state)


class TestServerJob(testtools.TestCase):

    def test_gear_attributes(self):
        job = ServerJob(b'H:1', 'name', b'args', 'client', b'u')
        self.assertEqual(b'name', job.name)
        self.assertEqual(b'args', job.arguments)
        self.assertEqual(b'u', job.unique)
        self.assertEqual('client', job.client_connection)
        self.assertIsNone(job.worker_connection)
        self.assertFalse(job.running)
        self.assertFalse(job.background)
        self.assertEqual([], job.data)
        self.assertIsNone(job.exception)
        self.assertIsNone(job.numerator)
        self.assertFalse(hasattr(job, 'connection'))
        self.assertIn('handle: ', repr(job))

    def test_background_and_extra_attributes(self):
        job = ServerJob(b'H:1', b'name', b'args')
        self.assertTrue(job.background)
        self.assertIsNone(job.client_connection)
        self.assertIsNone(job.unique)
        job.waiting = True  # test fakes add their own attributes
        self.assertTrue(job.waiting)
        job.client_connection = 'c'
        self.assertEqual(['c'], job.clients)

    def test_compact(self):
        q = JobQueue()
        job = ServerJob._new(b'H:1', b'n', b'a', None, None, NORMAL, True,
                             q.function(b'n'))
        self.assertEqual(b'n', job.name)
        # No per-instance dict until someone sets a rare attribute.
        self.assertEqual({}, job.__dict__)
        self.assertLessEqual(job.__sizeof__(), 100)

    def test_running_follows_state(self):
        q = JobQueue()
        job = ServerJob._new(b'H:1', b'n', b'a', None, None, NORMAL, True)
        q.add(job, q.function(b'n'))
        job.running = True  # what gear-style overrides do on a peek
        self.assertFalse(job.running)
        q.start(q.take([q.function(b'n')]), 'w')
        self.assertTrue(job.running)


class TestFunctionNames(QueueTestCase):
    """Server.functions is gear 0.16's set of names, kept in step with
    the function queues."""

    def test_add_and_discard_like_a_set(self):
        names = self.q.names
        names.add(b'a')
        names.add('b')
        names.add(b'a')
        self.assertEqual([b'a', b'b'], sorted(names))
        self.assertIn(b'b', names)
        self.assertEqual(b'a', self.q.functions[b'a'].name)
        names.discard(b'b')
        names.discard(b'missing')
        self.assertEqual([b'a'], sorted(names))
        self.assertEqual([b'a'], sorted(self.q.functions))

    def test_discard_keeps_a_function_in_use(self):
        self.submit(b'busy')
        self.q.names.discard(b'busy')
        self.assertIn(b'busy', self.q.names)
        self.assertIn(b'busy', self.q.functions)
