"""Tests for the SQLite job store: rows survive reopening, never collide."""

import os
import sqlite3

import fixtures
import testtools

from gear import constants
from gear.errors import ConfigurationError
from gear.server.sqlite_store import SqliteStore, handle_number


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
