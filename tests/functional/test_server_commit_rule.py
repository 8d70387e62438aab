"""The store-commit rule against a store that fails on demand.

A background job is acknowledged only once committed; a failed commit
answers QUEUE_ERROR and leaves no job behind; while the store fails,
background submits are refused and a timer probes it until it works and
every pending removal is written.  The real disk-full and read-only
cases are in tests/reliability/test_store_failures.py.
"""

import logging

import fixtures

from gear import constants as c
from gear.protocol import pack
from gear.server.store import JobStore, StoredJob, StoreError

from tests.functional.test_server_base import ServerTestCase, wait_for

REFUSED = b'QUEUE_ERROR\x00Job store commit failed'


class FlakyStore(JobStore):
    """The batching store contract (gear.server.store), in memory, with
    ``broken`` making every write fail until it is cleared, and
    ``fail_commits`` making that many commits fail."""

    def __init__(self):
        self.rows = {}
        self.batch = []
        self.removals = set()
        self.broken = False
        self.healthy = True
        self.probes = 0
        self.fail_commits = 0

    @property
    def pending_removals(self):
        return len(self.removals)

    def add(self, job):
        if self.broken:
            self.healthy = False
            raise IOError('disk full')
        self.batch.append((job.handle, job.unique))

    def remove(self, job):
        self.removals.add(job.handle)
        if self.broken:
            self.healthy = False
            raise IOError('disk full')

    def flush(self):
        if not self.batch and not self.removals:
            return
        self._commit()

    def _commit(self):
        if self.broken or self.fail_commits:
            self.fail_commits = max(0, self.fail_commits - 1)
            self.healthy = False
            raise IOError('disk full')
        self.rows.update(self.batch)
        for handle in self.removals:
            self.rows.pop(handle, None)
        self.batch = []
        self.removals = set()
        self.healthy = True

    def discard(self):
        handles = [handle for handle, _ in self.batch]
        self.batch = []
        return handles

    def probe(self):
        assert not self.batch, 'probe() with unflushed adds'
        self.probes += 1
        try:
            self._commit()
        except IOError:
            return False
        return True


class CommitRuleTestCase(ServerTestCase):

    def setUp(self):
        super(CommitRuleTestCase, self).setUp()
        self.store = FlakyStore()
        self.logger = self.useFixture(fixtures.FakeLogger(
            name='gear.Server', level=logging.WARNING))
        self.server = self.makeServer(store=self.store)
        self.server.store_probe_interval = 0.05

    def warnings(self):
        return [line for line in self.logger.output.splitlines()
                if line.startswith('Job store')]


class TestFailedCommit(CommitRuleTestCase):

    def failNextCommit(self):
        """Adds succeed, then the commit of the turn fails."""
        self.store.fail_commits = 1

    def test_background_coalesced_in_the_same_turn_is_refused_too(self):
        self.failNextCommit()
        client = self.connect(self.server)
        other = self.connect(self.server)
        client.sendRaw(pack(c.REQ, c.SUBMIT_JOB_BG, b'fn\x00u\x00d') +
                       pack(c.REQ, c.SUBMIT_JOB_BG, b'fn\x00u\x00d'))
        client.expect(c.ERROR, REFUSED)
        client.expect(c.ERROR, REFUSED)
        self.assertEqual([], list(self.server.jobs))
        # Once the store works again the same unique is a fresh job.
        handle = wait_for(
            lambda: other.submit(b'fn', b'd', b'u', c.SUBMIT_JOB_BG)
            if self.store.healthy else None, message='the store to recover')
        self.assertEqual({handle: b'u'}, self.store.rows)

    def test_adopted_foreground_job_stays_for_its_client(self):
        fg = self.connect(self.server)
        bg = self.connect(self.server)
        handle = fg.submit(b'fn', b'd', b'u')
        self.failNextCommit()
        bg.send(c.SUBMIT_JOB_BG, b'fn', b'u', b'd')
        bg.expect(c.ERROR, REFUSED)
        self.assertFalse(self.server.jobs[handle].background)
        worker = self.connect(self.server)
        worker.canDo(b'fn')
        self.assertEqual(handle, worker.grab()[0])
        worker.send(c.WORK_COMPLETE, handle, b'r')
        fg.expect(c.WORK_COMPLETE, handle + b'\x00r')

    def test_replies_keep_their_order(self):
        # The refusal takes the place of the JOB_CREATED it replaces.
        client = self.connect(self.server)
        self.failNextCommit()
        client.sendRaw(pack(c.REQ, c.ECHO_REQ, b'one') +
                       pack(c.REQ, c.SUBMIT_JOB_BG, b'fn\x00\x00d') +
                       pack(c.REQ, c.ECHO_REQ, b'two'))
        client.expect(c.ECHO_RES, b'one')
        client.expect(c.ERROR, REFUSED)
        client.expect(c.ECHO_RES, b'two')


class TestFailingStore(CommitRuleTestCase):

    def test_refused_while_failing_and_recovers_by_itself(self):
        client = self.connect(self.server)
        self.store.broken = True
        for _ in range(5):
            client.send(c.SUBMIT_JOB_BG, b'fn', b'', b'd')
            self.assertEqual(c.ERROR, client.read()[1])
        self.assertEqual([], list(self.server.jobs))
        self.store.broken = False
        wait_for(lambda: self.store.healthy,
                 message='the probe timer to find the store working')
        client.submit(b'fn', b'd', b'', c.SUBMIT_JOB_BG)
        self.assertEqual(1, len(self.store.rows))
        # One warning when the failure starts, one when it ends.
        started, ended = self.warnings()
        self.assertIn('Job store commit failed', started)
        self.assertIn('works again', ended)

    def test_failed_removals_are_written_without_new_traffic(self):
        client = self.connect(self.server)
        handles = [client.submit(b'fn', b'd', b'', c.SUBMIT_JOB_BG)
                   for _ in range(3)]
        self.store.broken = True
        worker = self.connect(self.server)
        worker.canDo(b'fn')
        for handle in handles:
            self.assertEqual(handle, worker.grab()[0])
            worker.send(c.WORK_COMPLETE, handle, b'')
        worker.sync()
        self.assertEqual(3, self.store.pending_removals)
        probes = self.store.probes
        wait_for(lambda: self.store.probes > probes + 2,
                 message='the store to be probed')
        self.assertEqual(set(handles), set(self.store.rows))
        self.store.broken = False
        wait_for(lambda: not self.store.rows,
                 message='the removals to be written')
        self.assertEqual(0, self.store.pending_removals)
        # No warning per removal or per probe.
        self.assertEqual(2, len(self.warnings()))


class TestReplay(ServerTestCase):

    def test_rekeyed_rows_are_committed_before_serving(self):
        store = FlakyStore()
        store.load = lambda: [StoredJob(None, b'fn', b'u', b'd', 0, 0)]
        server = self.makeServer(store=store)
        self.assertEqual([], store.batch)
        handle, = store.rows
        self.assertIn(handle, server.jobs)

    def test_a_store_that_cannot_commit_them_refuses_the_start(self):
        store = FlakyStore()
        store.load = lambda: [StoredJob(None, b'fn', b'u', b'd', 0, 0)]
        store.fail_commits = 1
        self.assertRaises(StoreError, self.makeServer, store=store)
