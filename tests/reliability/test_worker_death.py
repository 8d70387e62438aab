"""Workers killed with SIGKILL in the middle of jobs, over and over.

Every job completes (unlimited retries), or fails to its foreground
client with WORK_FAIL once the retry limit is used up; none is lost,
and work is repeated only for jobs whose worker died after doing it.

GEAR_SOAK=1: 1,000 kills per retry setting instead of ~100.
"""

import json
import os
import random

import fixtures
import pytest
import testtools
from testtools.content import text_content

from tests.reliability import peers, servers, worker_death

SEED = int(os.environ.get('GEAR_RELIABILITY_SEED', '20240611'))
WORKERS = 4
# The client's wait for any one packet; the controller's stall check
# (worker_death.STALL_TIMEOUT) is what normally ends a stuck run.
READ_TIMEOUT = worker_death.STALL_TIMEOUT * 2
# Only a last resort against a hung run: progress bounds it first.
LAST_RESORT = 3600


@pytest.mark.slow
class TestWorkerDeath(testtools.TestCase):

    def run_scenario(self, seed, retries, max_kills_per_job, racing,
                     bg_share=0.0):
        rng = random.Random(seed)
        workdir = self.useFixture(fixtures.TempDir()).path
        extra = [] if retries is None else ['--job-retries', str(retries)]
        server = servers.Geard(extra=extra, workdir=workdir)
        self.addCleanup(server.stop)
        server.start()
        fn = 'wd'
        books = worker_death.plan_jobs(rng, peers.scale(100, 1000),
                                       max_kills_per_job, 'j%d' % seed,
                                       bg_share)
        client = worker_death.Client(server.port, fn, books, READ_TIMEOUT)
        controller = worker_death.KillController(
            server.port, fn, books, WORKERS, rng, racing=racing)
        self.addCleanup(controller.close)
        background = [b for b in books if b.background]
        if background:
            with peers.RawPeer(server.port) as peer:
                peer.send(b''.join(peers.req(
                    peers.C.SUBMIT_JOB_BG, fn, b.unique, b.unique)
                    for b in background))
                for _ in background:
                    peer.expect(peers.C.JOB_CREATED)
        client.start()

        def finished():
            if client.error is not None:
                raise client.error
            # Background jobs have no client: done once the server has
            # nothing left and the foreground client heard every end.
            return client.done.is_set() and \
                peers.function_total(server.port, fn) == 0
        controller.run(finished)
        client.join(5)
        summary = {
            'seed': seed, 'retries': retries, 'jobs': len(books),
            'kills': controller.kills, 'workers_started': controller.spawned,
            'killed_after_work': sum(b.killed_after for b in books),
            'killed_racing': sum(b.killed_racing for b in books),
            'repeated_work': sum(max(0, b.did - 1) for b in books),
        }
        self.addDetail('worker-death', text_content(json.dumps(summary)))
        self.assertEqual([], controller.double_holds)
        target = peers.scale(100, 1000)
        # A racing kill whose WORK_COMPLETE got through ends that job's
        # plan early; other plans are carried out in full.
        self.assertGreaterEqual(controller.kills,
                                target * 0.8 if racing else target)
        return books, summary

    def assertNoSurpriseDuplicates(self, books):
        for b in books:
            # Work may be repeated only after a kill that came once the
            # work was done.
            self.assertLessEqual(b.did, 1 + b.killed_after + b.killed_racing,
                                 json.dumps(b.as_dict()))

    @pytest.mark.timeout(LAST_RESORT)
    def test_unlimited_retries_every_job_completes(self):
        books, summary = self.run_scenario(SEED, None, 3, racing=True,
                                           bg_share=0.25)
        for b in books:
            detail = json.dumps(b.as_dict())
            if b.killed_racing:
                self.assertLessEqual(b.kills, b.plan, detail)
            else:
                self.assertEqual(b.plan, b.kills, detail)
            self.assertGreaterEqual(b.did, 1, detail)
            if b.background:
                # Its WORK_COMPLETE went out (the server's queue is empty,
                # so it was taken), possibly racing the kill that cut off
                # the worker's report.
                self.assertTrue(b.sent or b.killed_racing, detail)
            else:
                self.assertEqual(['complete'], b.outcome, detail)
                self.assertEqual(b.unique.encode()[::-1], b.result, detail)
        self.assertNoSurpriseDuplicates(books)

    @pytest.mark.timeout(LAST_RESORT)
    def test_retry_limit_fails_after_the_configured_retries(self):
        limit = 2
        # Budgets of 0..limit kills complete; limit + 1 kills fail.
        books, summary = self.run_scenario(SEED + 1, limit, limit + 1,
                                           racing=False)
        failed = completed = 0
        for b in books:
            detail = json.dumps(b.as_dict())
            if b.plan > limit:
                self.assertEqual(['fail'], b.outcome, detail)
                self.assertEqual(limit + 1, b.assigned, detail)
                self.assertEqual(limit + 1, b.kills, detail)
                failed += 1
            else:
                self.assertEqual(['complete'], b.outcome, detail)
                self.assertEqual(b.plan + 1, b.assigned, detail)
                self.assertEqual(b.unique.encode()[::-1], b.result, detail)
                completed += 1
        self.assertGreater(failed, 0)
        self.assertGreater(completed, 0)
        self.assertNoSurpriseDuplicates(books)
