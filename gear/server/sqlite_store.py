"""A SQLite job store: background jobs survive a crash or restart.

Rows are keyed by the job handle, which never repeats (the counter
resumes from the highest stored handle), so two jobs with an empty or
equal unique never overwrite each other.

Durability: the database runs in WAL mode.  ``add()`` writes the row in
an open transaction; :meth:`SqliteStore.flush` commits it.  The server
calls ``flush()`` once per loop turn, before any JOB_CREATED of that turn
leaves the process (a group commit), so a job is on disk before its
client hears of it.  With ``synchronous='NORMAL'`` (the default) a commit
survives the server process being killed; the last commits before a
power loss or kernel crash may be lost.  ``synchronous='FULL'`` syncs the
WAL on every commit and survives power loss, at the cost of one fsync per
loop turn.
"""

import logging
import sqlite3

from gear.errors import ConfigurationError
from gear.server.store import JobStore, StoredJob

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gear_jobs (
    seq INTEGER NOT NULL,
    handle BLOB PRIMARY KEY,
    name BLOB NOT NULL,
    uniq BLOB,
    arguments BLOB NOT NULL,
    precedence INTEGER NOT NULL,
    run_at REAL NOT NULL DEFAULT 0
)
"""

_SYNC_MODES = ('OFF', 'NORMAL', 'FULL', 'EXTRA')


def handle_number(handle):
    """The counter part of a ``prefix:N`` handle, or 0 if there is none."""
    tail = handle.rsplit(b':', 1)[-1]
    return int(tail) if tail.isdigit() else 0


class SqliteStore(JobStore):
    """Persist background jobs in a SQLite file.

    :arg str path: the database file; created if missing.
    :arg str synchronous: SQLite's ``synchronous`` setting (see the
        module docstring for what survives what).
    :arg bool group_commit: when True rows are committed by :meth:`flush`
        (the server must call it before replying); when False (the
        default) every ``add``/``remove`` commits at once.
    """

    log = logging.getLogger('gear.server.SqliteStore')

    def __init__(self, path, synchronous='NORMAL', group_commit=False):
        synchronous = synchronous.upper()
        if synchronous not in _SYNC_MODES:
            raise ConfigurationError(
                "synchronous must be one of %s" % ', '.join(_SYNC_MODES))
        self.path = path
        self.group_commit = group_commit
        try:
            self.db = sqlite3.connect(path, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute('PRAGMA journal_mode=WAL')
            self.db.execute('PRAGMA synchronous=%s' % synchronous)
            self.db.execute(_SCHEMA)
        except sqlite3.Error as e:
            raise ConfigurationError(
                "Cannot open job store %s: %s" % (path, e))
        self._dirty = False

    def _begin(self):
        if not self._dirty:
            self.db.execute('BEGIN')
            self._dirty = True

    def load(self):
        rows = self.db.execute(
            'SELECT handle, name, uniq, arguments, precedence, run_at '
            'FROM gear_jobs ORDER BY seq')
        return [StoredJob(bytes(h), bytes(n), bytes(u) if u else None,
                          bytes(a), p, w)
                for (h, n, u, a, p, w) in rows]

    def handleCounterStart(self):
        row = self.db.execute('SELECT max(seq) FROM gear_jobs').fetchone()
        return row[0] or 0

    def add(self, job):
        self._begin()
        self.db.execute(
            'INSERT OR REPLACE INTO gear_jobs '
            '(seq, handle, name, uniq, arguments, precedence, run_at) '
            'VALUES (?, ?, ?, ?, ?, ?, ?)',
            (handle_number(job.handle), job.handle, job.name, job.unique,
             job.arguments, job.precedence, job.when or 0))
        if not self.group_commit:
            self.flush()

    def remove(self, job):
        self._begin()
        self.db.execute('DELETE FROM gear_jobs WHERE handle = ?',
                        (job.handle,))
        if not self.group_commit:
            self.flush()

    def flush(self):
        """Commit what add/remove wrote since the last flush."""
        if self._dirty:
            self._dirty = False
            self.db.execute('COMMIT')

    def discard(self):
        """Roll back an unflushed batch (its JOB_CREATEDs must not go out).
        """
        if self._dirty:
            self._dirty = False
            self.db.execute('ROLLBACK')

    def count(self):
        return self.db.execute('SELECT count(*) FROM gear_jobs').fetchone()[0]

    def close(self):
        try:
            self.flush()
        finally:
            self.db.close()
