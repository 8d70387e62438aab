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

Opening checks the whole store (:mod:`gear.server.sqlite_check`) and
takes an exclusive lock on ``<path>.lock``, so a damaged store or a
second server on the same file is refused with a
:class:`~gear.server.store.StoreError`.

A removal is kept in memory until a commit that holds it succeeds: when a
commit fails (a full disk, a file system turned read-only), the removals
of the batch are written again by the next flush or probe.
"""

import errno
import fcntl
import logging
import os
import sqlite3
import time

from gear.errors import ConfigurationError
from gear.server import sqlite_check
from gear.server.store import JobStore, StoredJob, StoreError

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

_META_SCHEMA = """
CREATE TABLE IF NOT EXISTS gear_meta (
    key TEXT PRIMARY KEY,
    value
)
"""

_SYNC_MODES = ('OFF', 'NORMAL', 'FULL', 'EXTRA')

_DELETE = 'DELETE FROM gear_jobs WHERE handle = ?'


def _is_file(path):
    """False for SQLite's in-memory and temporary databases."""
    return bool(path) and path != ':memory:' and \
        not str(path).startswith('file:')


class StoreLock(object):
    """An exclusive ``flock`` on ``<path>.lock``, held while the store is
    open.  A sibling file, so that SQLite's own locks on the database are
    left alone; the kernel drops the lock when the process dies."""

    def __init__(self, path):
        self.path = '%s.lock' % (path,)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError('Cannot open job store %s: cannot create its '
                             'lock file %s: %s'
                             % (path, self.path, e.strerror or e))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = b''
            try:
                holder = os.pread(fd, 32, 0).strip()
            except OSError:
                pass
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise StoreError('cannot lock job store %s: %s'
                                 % (path, e.strerror or e))
            raise StoreError(
                'job store %s is in use by another server (process %s, '
                'lock file %s)' % (path, holder.decode('ascii', 'replace')
                                   or 'unknown', self.path))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, b'%d\n' % os.getpid(), 0)
        except OSError:
            pass  # the pid is only for the message above
        self.fd = fd

    def release(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


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
    :arg bool check: verify at open that every page and the WAL can be
        read (``PRAGMA integrity_check``); raise StoreError if not.
    :arg bool lock: take the exclusive lock on ``<path>.lock``; raise
        StoreError if another process (or store object) holds it.
    """

    log = logging.getLogger('gear.server.SqliteStore')

    def __init__(self, path, synchronous='NORMAL', group_commit=False,
                 check=True, lock=True):
        synchronous = synchronous.upper()
        if synchronous not in _SYNC_MODES:
            raise ConfigurationError(
                "synchronous must be one of %s" % ', '.join(_SYNC_MODES))
        self.path = path
        self.group_commit = group_commit
        self.healthy = True
        self.db = None
        self._lock = None
        self._dirty = False
        # Handles added in the open batch, for discard().
        self._batch_adds = []
        # Removals not yet committed (handle -> written in this batch).
        self._removals = {}
        on_disk = _is_file(path)
        try:
            if on_disk and lock:
                self._lock = StoreLock(path)
            if on_disk and check:
                sqlite_check.check_files(path)
            self._open(synchronous, check and on_disk)
        except BaseException:
            self._abandon()
            raise

    def _open(self, synchronous, check):
        path = self.path
        try:
            self.db = sqlite3.connect(path, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute('PRAGMA journal_mode=WAL')
            self.db.execute('PRAGMA synchronous=%s' % synchronous)
            problems = sqlite_check.integrity_problems(self.db) \
                if check else []
        except sqlite3.DatabaseError as e:
            if 'not a database' in str(e):
                raise StoreError(
                    'job store %s is not a SQLite database, or its first '
                    'page is damaged (%s); %s' % (
                        path, e, sqlite_check.MOVE_ASIDE % {'path': path}))
            if 'malformed' in str(e) or 'corrupt' in str(e):
                raise sqlite_check.damaged(path, e)
            raise StoreError("Cannot open job store %s: %s" % (path, e))
        if problems:
            raise sqlite_check.damaged(
                path, 'integrity check: ' + '; '.join(problems))
        try:
            self.db.execute(_SCHEMA)
            self.db.execute(_META_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError("Cannot open job store %s: %s" % (path, e))

    def _abandon(self):
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None
        if self._lock is not None:
            self._lock.release()

    @property
    def pending_removals(self):
        return len(self._removals)

    def _begin(self):
        if not self._dirty:
            if self.db.in_transaction:
                # Left open by a failed COMMIT that nobody discarded.
                self.discard()
            self.db.execute('BEGIN')
            self._dirty = True

    def load(self):
        try:
            rows = self.db.execute(
                'SELECT handle, name, uniq, arguments, precedence, run_at '
                'FROM gear_jobs ORDER BY seq').fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreError('cannot read the jobs of job store %s: %s'
                             % (self.path, e))
        return [StoredJob(bytes(h), bytes(n), bytes(u) if u else None,
                          bytes(a), p, w)
                for (h, n, u, a, p, w) in rows]

    def handleCounterStart(self):
        row = self.db.execute('SELECT max(seq) FROM gear_jobs').fetchone()
        return row[0] or 0

    def add(self, job):
        try:
            self._begin()
            self.db.execute(
                'INSERT OR REPLACE INTO gear_jobs '
                '(seq, handle, name, uniq, arguments, precedence, run_at) '
                'VALUES (?, ?, ?, ?, ?, ?, ?)',
                (handle_number(job.handle), job.handle, job.name,
                 job.unique, job.arguments, job.precedence, job.when or 0))
        except Exception:
            self._writeFailed()
            raise
        self._batch_adds.append(job.handle)
        if not self.group_commit:
            self._commitNow()

    def remove(self, job):
        handle = job.handle
        # Pending before anything can fail: written again until it sticks.
        self._removals[handle] = False
        try:
            self._begin()
            self.db.execute(_DELETE, (handle,))
        except Exception:
            self._writeFailed()
            raise
        self._removals[handle] = True
        if not self.group_commit:
            self._commitNow()

    def _writeFailed(self):
        # With group commit the batch lives on (the caller refuses just
        # this job); without it nothing may stay open for the next write.
        self.healthy = False
        if not self.group_commit:
            self.discard()

    def _commitNow(self):
        try:
            self.flush()
        except Exception:
            self.discard()
            raise

    def flush(self):
        """Commit the open batch and the removals still pending.

        Raises if the commit fails; then call :meth:`discard`.
        """
        if not self._dirty and not self._removals:
            return
        self._commit()

    def _commit(self, probe=False):
        try:
            self._begin()
            for handle, written in list(self._removals.items()):
                if not written:
                    self.db.execute(_DELETE, (handle,))
                    self._removals[handle] = True
            if probe:
                self.db.execute(
                    "INSERT OR REPLACE INTO gear_meta (key, value) "
                    "VALUES ('probe', ?)", (time.time(),))
            if not self.db.in_transaction:
                # SQLite rolled the batch back when a statement failed.
                raise StoreError('job store %s lost its open transaction'
                                 % (self.path,))
            self.db.execute('COMMIT')
        except Exception:
            self.healthy = False
            raise
        self._dirty = False
        self._batch_adds = []
        self._removals.clear()
        self.healthy = True

    def discard(self):
        """Roll back the open batch after a failed :meth:`flush`.

        Returns the handles of the jobs added in the batch: none of them
        is stored.  The batch's removals stay pending for the next flush.
        """
        rolled_back = self._batch_adds
        self._batch_adds = []
        self._dirty = False
        for handle in self._removals:
            self._removals[handle] = False
        if self.db.in_transaction:
            try:
                self.db.execute('ROLLBACK')
            except sqlite3.Error:
                self.log.exception("Rolling back job store %s failed",
                                   self.path)
        return rolled_back

    def probe(self):
        """Commit a small write and the pending removals; True if the
        store works.  Call it between batches (with nothing added since
        the last flush), for instance on a timer while ``healthy`` is
        False or ``pending_removals`` is not 0."""
        if self._batch_adds:
            raise StoreError('probe() with an unflushed batch of adds')
        try:
            self._commit(probe=True)
        except Exception as e:
            self.log.debug("Job store %s still fails: %s", self.path, e)
            self.discard()
            return False
        return True

    def count(self):
        return self.db.execute('SELECT count(*) FROM gear_jobs').fetchone()[0]

    def close(self):
        if self.db is None:
            return
        try:
            self.flush()
        except Exception:
            if self._removals:
                self.log.error(
                    "Job store %s: %d finished jobs could not be removed "
                    "and will run again after a restart", self.path,
                    len(self._removals))
            raise
        finally:
            self._abandon()
