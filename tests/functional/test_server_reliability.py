"""Requeue, retries, abandoned jobs, persistence hooks and shutdown."""

import threading

from gear import constants as c
from gear.protocol import pack
from gear.server.store import JobStore, StoredJob

from tests.functional.test_server_base import ServerTestCase, wait_for


class RecordingStore(JobStore):
    """Keeps rows in a dict, and can be told to fail."""

    def __init__(self, rows=(), counter=0):
        self.rows = {}
        self.loaded = list(rows)
        self.counter = counter
        self.fail = False
        self.closed = False

    def load(self):
        return self.loaded

    def handleCounterStart(self):
        return self.counter

    def add(self, job):
        if self.fail:
            raise IOError('disk full')
        self.rows[job.handle] = (job.name, job.unique, job.arguments,
                                 job.precedence, job.when)

    def remove(self, job):
        self.rows.pop(job.handle, None)

    def close(self):
        self.closed = True


class GroupCommitStore(RecordingStore):
    """Batches its rows per loop turn, as a group-committing store does;
    ``fail_commits`` makes that many commits fail."""

    def __init__(self):
        super(GroupCommitStore, self).__init__()
        self.pending = {}
        self.fail_commits = 0
        self.adds = []

    def add(self, job):
        self.adds.append((job.handle, job.unique))
        self.pending[job.handle] = job.unique

    def flush(self):
        if self.fail_commits:
            self.fail_commits -= 1
            raise IOError('commit failed')
        self.rows.update(self.pending)
        self.pending = {}

    def discard(self):
        self.pending = {}


class TestRequeue(ServerTestCase):

    # gearmand's: a lost worker's foreground job is requeued too, within
    # job_retries (gear 0.16's is in test_server_compat_policy).
    server_options = {'semantics': 'gearmand'}

    def test_worker_disconnect_requeues(self):
        client = self.connect()
        w1 = self.connect()
        handle = client.submit(b'fn', b'd', b'u')
        w1.canDo(b'fn')
        self.assertEqual(handle, w1.grab()[0])
        w2 = self.sleepingWorker(b'fn')
        w1.close()
        # The requeued job wakes the sleeper; the client saw nothing.
        w2.expect(c.NOOP, b'')
        self.assertEqual([handle, b'fn', b'u', b'd'], w2.grab())
        w2.send(c.WORK_COMPLETE, handle, b'ok')
        client.expect(c.WORK_COMPLETE, handle + b'\x00ok')
        self.assertEqual(b'fn\t0\t0\t1\n.\n', client.adminList(b'status'))

    def test_retry_limit_zero_fails_at_first_loss(self):
        server = self.makeServer(job_retries=0, **self.server_options)
        client = self.connect(server)
        w1 = self.connect(server)
        handle = client.submit(b'fn', b'd')
        w1.canDo(b'fn')
        w1.grab()
        w1.close()
        client.expect(c.WORK_FAIL, handle)
        self.assertEqual(b'.\n', client.adminList(b'show jobs'))

    def test_retry_limit_one(self):
        server = self.makeServer(job_retries=1, **self.server_options)
        client = self.connect(server)
        handle = client.submit(b'fn', b'd')
        w1 = self.connect(server)
        w1.canDo(b'fn')
        w1.grab()
        w1.close()
        w2 = self.connect(server)
        w2.canDo(b'fn')
        wait_for(lambda: w2.grab(), message='requeued job')
        self.assertEqual(b'%s\t1\t0\t0\n.\n' % handle,
                         client.adminList(b'show jobs'))
        w2.close()
        client.expect(c.WORK_FAIL, handle)

    def test_unlimited_retries_by_default(self):
        client = self.connect()
        handle = client.submit(b'fn', b'd', ptype=c.SUBMIT_JOB_BG)
        for _ in range(3):
            w = self.connect()
            w.canDo(b'fn')
            self.assertEqual(handle, wait_for(lambda: w.grab())[0])
            w.close()
        self.assertEqual(b'%s\t3\t0\t1\n.\n' % handle,
                         wait_for(lambda: (lambda out: out if b'\t3\t' in out
                                           else None)(
                             client.adminList(b'show jobs'))))


class TestClientDisconnect(ServerTestCase):

    def test_abandoned_queued_job_dropped_at_once(self):
        client = self.connect()
        other = self.connect()
        for _ in range(3):
            client.submit(b'fn', b'd')
        client.submit(b'fn', b'bg', ptype=c.SUBMIT_JOB_BG)
        client.close()
        wait_for(lambda: other.adminList(b'status') == b'fn\t1\t0\t0\n.\n',
                 message='abandoned jobs dropped')

    def test_coalesced_job_survives_one_client(self):
        c1 = self.connect()
        c2 = self.connect()
        h = c1.submit(b'fn', b'd', b'u')
        c2.submit(b'fn', b'd', b'u')
        c1.close()
        worker = self.connect()
        worker.canDo(b'fn')
        self.assertEqual(h, wait_for(lambda: worker.grab())[0])
        worker.send(c.WORK_COMPLETE, h, b'r')
        c2.expect(c.WORK_COMPLETE, h + b'\x00r')

    def test_abandoned_running_job_finishes_silently(self):
        client = self.connect()
        worker = self.connect()
        h = client.submit(b'fn', b'd', b'u')
        worker.canDo(b'fn')
        worker.grab()
        client.close()
        wait_for(lambda: not any(
            j.clients for j in self.server.jobs.values()),
            message='client detached')
        # The unique is free for a new submission.
        other = self.connect()
        self.assertNotEqual(h, other.submit(b'fn', b'd', b'u'))
        worker.send(c.WORK_DATA, h, b'x')
        worker.send(c.WORK_COMPLETE, h, b'r')
        worker.sync()
        self.assertEqual(b'fn\t1\t0\t1\n.\n', other.adminList(b'status'))


class TestStoreHooks(ServerTestCase):

    def test_background_jobs_stored_and_removed(self):
        store = RecordingStore()
        server = self.makeServer(store=store)
        client = self.connect(server)
        h_bg = client.submit(b'fn', b'd', b'u', c.SUBMIT_JOB_BG)
        client.send(c.SUBMIT_JOB_EPOCH, b'fn', b'', b'99999999999', b'e')
        h_epoch = client.expect(c.JOB_CREATED)
        h_fg = client.submit(b'fn', b'd2')
        self.assertEqual({h_bg, h_epoch}, set(store.rows))
        self.assertEqual(99999999999, store.rows[h_epoch][4])
        worker = self.connect(server)
        worker.canDo(b'fn')
        self.assertEqual(h_bg, worker.grab()[0])
        worker.send(c.WORK_COMPLETE, h_bg, b'')
        worker.sync()
        self.assertEqual({h_epoch}, set(store.rows))
        self.assertEqual(b'OK\r\n', client.admin(b'cancel job ' + h_epoch))
        self.assertEqual({}, store.rows)
        self.assertNotIn(h_fg, store.rows)

    def test_store_failure_is_queue_error(self):
        store = RecordingStore()
        store.fail = True
        server = self.makeServer(store=store)
        client = self.connect(server)
        client.send(c.SUBMIT_JOB_BG, b'fn', b'', b'x')
        client.expect(c.ERROR, b'QUEUE_ERROR\x00disk full')
        self.assertEqual(0, len(server.jobs))
        # Foreground jobs are not persisted, so they still work.
        client.submit(b'fn', b'x')

    def test_background_coalesced_into_foreground_is_stored(self):
        store = RecordingStore()
        server = self.makeServer(store=store)
        fg = self.connect(server)
        bg = self.connect(server)
        h = fg.submit(b'fn', b'd', b'u')
        self.assertEqual({}, store.rows)
        self.assertEqual(h, bg.submit(b'fn', b'other', b'u',
                                      c.SUBMIT_JOB_BG))
        self.assertEqual({h}, set(store.rows))
        # The background submitter was promised the job: it outlives the
        # foreground client, which still gets the result while attached.
        fg.close()
        worker = self.connect(server)
        worker.canDo(b'fn')
        self.assertEqual([h, b'fn', b'u', b'd'],
                         wait_for(lambda: worker.grab()))
        worker.send(c.WORK_COMPLETE, h, b'r')
        worker.sync()
        self.assertEqual({}, store.rows)

    def test_foreground_client_still_gets_result_after_adoption(self):
        store = RecordingStore()
        server = self.makeServer(store=store)
        fg = self.connect(server)
        h = fg.submit(b'fn', b'd', b'u')
        self.connect(server).submit(b'fn', b'd', b'u', c.SUBMIT_JOB_BG)
        worker = self.connect(server)
        worker.canDo(b'fn')
        self.assertEqual(h, worker.grab()[0])
        worker.send(c.WORK_COMPLETE, h, b'r')
        fg.expect(c.WORK_COMPLETE, h + b'\x00r')

    def test_adoption_refused_by_store_leaves_foreground_job(self):
        store = RecordingStore()
        server = self.makeServer(store=store)
        fg = self.connect(server)
        bg = self.connect(server)
        h = fg.submit(b'fn', b'd', b'u')
        store.fail = True
        bg.send(c.SUBMIT_JOB_BG, b'fn', b'u', b'd')
        bg.expect(c.ERROR, b'QUEUE_ERROR\x00disk full')
        self.assertFalse(server.jobs[h].background)
        fg.close()
        wait_for(lambda: h not in server.jobs,
                 message='the abandoned foreground job dropped')

    def test_failed_commit_leaves_no_job_behind(self):
        store = GroupCommitStore()
        server = self.makeServer(store=store)
        store.fail_commits = 1
        client = self.connect(server)
        # A background submit, and a foreground one coalesced into it in
        # the same read: neither is acknowledged when the commit fails;
        # both get QUEUE_ERROR, and the connection stays.
        client.sendRaw(pack(c.REQ, c.SUBMIT_JOB_BG, b'fn\x00u\x00d') +
                       pack(c.REQ, c.SUBMIT_JOB, b'fn\x00u\x00d'))
        for _ in range(2):
            client.expect(c.ERROR, b'QUEUE_ERROR\x00Job store commit failed')
        client.sync()
        self.assertEqual([], list(server.jobs))
        self.assertEqual({}, store.rows)
        # The retry is a fresh job, stored and committed before its ack.
        retry = self.connect(server)
        handle = retry.submit(b'fn', b'd', b'u', c.SUBMIT_JOB_BG)
        self.assertEqual({handle: b'u'}, store.rows)
        self.assertEqual(2, len(store.adds))
        self.assertNotEqual(store.adds[0][0], handle)
        self.assertEqual([handle], list(server.jobs))

    def test_replay_on_start(self):
        store = RecordingStore(rows=[
            StoredJob(b'H:old:7', b'fn', b'u1', b'first', c.PRECEDENCE_NORMAL,
                      0),
            StoredJob(b'H:old:9', b'fn', None, b'second', c.PRECEDENCE_HIGH,
                      0),
        ], counter=41)
        server = self.makeServer(store=store)
        worker = self.connect(server)
        worker.canDo(b'fn')
        self.assertEqual([b'H:old:9', b'fn', b'', b'second'], worker.grab())
        self.assertEqual([b'H:old:7', b'fn', b'u1', b'first'], worker.grab())
        client = self.connect(server)
        # The counter continues after the stored handles (and, with a
        # persistent store, after the clock in microseconds).
        number = int(client.submit(b'fn', b'x').rsplit(b':', 1)[1])
        self.assertGreater(number, 41)
        # Replayed uniques still coalesce.
        self.assertEqual(b'H:old:7', client.submit(b'fn', b'x', b'u1'))

    def test_store_closed_on_shutdown(self):
        store = RecordingStore()
        server = self.makeServer(store=store)
        server.shutdown()
        self.assertTrue(store.closed)


class TestShutdown(ServerTestCase):

    def test_shutdown_twice(self):
        self.server.shutdown()
        self.server.shutdown()
        self.assertFalse(self.server.poll_thread.is_alive())

    def test_graceful_drains_running_jobs(self):
        client = self.connect()
        worker = self.connect()
        handle = client.submit(b'fn', b'd')
        queued = client.submit(b'fn', b'd2')
        worker.canDo(b'fn')
        worker.grab()
        done = threading.Event()

        def stop():
            self.server.shutdown(graceful=True)
            done.set()
        thread = threading.Thread(target=stop)
        thread.daemon = True
        thread.start()
        wait_for(lambda: self.server._listener_closed, message='draining')
        self.assertFalse(done.is_set())
        # No new job is handed out while draining.
        self.assertIsNone(worker.grab())
        worker.send(c.WORK_COMPLETE, handle, b'last')
        client.expect(c.WORK_COMPLETE, handle + b'\x00last')
        self.assertTrue(done.wait(10))
        client.assertClosed()
        self.assertNotEqual(handle, queued)


class TestSqlitePersistence(ServerTestCase):

    def test_jobs_survive_restart(self):
        import os
        import fixtures
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'jobs.db')
        first = self.makeServer(store=path)
        client = self.connect(first)
        h1 = client.submit(b'fn', b'one', b'', c.SUBMIT_JOB_BG)
        h2 = client.submit(b'fn', b'two', b'', c.SUBMIT_JOB_LOW_BG)
        h_fg = client.submit(b'fn', b'foreground')
        worker = self.connect(first)
        worker.canDo(b'gone')
        h3 = client.submit(b'gone', b'three', b'u3', c.SUBMIT_JOB_BG)
        self.assertEqual(h3, worker.grab()[0])
        worker.send(c.WORK_COMPLETE, h3, b'')
        worker.sync()
        first.shutdown()
        second = self.makeServer(store=path)
        worker = self.connect(second)
        worker.canDo(b'fn')
        self.assertEqual([h1, b'fn', b'', b'one'], worker.grab())
        self.assertEqual([h2, b'fn', b'', b'two'], worker.grab())
        self.assertIsNone(worker.grab())
        # Handles do not repeat across the restart.
        fresh = self.connect(second).submit(b'fn', b'x')
        self.assertNotIn(fresh, (h1, h2, h3, h_fg))
        number = int(fresh.rsplit(b':', 1)[1])
        self.assertGreater(number, int(h3.rsplit(b':', 1)[1]))

    def test_adopted_job_survives_restart(self):
        import os
        import fixtures
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'jobs.db')
        first = self.makeServer(store=path)
        h = self.connect(first).submit(b'fn', b'payload', b'u')
        self.connect(first).submit(b'fn', b'payload', b'u', c.SUBMIT_JOB_BG)
        first.shutdown()
        second = self.makeServer(store=path)
        worker = self.connect(second)
        worker.canDo(b'fn')
        self.assertEqual([h, b'fn', b'u', b'payload'], worker.grab())


class RecordingStats(object):

    def __init__(self):
        self.packets = []
        self.queues = []

    def packet(self, ptype, duration):
        self.packets.append(ptype)

    def queue(self, total, running, waiting):
        self.queues.append((total, running, waiting))


class TestStatsHooks(ServerTestCase):

    def test_packets_and_queue_reported(self):
        stats = RecordingStats()
        from gear.server import stats as stats_mod
        self.useFixture(__import__('fixtures').MonkeyPatch(
            'gear.server.stats.make_reporter',
            lambda host, port, prefix: stats))
        server = self.makeServer(statsd_host='127.0.0.1')
        self.assertIs(stats, server.stats)
        client = self.connect(server)
        handle = client.submit(b'fn', b'd', b'', c.SUBMIT_JOB_BG)
        worker = self.connect(server)
        worker.canDo(b'fn')
        worker.grab()
        worker.send(c.WORK_COMPLETE, handle, b'')
        worker.sync()
        self.assertIn(c.SUBMIT_JOB_BG, stats.packets)
        self.assertIn(c.WORK_COMPLETE, stats.packets)
        self.assertIn((1, 0, 1), stats.queues)
        self.assertIn((1, 1, 0), stats.queues)
        self.assertEqual((0, 0, 0), stats.queues[-1])
        self.assertIsNotNone(stats_mod)
