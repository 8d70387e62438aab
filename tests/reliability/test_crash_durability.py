"""kill -9 of a job server with a persistent store loses no acknowledged
background job.

Set GEAR_SOAK=1 for 100,000 jobs per run instead of 20,000.
"""

import json
import os
import sqlite3

import fixtures
import pytest
import testtools
from testtools.content import text_content

from gear import constants as C
from tests.reliability import crash, peers, servers

SEED = int(os.environ.get('GEAR_RELIABILITY_SEED', '20240611'))


@pytest.mark.slow
class CrashTestCase(testtools.TestCase):

    def setUp(self):
        super(CrashTestCase, self).setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def geard(self, *extra):
        server = servers.Geard(store=os.path.join(self.dir, 'store.db'),
                               extra=extra, workdir=self.dir)
        self.addCleanup(server.stop)
        return server

    def report(self, name, result):
        self.addDetail(name, text_content(json.dumps(result, indent=1)))

    def assertNothingLost(self, result):
        self.report('crash-result', result)
        message = 'seed %d: %s' % (SEED, json.dumps(result))
        self.assertGreater(result['acknowledged'], 0, message)
        # The kill really came mid-stream.
        self.assertLess(result['acknowledged'], result['jobs_planned'],
                        message)
        self.assertIn('closed', result['client_end'], message)
        self.assertEqual(0, result['submit_errors'], message)
        self.assertEqual(0, result['lost'], message)
        self.assertEqual(result['acknowledged'],
                         result['delivered_after_restart'] +
                         result['delivered_before_kill'] -
                         result['delivered_twice'], message)


class TestGeardCrash(CrashTestCase):

    def test_kill_during_submission_loses_no_acknowledged_job(self):
        result = crash.run(self.geard(), peers.scale(20000, 100000),
                           seed=SEED)
        self.assertNothingLost(result)
        self.assertEqual(0, result['duplicates_after_restart'])

    def test_kill_during_submission_and_work_loses_no_job(self):
        # Workers are taking and completing jobs when the server dies:
        # completions in flight may be repeated, acknowledged jobs never
        # vanish.
        result = crash.run(self.geard(), peers.scale(20000, 100000),
                           seed=SEED + 1, workers_during_submit=2)
        self.assertNothingLost(result)
        self.assertGreater(result['delivered_before_kill'], 0)

    def test_finished_jobs_are_not_replayed(self):
        # Completions are committed too (without any new submission to
        # piggy-back on): a crash after a drain replays nothing.
        server = self.geard()
        server.start()
        count = 500
        with peers.RawPeer(server.port) as client:
            client.send(b''.join(
                peers.req(C.SUBMIT_JOB_BG, 'fin', 'f%d' % i, 'x')
                for i in range(count)))
            for _ in range(count):
                client.expect(C.JOB_CREATED)
        with peers.RawPeer(server.port) as worker:
            worker.send_packet(C.CAN_DO, 'fin')
            for _ in range(count):
                worker.send_packet(C.GRAB_JOB_UNIQ)
                handle = worker.expect(C.JOB_ASSIGN_UNIQ)[0]
                worker.send_packet(C.WORK_COMPLETE, handle, 'done')
            # status is answered after every earlier packet was handled.
            self.assertEqual(0, worker.status().get('fin', (0,))[0])
        server.kill()
        db = sqlite3.connect(server.store)
        try:
            rows = db.execute('SELECT count(*) FROM gear_jobs').fetchone()[0]
        finally:
            db.close()
        self.assertEqual(0, rows)
        server.start()
        self.assertEqual(0, peers.function_total(server.port, 'fin'))


@pytest.mark.interop
class TestGearmandCrash(CrashTestCase):
    """The same scenario against gearmand's libsqlite3 queue.

    This only checks that the scenario runs and accounts for every job;
    compare_persistence.py reports the two servers side by side.
    """

    def test_gearmand_sqlite_queue_scenario(self):
        why = servers.Gearmand.available()
        if why:
            self.skipTest(why)
        server = servers.Gearmand(os.path.join(self.dir, 'queue.db'),
                                  workdir=self.dir)
        self.addCleanup(server.stop)
        # gearmand commits (and syncs) each job on its own: keep it short.
        result = crash.run(server, peers.scale(3000, 20000), seed=SEED,
                           kill_after=peers.scale(3.0, 20.0))
        self.report('gearmand-crash-result', result)
        self.assertGreater(result['acknowledged'], 0)
        self.assertEqual(result['acknowledged'],
                         result['delivered_after_restart'] + result['lost'])
