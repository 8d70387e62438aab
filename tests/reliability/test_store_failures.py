"""geard on a store whose disk fills up or turns read-only.

The store lives on a small tmpfs (filled to the last byte, then emptied)
or on an ext4 image the kernel turns read-only; geard runs as a child
process and is killed with SIGKILL and restarted on the same file.  The
rule under test: nothing is acknowledged that is not committed, nothing
acknowledged is lost, and nothing finished is run again.
"""

import sqlite3

import pytest
import testtools
from testtools.content import text_content

from gear import constants as C
from tests.reliability import fsfail, peers, servers

COMMIT_FAILED = 'Job store commit failed'
TIMEOUT = 30.0


def submit(port, fn, unique, data=None):
    """One SUBMIT_JOB_BG on its own connection: ('created', handle),
    ('error', code) or ('closed', None) if the server hung up."""
    try:
        with peers.RawPeer(port, timeout=TIMEOUT) as peer:
            peer.send_packet(C.SUBMIT_JOB_BG, fn, unique, data or unique)
            ptype, args = peer.read_packet()
    except (peers.PeerClosed, ConnectionError):
        return ('closed', None)
    if ptype == C.JOB_CREATED:
        return ('created', args[0])
    if ptype == C.ERROR:
        return ('error', args[0])
    raise AssertionError('unexpected %s %r' % (C.types.get(ptype), args))


def work(port, fn, limit):
    """Grab and complete jobs of ``fn`` until none is left (or ``limit``
    have been done); return their uniques in order."""
    done = []
    with peers.RawPeer(port, timeout=TIMEOUT) as worker:
        worker.send_packet(C.CAN_DO, fn)
        while len(done) < limit:
            worker.send_packet(C.GRAB_JOB_UNIQ)
            ptype, args = worker.read_packet()
            if ptype == C.NO_JOB:
                break
            if ptype != C.JOB_ASSIGN_UNIQ:
                raise AssertionError('worker got %s' % C.types.get(ptype))
            handle, _, unique, _ = args
            worker.send_packet(C.WORK_COMPLETE, handle, b'')
            done.append(unique.decode())
        # A round trip: the server has handled every WORK_COMPLETE.
        worker.send_packet(C.ECHO_REQ, b'sync')
        worker.expect(C.ECHO_RES)
    return done


@pytest.mark.slow
class StoreFailureTestCase(testtools.TestCase):

    filesystem = fsfail.SmallTmpfs

    def setUp(self):
        super().setUp()
        self.fs = fsfail.use(self, self.filesystem())
        self.store = self.fs.file('jobs.db')
        self.geard = None

    #: geard options; the read-only case syncs every commit, since a
    #: file system turned read-only loses what it had not written yet.
    options = ()

    def start(self):
        """geard on the store (again, after a kill)."""
        if self.geard is None:
            self.geard = servers.Geard(store=self.store,
                                       extra=self.options)
            self.addCleanup(self.geard.close)
            self.addCleanup(lambda: self.addDetail(
                'geard-log', text_content(self.geard.log())))
        self.geard.start()
        self.port = self.geard.port

    def crash_and_restart(self):
        self.geard.kill()
        self.start()

    def full_log(self):
        with open(self.geard.log_path, 'rb') as f:
            return f.read().decode('utf8', 'replace')

    def assertCommitsFailed(self):
        # Without this the test would prove nothing about a full disk.
        self.assertIn(COMMIT_FAILED, self.full_log())


class TestDiskFull(StoreFailureTestCase):

    def test_finished_jobs_are_not_replayed_after_a_full_disk(self):
        # Issue 16, defect 5: removals that failed were never retried.
        self.start()
        for n in range(50):
            self.assertEqual('created',
                             submit(self.port, 'fin', 'f%d' % n)[0])
        self.fs.fill()
        self.assertEqual(50, len(work(self.port, 'fin', 50)))
        self.assertCommitsFailed()
        self.fs.free()
        # The next commit also writes the removals that failed.
        self.assertEqual('created', submit(self.port, 'later', 'l0')[0])
        self.crash_and_restart()
        self.assertEqual([], work(self.port, 'fin', 100))
        self.assertEqual(['l0'], work(self.port, 'later', 100))

    def test_failed_removals_are_written_without_new_traffic(self):
        # Once the disk has room again the server retries on its own
        # (a store probe on a timer); nothing else happens meanwhile.
        self.start()
        for n in range(20):
            submit(self.port, 'fin', 'f%d' % n)
        self.fs.fill()
        self.assertEqual(20, len(work(self.port, 'fin', 20)))
        self.assertCommitsFailed()
        self.fs.free()

        def removed():
            db = sqlite3.connect('file:%s?mode=ro' % self.store, uri=True)
            try:
                return db.execute(
                    'SELECT count(*) FROM gear_jobs').fetchone()[0] == 0
            finally:
                db.close()
        peers.wait_for(removed, TIMEOUT, 'the removals to be committed')

    def test_submits_while_commits_fail_get_queue_error(self):
        self.start()
        self.assertEqual('created', submit(self.port, 'bg', 'before')[0])
        self.fs.fill()
        answers = [submit(self.port, 'bg', 'during-%d' % n)
                   for n in range(10)]
        self.assertCommitsFailed()
        self.assertEqual([('error', b'QUEUE_ERROR')] * 10, answers)

    def test_retried_unique_is_acknowledged_only_once_stored(self):
        self.start()
        self.fs.fill()
        first = submit(self.port, 'bg', 'retried')
        self.assertCommitsFailed()
        self.assertNotEqual('created', first[0])
        # gear.Client retries with the unique it chose the first time.
        retry = submit(self.port, 'bg', 'retried')
        self.assertNotEqual('created', retry[0],
                            'a retry was acknowledged while every commit '
                            'fails')
        self.fs.free()
        self.assertEqual('created', submit(self.port, 'bg', 'retried')[0])
        self.crash_and_restart()
        self.assertEqual(['retried'], work(self.port, 'bg', 10))

    def test_no_acknowledged_job_is_lost_when_the_disk_fills_and_frees(self):
        # A client that retries each job with its unique until the
        # server acknowledges it (or it gives up), as gear.Client does,
        # while the disk fills up and then has room again.
        self.start()
        acked = []
        for n in range(60):
            if n == 20:
                self.fs.fill()
            if n == 40:
                self.fs.free()
            for _ in range(3):
                if submit(self.port, 'bg', 'j%d' % n)[0] == 'created':
                    acked.append('j%d' % n)
                    break
        self.assertCommitsFailed()
        self.crash_and_restart()
        delivered = set(work(self.port, 'bg', 1000))
        lost = sorted(set(acked) - delivered)
        self.assertEqual([], lost, 'acknowledged but lost after a restart')


class TestReadOnly(StoreFailureTestCase):
    """The kernel turns the file system read-only (a disk error)."""

    filesystem = fsfail.BreakableExt4
    options = ('--store-sync', 'full')

    def test_nothing_acknowledged_is_lost_on_a_read_only_disk(self):
        self.start()
        acked = []
        for n in range(10):
            if submit(self.port, 'bg', 'ok%d' % n)[0] == 'created':
                acked.append('ok%d' % n)
        self.assertEqual(10, len(acked))
        self.fs.break_()
        for n in range(10):
            for _ in range(3):
                if submit(self.port, 'bg', 'ro%d' % n)[0] == 'created':
                    acked.append('ro%d' % n)
                    break
        self.assertCommitsFailed()
        self.geard.kill()
        self.fs.repair()
        self.start()
        delivered = set(work(self.port, 'bg', 1000))
        self.assertEqual([], sorted(set(acked) - delivered),
                         'acknowledged but lost after a restart')
