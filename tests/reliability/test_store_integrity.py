"""geard refuses a store it cannot read completely, or one that another
geard is using, with one line on stderr and a non-zero exit.

Every store here is written by a real geard (killed with SIGKILL, so its
write-ahead log is left behind) or by SqliteStore, then damaged the way
a disk or a careless copy would.
"""

import os
import shutil
import subprocess
import sys

import fixtures
import pytest
import testtools

from gear import constants as C
from gear.server.sqlite_store import SqliteStore
from tests.reliability import peers, servers
from tests.reliability.test_store_failures import submit, work
from tests.util import child_env

EXIT_TIMEOUT = 60
PAGE = 4096
WAL_HEADER = 32
WAL_FRAME = 24 + PAGE


class FakeJob(object):
    def __init__(self, n):
        self.handle = b'H:test:%d' % n
        self.name = b'stored'
        self.unique = b'u%d' % n
        self.arguments = b'a' * 100
        self.precedence = C.PRECEDENCE_NORMAL
        self.when = 0


@pytest.mark.slow
class TestRefusedStores(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.store = os.path.join(self.dir, 'jobs.db')

    def refused(self, store):
        """Run geard on ``store``; it must exit non-zero at once with one
        line on stderr, which is returned."""
        argv = [sys.executable, '-m', 'gear.cmd.geard', '-d', '-p', '0',
                '--listen-address', peers.HOST, '--store', store]
        result = subprocess.run(argv, capture_output=True, text=True,
                                env=child_env(), timeout=EXIT_TIMEOUT,
                                stdin=subprocess.DEVNULL)
        lines = result.stderr.splitlines()
        self.assertNotEqual(0, result.returncode, result.stderr)
        self.assertEqual(1, len(lines), result.stderr)
        self.assertTrue(lines[0].startswith('geard: error: '), lines[0])
        return lines[0]

    def geard(self, store):
        server = servers.Geard(store=store)
        self.addCleanup(server.close)
        server.start()
        return server

    def write_jobs(self, count):
        store = SqliteStore(self.store, group_commit=True)
        for n in range(count):
            store.add(FakeJob(n))
        store.close()

    def assertMovedAsideStartsEmpty(self, function):
        # The documented way out: move the file aside, start afresh.
        for suffix in ('', '-wal', '-shm'):
            if os.path.exists(self.store + suffix):
                os.rename(self.store + suffix,
                          self.store + '.damaged' + suffix)
        server = self.geard(self.store)
        self.assertEqual([], work(server.port, function, 10))

    def test_damaged_page(self):
        self.write_jobs(2000)
        size = os.path.getsize(self.store)
        with open(self.store, 'r+b') as f:
            f.seek((size // PAGE // 2) * PAGE)
            f.write(b'\xa5' * PAGE)
        line = self.refused(self.store)
        self.assertIn('job store %s is damaged: ' % self.store, line)
        self.assertIn('mv %s %s.damaged' % (self.store, self.store), line)
        self.assertMovedAsideStartsEmpty('stored')

    def test_empty_file(self):
        open(self.store, 'wb').close()
        self.assertIn('the file is empty (0 bytes)', self.refused(self.store))
        self.assertMovedAsideStartsEmpty('stored')

    def test_damaged_write_ahead_log(self):
        server = self.geard(self.store)
        acked = [u for u in ('w%d' % n for n in range(200))
                 if submit(server.port, 'walled', u)[0] == 'created']
        self.assertEqual(200, len(acked))
        server.kill()
        frames = (os.path.getsize(self.store + '-wal') - WAL_HEADER) \
            // WAL_FRAME
        self.assertGreater(frames, 4)
        # An undamaged copy of the crashed store replays every job.
        copy = os.path.join(self.dir, 'copy.db')
        for suffix in ('', '-wal'):
            shutil.copy(self.store + suffix, copy + suffix)
        server = self.geard(copy)
        self.assertEqual(sorted(acked),
                         sorted(work(server.port, 'walled', 1000)))
        server.close()
        # Damage the second frame: SQLite would drop it and every later
        # commit, without a word.
        with open(self.store + '-wal', 'r+b') as f:
            f.seek(WAL_HEADER + WAL_FRAME + 24 + 200)
            f.write(b'\x00\xff' * 8)
        line = self.refused(self.store)
        self.assertIn('frame 2 of its WAL %s-wal is not valid' % self.store,
                      line)
        self.assertMovedAsideStartsEmpty('walled')

    def test_second_geard_on_the_same_store(self):
        first = self.geard(self.store)
        self.assertEqual('created', submit(first.port, 'once', 'o1')[0])
        line = self.refused(self.store)
        self.assertIn('job store %s is in use by another server (process '
                      '%d' % (self.store, first.pid), line)
        # The first one is untouched, and a crash releases the lock.
        self.assertEqual('created', submit(first.port, 'once', 'o2')[0])
        first.kill()
        second = self.geard(self.store)
        self.assertEqual(['o1', 'o2'], work(second.port, 'once', 10))
