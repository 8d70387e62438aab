"""A PostgreSQL job store: many servers, one database, and takeover.

Each server writes its background jobs under its own *server id* (by
default its job-handle prefix) in one shared table, so several geards can
use one PostgreSQL.  At start a server takes a session advisory lock on
its id: while it lives, no other server can start with that id or adopt
its jobs.  A server started with ``adopt`` ids moves the rows of servers
that are gone (their lock is free) into its own, in one transaction, and
replays them with its own.

Durability follows the SQLite store's rule: ``add()`` and ``remove()``
only buffer, and :meth:`PgStore.flush` writes the batch in one
transaction (a COPY of the new rows and one DELETE of the ended ones: a
few round trips per batch, never one per job), before the server sends
the batch's JOB_CREATED replies.  A job is acknowledged only once
PostgreSQL has committed it (with its ``synchronous_commit`` setting,
``on`` by default; set it in the URL's ``options`` to trade safety for
speed).

When the connection is lost, ``flush`` raises, the batch is not
acknowledged, and until a background thread has reconnected (and taken
the lock again) ``add`` raises :class:`StoreUnavailable` at once, so
submissions get a QUEUE_ERROR instead of waiting.  Removals are kept and
written after the reconnection.  :meth:`PgStore.probe` tells whether the
store works.

Needs psycopg 3 (``pip install gear[postgresql]``).
"""

import hashlib
import logging
import threading

from gear.errors import ConfigurationError, GearmanError
from gear.server.store import JobStore, StoredJob

#: The schema version this code writes; older databases are migrated.
SCHEMA_VERSION = 1

# Each step takes the schema from version i to i + 1.  gearmand's queue
# table has function_name, unique_key, priority, data and when_to_run;
# these columns keep its names and meanings.
_MIGRATIONS = [
    """
    CREATE TABLE gear_queue (
        server_id text NOT NULL,
        handle bytea NOT NULL,
        seq bigint NOT NULL,
        function_name bytea NOT NULL,
        unique_key bytea,
        priority smallint NOT NULL,
        data bytea NOT NULL,
        when_to_run bigint NOT NULL DEFAULT 0,
        created timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (server_id, handle)
    )
    """,
]

# Advisory lock key that serialises schema creation between servers.
_SCHEMA_LOCK = 0x6765617200000001

# gear precedence (normal 0, low 1, high 2) <-> gearmand priority
# (high 0, normal 1, low 2).
_PRIORITY = {0: 1, 1: 2, 2: 0}
_PRECEDENCE = {v: k for k, v in _PRIORITY.items()}

# Binary COPY: the database parses no hex escapes (about a quarter less
# of its CPU per row than text COPY).
_COPY = ('COPY gear_queue (server_id, handle, seq, function_name,'
         ' unique_key, priority, data, when_to_run) FROM STDIN'
         ' (FORMAT BINARY)')
_COPY_TYPES = ('text', 'bytea', 'int8', 'bytea', 'bytea', 'int2', 'bytea',
               'int8')
_DELETE = ('DELETE FROM gear_queue WHERE server_id = %s'
           ' AND handle = ANY(%s::bytea[])')

RECONNECT_MIN = 0.1
RECONNECT_MAX = 2.0

# libpq settings that make a dead link fail within seconds instead of
# TCP's minutes; the URL may override any of them.
_LINK_DEFAULTS = {
    'connect_timeout': '5',
    'keepalives': '1',
    'keepalives_idle': '5',
    'keepalives_interval': '2',
    'keepalives_count': '3',
    'tcp_user_timeout': '10000',
}


class StoreUnavailable(GearmanError):
    """The database cannot be reached; nothing can be stored right now."""


def lock_key(server_id):
    """The advisory lock key (a signed 64-bit int) of a server id."""
    digest = hashlib.sha256(b'gear-server-id\x00' +
                            server_id.encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'big', signed=True)


def _handle_number(handle):
    tail = handle.rsplit(b':', 1)[-1]
    return int(tail) if tail.isdigit() and len(tail) < 19 else 0


def _import_psycopg():
    try:
        import psycopg
    except ImportError:
        raise ConfigurationError(
            "The PostgreSQL job store needs psycopg 3: "
            "pip install 'gear[postgresql]'")
    return psycopg


class PgStore(JobStore):
    """Persist background jobs in PostgreSQL.

    :arg str url: a libpq URL or connection string
        (``postgresql://user@host/db``).
    :arg str server_id: the name this server's rows go under; two live
        servers never share one.  Default: the server's handle prefix.
    :arg adopt: ids of dead servers whose jobs this server takes over at
        start.
    """

    log = logging.getLogger('gear.server.PgStore')

    def __init__(self, url, server_id, adopt=()):
        self._psycopg = _import_psycopg()
        if isinstance(server_id, bytes):
            server_id = server_id.decode('utf-8', 'replace')
        if not server_id:
            raise ConfigurationError("The PostgreSQL store needs a server id")
        self.url = url
        self.server_id = server_id
        self.adopted = {}
        self._adds = {}
        self._deletes = []
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._reconnector = None
        self.conn = self._connect(initial=True)
        try:
            self._migrate()
            for other in adopt:
                self.adopted[other] = self._adopt(other)
        except BaseException:
            self.conn.close()
            raise

    # -- connection ----------------------------------------------------------

    def _connect(self, initial=False):
        psycopg = self._psycopg
        try:
            params = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error as e:
            raise ConfigurationError("Bad PostgreSQL URL: %s" % (e,))
        for name, value in _LINK_DEFAULTS.items():
            params.setdefault(name, value)
        params.setdefault('application_name', 'geard %s' % self.server_id)
        try:
            conn = psycopg.connect(autocommit=True, **params)
        except psycopg.Error as e:
            if initial:
                raise ConfigurationError(
                    "Cannot connect to the PostgreSQL job store: %s" % (e,))
            raise
        try:
            held = conn.execute('SELECT pg_try_advisory_lock(%s)',
                                (lock_key(self.server_id),)).fetchone()[0]
        except BaseException:
            conn.close()
            raise
        if not held:
            conn.close()
            message = ("Another live server holds server id %r in the "
                       "PostgreSQL job store" % (self.server_id,))
            if initial:
                raise ConfigurationError(
                    message + "; give this one another --server-id")
            raise StoreUnavailable(message)
        return conn

    def _lost(self, error):
        """The connection failed: drop it and reconnect in the background.
        """
        conn, self.conn = self.conn, None
        if conn is not None:
            self.log.error("Lost the PostgreSQL job store (%s); "
                           "reconnecting", error)
            try:
                conn.close()
            except Exception:
                pass
        if self._reconnector is None and not self._closed.is_set():
            self._reconnector = threading.Thread(
                target=self._reconnect, name='gear PgStore reconnect',
                daemon=True)
            self._reconnector.start()

    def _reconnect(self):
        delay = RECONNECT_MIN
        last = None
        while not self._closed.wait(delay):
            try:
                conn = self._connect()
            except Exception as e:
                # Say each new reason once, not every few seconds.
                if str(e) != last:
                    self.log.warning("PostgreSQL job store still "
                                     "unavailable: %s", e)
                    last = str(e)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            with self._lock:
                self._reconnector = None
                if self._closed.is_set():
                    conn.close()
                    return
                self.conn = conn
            self.log.warning("Reconnected to the PostgreSQL job store")
            return
        self._reconnector = None

    def _check(self):
        conn = self.conn
        if conn is None or conn.closed:
            if conn is not None:
                self._lost('connection closed')
            raise StoreUnavailable("The PostgreSQL job store is unavailable")
        return conn

    def probe(self):
        """True when the database answers (with this server's lock held).
        """
        with self._lock:
            if self.conn is None:
                if self._reconnector is None and not self._closed.is_set():
                    self._lost('probe')
                return False
            try:
                self.conn.execute('SELECT 1')
            except self._psycopg.Error as e:
                self._lost(e)
                return False
            return True

    # -- schema and takeover -------------------------------------------------

    def _migrate(self):
        with self.conn.transaction():
            self.conn.execute('SELECT pg_advisory_xact_lock(%s)',
                              (_SCHEMA_LOCK,))
            self.conn.execute('CREATE TABLE IF NOT EXISTS gear_schema ('
                              'version integer NOT NULL)')
            row = self.conn.execute(
                'SELECT max(version) FROM gear_schema').fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    "The PostgreSQL job store has schema version %d; this "
                    "gear knows up to %d" % (version, SCHEMA_VERSION))
            for step in range(version, SCHEMA_VERSION):
                self.conn.execute(_MIGRATIONS[step])
                self.log.info("Job store schema migrated to version %d",
                              step + 1)
            if version < SCHEMA_VERSION:
                self.conn.execute('DELETE FROM gear_schema')
                self.conn.execute('INSERT INTO gear_schema VALUES (%s)',
                                  (SCHEMA_VERSION,))

    def _adopt(self, other):
        """Move the rows of dead server ``other`` under this server's id.
        """
        if isinstance(other, bytes):
            other = other.decode('utf-8', 'replace')
        if other == self.server_id:
            raise ConfigurationError("A server cannot adopt its own id")
        with self.conn.transaction():
            free = self.conn.execute(
                'SELECT pg_try_advisory_xact_lock(%s)',
                (lock_key(other),)).fetchone()[0]
            if not free:
                raise ConfigurationError(
                    "Server id %r is still held by a live server; only the "
                    "jobs of a stopped server can be adopted" % (other,))
            moved = self.conn.execute(
                'UPDATE gear_queue SET server_id = %s WHERE server_id = %s',
                (self.server_id, other)).rowcount
        self.log.info("Adopted %d stored jobs of server %s", moved, other)
        return moved

    # -- the store interface -------------------------------------------------

    def load(self):
        rows = self._check().execute(
            'SELECT handle, function_name, unique_key, data, priority,'
            ' when_to_run FROM gear_queue WHERE server_id = %s'
            ' ORDER BY seq, handle', (self.server_id,)).fetchall()
        return [StoredJob(bytes(h), bytes(n), bytes(u) if u else None,
                          bytes(d), _PRECEDENCE.get(p, 0), w or 0)
                for (h, n, u, d, p, w) in rows]

    def handleCounterStart(self):
        row = self._check().execute(
            'SELECT max(seq) FROM gear_queue WHERE server_id = %s',
            (self.server_id,)).fetchone()
        return row[0] or 0

    def add(self, job):
        if self.conn is None:
            raise StoreUnavailable("The PostgreSQL job store is unavailable")
        self._adds[job.handle] = job

    def remove(self, job):
        if self._adds.pop(job.handle, None) is None:
            self._deletes.append(job.handle)

    def flush(self):
        """Write what add/remove buffered, in one transaction."""
        if not self._adds and not self._deletes:
            return
        with self._lock:
            conn = self._check()
            adds = list(self._adds.values())
            deletes = self._deletes
            try:
                cur = conn.cursor()
                if adds and deletes:
                    with conn.transaction():
                        self._copy(cur, adds)
                        cur.execute(_DELETE, (self.server_id, deletes))
                elif adds:
                    # One statement is its own transaction: no BEGIN and
                    # COMMIT round trips.
                    self._copy(cur, adds)
                else:
                    cur.execute(_DELETE, (self.server_id, deletes))
            except self._psycopg.Error as e:
                self._failed(conn, e)
                raise StoreUnavailable("Job store commit failed: %s" % (e,))
            self._adds.clear()
            self._deletes = []

    def _copy(self, cur, jobs):
        server_id = self.server_id
        priority = _PRIORITY.get
        with cur.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            write = copy.write_row
            for job in jobs:
                handle = job.handle
                write((server_id, handle, _handle_number(handle), job.name,
                       job.unique or None, priority(job.precedence, 1),
                       bytes(job.arguments), int(job.when or 0)))

    def _failed(self, conn, error):
        if conn.closed or conn.broken:
            self._lost(error)
        else:
            # A statement failed on a live link (a full disk, say); the
            # transaction is rolled back and the next batch may succeed.
            self.log.error("Job store batch failed: %s", error)

    def discard(self):
        """Forget the unwritten additions (they were never acknowledged);
        keep the removals for the next flush."""
        self._adds.clear()

    def count(self):
        """How many rows this server owns."""
        return self._check().execute(
            'SELECT count(*) FROM gear_queue WHERE server_id = %s',
            (self.server_id,)).fetchone()[0]

    def close(self):
        self._closed.set()
        with self._lock:
            conn, self.conn = self.conn, None
            if conn is None:
                return
            try:
                if self._adds or self._deletes:
                    self.conn = conn
                    self.flush()
            except Exception:
                self.log.exception("Job store writes lost at close")
            finally:
                self.conn = None
                self._release(conn)

    def _release(self, conn):
        """Free the id's lock, then close.  The database ends a session
        (and drops its locks) only some time after the client leaves; an
        explicit unlock lets a successor start or adopt at once."""
        try:
            if not conn.closed:
                conn.execute('SELECT pg_advisory_unlock_all()')
        except self._psycopg.Error:
            pass
        finally:
            conn.close()
