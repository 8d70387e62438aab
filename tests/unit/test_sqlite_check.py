"""The write-ahead log check: damage that SQLite would silently cut off
is refused; the logs SQLite leaves after a crash or a checkpoint are not.

A crash is imitated by copying the database and its WAL while the
writing connection is still open (closing it would checkpoint the log
away).
"""

import os
import shutil
import sqlite3

import fixtures
import testtools

from gear.server import sqlite_check
from gear.server.sqlite_store import SqliteStore
from gear.server.store import StoreError

PAGE = 4096
FRAME = 24 + PAGE
HEADER = 32


class TestWalCheck(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.live = os.path.join(self.dir, 'live.db')
        self.db = sqlite3.connect(self.live, isolation_level=None)
        self.addCleanup(self.db.close)
        self.db.execute('PRAGMA journal_mode=WAL')
        # Keep every commit in the log.
        self.db.execute('PRAGMA wal_autocheckpoint=0')
        self.db.execute('CREATE TABLE t (n INTEGER, pad BLOB)')
        # The table lives in the database file, the rows in the log.
        self.db.execute('PRAGMA wal_checkpoint(TRUNCATE)')

    def commit_rows(self, first, count):
        self.db.execute('BEGIN')
        for n in range(first, first + count):
            self.db.execute('INSERT INTO t VALUES (?, ?)',
                            (n, b'x' * 1000))
        self.db.execute('COMMIT')

    def crash_copy(self, name='crashed.db'):
        path = os.path.join(self.dir, name)
        shutil.copy(self.live, path)
        shutil.copy(self.live + '-wal', path + '-wal')
        return path

    def rows(self, path):
        db = sqlite3.connect(path)
        try:
            return db.execute('SELECT count(*) FROM t').fetchone()[0]
        finally:
            db.close()

    def damage(self, path, offset, data=b'\xff\x00\xff\x00'):
        with open(path + '-wal', 'r+b') as f:
            f.seek(offset)
            f.write(data)

    def frames(self, path):
        return (os.path.getsize(path + '-wal') - HEADER) // FRAME

    def test_intact_log_passes(self):
        self.commit_rows(0, 40)
        self.commit_rows(40, 40)
        path = self.crash_copy()
        sqlite_check.check_wal(path)
        self.assertEqual(80, self.rows(path))

    def test_damaged_header_is_refused(self):
        self.commit_rows(0, 40)
        path = self.crash_copy()
        self.damage(path, 16)  # a salt: the header checksum fails
        e = self.assertRaises(StoreError, sqlite_check.check_wal, path)
        self.assertIn('header checksum of its WAL', str(e))
        # What SQLite alone would make of it: every committed row gone.
        self.assertEqual(0, self.rows(path))

    def test_damaged_frame_before_later_commits_is_refused(self):
        self.commit_rows(0, 40)
        self.commit_rows(40, 40)
        self.commit_rows(80, 40)
        path = self.crash_copy()
        self.assertGreater(self.frames(path), 6)
        self.damage(path, HEADER + 2 * FRAME + 24 + 100)
        e = self.assertRaises(StoreError, sqlite_check.check_wal, path)
        self.assertIn('frame 3 of its WAL', str(e))
        self.assertLess(self.rows(path), 80)

    def test_torn_last_frame_passes(self):
        self.commit_rows(0, 40)
        self.commit_rows(40, 40)
        path = self.crash_copy()
        with open(path + '-wal', 'r+b') as f:
            f.truncate(os.path.getsize(path + '-wal') - 1000)
        sqlite_check.check_wal(path)
        self.assertEqual(40, self.rows(path))

    def test_damaged_last_frame_passes(self):
        # Indistinguishable from a write cut short by a crash; SQLite
        # drops that transaction, which was never acknowledged.
        self.commit_rows(0, 40)
        self.commit_rows(40, 40)
        path = self.crash_copy()
        last = HEADER + (self.frames(path) - 1) * FRAME
        self.damage(path, last + 24 + 10)
        sqlite_check.check_wal(path)
        self.assertEqual(40, self.rows(path))

    def test_stale_frames_after_a_checkpoint_pass(self):
        self.commit_rows(0, 80)
        self.db.execute('PRAGMA wal_checkpoint(PASSIVE)')
        # The next commit starts the log again from its first frame,
        # with new salts; the older frames stay behind it in the file.
        self.commit_rows(80, 1)
        path = self.crash_copy()
        self.assertGreater(self.frames(path), 10)
        sqlite_check.check_wal(path)
        self.assertEqual(81, self.rows(path))

    def test_empty_or_missing_log_passes(self):
        path = os.path.join(self.dir, 'none.db')
        sqlite_check.check_wal(path)
        open(path + '-wal', 'wb').close()
        sqlite_check.check_wal(path)

    def test_cut_header_is_refused(self):
        path = os.path.join(self.dir, 'cut.db')
        with open(path + '-wal', 'wb') as f:
            f.write(b'\x37\x7f\x06\x82')
        self.assertRaises(StoreError, sqlite_check.check_wal, path)

    def test_store_refuses_a_damaged_log(self):
        self.commit_rows(0, 40)
        self.commit_rows(40, 40)
        path = self.crash_copy()
        self.damage(path, HEADER + 24 + 100)
        e = self.assertRaises(StoreError, SqliteStore, path)
        self.assertIn('job store %s is damaged' % path, str(e))
        # The check left the log as it was, for whoever repairs it.
        self.assertGreater(self.frames(path), 6)
