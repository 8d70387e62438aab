"""Where the server keeps background jobs so that a restart loses none.

The server talks to a store through four calls:

* ``add(job)`` before JOB_CREATED is sent for a background job.  It must
  not return until the job is durable; any exception makes the server
  answer ``QUEUE_ERROR`` and forget the job.
* ``remove(job)`` when such a job ends (completed, failed, cancelled or
  dropped by the retry limit).  Errors are logged, never raised to peers.
* ``load()`` once at start: an iterable of :class:`StoredJob` to replay.
* ``close()`` at shutdown.

``handleCounterStart()`` tells the server the highest handle number the
store has seen, so that handles do not repeat across restarts.

A store keys jobs by their handle (which never repeats), never by the
unique: two background jobs with an empty or equal unique are two rows.
"""

import collections

from gear.errors import ConfigurationError

#: URL schemes that name a PostgreSQL store.
POSTGRESQL_SCHEMES = ('postgresql://', 'postgres://')

StoredJob = collections.namedtuple(
    'StoredJob', 'handle name unique arguments precedence when')


class JobStore(object):
    """The persistence interface; subclasses override every method."""

    #: False for stores that keep nothing; the server then skips the calls.
    persistent = True

    def load(self):
        return ()

    def add(self, job):
        raise NotImplementedError()

    def remove(self, job):
        raise NotImplementedError()

    def handleCounterStart(self):
        return 0

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
