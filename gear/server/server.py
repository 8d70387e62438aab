"""The Gearman job server: one event-loop thread.

The loop (``_pollLoop``) waits on epoll (or any ``selectors`` backend),
accepts on the non-blocking listening socket, reads each readable socket
with one large ``recv``, parses every complete message and dispatches
binary packets through a table indexed by packet type.  Replies are
appended to the connections' output buffers and flushed once per turn.
Timers (CAN_DO_TIMEOUT per job, epoch jobs, TLS handshake deadlines) live
in one heap; the poll timeout is the time to the next one.

This module keeps the loop, connection I/O, timers and shutdown.  The
rest of the server is mixed in: packet handlers from
:mod:`gear.server.handlers` (with tuned copies of the hot ones in
:mod:`gear.server.fastpath`), job lifecycle and worker wake-ups from
:mod:`gear.server.scheduling`, admin commands from
:mod:`gear.server.admin`.  Queue state lives in
:class:`gear.server.queue.JobQueue`; persistence behind
:mod:`gear.server.store`; the poller in :mod:`gear.server.poller`.
"""

import errno
import heapq
import itertools
import logging
import os
import select
import socket
import ssl
import threading
import time

from gear import constants
from gear.base import PACKET_HANDLERS
from gear.errors import ConfigurationError, ProtocolError
from gear.protocol import (
    DEFAULT_MAX_PACKET_SIZE, MessageScanner, Packet, PacketTooLarge, pack)
from gear.server import accepting
from gear.server import admin as admin_mod
from gear.server import fastpath
from gear.server import handlers
from gear.server import jobs as jobstates
from gear.server import metrics as metrics_mod
from gear.server import scheduling
from gear.server import semantics as semantics_mod
from gear.server import stats as stats_mod
from gear.server.connection import (
    ServerAdminRequest, ServerConnection, subject_from_cert)
from gear.server.jobs import CompactServerJob, ServerJob
from gear.server.poller import (
    _EV_READ, _EV_WRITE, _HAS_EPOLL, _READ_MASK, Poller)
from gear.server.queue import JobQueue, unique_key
from gear.server.store import StoreError, open_store
from gear.server.util import MAX_HANDLE, _CloseConnection, _to_bytes

REQ = constants.REQ
RES = constants.RES
NORMAL = constants.PRECEDENCE_NORMAL
HIGH = constants.PRECEDENCE_HIGH
LOW = constants.PRECEDENCE_LOW
RUNNING = jobstates.RUNNING
STATE = jobstates.STATE

# recv() allocates this much before shrinking to what arrived; above
# glibc's initial mmap threshold (128 KiB) every read could cost an
# mmap/mremap/munmap round trip.
RECV_SIZE = 64 * 1024
# The longest single poll wait; far timers are simply re-checked.
MAX_POLL_WAIT = 3600.0
# A handle is <prefix>:<n>, at most 63 bytes; n has at most 20 digits.
MAX_PREFIX = 63 - 21
# Store errors that do not stop the store are logged at most this often.
STORE_LOG_INTERVAL = 60.0

_packet_trusted = Packet._trusted

_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)


def _default_prefix():
    host = socket.gethostname().encode('utf8', 'replace') or b'localhost'
    return (b'H:' + host)[:MAX_PREFIX]


class Server(handlers.PacketHandlers, scheduling.Scheduling,
             fastpath.FastPaths, admin_mod.AdminHandlers):
    """A Gearman job server.

    The positional arguments are gear's; everything after ``tcp_keepcnt``
    is keyword-only:

    :arg job_retries: requeues allowed after a job loses its worker before
        its clients get WORK_FAIL (None: unlimited; 0: fail at the first
        loss).
    :arg store: None (memory only), a SQLite path, a ``postgresql://``
        URL (its rows go under the handle prefix as server id), or a store
        object (:mod:`gear.server.store`) for background jobs.
    :arg bool exceptions: the ``exceptions`` option every new connection
        starts with.
    :arg job_handle_prefix: handles are ``<prefix>:<n>``; default
        ``H:<hostname>``.
    :arg int backlog: the listen backlog.
    :arg int worker_wakeup: how many sleeping workers one queued job
        wakes (0: all of them).
    :arg int max_packet_size: larger packet headers get ERROR and a close.
    :arg int max_connections: connections beyond this are closed at once.
    :arg int max_output_buffer: a peer whose unread output exceeds this is
        disconnected.  Long before that, once a peer leaves more than
        ``output_high_water`` bytes unread, the server stops reading its
        requests until it has read most of its replies (backpressure);
        the cap is for output the peer does not cause itself, such as
        results forwarded to a client that never reads.
    :arg float tls_handshake_timeout: seconds a TLS peer gets to finish
        its handshake.
    :arg bool allow_admin_shutdown: let the ``shutdown`` admin command
        stop the server (off, as in gearmand >= 1.1.15).
    :arg bool metrics: count and time jobs, packets and store commits
        (in ``self.metrics``, a ``gear.server.metrics.Recorder``) for
        :class:`gear.server.http.HTTPServer`; off, ``self.metrics`` is
        None and nothing is counted.
    :arg str semantics: ``'gear'`` (the default) keeps gear 0.16's
        observable semantics wherever its callers could depend on them;
        ``'gearmand'`` (what ``geard`` runs) follows gearmand's.  See
        :doc:`migration-gear` for the differences.
    """

    #: The values ``semantics`` accepts.
    SEMANTICS = ('gear', 'gearmand')

    if _HAS_EPOLL:
        edge_bitmask = select.EPOLLET
        error_bitmask = select.EPOLLERR | select.EPOLLHUP | edge_bitmask
        read_bitmask = select.EPOLLIN | error_bitmask
        readwrite_bitmask = select.EPOLLOUT | read_bitmask

    log = logging.getLogger('gear.Server')

    #: The class of the jobs the server creates.  None picks
    #: :class:`~gear.server.jobs.CompactServerJob` (no per-job
    #: ``__dict__``) for ``Server`` itself and
    #: :class:`~gear.server.jobs.ServerJob`, which takes attributes of any
    #: name as gear's jobs did, for subclasses: their overrides may set
    #: attributes of their own on jobs.
    job_class = None

    #: Seconds between two tries of a failing store (or of one with
    #: removals still to write).
    store_probe_interval = 1.0

    def __init__(self, port=4730, ssl_key=None, ssl_cert=None, ssl_ca=None,
                 statsd_host=None, statsd_port=8125, statsd_prefix=None,
                 server_id=None, acl=None, host=None, keepalive=False,
                 tcp_keepidle=7200, tcp_keepintvl=75, tcp_keepcnt=9, *,
                 job_retries=None, store=None, exceptions=False,
                 job_handle_prefix=None, backlog=128, worker_wakeup=0,
                 max_packet_size=DEFAULT_MAX_PACKET_SIZE,
                 max_connections=10000,
                 max_output_buffer=128 * 1024 * 1024,
                 tls_handshake_timeout=10.0, allow_admin_shutdown=False,
                 semantics='gear', metrics=False):
        if semantics not in self.SEMANTICS:
            raise ConfigurationError("semantics must be one of %s" %
                                     ", ".join(self.SEMANTICS))
        self.semantics = semantics
        self._semantics = semantics_mod.POLICIES[semantics]
        self.port = port
        self.host = host
        self.ssl_key = ssl_key
        self.ssl_cert = ssl_cert
        self.ssl_ca = ssl_ca
        self.use_ssl = bool(ssl_key and ssl_cert and ssl_ca)
        self.server_id = server_id
        self.client_id = server_id
        self.acl = acl
        self.keepalive = keepalive
        self.tcp_keepidle = tcp_keepidle
        self.tcp_keepintvl = tcp_keepintvl
        self.tcp_keepcnt = tcp_keepcnt
        if job_retries is not None and job_retries < 0:
            job_retries = None
        self.job_retries = job_retries
        self.exceptions = bool(exceptions)
        self.backlog = max(1, int(backlog))
        self.worker_wakeup = max(0, int(worker_wakeup or 0))
        self.max_packet_size = int(max_packet_size)
        self.max_connections = accepting.clamp_max_connections(
            int(max_connections), self.log)
        self.max_output_buffer = max(int(max_output_buffer),
                                     self.max_packet_size + 1024)
        # Reading from a peer pauses above the high-water mark and
        # resumes below the low one.
        self.output_high_water = min(1024 * 1024,
                                     self.max_output_buffer // 2)
        self.output_low_water = self.output_high_water // 4
        self.tls_handshake_timeout = float(tls_handshake_timeout)
        self.allow_admin_shutdown = allow_admin_shutdown
        if job_handle_prefix is None:
            prefix = _default_prefix()
        else:
            prefix = _to_bytes(job_handle_prefix)
            if not prefix or len(prefix) > MAX_PREFIX:
                raise ConfigurationError(
                    "job_handle_prefix must be 1 to %d bytes" % MAX_PREFIX)
        self.job_handle_prefix = prefix
        self._handle_format = prefix + b':%d'

        self._job_class = self.job_class or (
            CompactServerJob if type(self) is Server else ServerJob)
        self.queue = JobQueue(prefix + b':')
        self.queue.on_enqueue = self._wakeFunction
        self.high_queue = self.queue.high_queue
        self.normal_queue = self.queue.normal_queue
        self.low_queue = self.queue.low_queue
        self.jobs = self.queue.jobs
        # gear 0.16's set of function names.
        self.functions = self.queue.names

        self.store = open_store(store, server_id=prefix)
        self._persist = getattr(self.store, 'persistent', True)
        # Stores that batch writes commit once per loop turn, before the
        # JOB_CREATED replies of that turn are sent.  _store_acked holds
        # the replies waiting for that commit, as (connection, offset in
        # its output, job), or None for a removal.
        self._store_flush = getattr(self.store, 'flush', None) \
            if self._persist else None
        self._store_acked = []
        # Background jobs stored this turn but not committed yet; if the
        # commit fails they never existed (see _commitStore).
        self._uncommitted = {}
        # True while the store fails (see _storeCheck).
        self._store_down = False
        self._store_quiet_until = 0.0
        self._probe_timer = None

        self.statsd = None
        self.stats = None
        if statsd_host:
            self.stats = stats_mod.make_reporter(
                statsd_host, statsd_port, statsd_prefix)
            self.statsd = getattr(self.stats, 'client', None)
        self._timed = (self.stats is not None or
                       type(self).reportTimingStats
                       is not Server.reportTimingStats)

        self._debug = self.log.isEnabledFor(logging.DEBUG)
        self.lock = threading.RLock()
        # Attributes gear's Server had from its client base class, kept
        # for callers that read them (the server has no client threads).
        self.inactive_connections = []
        self.connection_index = -1
        self.connections_condition = threading.Condition()
        self.connect_thread = None
        self.connection_map = {}
        self._dirty = []
        self._closing = []
        self._timers = []
        self._timer_seq = itertools.count()
        self.running = True
        self._draining = False
        self._stopped = threading.Event()
        self._shutdown_called = False
        self._listener_closed = False
        self._loop_ident = None
        self._ssl_context = self._makeSSLContext() if self.use_ssl else None
        self.metrics = metrics_mod.Recorder(prefix + b':') \
            if metrics else None
        self._handlers = self._buildHandlers()

        self.socket = self._listen()
        self.port = self.socket.getsockname()[1]
        self.poll = Poller(_HAS_EPOLL)
        self._listen_fd = self.socket.fileno()
        self.poll.register(self._listen_fd, _EV_READ)
        self._accept_throttle = accepting.AcceptThrottle(self)
        self.connect_wake_read, self.connect_wake_write = os.pipe()
        os.set_blocking(self.connect_wake_read, False)
        os.set_blocking(self.connect_wake_write, False)
        self.wake_read = self.connect_wake_read
        self.wake_write = self.connect_wake_write
        self.poll.register(self.connect_wake_read, _EV_READ)

        try:
            self._replay()
        except Exception:
            self._cleanup()
            raise
        if self.metrics is not None:
            self.metrics.start(self.queue.max_handle)

        self.poll_thread = threading.Thread(
            name='Gearman server poll', target=self._doPollLoop)
        self.poll_thread.daemon = True
        self.poll_thread.start()

    # -- setup ---------------------------------------------------------------

    def _makeSSLContext(self):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ssl_cert, self.ssl_key)
        context.load_verify_locations(self.ssl_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _listen(self):
        if self.host is None and socket.has_ipv6:
            try:
                return self._bind(socket.AF_INET6, ('::', self.port), True)
            except OSError:
                pass
        if self.host is None:
            return self._bind(socket.AF_INET, ('0.0.0.0', self.port))
        last = None
        for family, _, _, _, addr in socket.getaddrinfo(
                self.host, self.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                0, socket.AI_PASSIVE):
            try:
                return self._bind(family, addr)
            except OSError as e:
                last = e
        raise last or OSError("cannot bind %s:%s" % (self.host, self.port))

    def _bind(self, family, addr, dual=False):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if self.keepalive:
                self._setKeepalive(sock)
            sock.bind(addr)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except Exception:
            sock.close()
            raise
        return sock

    def _setKeepalive(self, sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (('TCP_KEEPIDLE', self.tcp_keepidle),
                            ('TCP_KEEPINTVL', self.tcp_keepintvl),
                            ('TCP_KEEPCNT', self.tcp_keepcnt)):
            opt = getattr(socket, name, None)
            if opt is not None:
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)

    def _buildHandlers(self):
        """Packet type -> bound handler, so subclass overrides apply."""
        # Every hook name the library knows, less the replies only a
        # server sends (receiving one of those is an invalid command).
        names = {ptype: name for ptype, name in PACKET_HANDLERS.items()
                 if ptype not in constants.RESPONSE_TYPES}
        table = [self._invalidCommand] * (constants.MAX_TYPE + 1)
        for ptype, name in names.items():
            table[ptype] = getattr(self, name)
        # An override of handlePacket sees every packet (gear's contract).
        self._hooked_packets = self._overridden('handlePacket')
        fast = self._buildFastHandlers(names, table)
        # Type 0 is no packet type: the same path as an unknown one.
        fast[0] = self._typeZero
        self._scanner = MessageScanner(fast, self._otherPacket,
                                       self._adminLine,
                                       self.max_packet_size)
        return table

    def _overridden(self, name):
        return getattr(type(self), name, None) is not getattr(Server, name)

    def _replay(self):
        """Queue the background jobs the store kept from a previous run."""
        start = 0
        try:
            start = int(self.store.handleCounterStart() or 0)
        except Exception:
            self.log.exception("Job store could not report its handles")
        if self._persist:
            # Stored rows only remember the handles still queued; a clock
            # in microseconds (faster than any job rate) keeps handles of
            # finished jobs from coming back after a restart.
            start = max(start, time.time_ns() // 1000)
        if start > self.queue.max_handle:
            self.queue.max_handle = start
        try:
            stored = list(self.store.load() or ())
        except StoreError:
            raise
        except Exception as e:
            # Serving part of the jobs, or none, would hide the loss and
            # pile new jobs onto a store that cannot be read back.
            raise StoreError("Job store could not be read: %s: %s"
                             % (type(e).__name__, e))
        now = time.time()
        for record in stored:
            try:
                self._replayOne(record, now)
            except Exception:
                self.log.exception("Cannot replay stored job %r", record)
        if stored:
            self.log.info("Replayed %d stored background jobs", len(stored))
        if self._store_flush is not None:
            # Rows replay had to re-key: commit them now, so that no batch
            # is open when the loop starts (probe() needs none).
            try:
                self._store_flush()
            except Exception as e:
                discard = getattr(self.store, 'discard', None)
                if discard is not None:
                    discard()
                raise StoreError("Job store could not be written at "
                                 "start: %s: %s" % (type(e).__name__, e))

    def _replayOne(self, record, now):
        name = _to_bytes(record.name)
        unique = _to_bytes(record.unique) if record.unique else None
        arguments = _to_bytes(record.arguments or b'')
        precedence = record.precedence
        if precedence not in (NORMAL, LOW, HIGH):
            precedence = NORMAL
        handle = _to_bytes(record.handle) if record.handle else None
        q = self.queue
        if handle:
            try:
                n = int(handle[handle.rindex(b':') + 1:])
            except ValueError:
                n = 0
            if n > q.max_handle:
                q.max_handle = n
        if not handle or handle in q.jobs or len(handle) > MAX_HANDLE:
            handle = self._handle_format % q.nextHandleNumber()
            self._storeAdd(None, handle, name, unique, arguments,
                           precedence, record)
        fq = q.function(name)
        key = unique_key(unique, arguments)
        job = self._job_class._new(handle, name, arguments, unique,
                                   None, precedence, True, fq)
        if record.when:
            job.when = record.when
        job._order = (q.max_handle, 0)
        if key is not None and key in fq.uniques:
            key = None
        q.add(job, fq, key, now)
        if (job._state & STATE) == jobstates.EPOCH:
            self._armEpochTimer(fq)

    def _storeAdd(self, job, handle, name, unique, arguments, precedence,
                  record):
        # A replayed row whose handle had to change: store it anew and drop
        # the old row.
        fresh = self._job_class._new(handle, name, arguments, unique,
                                     None, precedence, True)
        if record.when:
            fresh.when = record.when
        try:
            self.store.add(fresh)
            self.store.remove(record)
        except Exception:
            self.log.exception("Cannot re-key stored job %r", record)

    # -- thread plumbing -----------------------------------------------------

    def _onLoopThread(self):
        return threading.get_ident() == self._loop_ident

    def _kick(self):
        """Wake the loop (from another thread) so that it flushes output."""
        try:
            os.write(self.connect_wake_write, b'x')
        except OSError:
            pass

    def _notifyOutput(self, conn):
        # Output queued by user code through ServerConnection.sendRaw.
        if conn not in self._dirty:
            self._dirty.append(conn)
        if not self._onLoopThread():
            self._kick()

    def _doPollLoop(self):
        self._loop_ident = threading.get_ident()
        try:
            self._pollLoop()
        except Exception:
            self.log.exception("Server loop crashed")
        finally:
            self._cleanup()
            self._stopped.set()

    def _pollLoop(self):
        while self.running:
            try:
                self._pollTurns()
            except Exception:
                # Never let one bad event stop the server.
                self.log.exception("Error in the server loop")

    def _pollTurns(self):
        poll = self.poll.poll
        fdmap = self.connection_map
        listen_fd = self._listen_fd
        wake_fd = self.connect_wake_read
        timers = self._timers
        dirty = self._dirty
        lock = self.lock
        process = self._processPollEvent
        handle_input = self._processData
        flush = self._flushDirty
        # A readable plain socket is read right here, without the two
        # calls of the general path: in a sequential exchange every turn
        # is one such read, and the calls cost more than their work when
        # the turn starts with cold caches.  Overrides of either method
        # keep the general path.
        inline = not (self._overridden('_processPollEvent') or
                      self._overridden('readFromConnection'))
        plain_read = _EV_READ
        recv_size = RECV_SIZE
        metrics = self.metrics
        queue = self.queue
        monotonic = time.monotonic
        while self.running:
            timeout = -1
            if timers:
                timeout = min(MAX_POLL_WAIT,
                              max(0.0, timers[0][0] - time.monotonic()))
            if metrics is not None and metrics.ended and not (
                    0 <= timeout <= metrics_mod.FLUSH_INTERVAL):
                # Ended jobs are counted within FLUSH_INTERVAL, idle or
                # not (the dashboard's rates read the counters).
                timeout = metrics_mod.FLUSH_INTERVAL
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            with lock:
                if metrics is not None:
                    metrics.now = turn = monotonic()
                    ended = metrics.ended
                    if ended and (turn >= metrics.flush_due or
                                  len(ended) >= metrics_mod.FLUSH_AT):
                        metrics.flush()
                    # Recorder.mark() only notes a turn MARK_RESOLUTION
                    # after the last mark; the test here spares the call.
                    if queue.max_handle != metrics.marked and (
                            turn - metrics._mark_t[-1] >=
                            metrics_mod.MARK_RESOLUTION or
                            turn >= metrics._next_sweep):
                        metrics.mark(queue.max_handle)
                    if metrics.capture_request is not None:
                        metrics.serveCapture(self)
                for fd, ev in events:
                    conn = fdmap.get(fd)
                    if conn is None:
                        if fd == listen_fd:
                            self.connectLoop()
                        elif fd == wake_fd:
                            self._drainWakePipe()
                        continue
                    if ev == plain_read and inline and conn._plain:
                        try:
                            data = conn.conn.recv(recv_size)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except (OSError, ValueError) as e:
                            self._readFailed(conn, e)
                        else:
                            if data:
                                handle_input(conn, data)
                            else:
                                self._lostConnection(conn)
                    else:
                        process(conn, ev)
                    if self._closing:
                        self._closeDeferred()
                if timers and timers[0][0] <= time.monotonic():
                    self._runTimers()
                if self._store_acked:
                    self._commitStore()
                if dirty:
                    flush(dirty)
                if self._draining and not self.queue.running:
                    self.running = False

    def _processPollEvent(self, conn, event):
        """Handle one poll event of a connection."""
        if conn._handshaking:
            self._continueHandshake(conn)
            return
        if event & _READ_MASK:
            self.readFromConnection(conn)
        if event & _EV_WRITE and not conn.closed:
            self.writeToConnection(conn)

    # -- the store-commit rule ------------------------------------------------

    def _awaitCommit(self, conn, job, background=True, adopted=False):
        """Hold the JOB_CREATED that ``conn`` is about to be sent for
        ``job`` until the job's add is committed.  Nothing else is
        appended to the output in between, and output only leaves after
        a commit, so its offset stays valid until then.  ``adopted``: a
        foreground job that a background submit made background."""
        self._store_acked.append(
            (conn, len(conn.send_queue), job, background))
        if job not in self._uncommitted:
            self._uncommitted[job] = adopted

    def _commitStore(self):
        """The store-commit rule: a background job is committed before
        its JOB_CREATED leaves.  Every acknowledging path waits here."""
        acked = self._store_acked
        uncommitted = self._uncommitted
        self._store_acked = []
        self._uncommitted = {}
        metrics = self.metrics
        start = time.monotonic() if metrics is not None else 0.0
        try:
            self._store_flush()
        except Exception as e:
            if metrics is not None:
                metrics.committed(time.monotonic() - start, False)
            self._commitFailed(acked, uncommitted, e)
            return
        if metrics is not None:
            metrics.committed(time.monotonic() - start)
        if self._store_down or getattr(self.store, 'pending_removals', 0):
            self._storeCheck()

    def _commitFailed(self, acked, uncommitted, error):
        """The jobs of a failed batch never existed: they leave every
        index (a retry with the same unique is a fresh job), and their
        submitters, those coalesced into them included, get QUEUE_ERROR
        in place of JOB_CREATED.  A foreground job that a background
        submit adopted stays, as a foreground job, for its clients."""
        lost = set(uncommitted)
        discard = getattr(self.store, 'discard', None)
        if discard is not None:
            try:
                handles = discard() or ()
            except Exception:
                self.log.exception("Job store could not discard a batch")
                handles = ()
            for handle in handles:
                job = self.queue.jobs.get(handle)
                if job is not None:
                    lost.add(job)
        self._storeFailed('commit', error)
        kept = set()
        for job in lost:
            if uncommitted.get(job) and job.clients:
                # A foreground job a background submit adopted: its own
                # clients keep it, in memory only.
                job.background = False
                kept.add(job)
            else:
                self._finishJob(job, stored=False)
        refused = pack(RES, constants.ERROR,
                       b'QUEUE_ERROR\x00Job store commit failed')
        # Last first, so that earlier offsets of a connection hold.
        for entry in reversed(acked):
            if entry is None:  # a removal only
                continue
            conn, offset, job, background = entry
            if conn.closed or job not in lost or \
                    (job in kept and not background):
                continue
            created = pack(RES, constants.JOB_CREATED, job.handle)
            out = conn.send_queue
            end = offset + len(created)
            if out[offset:end] == created:
                out[offset:end] = refused
            else:
                self.log.error("Lost track of the reply to %s on %s; "
                               "disconnecting it", job.handle, conn)
                out.clear()
                self._deferClose(conn)
        self._updateStats()

    def _storeFailed(self, what, error):
        """A store call failed.  Logged once when the store starts
        failing (and at most once a minute while it stays healthy, e.g.
        removals that will be retried), never once per job."""
        down = self._store_down
        self._storeCheck(error)
        if down or self._store_down:
            if self._debug:
                self.log.debug("Job store %s failed: %s", what, error)
            return
        now = time.monotonic()
        if now >= self._store_quiet_until:
            self._store_quiet_until = now + STORE_LOG_INTERVAL
            self.log.warning("Job store %s failed: %s; it will be retried",
                             what, error)

    def _storeCheck(self, error=None):
        """Follow the store's health: background submits are refused
        while it fails, and a timer probes it until it works and every
        pending removal is written.  Logs the start and the end."""
        store = self.store
        down = not getattr(store, 'healthy', True)
        if down != self._store_down:
            self._store_down = down
            if down:
                self.log.warning(
                    "Job store commit failed: %s; background submits get "
                    "QUEUE_ERROR until the store works again", error)
            else:
                self.log.warning("Job store works again; background "
                                 "submits are accepted")
        if (down or getattr(store, 'pending_removals', 0)) and \
                self._probe_timer is None:
            self._probe_timer = self._addTimer(
                self.store_probe_interval, self._probeStore, None)

    def _storeRecovered(self):
        """While the store fails, a background submit tries it once
        (with no add pending) before it is refused, so that the first
        job after the store recovers is accepted."""
        if self._uncommitted:
            return False
        try:
            self.store.probe()
        except Exception:
            self.log.exception("Job store probe failed")
        self._storeCheck()
        return not self._store_down

    def _probeStore(self, _):
        """The probe timer: between batches, try the store again."""
        self._probe_timer = None
        if self._store_acked:
            # Adds of this turn: commit them (with the removals) first.
            self._commitStore()
            if self._probe_timer is not None:
                return
        store = self.store
        if getattr(store, 'healthy', True) and \
                not getattr(store, 'pending_removals', 0):
            self._storeCheck()
            return
        try:
            store.probe()
        except Exception:
            self.log.exception("Job store probe failed")
        self._storeCheck()

    def _drainWakePipe(self):
        try:
            while os.read(self.connect_wake_read, 4096):
                pass
        except OSError:
            pass

    # -- accepting ------------------------------------------------------------

    def connectLoop(self):
        """Accept every pending connection (the listening socket is
        non-blocking and lives in the poll loop)."""
        for _ in range(256):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _WOULD_BLOCK:
                    return
                self._accept_throttle.acceptFailed(e)
                return
            if len(self.connection_map) >= self.max_connections:
                sock.close()
                self._accept_throttle.overLimit()
                continue
            try:
                self._registerConnection(sock, addr)
            except Exception:
                self.log.exception("Cannot set up connection from %s", addr)
                try:
                    sock.close()
                except OSError:
                    pass

    def _registerConnection(self, sock, addr=None):
        if addr is None:
            addr = sock.getpeername()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        if self.keepalive:
            try:
                self._setKeepalive(sock)
            except OSError:
                pass
        sock.setblocking(False)
        fd = sock.fileno()
        if self.use_ssl:
            sock = self._ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False)
        conn = ServerConnection(addr, sock, self.use_ssl, 'server',
                                _tls_pending=self.use_ssl,
                                max_packet_size=self.max_packet_size)
        conn.fd = fd
        conn.exceptions = self.exceptions
        conn._notify = self._notifyOutput
        self.connection_map[fd] = conn
        conn._events = _EV_READ
        self.poll.register(fd, _EV_READ)
        if self._debug:
            self.log.debug("Accepted %s", conn)
        if self.use_ssl:
            conn._handshake_timer = self._addTimer(
                self.tls_handshake_timeout, self._handshakeExpired, conn)
            self._continueHandshake(conn)
        return conn

    def _continueHandshake(self, conn):
        try:
            conn.conn.do_handshake()
        except ssl.SSLWantReadError:
            self._setEvents(conn, _EV_READ)
            return
        except ssl.SSLWantWriteError:
            self._setEvents(conn, _EV_READ | _EV_WRITE)
            return
        except (ssl.SSLError, OSError, ValueError) as e:
            self.log.info("TLS handshake with %s failed: %s", conn.host, e)
            self._lostConnection(conn)
            return
        conn._handshaking = False
        self._cancelTimer(conn._handshake_timer)
        conn._handshake_timer = None
        try:
            conn.ssl_subject = subject_from_cert(conn.conn.getpeercert())
        except (ValueError, OSError):
            conn.ssl_subject = None
        self._setEvents(conn, _EV_READ)
        if conn.conn.pending():
            self.readFromConnection(conn)

    def _handshakeExpired(self, conn):
        if conn._handshaking and not conn.closed:
            self.log.info("TLS handshake with %s timed out", conn.host)
            self._lostConnection(conn)

    def _setEvents(self, conn, events):
        if conn._events != events and not conn.closed:
            conn._events = events
            self.poll.modify(conn.fd, events)

    # -- reading --------------------------------------------------------------

    def readFromConnection(self, conn):
        """Read what the socket has and process every complete message."""
        sock = conn.conn
        try:
            data = sock.recv(RECV_SIZE)
            if conn.use_ssl:
                while sock.pending():
                    data += sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError,
                ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ValueError) as e:
            self._readFailed(conn, e)
            return
        if not data:
            self._lostConnection(conn)
            return
        self._processData(conn, data)

    def _readFailed(self, conn, error):
        if getattr(error, 'errno', None) in _WOULD_BLOCK:
            return
        if self._debug:
            self.log.debug("Read from %s failed: %s", conn, error)
        self._lostConnection(conn)

    def _processData(self, conn, data):
        """Handle every complete message of ``data`` (after what an
        earlier read left over), then stop reading from a peer that
        leaves its replies unread; bad input closes the connection."""
        try:
            conn._tail = self._scanner.scan(conn, data, conn._tail)
            metrics = self.metrics
            if metrics is not None:
                metrics.bytes_in += len(data)
                metrics.packets_in = self._scanner.messages
            pending = len(conn.send_queue)
            if pending > self.output_high_water and not conn.closed:
                if pending > self.max_output_buffer:
                    self.log.warning("%s is not reading its replies; "
                                     "disconnecting it", conn)
                    self._deferClose(conn)
                else:
                    # Backpressure: read no more requests until it has
                    # read most of its replies.
                    conn._paused = True
                    self._setEvents(conn, _EV_WRITE)
        except PacketTooLarge as e:
            self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                           b'Packet exceeds the maximum size')
            self._flushConnection(conn)
            self._protocolError(conn, e)
        except ProtocolError as e:
            # A bad magic or an unknown type just closes, as gearmand.
            self._protocolError(conn, e)
        except _CloseConnection as e:
            self.log.info("Closing %s: %s", conn, e)
            self._lostConnection(conn)
        except Exception:
            self.log.exception("Error handling input from %s; closing it",
                               conn)
            self._lostConnection(conn)

    def _adminLine(self, conn, line):
        self.handleAdminRequest(ServerAdminRequest._fromLine(conn, line))

    def _otherPacket(self, conn, request, ptype, payload):
        """A well-framed packet no table entry takes: a request of a
        type unknown here (a subclass's handlePacket may know it), or a
        packet with response magic."""
        if request:
            if self._hooked_packets:
                self._dispatchTimed(ptype, conn, payload)
                return
            raise ProtocolError("Invalid packet type %d" % ptype)
        if not 1 <= ptype <= constants.MAX_TYPE:
            raise ProtocolError("Invalid packet type %d" % ptype)
        self.sendError(conn, b'INVALID_MAGIC', b'Request magic expected')

    def _typeZero(self, conn, payload):
        self._otherPacket(conn, True, 0, payload)

    def _dispatchPacket(self, hook, ptype, conn, payload):
        hook(_packet_trusted(REQ, ptype, payload, conn))
        if conn.functions is not conn._synced or \
                len(conn.functions) != len(conn._fqs):
            self._syncFunctions(conn)

    def _dispatchTimed(self, ptype, conn, payload):
        self.handlePacket(_packet_trusted(REQ, ptype, payload, conn))
        if conn.functions is not conn._synced or \
                len(conn.functions) != len(conn._fqs):
            self._syncFunctions(conn)

    def handlePacket(self, packet):
        """Dispatch one packet by type, timing it for statistics.

        A subclass that overrides this sees every request packet, of
        any type, before the server handles it.
        """
        ptype = packet.ptype
        handlers = self._handlers
        handler = handlers[ptype] if 0 < ptype < len(handlers) \
            else self._unknownPacket
        start = time.perf_counter()
        try:
            handler(packet)
        finally:
            self.reportTimingStats(ptype, time.perf_counter() - start)

    def _unknownPacket(self, packet):
        raise ProtocolError("Invalid packet type %d" % packet.ptype)

    def _protocolError(self, conn, error):
        self.log.info("Closing %s: %s", conn, error)
        self._lostConnection(conn)

    # -- writing --------------------------------------------------------------

    def _send(self, conn, data):
        if self.metrics is not None:
            self.metrics.packets_out += 1
        out = conn.send_queue
        if out:
            out += data
            if len(out) > self.max_output_buffer:
                self._outputOverflow(conn)
        elif not conn.closed:
            self._dirty.append(conn)
            out += data

    def _outputOverflow(self, conn):
        if not conn.closed:
            self.log.warning("%s is not reading its replies; "
                             "disconnecting it", conn)
            self._deferClose(conn)

    def writeToConnection(self, conn):
        """Send pending output; stop watching for writability when done."""
        if conn.closed:
            return
        self._flushConnection(conn)

    def _flushConnection(self, conn):
        if self._store_acked:
            # Output can leave mid-turn (a writable backlog, a flush before
            # a close); a JOB_CREATED in it must not precede its commit.
            self._commitStore()
            if conn.closed:
                return
        out = conn.send_queue
        if not out:
            if conn._events != _EV_READ:
                conn._paused = False
                self._setEvents(conn, _EV_READ)
            return
        try:
            sent = conn.conn.send(out)
        except (BlockingIOError, InterruptedError,
                ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except (OSError, ValueError) as e:
            if getattr(e, 'errno', None) in _WOULD_BLOCK:
                sent = 0
            else:
                if self._debug:
                    self.log.debug("Write to %s failed: %s", conn, e)
                out.clear()
                self._lostConnection(conn)
                return
        if self.metrics is not None:
            self.metrics.bytes_out += sent
        if sent >= len(out):
            out.clear()
            if conn._events != _EV_READ:
                conn._paused = False
                self._setEvents(conn, _EV_READ)
        else:
            del out[:sent]
            if len(out) > self.max_output_buffer:
                self.log.warning("%s is not reading its replies; "
                                 "disconnecting it", conn)
                out.clear()
                self._lostConnection(conn)
                return
            if conn._paused and len(out) <= self.output_low_water:
                conn._paused = False
            self._setEvents(conn, _EV_WRITE if conn._paused
                            else _EV_READ | _EV_WRITE)

    def _flushDirty(self, dirty):
        """The end of a loop turn: write what the turn queued.  Usually
        that is one connection's output, which needs no copy of the
        list."""
        if len(dirty) == 1:
            conn = dirty.pop()
            if not conn.closed:
                self._flushConnection(conn)
            if self._closing:
                self._closeDeferred()
            if not dirty:
                return
        self._flushAllConnections()

    def _flushAllConnections(self):
        # The list object is shared with the submit handlers: empty it in
        # place.
        while self._dirty:
            dirty = self._dirty[:]
            del self._dirty[:]
            for conn in dirty:
                if not conn.closed:
                    self._flushConnection(conn)
            if self._closing:
                self._closeDeferred()

    # -- timers ---------------------------------------------------------------

    def _addTimer(self, delay, callback, arg):
        entry = [time.monotonic() + delay, next(self._timer_seq),
                 callback, arg]
        heapq.heappush(self._timers, entry)
        if not self._onLoopThread():
            self._kick()
        return entry

    @staticmethod
    def _cancelTimer(entry):
        if entry is not None:
            entry[2] = None
            entry[3] = None

    def _runTimers(self):
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            callback = entry[2]
            if callback is None:
                continue
            try:
                callback(entry[3])
            except Exception:
                self.log.exception("Timer callback failed")
        # Drop cancelled entries from the top so the poll timeout is real.
        while timers and timers[0][2] is None:
            heapq.heappop(timers)

    # -- connections going away ----------------------------------------------

    def _deferClose(self, conn):
        if conn not in self._closing:
            self._closing.append(conn)

    def _closeDeferred(self):
        closing = self._closing
        self._closing = []
        for conn in closing:
            self._lostConnection(conn)

    def _lostConnection(self, conn):
        """Forget a connection: requeue its running jobs, detach it from
        the jobs it submitted, and close the socket."""
        if conn.closed:
            return
        conn.closed = True
        conn.connected = False
        if self._debug:
            self.log.debug("Lost %s", conn)
        if self.connection_map.get(conn.fd) is conn:
            del self.connection_map[conn.fd]
            try:
                self.poll.unregister(conn.fd)
            except (OSError, ValueError, KeyError):
                pass
        self._cancelTimer(conn._handshake_timer)
        try:
            conn.conn.close()
        except Exception:
            pass
        conn.send_queue.clear()
        self._unregisterConnection(conn)

    def _unregisterConnection(self, conn):
        self._dropAllFunctions(conn)
        lost = self._semantics.workerLost
        for job in list(conn.related_jobs.values()):
            if job.worker_connection is conn and \
                    (job._state & STATE) == RUNNING:
                lost(self, job, 'worker disconnected')
            clients = job.clients
            if clients and conn in clients:
                job.clients = [c for c in clients if c is not conn]
                if not job.clients and not job.background:
                    self._abandonJob(job)
        conn.related_jobs = {}
        self._updateStats()

    def reportTimingStats(self, ptype, duration):
        """Report how long a packet took (statsd ``packet.<NAME>``)."""
        stats = self.stats
        if stats is not None:
            stats.packet(ptype, duration)

    def _updateStats(self):
        stats = self.stats
        if stats is not None:
            q = self.queue
            total = len(q.jobs)
            stats.queue(total, q.running, total - q.running)

    # -- shutdown -------------------------------------------------------------

    def shutdown(self, graceful=False):
        """Stop the server.

        Immediate by default.  With ``graceful`` the listening socket is
        closed at once, running jobs are allowed to finish (no new job is
        handed out), and then everything stops.  Idempotent.  Blocks until
        the loop has stopped unless called from the loop itself.
        """
        with self.lock:
            if not self.running:
                self.log.warning("Server is already shut down")
            elif graceful:
                if self._draining:
                    self.log.warning("Server is already draining")
                self._draining = True
                self._closeListener()
            else:
                if self._shutdown_called and not self._draining:
                    self.log.warning("Server is already shutting down")
                self.running = False
            self._shutdown_called = True
        self._kick()
        self._waitStopped()

    def _waitStopped(self):
        if self._onLoopThread():
            return
        self._stopped.wait()
        self.poll_thread.join()

    def _closeListener(self):
        if not self._listener_closed:
            self._listener_closed = True
            try:
                self.poll.unregister(self._listen_fd)
            except (OSError, ValueError, KeyError):
                pass
            try:
                self.socket.close()
            except OSError:
                pass

    def _shutdown(self):
        self.shutdown()

    def _cleanup(self):
        with self.lock:
            self.running = False
            if self._store_acked:
                # A turn cut short: commit before its replies go out.
                self._commitStore()
            for conn in list(self.connection_map.values()):
                if conn.send_queue:
                    try:
                        conn.conn.send(conn.send_queue)
                    except Exception:
                        pass
                conn.closed = True
                try:
                    conn.conn.close()
                except Exception:
                    pass
            self.connection_map.clear()
            self._closeListener()
            try:
                self.poll.close()
            except Exception:
                pass
            for fd in (self.connect_wake_read, self.connect_wake_write):
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                self.store.close()
            except Exception:
                self.log.exception("Job store did not close cleanly")

    # -- gear-compatible accessors --------------------------------------------

    @property
    def active_connections(self):
        return list(self.connection_map.values())

    @property
    def max_handle(self):
        return self.queue.max_handle

    @max_handle.setter
    def max_handle(self, value):
        self.queue.max_handle = value

    @property
    def total_jobs(self):
        return len(self.queue.jobs)

    @property
    def running_jobs(self):
        return self.queue.running

    @property
    def waiting_jobs(self):
        return len(self.queue.jobs) - self.queue.running

    def __repr__(self):
        return '<gear.Server 0x%x port: %s>' % (id(self), self.port)
