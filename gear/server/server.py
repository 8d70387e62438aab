"""The Gearman job server: one event-loop thread, gearmand semantics.

The loop (``_pollLoop``) waits on epoll (or any ``selectors`` backend),
accepts on the non-blocking listening socket, reads each readable socket
with one large ``recv``, parses every complete message and dispatches
binary packets through a table indexed by packet type.  Replies are
appended to the connections' output buffers and flushed once per turn.
Timers (CAN_DO_TIMEOUT per job, epoch jobs, TLS handshake deadlines) live
in one heap; the poll timeout is the time to the next one.

Queue state lives in :class:`gear.server.queue.JobQueue`; admin commands
in :mod:`gear.server.admin`; persistence behind :mod:`gear.server.store`.
"""

import errno
import functools
import heapq
import itertools
import logging
import os
import select
import selectors
import socket
import ssl
import struct
import threading
import time

from gear import constants
from gear.base import BaseClientServer
from gear.errors import ConfigurationError, ProtocolError
from gear.protocol import DEFAULT_MAX_PACKET_SIZE, Packet, pack
from gear.server import admin as admin_mod
from gear.server import jobs as jobstates
from gear.server.connection import (
    ServerAdminRequest, ServerConnection, subject_from_cert)
from gear.server.jobs import ServerJob
from gear.server.queue import JobQueue, unique_key
from gear.server.store import open_store

REQ = constants.REQ
RES = constants.RES
NORMAL = constants.PRECEDENCE_NORMAL
HIGH = constants.PRECEDENCE_HIGH
LOW = constants.PRECEDENCE_LOW
RUNNING = jobstates.RUNNING

# recv() allocates this much before shrinking to what arrived; above
# glibc's initial mmap threshold (128 KiB) every read could cost an
# mmap/mremap/munmap round trip.
RECV_SIZE = 64 * 1024
MAX_UNIQUE = 64
MAX_HANDLE = 64
MAX_CLIENT_ID = 127
MIN_CAN_DO_TIMEOUT = 1000
# The longest single poll wait; far timers are simply re-checked.
MAX_POLL_WAIT = 3600.0
# A handle is <prefix>:<n>, at most 63 bytes; n has at most 20 digits.
MAX_PREFIX = 63 - 21

_HAS_EPOLL = hasattr(select, 'epoll')
_EV_READ = select.EPOLLIN if _HAS_EPOLL else 1
_EV_WRITE = select.EPOLLOUT if _HAS_EPOLL else 4
_EV_ERR = (select.EPOLLERR | select.EPOLLHUP) if _HAS_EPOLL else 8
_READ_MASK = _EV_READ | _EV_ERR

_packet_trusted = Packet._trusted
_new_job = ServerJob.__new__
_QUEUED = jobstates.QUEUED
_unpack_header = struct.Struct('!III').unpack_from
_REQ_MAGIC = int.from_bytes(REQ, 'big')
_RES_MAGIC = int.from_bytes(RES, 'big')
_pack_header = struct.Struct('!4sII').pack
MAX_ADMIN_LINE = 64 * 1024


def _created_header(size):
    header = struct.pack('!4sII', RES, constants.JOB_CREATED, size)
    _CREATED_HEADERS[size] = header
    return header


_CREATED_HEADERS = {}
_NOOP = pack(RES, constants.NOOP)
_NO_JOB = pack(RES, constants.NO_JOB)
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)

_NOT_FOUND_TEXT = {
    constants.WORK_STATUS: b'Job given in work result not found',
    constants.WORK_COMPLETE: b'Job given in work result not found',
    constants.WORK_FAIL: b'Job given in work result not found',
    constants.WORK_DATA: b'Job does not exist on server',
    constants.WORK_WARNING: b'Job does not exist on server',
    constants.WORK_EXCEPTION:
        b'An exception was received for a job that does not exist',
}


class _CloseConnection(Exception):
    """Raised by a handler: the peer sent something that ends the session.
    """


class _Poller(object):
    """epoll where available, ``selectors`` elsewhere, one small API."""

    def __init__(self):
        if _HAS_EPOLL:
            self._epoll = select.epoll()
            self.poll = self._epoll.poll
            self.register = self._epoll.register
            self.modify = self._epoll.modify
            self.unregister = self._epoll.unregister
            self.close = self._epoll.close
        else:
            self._sel = selectors.DefaultSelector()
            self.poll = self._selPoll
            self.register = self._selRegister
            self.modify = self._selModify
            self.unregister = self._sel.unregister
            self.close = self._sel.close

    @staticmethod
    def _toSel(mask):
        events = 0
        if mask & _EV_READ:
            events |= selectors.EVENT_READ
        if mask & _EV_WRITE:
            events |= selectors.EVENT_WRITE
        return events or selectors.EVENT_READ

    def _selRegister(self, fd, mask):
        self._sel.register(fd, self._toSel(mask))

    def _selModify(self, fd, mask):
        self._sel.modify(fd, self._toSel(mask))

    def _selPoll(self, timeout=None):
        if timeout is not None and timeout < 0:
            timeout = None
        out = []
        for key, events in self._sel.select(timeout):
            mask = 0
            if events & selectors.EVENT_READ:
                mask |= _EV_READ
            if events & selectors.EVENT_WRITE:
                mask |= _EV_WRITE
            out.append((key.fd, mask))
        return out


class _NullStats(object):
    def packet(self, ptype, duration):
        pass

    def queue(self, total, running, waiting):
        pass


class _StatsdStats(object):
    """Reports to a statsd client with the keys of api.md A.14."""

    def __init__(self, client):
        self.statsd = client

    def packet(self, ptype, duration):
        key = 'packet.%s' % constants.types.get(ptype, 'UNKNOWN')
        self.statsd.timing(key, int(duration * 1000))
        self.statsd.incr(key)

    def queue(self, total, running, waiting):
        self.statsd.gauge('queue.total', total)
        self.statsd.gauge('queue.running', running)
        self.statsd.gauge('queue.waiting', waiting)


def _make_stats(host, port, prefix):
    try:
        from gear.server import stats as stats_mod
    except ImportError:
        stats_mod = None
    factory = getattr(stats_mod, 'make_reporter', None)
    if factory is not None:
        return factory(host, port, prefix)
    try:
        import statsd
    except ImportError:
        logging.getLogger('gear.Server').warning(
            'statsd is not installed; statistics are off')
        return None
    return _StatsdStats(statsd.StatsClient(host, port, prefix))


def _atoi(value):
    """Leading decimal digits as an unsigned 32-bit int (0 if none)."""
    digits = 0
    for c in value:
        if 48 <= c <= 57:
            digits += 1
        else:
            break
    if not digits:
        return 0
    return int(value[:digits]) & 0xffffffff


def _parse_decimal(value):
    """A strict decimal (at most 20 digits) or _CloseConnection."""
    value = value.strip()
    if not value or len(value) > 20 or not value.isdigit():
        raise _CloseConnection('unparsable number %r' % (value[:32],))
    return int(value)


def _to_bytes(value):
    if isinstance(value, str):
        return value.encode('utf8')
    return bytes(value)


def _decode(value):
    if isinstance(value, bytes):
        return value.decode('utf8', 'surrogateescape')
    return value


def _default_prefix():
    host = socket.gethostname().encode('utf8', 'replace') or b'localhost'
    return (b'H:' + host)[:MAX_PREFIX]


class Server(admin_mod.AdminHandlers, BaseClientServer):
    """A Gearman job server.

    The positional arguments are gear's; everything after ``tcp_keepcnt``
    is keyword-only:

    :arg job_retries: requeues allowed after a job loses its worker before
        its clients get WORK_FAIL (None: unlimited; 0: fail at the first
        loss).
    :arg store: None (memory only), a SQLite path, or a store object
        (:mod:`gear.server.store`) for background jobs.
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
        disconnected.
    :arg float tls_handshake_timeout: seconds a TLS peer gets to finish
        its handshake.
    :arg bool allow_admin_shutdown: let the ``shutdown`` admin command
        stop the server (off, as in gearmand >= 1.1.15).
    """

    if _HAS_EPOLL:
        edge_bitmask = select.EPOLLET
        error_bitmask = select.EPOLLERR | select.EPOLLHUP | edge_bitmask
        read_bitmask = select.EPOLLIN | error_bitmask
        readwrite_bitmask = select.EPOLLOUT | read_bitmask

    log = logging.getLogger('gear.Server')

    def __init__(self, port=4730, ssl_key=None, ssl_cert=None, ssl_ca=None,
                 statsd_host=None, statsd_port=8125, statsd_prefix=None,
                 server_id=None, acl=None, host=None, keepalive=False,
                 tcp_keepidle=7200, tcp_keepintvl=75, tcp_keepcnt=9, *,
                 job_retries=None, store=None, exceptions=False,
                 job_handle_prefix=None, backlog=128, worker_wakeup=0,
                 max_packet_size=DEFAULT_MAX_PACKET_SIZE,
                 max_connections=10000,
                 max_output_buffer=128 * 1024 * 1024,
                 tls_handshake_timeout=10.0, allow_admin_shutdown=False):
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
        self.max_connections = int(max_connections)
        self.max_output_buffer = max(int(max_output_buffer),
                                     self.max_packet_size + 1024)
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

        self.queue = JobQueue()
        self.queue.on_enqueue = self._wakeFunction
        self.high_queue = self.queue.high_queue
        self.normal_queue = self.queue.normal_queue
        self.low_queue = self.queue.low_queue
        self.jobs = self.queue.jobs
        self.functions = self.queue.functions

        self.store = open_store(store)
        self._persist = getattr(self.store, 'persistent', True)
        # Stores that batch writes commit once per loop turn, before the
        # JOB_CREATED replies of that turn are sent.  _store_acked holds
        # the connections waiting for that commit (None: a removal).
        self._store_flush = getattr(self.store, 'flush', None) \
            if self._persist else None
        self._store_acked = []

        self.statsd = None
        self.stats = None
        if statsd_host:
            self.stats = _make_stats(statsd_host, statsd_port, statsd_prefix)
            self.statsd = getattr(self.stats, 'client',
                                  getattr(self.stats, 'statsd', None))
        self._timed = (self.stats is not None or
                       type(self).reportTimingStats
                       is not Server.reportTimingStats)

        self._debug = self.log.isEnabledFor(logging.DEBUG)
        self.lock = threading.RLock()
        # BaseClientServer's state; its client threads are not used (this
        # constructor does not call its __init__).
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
        self._handlers = self._buildHandlers()

        self.socket = self._listen()
        self.port = self.socket.getsockname()[1]
        self.poll = _Poller()
        self._listen_fd = self.socket.fileno()
        self.poll.register(self._listen_fd, _EV_READ)
        self.connect_wake_read, self.connect_wake_write = os.pipe()
        os.set_blocking(self.connect_wake_read, False)
        os.set_blocking(self.connect_wake_write, False)
        self.wake_read = self.connect_wake_read
        self.wake_write = self.connect_wake_write
        self.poll.register(self.connect_wake_read, _EV_READ)

        self._replay()

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
        names = {
            constants.CAN_DO: 'handleCanDo',
            constants.CANT_DO: 'handleCantDo',
            constants.RESET_ABILITIES: 'handleResetAbilities',
            constants.PRE_SLEEP: 'handlePreSleep',
            constants.SUBMIT_JOB: 'handleSubmitJob',
            constants.GRAB_JOB: 'handleGrabJob',
            constants.WORK_STATUS: 'handleWorkStatus',
            constants.WORK_COMPLETE: 'handleWorkComplete',
            constants.WORK_FAIL: 'handleWorkFail',
            constants.GET_STATUS: 'handleGetStatus',
            constants.ECHO_REQ: 'handleEchoReq',
            constants.SUBMIT_JOB_BG: 'handleSubmitJobBg',
            constants.SUBMIT_JOB_HIGH: 'handleSubmitJobHigh',
            constants.SET_CLIENT_ID: 'handleSetClientID',
            constants.CAN_DO_TIMEOUT: 'handleCanDoTimeout',
            constants.ALL_YOURS: 'handleAllYours',
            constants.WORK_EXCEPTION: 'handleWorkException',
            constants.OPTION_REQ: 'handleOptionReq',
            constants.WORK_DATA: 'handleWorkData',
            constants.WORK_WARNING: 'handleWorkWarning',
            constants.GRAB_JOB_UNIQ: 'handleGrabJobUniq',
            constants.SUBMIT_JOB_HIGH_BG: 'handleSubmitJobHighBg',
            constants.SUBMIT_JOB_LOW: 'handleSubmitJobLow',
            constants.SUBMIT_JOB_LOW_BG: 'handleSubmitJobLowBg',
            constants.SUBMIT_JOB_SCHED: 'handleSubmitJobSched',
            constants.SUBMIT_JOB_EPOCH: 'handleSubmitJobEpoch',
            constants.SUBMIT_REDUCE_JOB: 'handleSubmitReduceJob',
            constants.SUBMIT_REDUCE_JOB_BACKGROUND:
                'handleSubmitReduceJobBackground',
            constants.GRAB_JOB_ALL: 'handleGrabJobAll',
            constants.GET_STATUS_UNIQUE: 'handleGetStatusUnique',
        }
        table = [self._invalidCommand] * (constants.MAX_TYPE + 1)
        for ptype, name in names.items():
            table[ptype] = getattr(self, name)
        self._fast = self._buildFastHandlers(names, table)
        return table

    def _overridden(self, name):
        return getattr(type(self), name, None) is not getattr(Server, name)

    def _buildFastHandlers(self, names, table):
        """Packet type -> f(connection, payload).

        Hot packet types skip building a Packet object, unless a subclass
        overrides their gear-named hook (then the hook is called, as gear
        does); statistics timing routes everything through handlePacket.
        """
        partial = functools.partial
        fast = {}
        if not self._overridden('_handleSubmitJob'):
            for ptype, (precedence, background) in \
                    constants.SUBMIT_TYPES.items():
                fast[ptype] = self._makeSubmitHandler(precedence,
                                                      background)
        fast[constants.GRAB_JOB] = self._makeGrabHandler(
            constants.JOB_ASSIGN)
        fast[constants.GRAB_JOB_UNIQ] = self._makeGrabHandler(
            constants.JOB_ASSIGN_UNIQ)
        fast[constants.GRAB_JOB_ALL] = self._makeGrabHandler(
            constants.JOB_ASSIGN_ALL)
        if not self._overridden('handlePassthrough'):
            for ptype in (constants.WORK_COMPLETE, constants.WORK_FAIL):
                fast[ptype] = self._makeResultHandler(ptype)
            fast[constants.WORK_EXCEPTION] = partial(
                self._passthrough, constants.WORK_EXCEPTION, True)
            for ptype in (constants.WORK_DATA, constants.WORK_WARNING,
                          constants.WORK_STATUS):
                fast[ptype] = partial(self._passthrough, ptype, False)
        out = []
        for ptype in range(constants.MAX_TYPE + 1):
            name = names.get(ptype)
            if self._timed:
                out.append(partial(self._dispatchTimed, ptype))
            elif ptype in fast and not self._overridden(name):
                out.append(fast[ptype])
            else:
                out.append(partial(self._dispatchPacket, table[ptype], ptype))
        return out

    def _makeSubmitHandler(self, precedence, background):
        """A SUBMIT_JOB* handler for one (precedence, background) pair.

        The common case (no ACL, no maxqueue, no store, no coalescing
        match) runs entirely in this closure; everything else goes through
        :meth:`_submit`.  It reads the server's settings on every call, so
        changing ``acl`` or a maxqueue at run time takes effect at once.
        """
        server = self
        q = self.queue
        jobs = q.jobs
        functions = q.functions
        queued = q.queued
        dirty = self._dirty
        handle_format = self._handle_format
        headers = _CREATED_HEADERS
        submit = self._submit
        new = _new_job
        cls = ServerJob
        state = _QUEUED
        flags = precedence | (jobstates.BACKGROUND if background else 0)

        def handler(conn, payload):
            fields = payload.split(b'\x00', 2)
            if len(fields) != 3:
                raise _CloseConnection('malformed SUBMIT_JOB')
            name, unique, arguments = fields
            fq = functions.get(name)
            if fq is None or fq.limits is not None or \
                    server.acl is not None or (
                        background and server._persist) or \
                    len(unique) > MAX_UNIQUE or unique == b'-':
                submit(conn, name, unique, arguments, precedence,
                       background)
                return
            if unique:
                job = fq.uniques.get(unique)
                if job is not None:
                    submit(conn, name, unique, arguments, precedence,
                           background)
                    return
            else:
                unique = None
            n = q.max_handle = q.max_handle + 1
            handle = handle_format % n
            job = new(cls)
            job.handle = handle
            job.arguments = arguments
            job.unique = unique
            job.worker_connection = None
            job._flags = flags
            job._fq = fq
            job._state = state
            if background:
                job.clients = None
            else:
                job.clients = [conn]
                conn.related_jobs[handle] = job
            jobs[handle] = job
            if unique is not None:
                fq.uniques[unique] = job
            fq.fifos[precedence].append(job)
            fq.queued[precedence] += 1
            queued[precedence] += 1
            out = conn.send_queue
            if not out:
                if conn.closed:
                    return
                dirty.append(conn)
            hdr = headers.get(len(handle))
            if hdr is None:
                hdr = _created_header(len(handle))
            out += hdr
            out += handle
            if fq.sleepers:
                server._wakeFunction(fq)
            if server.stats is not None:
                server._updateStats()

        return handler

    def _makeResultHandler(self, ptype):
        """A WORK_COMPLETE or WORK_FAIL handler: :meth:`_passthrough` with
        the forward to each attached client inlined; refusals and their
        ERROR replies go through :meth:`_passthrough` itself."""
        server = self
        jobs_get = self.queue.jobs.get
        passthrough = self._passthrough
        finish = self._finishJob
        dirty = self._dirty
        pack_header = _pack_header

        def handler(conn, data):
            end = data.find(b'\x00')
            job = jobs_get(data if end < 0 else data[:end])
            if job is None or job.worker_connection is not conn or \
                    job._state != RUNNING:
                passthrough(ptype, True, conn, data)
                return
            clients = job.clients
            if clients:
                header = pack_header(RES, ptype, len(data))
                for c in clients:
                    out = c.send_queue
                    if out:
                        out += header
                        out += data
                        if len(out) > server.max_output_buffer:
                            server._outputOverflow(c)
                    elif not c.closed:
                        dirty.append(c)
                        out += header
                        out += data
            finish(job)

        return handler

    def _makeGrabHandler(self, kind):
        """A GRAB_JOB* handler answering with ``kind`` (JOB_ASSIGN*).

        Overrides of getJobForConnection or of the sendJobAssign* methods
        are honoured; without them the default scheduler runs inline.
        """
        server = self
        q = self.queue
        custom = self._overridden('getJobForConnection')
        custom_send = (self._overridden('sendJobAssign') or
                       self._overridden('sendJobAssignUniq') or
                       self._overridden('sendJobAssignAll'))
        pack_header = _pack_header
        join = b'\x00'.join
        uniq = constants.JOB_ASSIGN_UNIQ
        take = q.take

        def handler(conn, payload):
            if conn.state == 'SLEEP':
                server._unsleep(conn)
            job = None
            if not server._draining:
                if custom:
                    job = server.getJobForConnection(conn)
                    if job is not None:
                        server._assignJob(conn, job)
                else:
                    fqs = conn._fqs
                    if fqs:
                        if q.epoch_count:
                            server._promoteDue(fqs)
                        job = take(fqs)
                        if job is not None:
                            # _assignJob for a job take() just detached;
                            # timers and statistics take the full path.
                            job._fq.running += 1
                            q.running += 1
                            job._state = RUNNING
                            job.worker_connection = conn
                            conn.related_jobs[job.handle] = job
                            if conn._timeouts or server.stats is not None:
                                server._assignJob(conn, job)
            if job is None:
                server._send(conn, _NO_JOB)
                return
            ptype = kind
            if ptype == constants.JOB_ASSIGN_ALL and job.reducer is None:
                ptype = uniq
            if custom_send:
                if ptype == uniq:
                    server.sendJobAssignUniq(conn, job)
                elif ptype == constants.JOB_ASSIGN:
                    server.sendJobAssign(conn, job)
                else:
                    server.sendJobAssignAll(conn, job)
                return
            if ptype == uniq:
                data = join((job.handle, job._fq.name, job.unique or b'',
                             job.arguments))
            elif ptype == constants.JOB_ASSIGN:
                data = join((job.handle, job._fq.name, job.arguments))
            else:
                data = join((job.handle, job._fq.name, job.unique or b'',
                             job.reducer, job.arguments))
            out = conn.send_queue
            if not out:
                if conn.closed:
                    return
                server._dirty.append(conn)
            out += pack_header(RES, ptype, len(data))
            out += data

        return handler

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
        except Exception:
            self.log.exception("Job store could not be read")
            return
        now = time.time()
        for record in stored:
            try:
                self._replayOne(record, now)
            except Exception:
                self.log.exception("Cannot replay stored job %r", record)
        if stored:
            self.log.info("Replayed %d stored background jobs", len(stored))

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
        job = ServerJob._new(handle, name, arguments, unique, None,
                             precedence, True, fq)
        if record.when:
            job.when = record.when
        job._order = (q.max_handle, 0)
        if key is not None and key in fq.uniques:
            key = None
        q.add(job, fq, key, now)
        if job._state == jobstates.EPOCH:
            self._armEpochTimer(fq)

    def _storeAdd(self, job, handle, name, unique, arguments, precedence,
                  record):
        # A replayed row whose handle had to change: store it anew and drop
        # the old row.
        fresh = ServerJob._new(handle, name, arguments, unique, None,
                               precedence, True)
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
        lock = self.lock
        process = self._processPollEvent
        while self.running:
            timeout = -1
            if timers:
                timeout = min(MAX_POLL_WAIT,
                              max(0.0, timers[0][0] - time.monotonic()))
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            with lock:
                for fd, ev in events:
                    conn = fdmap.get(fd)
                    if conn is None:
                        if fd == listen_fd:
                            self.connectLoop()
                        elif fd == wake_fd:
                            self._drainWakePipe()
                        continue
                    process(conn, ev)
                    if self._closing:
                        self._closeDeferred()
                if timers and timers[0][0] <= time.monotonic():
                    self._runTimers()
                if self._store_acked:
                    self._commitStore()
                if self._dirty:
                    self._flushAllConnections()
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

    def _commitStore(self):
        acked = self._store_acked
        self._store_acked = []
        try:
            self._store_flush()
        except Exception:
            self.log.exception("Job store commit failed; the clients of "
                               "this turn's background jobs are "
                               "disconnected instead of acknowledged")
            discard = getattr(self.store, 'discard', None)
            if discard is not None:
                try:
                    discard()
                except Exception:
                    pass
            for conn in acked:
                if conn is None:  # a removal only
                    continue
                conn.send_queue.clear()
                self._lostConnection(conn)

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
                self.log.warning("accept() failed: %s", e)
                return
            if len(self.connection_map) >= self.max_connections:
                self.log.warning("Too many connections; closing one from %s",
                                 addr)
                sock.close()
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
            if getattr(e, 'errno', None) in _WOULD_BLOCK:
                return
            if self._debug:
                self.log.debug("Read from %s failed: %s", conn, e)
            self._lostConnection(conn)
            return
        if not data:
            self._lostConnection(conn)
            return
        try:
            self._processData(conn, data)
            if len(conn.send_queue) > self.max_output_buffer and \
                    not conn.closed:
                self.log.warning("%s is not reading its replies; "
                                 "disconnecting it", conn)
                self._deferClose(conn)
        except ProtocolError as e:
            self._protocolError(conn, e)
        except _CloseConnection as e:
            self.log.info("Closing %s: %s", conn, e)
            self._lostConnection(conn)
        except Exception:
            self.log.exception("Error handling input from %s; closing it",
                               conn)
            self._lostConnection(conn)

    def _processData(self, conn, data):
        """Handle every complete message in ``data`` (plus what an earlier
        read left over).

        Messages are sliced straight out of the received bytes; only a
        message cut by the end of a read is kept in ``input_buffer``,
        which validates its header as soon as the header is complete.
        """
        buf = conn.input_buffer
        if buf:
            buf.feed(data)
            if not self._processBuffered(conn, buf):
                return
            data = buf.unread()
            buf.clear()
        pos = 0
        end = len(data)
        fast = self._fast
        maxsize = self.max_packet_size
        unpack = _unpack_header
        req_magic = _REQ_MAGIC
        while pos < end:
            if conn.closed:
                return
            if data[pos] == 0:
                if end - pos < 12:
                    buf.feed(data[pos:])
                    buf.readPacket()  # validates what there is
                    return
                magic, ptype, size = unpack(data, pos)
                request = magic == req_magic
                if not request and magic != _RES_MAGIC:
                    raise ProtocolError("Invalid magic code %r" % (
                        data[pos:pos + 4],))
                if ptype > 42 or ptype < 1:
                    raise ProtocolError("Invalid packet type %d" % ptype)
                if size > maxsize:
                    self._oversized(conn, size)
                    return
                stop = pos + 12 + size
                if stop > end:
                    buf.feed(data[pos:])
                    return
                payload = data[pos + 12:stop]
                pos = stop
                if request:
                    fast[ptype](conn, payload)
                else:
                    self.sendError(conn, b'INVALID_MAGIC',
                                   b'Request magic expected')
            else:
                nl = data.find(b'\n', pos)
                if nl < 0:
                    if end - pos > MAX_ADMIN_LINE:
                        raise ProtocolError("Admin line too long")
                    buf.feed(data[pos:])
                    return
                line = data[pos:nl]
                pos = nl + 1
                if line.endswith(b'\r'):
                    line = line[:-1]
                self.handleAdminRequest(
                    ServerAdminRequest._fromLine(conn, line))

    def _processBuffered(self, conn, buf):
        """Finish the message a previous read cut short.

        Returns True once it was handled (the rest of the buffer can then
        take the fast path), False while more bytes are needed.
        """
        if buf.nextIsBinary():
            parsed = buf.readPacket()
            if parsed is None:
                return False
            code, ptype, payload = parsed
            if code == REQ:
                self._fast[ptype](conn, payload)
            else:
                self.sendError(conn, b'INVALID_MAGIC',
                               b'Request magic expected')
            return True
        line = buf.readLine()
        if line is None:
            return False
        self.handleAdminRequest(ServerAdminRequest._fromLine(conn, line))
        return True

    def _oversized(self, conn, size):
        self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                       b'Packet exceeds the maximum size')
        self._flushConnection(conn)
        self.log.info("Closing %s: packet of %d bytes exceeds the maximum "
                      "of %d", conn, size, self.max_packet_size)
        self._lostConnection(conn)

    def _dispatchPacket(self, hook, ptype, conn, payload):
        hook(_packet_trusted(REQ, ptype, payload, conn))

    def _dispatchTimed(self, ptype, conn, payload):
        self.handlePacket(_packet_trusted(REQ, ptype, payload, conn))

    def handlePacket(self, packet):
        """Dispatch one packet by type, timing it for statistics."""
        start = time.perf_counter()
        try:
            self._handlers[packet.ptype](packet)
        finally:
            self.reportTimingStats(packet.ptype,
                                   time.perf_counter() - start)

    def _protocolError(self, conn, error):
        # An oversized header gets an ERROR first; bad magic or type
        # just closes, as gearmand does.
        head = conn.input_buffer.unread()[:12]
        if len(head) == 12 and head[:4] in (REQ, RES):
            size = int.from_bytes(head[8:12], 'big')
            ptype = int.from_bytes(head[4:8], 'big')
            if 1 <= ptype <= constants.MAX_TYPE and \
                    size > self.max_packet_size:
                self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                               b'Packet exceeds the maximum size')
                self._flushConnection(conn)
        self.log.info("Closing %s: %s", conn, error)
        self._lostConnection(conn)

    # -- writing --------------------------------------------------------------

    def _send(self, conn, data):
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
            if conn._events & _EV_WRITE:
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
        if sent >= len(out):
            out.clear()
            if conn._events & _EV_WRITE:
                self._setEvents(conn, _EV_READ)
        else:
            del out[:sent]
            if len(out) > self.max_output_buffer:
                self.log.warning("%s is not reading its replies; "
                                 "disconnecting it", conn)
                out.clear()
                self._lostConnection(conn)
                return
            if not conn._events & _EV_WRITE:
                self._setEvents(conn, _EV_READ | _EV_WRITE)

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
        for fq in conn._fqs:
            fq.workers -= 1
            fq.sleepers.pop(conn, None)
        conn._fqs = []
        conn.functions = set()
        for job in list(conn.related_jobs.values()):
            if job.worker_connection is conn and job._state == RUNNING:
                self._requeueJob(job, 'worker disconnected')
            clients = job.clients
            if clients and conn in clients:
                job.clients = [c for c in clients if c is not conn]
                if not job.clients and not job.background:
                    self._abandonJob(job)
        conn.related_jobs = {}
        self._updateStats()

    def _abandonJob(self, job):
        """The last client of a foreground job left."""
        state = job._state
        if state == RUNNING:
            # Let it finish; its result goes nowhere.
            job.ignore = True
            self.queue.releaseUnique(job)
        elif state != jobstates.DONE:
            self._finishJob(job)

    # -- job lifecycle --------------------------------------------------------

    def _finishJob(self, job):
        """A job ends for good: forget it everywhere."""
        self.queue.remove(job)
        handle = job.handle
        worker = job.worker_connection
        if worker is not None:
            worker.related_jobs.pop(handle, None)
        clients = job.clients
        if clients:
            for c in clients:
                c.related_jobs.pop(handle, None)
        timer = job._timer
        if timer is not None:
            self._cancelTimer(timer)
            job._timer = None
        if self._persist and job.background and not job.ignore:
            try:
                self.store.remove(job)
            except Exception:
                self.log.exception("Cannot remove %s from the job store",
                                   handle)
            if self._store_flush is not None and not self._store_acked:
                # Commit the removal this turn even if nothing is acked,
                # or a crash would replay finished jobs.
                self._store_acked.append(None)
        if self.stats is not None:
            self._updateStats()

    def _requeueJob(self, job, reason):
        """Give a job that lost its worker back to the queue, or fail it
        once it has used up its retries."""
        worker = job.worker_connection
        timer = job._timer
        if timer is not None:
            self._cancelTimer(timer)
            job._timer = None
        job.retries += 1
        if worker is not None:
            clients = job.clients
            if not clients or worker not in clients:
                worker.related_jobs.pop(job.handle, None)
        if job.ignore:
            self._finishJob(job)
            return
        limit = self.job_retries
        if limit is not None and job.retries > limit:
            self.log.info("Job %s failed after %d retries (%s)",
                          job.handle, job.retries, reason)
            if job.clients:
                fail = pack(RES, constants.WORK_FAIL, job.handle)
                for c in job.clients:
                    self._send(c, fail)
            self._finishJob(job)
            return
        if self._debug:
            self.log.debug("Requeueing %s (%s)", job.handle, reason)
        self.queue.requeue(job)
        self._wakeFunction(job._fq)

    def _jobTimedOut(self, job):
        job.__dict__.pop('_timer', None)
        if job._state == RUNNING:
            self.log.info("Job %s exceeded its worker's timeout", job.handle)
            self._requeueJob(job, 'CAN_DO_TIMEOUT expired')

    # -- scheduling -----------------------------------------------------------

    def getJobForConnection(self, connection, peek=False):
        """The next job for a worker connection (the scheduling seam).

        With ``peek`` the job stays queued.  Otherwise it is taken and
        assigned to ``connection``.
        """
        fqs = connection._fqs
        if not fqs:
            return None
        q = self.queue
        if q.epoch_count:
            self._promoteDue(fqs)
        if peek:
            return q.peek(fqs)
        job = q.take(fqs)
        if job is not None:
            self._assignJob(connection, job)
        return job

    def _promoteDue(self, fqs):
        now = None
        for fq in fqs:
            if fq.epoch_count:
                if now is None:
                    now = time.time()
                if fq.epoch and fq.epoch[0][0] <= now:
                    self.queue.promoteDue(fq, now)

    def _assignJob(self, connection, job):
        """Bookkeeping for a job given to a worker; safe to repeat."""
        self.queue.start(job, connection)
        connection.related_jobs[job.handle] = job
        timeouts = connection._timeouts
        if timeouts and job._timer is None:
            ms = timeouts.get(job.name)
            if ms:
                job._timer = self._addTimer(ms / 1000.0, self._jobTimedOut,
                                            job)
        if self.stats is not None:
            self._updateStats()

    def _grab(self, conn):
        if conn.state == 'SLEEP':
            self._unsleep(conn)
        if self._draining:
            return None
        job = self.getJobForConnection(conn)
        if job is not None and self._overridden('getJobForConnection'):
            # An override may have done only part of the bookkeeping.
            self._assignJob(conn, job)
        return job

    def _unsleep(self, conn):
        conn.state = 'AWAKE'
        for fq in conn._fqs:
            fq.sleepers.pop(conn, None)

    def wakeConnection(self, connection):
        """NOOP a sleeping worker connection (callable from any thread)."""
        if self._onLoopThread():
            self._wakeOne(connection)
            return
        with self.lock:
            self._wakeOne(connection)
        self._kick()

    def _wakeOne(self, connection):
        if connection.state == 'SLEEP' and not connection.closed:
            self._unsleep(connection)
            self._send(connection, _NOOP)

    def wakeConnections(self, job=None):
        """NOOP the sleeping workers that can run ``job`` (all if None).

        Callable from any thread.
        """
        if self._onLoopThread():
            self._wakeMany(job)
            return
        with self.lock:
            self._wakeMany(job)
        self._kick()

    def _wakeMany(self, job):
        if job is None:
            for conn in list(self.connection_map.values()):
                self._wakeOne(conn)
            return
        fq = self.queue.functions.get(job.name)
        if fq is not None:
            self._wakeFunction(fq)

    def _wakeFunction(self, fq):
        """Wake this function's sleepers, in rotation, up to worker_wakeup.

        On the loop thread the NOOPs are written at once rather than at
        the end of the turn: a woken worker is the next step of the job,
        and it should not wait behind the turn's other replies (unless a
        store commit has to precede them).
        """
        sleepers = fq.sleepers
        if not sleepers:
            return
        limit = self.worker_wakeup
        if limit and limit < len(sleepers):
            conns = list(itertools.islice(sleepers, limit))
        else:
            conns = list(sleepers)
        for conn in conns:
            conn.state = 'AWAKE'
            for other in conn._fqs:
                other.sleepers.pop(conn, None)
            self._send(conn, _NOOP)
        if not self._store_acked and \
                threading.get_ident() == self._loop_ident:
            for conn in conns:
                if conn.send_queue and not conn.closed:
                    self._flushConnection(conn)

    def _armEpochTimer(self, fq):
        due = fq.nextEpoch()
        timer = fq.timer
        if timer is not None:
            if due is not None and timer[2] is not None and \
                    timer[4:] == [due]:
                return
            self._cancelTimer(timer)
            fq.timer = None
        if due is None:
            return
        delay = max(0.001, due - time.time())
        entry = self._addTimer(delay, self._epochDue, fq)
        entry.append(due)
        fq.timer = entry

    def _epochDue(self, fq):
        fq.timer = None
        if self.queue.promoteDue(fq, time.time()):
            self._wakeFunction(fq)
        self._armEpochTimer(fq)

    def getQueue(self):
        """All queued jobs as a list: high, then normal, then low."""
        with self.lock:
            return (list(self.high_queue) + list(self.normal_queue) +
                    list(self.low_queue))

    # -- replies --------------------------------------------------------------

    def sendJobAssign(self, connection, job):
        self._send(connection, pack(RES, constants.JOB_ASSIGN, b'\x00'.join(
            (job.handle, job.name, job.arguments))))

    def sendJobAssignUniq(self, connection, job):
        self._send(connection, pack(
            RES, constants.JOB_ASSIGN_UNIQ, b'\x00'.join(
                (job.handle, job.name, job.unique or b'', job.arguments))))

    def sendJobAssignAll(self, connection, job):
        self._send(connection, pack(
            RES, constants.JOB_ASSIGN_ALL, b'\x00'.join(
                (job.handle, job.name, job.unique or b'', job.reducer,
                 job.arguments))))

    def sendNoJob(self, connection):
        self._send(connection, _NO_JOB)

    def sendError(self, connection, code, text):
        """Send ERROR ``code\\0text`` (symbolic code, no trailing NUL)."""
        self._send(connection, pack(RES, constants.ERROR, b'%s\x00%s' % (
            _to_bytes(code), _to_bytes(text))))

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

    # -- packet handlers: submission ------------------------------------------

    def _handleSubmitJob(self, packet, precedence, background=False):
        fields = packet.data.split(b'\x00', 2)
        if len(fields) != 3:
            raise _CloseConnection('malformed SUBMIT_JOB')
        name, unique, arguments = fields
        self._submit(packet.connection, name, unique, arguments,
                     precedence, background)

    def _submit(self, conn, name, unique, arguments, precedence, background,
                when=0, reducer=None):
        """Create (or coalesce) one job and answer JOB_CREATED.

        This is the hottest path of the server, so the queue operations of
        JobQueue.add() are inlined here for the common case.
        """
        q = self.queue
        fq = q.functions.get(name)
        key = None
        if unique:
            if len(unique) > MAX_UNIQUE:
                self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                               b'Unique value too large')
                return
            key = unique_key(unique, arguments)
        else:
            unique = None
        if self.acl is not None and not self.acl.canInvoke(
                conn.ssl_subject, _decode(name)):
            self.log.info("ACL denied %s submitting %r", conn.ssl_subject,
                          name)
            self.sendError(conn, b'PERMISSION_DENIED',
                           b'Permission denied by ACL')
            return
        if fq is None:
            fq = q.function(name)
        else:
            name = fq.name
        if key is not None:
            job = fq.uniques.get(key)
            if job is not None:
                if not background:
                    if job.clients is None:
                        job.clients = [conn]
                    else:
                        job.clients.append(conn)
                    conn.related_jobs[job.handle] = job
                self._send(conn, pack(RES, constants.JOB_CREATED,
                                      job.handle))
                return
        if fq.limits is not None and q.isFull(fq, precedence):
            self.sendError(conn, b'QUEUE_ERROR', b'Job queue is full')
            return
        n = q.max_handle = q.max_handle + 1
        handle = self._handle_format % n
        job = _new_job(ServerJob)
        job.handle = handle
        job.arguments = arguments
        job.unique = unique
        job.worker_connection = None
        job._flags = precedence | (jobstates.BACKGROUND if background else 0)
        job._fq = fq
        if background:
            job.clients = None
        else:
            job.clients = [conn]
            conn.related_jobs[handle] = job
        if when:
            job.when = when
        if reducer is not None:
            job.reducer = reducer
        if background and self._persist:
            try:
                self.store.add(job)
            except Exception as e:
                self.log.exception("Job store refused %s", handle)
                self.sendError(conn, b'QUEUE_ERROR',
                               str(e).encode('utf8', 'replace') or
                               b'Job store error')
                return
            if self._store_flush is not None:
                self._store_acked.append(conn)
        q.jobs[handle] = job
        if key is not None:
            fq.uniques[key] = job
        if when and when > time.time():
            q._park(job, fq, when)
            self._armEpochTimer(fq)
            self._send(conn, pack(RES, constants.JOB_CREATED, handle))
            return
        else:
            fq.fifos[precedence].append(job)
            fq.queued[precedence] += 1
            q.queued[precedence] += 1
            job._state = _QUEUED
        out = conn.send_queue
        if not out:
            if conn.closed:
                return
            self._dirty.append(conn)
        hdr = _CREATED_HEADERS.get(len(handle))
        if hdr is None:
            hdr = _created_header(len(handle))
        out += hdr
        out += handle
        if fq.sleepers:
            self._wakeFunction(fq)
        if self.stats is not None:
            self._updateStats()

    def handleSubmitJob(self, packet):
        self._handleSubmitJob(packet, NORMAL)

    def handleSubmitJobBg(self, packet):
        self._handleSubmitJob(packet, NORMAL, True)

    def handleSubmitJobHigh(self, packet):
        self._handleSubmitJob(packet, HIGH)

    def handleSubmitJobHighBg(self, packet):
        self._handleSubmitJob(packet, HIGH, True)

    def handleSubmitJobLow(self, packet):
        self._handleSubmitJob(packet, LOW)

    def handleSubmitJobLowBg(self, packet):
        self._handleSubmitJob(packet, LOW, True)

    def handleSubmitJobEpoch(self, packet):
        fields = packet.data.split(b'\x00', 3)
        if len(fields) != 4:
            raise _CloseConnection('malformed SUBMIT_JOB_EPOCH')
        name, unique, epoch, arguments = fields
        when = _parse_decimal(epoch)
        self._submit(packet.connection, name, unique, arguments, NORMAL,
                     True, when=when)

    def _handleSubmitReduce(self, packet, background):
        fields = packet.data.split(b'\x00', 4)
        if len(fields) != 5:
            raise _CloseConnection('malformed SUBMIT_REDUCE_JOB')
        name, unique, reducer, _aggregator, arguments = fields
        if len(reducer) > MAX_UNIQUE:
            self.sendError(packet.connection, b'ARGUMENT_TOO_LARGE',
                           b'Reducer value too large')
            return
        self._submit(packet.connection, name, unique, arguments, NORMAL,
                     background, reducer=reducer)

    def handleSubmitReduceJob(self, packet):
        self._handleSubmitReduce(packet, False)

    def handleSubmitReduceJobBackground(self, packet):
        self._handleSubmitReduce(packet, True)

    def handleSubmitJobSched(self, packet):
        self._invalidCommand(packet)

    def handleAllYours(self, packet):
        self._invalidCommand(packet)

    def _invalidCommand(self, packet):
        self.sendError(packet.connection, b'INVALID_COMMAND',
                       b'Command not expected')

    # -- packet handlers: workers ---------------------------------------------

    def handleGrabJob(self, packet):
        conn = packet.connection
        job = self._grab(conn)
        if job is None:
            self._send(conn, _NO_JOB)
        else:
            self.sendJobAssign(conn, job)

    def handleGrabJobUniq(self, packet):
        conn = packet.connection
        job = self._grab(conn)
        if job is None:
            self._send(conn, _NO_JOB)
        else:
            self.sendJobAssignUniq(conn, job)

    def handleGrabJobAll(self, packet):
        conn = packet.connection
        job = self._grab(conn)
        if job is None:
            self._send(conn, _NO_JOB)
        elif job.reducer is not None:
            self.sendJobAssignAll(conn, job)
        else:
            self.sendJobAssignUniq(conn, job)

    def handlePreSleep(self, packet):
        conn = packet.connection
        conn.state = 'SLEEP'
        if not self._draining and self.getJobForConnection(conn, peek=True):
            self._wakeOne(conn)
            return
        for fq in conn._fqs:
            fq.sleepers[conn] = None

    def _registerFunction(self, conn, name, timeout):
        if self.acl is not None and not self.acl.canRegister(
                conn.ssl_subject, _decode(name)):
            # CAN_DO has no reply: the log is the worker's only hint.
            self.log.warning("ACL denied %s registering %r",
                             conn.ssl_subject, name)
            return
        fq = self.queue.function(name)
        if fq.name not in conn.functions:
            conn.functions.add(fq.name)
            conn._fqs.append(fq)
            fq.workers += 1
        if timeout:
            if conn._timeouts is None:
                conn._timeouts = {}
            conn._timeouts[fq.name] = timeout
        elif conn._timeouts:
            conn._timeouts.pop(fq.name, None)
        if conn.state == 'SLEEP':
            if fq.runnable:
                self._wakeOne(conn)
            else:
                fq.sleepers[conn] = None

    def handleCanDo(self, packet):
        self._registerFunction(packet.connection, packet.data, None)

    def handleCanDoTimeout(self, packet):
        name, sep, value = packet.data.partition(b'\x00')
        if not sep:
            raise _CloseConnection('malformed CAN_DO_TIMEOUT')
        timeout = max(_parse_decimal(value), MIN_CAN_DO_TIMEOUT)
        self._registerFunction(packet.connection, name, timeout)

    def _unregisterFunction(self, conn, name):
        fq = self.queue.functions.get(name)
        if name not in conn.functions:
            return
        conn.functions.discard(name)
        if fq is not None:
            if fq in conn._fqs:
                conn._fqs.remove(fq)
            fq.workers -= 1
            fq.sleepers.pop(conn, None)
        if conn._timeouts:
            conn._timeouts.pop(name, None)
        for job in list(conn.related_jobs.values()):
            if job.worker_connection is conn and job._state == RUNNING \
                    and job.name == name:
                self._requeueJob(job, 'worker sent CANT_DO')

    def handleCantDo(self, packet):
        self._unregisterFunction(packet.connection, packet.data)

    def handleResetAbilities(self, packet):
        conn = packet.connection
        for name in list(conn.functions):
            self._unregisterFunction(conn, name)

    def handleSetClientID(self, packet):
        packet.connection.client_id = bytes(packet.data[:MAX_CLIENT_ID])

    # -- packet handlers: work results ----------------------------------------

    def handlePassthrough(self, packet, finished=False):
        """Forward a WORK_* packet to every attached client (RES magic).

        Only the worker the job is assigned to may send it; anything else
        gets ERROR JOB_NOT_FOUND.  WORK_EXCEPTION becomes WORK_FAIL for
        clients without the ``exceptions`` option.  Returns the job, or
        None if the packet was refused.
        """
        return self._passthrough(packet.ptype, finished, packet.connection,
                                 packet.data)

    def _passthrough(self, ptype, finished, conn, data):
        end = data.find(b'\x00')
        handle = data if end < 0 else data[:end]
        job = self.queue.jobs.get(handle)
        if job is None or job.worker_connection is not conn or \
                job._state != RUNNING:
            if len(handle) > MAX_HANDLE:
                self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                               b'Job handle longer than 64 bytes')
            else:
                self.sendError(conn, b'JOB_NOT_FOUND',
                               _NOT_FOUND_TEXT.get(
                                   ptype, b'Job given in work result '
                                   b'not found'))
            return None
        if ptype == constants.WORK_STATUS:
            fields = data.split(b'\x00', 2)
            job.numerator = fields[1] if len(fields) > 1 else b'0'
            job.denominator = fields[2] if len(fields) > 2 else b'0'
        clients = job.clients
        if clients:
            if ptype == constants.WORK_EXCEPTION:
                exc = fail = None
                for c in clients:
                    if c.exceptions:
                        if exc is None:
                            exc = pack(RES, ptype, data)
                        self._send(c, exc)
                    else:
                        if fail is None:
                            fail = pack(RES, constants.WORK_FAIL, handle)
                        self._send(c, fail)
            else:
                out = pack(RES, ptype, data)
                for c in clients:
                    self._send(c, out)
        if finished:
            self._finishJob(job)
        return job

    def handleWorkComplete(self, packet):
        self.handlePassthrough(packet, True)

    def handleWorkFail(self, packet):
        self.handlePassthrough(packet, True)

    def handleWorkException(self, packet):
        self.handlePassthrough(packet, True)

    def handleWorkData(self, packet):
        self.handlePassthrough(packet)

    def handleWorkWarning(self, packet):
        self.handlePassthrough(packet)

    def handleWorkStatus(self, packet):
        self.handlePassthrough(packet)

    # -- packet handlers: status and options ----------------------------------

    def handleGetStatus(self, packet):
        conn = packet.connection
        handle = packet.data
        if len(handle) > MAX_HANDLE:
            self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                           b'Job handle longer than 64 bytes')
            return
        job = self.queue.jobs.get(handle)
        if job is None:
            payload = handle + b'\x000\x000\x000\x000'
        else:
            payload = b'%s\x001\x00%d\x00%d\x00%d' % (
                handle, job._state == RUNNING,
                _atoi(job.numerator or b''), _atoi(job.denominator or b''))
        self._send(conn, pack(RES, constants.STATUS_RES, payload))

    def handleGetStatusUnique(self, packet):
        conn = packet.connection
        unique = packet.data
        if len(unique) > MAX_UNIQUE:
            self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                           b'Unique value too large')
            return
        job = None
        if unique and unique != b'-':
            for fq in self.queue.functions.values():
                job = fq.uniques.get(unique)
                if job is not None:
                    break
        if job is None:
            payload = unique + b'\x000\x000\x000\x000\x000'
        else:
            payload = b'%s\x001\x00%d\x00%d\x00%d\x00%d' % (
                unique, job._state == RUNNING,
                _atoi(job.numerator or b''), _atoi(job.denominator or b''),
                len(job.clients or ()))
        self._send(conn, pack(RES, constants.STATUS_RES_UNIQUE, payload))

    def handleEchoReq(self, packet):
        self._send(packet.connection,
                   pack(RES, constants.ECHO_RES, packet.data))

    def handleOptionReq(self, packet):
        conn = packet.connection
        name = packet.data
        if len(name) < 64 and name.lower() == b'exceptions':
            conn.exceptions = True
            conn.options.add(b'exceptions')
            self._send(conn, pack(RES, constants.OPTION_RES, name))
        else:
            self.sendError(conn, b'UNKNOWN_OPTION',
                           b'Server does not recognize given option')

    # -- admin ----------------------------------------------------------------

    def _cancelJob(self, job):
        """Cancel: clients get WORK_FAIL; queued jobs go, running ones are
        left to finish with their result discarded."""
        clients = job.clients
        if clients:
            fail = pack(RES, constants.WORK_FAIL, job.handle)
            for c in clients:
                self._send(c, fail)
                c.related_jobs.pop(job.handle, None)
            job.clients = []
        if job._state == RUNNING:
            if job.background and self._persist:
                try:
                    self.store.remove(job)
                except Exception:
                    self.log.exception("Cannot remove %s from the job store",
                                       job.handle)
                if self._store_flush is not None and not self._store_acked:
                    self._store_acked.append(None)
            job.ignore = True
            self.queue.releaseUnique(job)
        else:
            self._finishJob(job)
            job.ignore = True

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

    def _removeJob(self, job, dequeue=True):
        """Forget a job (gear's private seam); ``dequeue`` is accepted for
        compatibility, the queue always knows where the job is."""
        with self.lock:
            self._finishJob(job)

    def __repr__(self):
        return '<gear.Server 0x%x port: %s>' % (id(self), self.port)
