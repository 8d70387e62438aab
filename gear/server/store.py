"""Where the server keeps background jobs so that a restart loses none.

The server talks to a store through these calls:

* ``add(job)`` before JOB_CREATED is sent for a background job.  It must
  not return until the job is durable, or, for a store with ``flush()``,
  until it is part of the open batch; any exception makes the server
  answer ``QUEUE_ERROR`` and forget the job.
* ``remove(job)`` when such a job ends (completed, failed, cancelled or
  dropped by the retry limit).  Errors are logged, never raised to
  peers; a store must keep a removal it could not write and write it
  later, or a restart would run a finished job again.
* ``load()`` once at start: an iterable of :class:`StoredJob` to replay.
  A store that cannot read all of its jobs raises :class:`StoreError`
  (at construction, preferably) instead of returning part of them.
* ``close()`` at shutdown.

Stores that batch writes (group commit) also have:

* ``flush()``: commit the open batch (adds and the removals not yet
  written).  It raises when the commit fails; the caller must then call
  ``discard()`` and must not acknowledge any job added in the batch.
* ``discard()``: roll back the open batch after a failed ``flush()`` (or
  instead of one).  Returns the handles of the jobs added in the batch,
  none of which is stored; the removals of the batch stay pending and
  are written by the next successful flush.
* ``probe()``: between batches, try a small commit (with the pending
  removals); True when the store can commit again.
* ``healthy``: False from a failed write until the next successful
  commit.
* ``pending_removals``: how many removals wait for a commit.

``handleCounterStart()`` tells the server the highest handle number the
store has seen, so that handles do not repeat across restarts.

A store keys jobs by their handle (which never repeats), never by the
unique: two background jobs with an empty or equal unique are two rows.
"""

import collections

from gear.errors import ConfigurationError


class StoreError(ConfigurationError):
    """A job store cannot be used: it is damaged, cannot be read
    completely, or is in use by another server."""


#: URL schemes that name a PostgreSQL store.
POSTGRESQL_SCHEMES = ('postgresql://', 'postgres://')

StoredJob = collections.namedtuple(
    'StoredJob', 'handle name unique arguments precedence when')


class JobStore(object):
    """The persistence interface; subclasses override every method."""

    #: False for stores that keep nothing; the server then skips the calls.
    persistent = True
    #: False while the store cannot write (see the module docstring).
    healthy = True
    #: Removals that wait for a commit.
    pending_removals = 0

    def load(self):
        return ()

    def add(self, job):
        raise NotImplementedError()

    def remove(self, job):
        raise NotImplementedError()

    def handleCounterStart(self):
        return 0

    def probe(self):
        """True when the store can write; stores that write at once have
        nothing to try."""
        return True

    def close(self):
        pass


class NullStore(JobStore):
    """Keeps nothing: background jobs live in memory only."""

    persistent = False

    def add(self, job):
        pass

    def remove(self, job):
        pass


def open_store(spec, server_id=None):
    """Return a store for the Server's ``store`` argument.

    None gives a :class:`NullStore`; a ``postgresql://`` URL a
    :class:`~gear.server.pg_store.PgStore` writing under ``server_id``;
    another string is a SQLite file path
    (``gear.server.sqlite_store.SqliteStore``); anything else is used as
    the store object itself.
    """
    if spec is None:
        return NullStore()
    if isinstance(spec, str) and spec.startswith(POSTGRESQL_SCHEMES):
        from gear.server.pg_store import PgStore
        return PgStore(spec, server_id)
    if isinstance(spec, str):
        try:
            from gear.server.sqlite_store import SqliteStore
        except ImportError:
            raise ConfigurationError(
                "No SQLite job store is available for %r" % (spec,))
        # The server commits once per loop turn, before it acknowledges.
        return SqliteStore(spec, group_commit=True)
    for name in ('add', 'remove', 'load'):
        if not callable(getattr(spec, name, None)):
            raise ConfigurationError(
                "A job store needs add(), remove() and load() methods")
    return spec
