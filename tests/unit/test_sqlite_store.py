"""Tests for the SQLite job store: rows survive reopening, never collide."""

import os
import sqlite3

import fixtures
import testtools

from gear import constants
from gear.errors import ConfigurationError
from gear.server.sqlite_store import SqliteStore, handle_number
from gear.server.store import StoreError


class FakeJob(object):
    def __init__(self, handle, name=b'fn', unique=None, arguments=b'data',
                 precedence=constants.PRECEDENCE_NORMAL, when=0):
        self.handle = handle
        self.name = name
        self.unique = unique
        self.arguments = arguments
        self.precedence = precedence
        self.when = when


class TestSqliteStore(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.path = os.path.join(
            self.useFixture(fixtures.TempDir()).path, 'jobs.db')

    def open(self, **kw):
        store = SqliteStore(self.path, **kw)
        self.addCleanup(store.close)
        return store

    def test_rows_survive_reopen_in_order(self):
        store = self.open()
        store.add(FakeJob(b'H:a:1', unique=b'u1', arguments=b'one'))
        store.add(FakeJob(b'H:a:2', name=b'other', arguments=b'\x00two',
                          precedence=constants.PRECEDENCE_HIGH))
        store.add(FakeJob(b'H:a:3', when=1700000000))
        store.close()
        again = SqliteStore(self.path)
        self.addCleanup(again.close)
        rows = list(again.load())
        self.assertEqual([b'H:a:1', b'H:a:2', b'H:a:3'],
                         [r.handle for r in rows])
        self.assertEqual(b'u1', rows[0].unique)
        self.assertIsNone(rows[1].unique)
        self.assertEqual(b'\x00two', rows[1].arguments)
        self.assertEqual(b'other', rows[1].name)
        self.assertEqual(constants.PRECEDENCE_HIGH, rows[1].precedence)
        self.assertEqual(1700000000, rows[2].when)
        self.assertEqual(3, again.handleCounterStart())

    def test_jobs_with_equal_or_empty_unique_do_not_collide(self):
        store = self.open()
        for n in range(1, 5):
            store.add(FakeJob(b'H:x:%d' % n, unique=None))
        store.add(FakeJob(b'H:x:5', unique=b'-', arguments=b'a'))
        store.add(FakeJob(b'H:x:6', unique=b'-', arguments=b'b'))
        self.assertEqual(6, store.count())
        store.remove(FakeJob(b'H:x:5'))
        self.assertEqual(
            [b'b'], [r.arguments for r in store.load() if r.unique])

    def test_remove_deletes_only_that_job(self):
        store = self.open()
        store.add(FakeJob(b'H:x:1'))
        store.add(FakeJob(b'H:x:2'))
        store.remove(FakeJob(b'H:x:1'))
        self.assertEqual([b'H:x:2'], [r.handle for r in store.load()])

    def test_group_commit_is_invisible_to_others_until_flush(self):
        store = self.open(group_commit=True)
        store.add(FakeJob(b'H:g:1'))
        reader = sqlite3.connect(self.path)
        self.addCleanup(reader.close)
        count = 'SELECT count(*) FROM gear_jobs'
        self.assertEqual(0, reader.execute(count).fetchone()[0])
        store.flush()
        self.assertEqual(1, reader.execute(count).fetchone()[0])

    def test_discard_rolls_back_an_unflushed_batch(self):
        store = self.open(group_commit=True)
        store.add(FakeJob(b'H:g:1'))
        store.flush()
        store.add(FakeJob(b'H:g:2'))
        store.discard()
        self.assertEqual([b'H:g:1'], [r.handle for r in store.load()])

    def test_counter_start_is_zero_when_empty(self):
        self.assertEqual(0, self.open().handleCounterStart())

    def test_unopenable_path_is_a_clear_error(self):
        e = self.assertRaises(ConfigurationError, SqliteStore,
                              os.path.join(self.path, 'no', 'such.db'))
        self.assertIn('Cannot open job store', str(e))

    def test_bad_synchronous_setting(self):
        self.assertRaises(ConfigurationError, SqliteStore, self.path,
                          synchronous='sometimes')

    def test_handle_number(self):
        self.assertEqual(42, handle_number(b'H:host:42'))
        self.assertEqual(0, handle_number(b'weird'))


class TestFailedWrites(testtools.TestCase):
    """What the store keeps when a write fails.  SQLite's query_only
    setting makes every write statement fail, as a read-only file does.
    """

    def setUp(self):
        super().setUp()
        self.path = os.path.join(
            self.useFixture(fixtures.TempDir()).path, 'jobs.db')
        self.store = SqliteStore(self.path, group_commit=True)
        self.addCleanup(self.store.close)

    def writes_fail(self, failing):
        self.store.db.execute('PRAGMA query_only=%d' % failing)

    def handles(self):
        return [r.handle for r in self.store.load()]

    def test_failed_removal_stays_pending_until_a_flush_writes_it(self):
        self.store.add(FakeJob(b'H:r:1'))
        self.store.add(FakeJob(b'H:r:2'))
        self.store.flush()
        self.writes_fail(True)
        self.assertRaises(sqlite3.Error, self.store.remove, FakeJob(b'H:r:1'))
        self.assertFalse(self.store.healthy)
        self.assertEqual(1, self.store.pending_removals)
        self.assertEqual([], self.store.discard())
        self.assertRaises(sqlite3.Error, self.store.flush)
        self.store.discard()
        self.assertEqual(1, self.store.pending_removals)
        self.writes_fail(False)
        self.store.flush()
        self.assertTrue(self.store.healthy)
        self.assertEqual(0, self.store.pending_removals)
        self.assertEqual([b'H:r:2'], self.handles())

    def test_discard_returns_the_batch_adds_and_keeps_its_removals(self):
        self.store.add(FakeJob(b'H:d:1'))
        self.store.flush()
        self.store.add(FakeJob(b'H:d:2'))
        self.store.remove(FakeJob(b'H:d:1'))
        self.store.add(FakeJob(b'H:d:3'))
        self.assertEqual([b'H:d:2', b'H:d:3'], self.store.discard())
        self.assertEqual([b'H:d:1'], self.handles())
        self.assertEqual(1, self.store.pending_removals)
        self.store.add(FakeJob(b'H:d:4'))
        self.store.flush()
        self.assertEqual([b'H:d:4'], self.handles())
        self.assertEqual([], self.store.discard())

    def test_probe(self):
        self.store.add(FakeJob(b'H:p:1'))
        self.store.flush()
        self.writes_fail(True)
        self.assertRaises(sqlite3.Error, self.store.remove, FakeJob(b'H:p:1'))
        self.store.discard()
        self.assertFalse(self.store.probe())
        self.assertFalse(self.store.healthy)
        self.writes_fail(False)
        self.assertTrue(self.store.probe())
        self.assertTrue(self.store.healthy)
        self.assertEqual([], self.handles())

    def test_probe_refuses_an_unflushed_batch(self):
        self.store.add(FakeJob(b'H:p:2'))
        self.assertRaises(StoreError, self.store.probe)

    def test_commit_failure_without_group_commit_rolls_back(self):
        store = SqliteStore(self.path + '2')
        self.addCleanup(store.close)
        store.add(FakeJob(b'H:n:1'))
        store.db.execute('PRAGMA query_only=1')
        self.assertRaises(sqlite3.Error, store.add, FakeJob(b'H:n:2'))
        self.assertRaises(sqlite3.Error, store.remove, FakeJob(b'H:n:1'))
        self.assertFalse(store.db.in_transaction)
        store.db.execute('PRAGMA query_only=0')
        store.add(FakeJob(b'H:n:3'))
        self.assertEqual([b'H:n:3'], [r.handle for r in store.load()])


class TestOpening(testtools.TestCase):
    """Open refuses what it cannot use, with one clear line."""

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'jobs.db')

    def test_second_store_on_the_same_file_is_refused(self):
        first = SqliteStore(self.path)
        self.addCleanup(first.close)
        e = self.assertRaises(StoreError, SqliteStore, self.path)
        self.assertIn('is in use by another server (process %d'
                      % os.getpid(), str(e))
        first.close()
        SqliteStore(self.path).close()

    def test_lock_can_be_left_out(self):
        first = SqliteStore(self.path)
        self.addCleanup(first.close)
        SqliteStore(self.path, lock=False).close()

    def test_empty_file_is_refused(self):
        open(self.path, 'wb').close()
        e = self.assertRaises(StoreError, SqliteStore, self.path)
        self.assertIn('is damaged: the file is empty (0 bytes)', str(e))
        self.assertIn('mv %s %s.damaged' % (self.path, self.path), str(e))
        # The failed open released its lock.
        os.unlink(self.path)
        SqliteStore(self.path).close()

    def test_other_file_is_refused(self):
        with open(self.path, 'wb') as f:
            f.write(b'not a database at all\n' * 300)
        e = self.assertRaises(StoreError, SqliteStore, self.path)
        self.assertIn('is not a SQLite database', str(e))

    def test_damaged_page_is_refused(self):
        store = SqliteStore(self.path, group_commit=True)
        for n in range(1, 2001):
            store.add(FakeJob(b'H:x:%d' % n, arguments=b'a' * 100))
        store.close()
        size = os.path.getsize(self.path)
        with open(self.path, 'r+b') as f:
            f.seek((size // 4096 // 2) * 4096)
            f.write(b'\xa5' * 4096)
        e = self.assertRaises(StoreError, SqliteStore, self.path)
        self.assertIn('job store %s is damaged' % self.path, str(e))
        self.assertNotIn('\n', str(e))
        # Without the check the damage goes unnoticed until a read.
        SqliteStore(self.path, check=False).close()

    def test_cut_file_is_refused(self):
        # A copy that stopped half-way, as on a full disk.
        store = SqliteStore(self.path, group_commit=True)
        for n in range(1, 2001):
            store.add(FakeJob(b'H:c:%d' % n, arguments=b'a' * 100))
        store.close()
        with open(self.path, 'r+b') as f:
            f.truncate(os.path.getsize(self.path) // 2)
        e = self.assertRaises(StoreError, SqliteStore, self.path)
        self.assertIn('job store %s is damaged' % self.path, str(e))

    def test_server_refuses_a_damaged_store(self):
        from gear.server.server import Server
        open(self.path, 'wb').close()
        self.assertRaises(StoreError, Server, 0, host='127.0.0.1',
                          store=self.path)
