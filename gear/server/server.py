"""The Gearman job server: a server core driven by an I/O loop.

:class:`Server` composes the two halves: :class:`gear.server.core.Core`
(the job table, every request and job transition, the store-commit
rule; no sockets) and the loop it inherits from
:class:`gear.server.loop.EventLoop` (sockets, TLS, timers, shutdown).
What is left here is gear's face of them: the constructor's options,
the packet table with gear's overridable ``handle*`` hooks as thin
adapters over the core's requests, the scheduling hooks
(``getJobForConnection``, ``wakeConnections``, the queue views) and the
admin commands (:mod:`gear.server.admin`).
"""

import functools
import logging
import socket
import time

from gear import constants
from gear.base import PACKET_HANDLERS
from gear.errors import ConfigurationError, ProtocolError
from gear.protocol import DEFAULT_MAX_PACKET_SIZE, MessageScanner, Packet
from gear.server import accepting
from gear.server import admin as admin_mod
from gear.server import metrics as metrics_mod
from gear.server import semantics as semantics_mod
from gear.server import stats as stats_mod
from gear.server.connection import ServerAdminRequest
from gear.server.core import Core, Hooks
from gear.server.jobs import CompactServerJob, ServerJob
from gear.server.loop import EventLoop
from gear.server.queue import JobQueue
from gear.server.store import open_store
from gear.server.util import _NO_JOB, _to_bytes

REQ = constants.REQ
# A handle is <prefix>:<n>, at most 63 bytes; n has at most 20 digits.
MAX_PREFIX = 63 - 21

_packet_trusted = Packet._trusted


def _default_prefix():
    host = socket.gethostname().encode('utf8', 'replace') or b'localhost'
    return (b'H:' + host)[:MAX_PREFIX]


class _CoreSetting(object):
    """A server attribute that lives on the core (read on every request,
    settable at run time, e.g. ``server.acl``)."""

    def __init__(self, name):
        self.name = name

    def __get__(self, server, owner=None):
        if server is None:
            return self
        return getattr(server.core, self.name)

    def __set__(self, server, value):
        setattr(server.core, self.name, value)


class Server(EventLoop, admin_mod.AdminHandlers):
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

    log = logging.getLogger('gear.Server')

    #: The class of the jobs the server creates.  None picks
    #: :class:`~gear.server.jobs.CompactServerJob` (no per-job
    #: ``__dict__``) for ``Server`` itself and
    #: :class:`~gear.server.jobs.ServerJob`, which takes attributes of any
    #: name as gear's jobs did, for subclasses: their overrides may set
    #: attributes of their own on jobs.
    job_class = None

    acl = _CoreSetting('acl')
    #: Seconds between two tries of a failing store (or of one with
    #: removals still to write); default 1.
    store_probe_interval = _CoreSetting('store_probe_interval')
    job_retries = _CoreSetting('job_retries')
    worker_wakeup = _CoreSetting('worker_wakeup')
    max_output_buffer = _CoreSetting('max_output_buffer')
    _draining = _CoreSetting('draining')

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
        self.port = port
        self.host = host
        self.ssl_key = ssl_key
        self.ssl_cert = ssl_cert
        self.ssl_ca = ssl_ca
        self.use_ssl = bool(ssl_key and ssl_cert and ssl_ca)
        self.server_id = server_id
        self.client_id = server_id
        self.keepalive = keepalive
        self.tcp_keepidle = tcp_keepidle
        self.tcp_keepintvl = tcp_keepintvl
        self.tcp_keepcnt = tcp_keepcnt
        if job_retries is not None and job_retries < 0:
            job_retries = None
        self.exceptions = bool(exceptions)
        self.backlog = max(1, int(backlog))
        self.max_packet_size = int(max_packet_size)
        self.max_connections = accepting.clamp_max_connections(
            int(max_connections), self.log)
        max_output_buffer = max(int(max_output_buffer),
                                self.max_packet_size + 1024)
        # Reading from a peer pauses above the high-water mark and
        # resumes below the low one.
        self.output_high_water = min(1024 * 1024, max_output_buffer // 2)
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

        self.queue = JobQueue(prefix + b':')
        self.high_queue = self.queue.high_queue
        self.normal_queue = self.queue.normal_queue
        self.low_queue = self.queue.low_queue
        self.jobs = self.queue.jobs
        # gear 0.16's set of function names.
        self.functions = self.queue.names

        self.store = open_store(store, server_id=prefix)

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
        # Attributes gear's Server had from its client base class, kept
        # for callers that read them (the server has no client threads).
        self.inactive_connections = []
        self.connection_index = -1
        self.connect_thread = None
        self._initLoop()
        self.metrics = metrics_mod.Recorder() if metrics else None
        self.core = Core(
            self.queue, self, self.store,
            semantics_mod.POLICIES[semantics], prefix + b':%d',
            self.job_class or (CompactServerJob if type(self) is Server
                               else ServerJob),
            metrics=self.metrics, stats=self.stats, acl=acl,
            job_retries=job_retries,
            worker_wakeup=max(0, int(worker_wakeup or 0)),
            max_output_buffer=max_output_buffer, hooks=self._hooks(),
            log=self.log)
        self._handlers = self._buildHandlers()

        self._openLoop()
        try:
            self.core.replay()
        except Exception:
            self._cleanup()
            raise
        self._startLoop()

    # -- gear's hooks over the core -------------------------------------------

    def _overridden(self, name):
        return getattr(type(self), name, None) is not getattr(Server, name)

    def _hooks(self):
        """The core's pluggable steps: a subclass's overrides of gear's
        scheduling hooks, each called wherever the core does that step."""
        send_assign = None
        if any(self._overridden(name) for name in (
                'sendJobAssign', 'sendJobAssignUniq', 'sendJobAssignAll')):
            send_assign = self._sendAssign
        return Hooks(
            scheduler=(self.getJobForConnection
                       if self._overridden('getJobForConnection') else None),
            send_assign=send_assign,
            wake=(self.wakeConnections
                  if self._overridden('wakeConnections') else None))

    def _buildHandlers(self):
        """The request table the scanner calls, and gear's Packet table.

        A request goes straight to the core unless a subclass overrides
        its gear-named hook (then the hook gets a Packet, as in gear), or
        overrides ``handlePacket`` or reports timings (then every packet
        goes through ``handlePacket``).  Returns gear's table: packet
        type -> bound ``handle*`` method.
        """
        names = {ptype: name for ptype, name in PACKET_HANDLERS.items()
                 if ptype not in constants.RESPONSE_TYPES}
        table = [self._invalidCommand] * (constants.MAX_TYPE + 1)
        for ptype, name in names.items():
            table[ptype] = getattr(self, name)
        core = self.core.buildHandlers()
        # An override of handlePacket sees every packet (gear's contract).
        self._hooked_packets = self._overridden('handlePacket')
        partial = functools.partial
        requests = []
        for ptype in range(constants.MAX_TYPE + 1):
            name = names.get(ptype)
            if self._timed or self._hooked_packets:
                requests.append(partial(self._dispatchTimed, ptype))
            elif name is not None and (
                    self._overridden(name) or
                    self._overridden(_SHARED_STEPS.get(ptype, name))):
                requests.append(partial(self._dispatchPacket, table[ptype],
                                        ptype))
            else:
                requests.append(core[ptype] or self.core.invalidCommand)
        # Type 0 is no packet type: the same path as an unknown one.
        requests[0] = self._typeZero
        # Runs of CAN_DO reach the core at once, unless hooked.
        runs = {}
        if requests[constants.CAN_DO] is core[constants.CAN_DO]:
            runs[constants.CAN_DO] = self.core.canDoMany
        self._scanner = MessageScanner(requests, self._otherPacket,
                                       self._adminLine,
                                       self.max_packet_size, runs)
        if self.metrics is not None:
            # It counts the packets read.
            self.metrics.scanner = self._scanner
        return table

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
        self.core.sendError(conn, b'INVALID_MAGIC', b'Request magic expected')

    def _typeZero(self, conn, payload):
        self._otherPacket(conn, True, 0, payload)

    def _dispatchPacket(self, hook, ptype, conn, payload):
        """A subclass's hook gets a Packet; it may have edited the
        connection's functions behind the core's back."""
        hook(_packet_trusted(REQ, ptype, payload, conn))
        if conn.functions is not conn._synced or \
                len(conn.functions) != len(conn._fqs):
            self.core.syncFunctions(conn)

    def _dispatchTimed(self, ptype, conn, payload):
        self._dispatchPacket(self.handlePacket, ptype, conn, payload)

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

    def _request(self, packet):
        """gear's ``handle*`` methods: the core answers the packet."""
        self.core.handlers[packet.ptype](packet.connection, packet.data)

    def _invalidCommand(self, packet):
        self.core.invalidCommand(packet.connection, packet.data)

    def _handleSubmitJob(self, packet, precedence, background=False):
        """gear's submit step behind every SUBMIT_JOB* hook (the packet
        type already says the precedence and background)."""
        self._request(packet)

    def handlePassthrough(self, packet, finished=False):
        """gear's step behind every WORK_* hook: forward to the job's
        clients (and finish it, for a final result)."""
        self._request(packet)

    def _unregisterConnection(self, conn):
        """A connection is gone: the core forgets it (its functions; its
        jobs go to the semantics' policy)."""
        self.core.dropConnection(conn)

    # -- replies (overridable, as in gear) ------------------------------------

    def _sendAssign(self, connection, job, ptype):
        if ptype == constants.JOB_ASSIGN_UNIQ:
            self.sendJobAssignUniq(connection, job)
        elif ptype == constants.JOB_ASSIGN:
            self.sendJobAssign(connection, job)
        else:
            self.sendJobAssignAll(connection, job)

    def sendJobAssign(self, connection, job):
        self.core.sendAssign(connection, job, constants.JOB_ASSIGN)

    def sendJobAssignUniq(self, connection, job):
        self.core.sendAssign(connection, job, constants.JOB_ASSIGN_UNIQ)

    def sendJobAssignAll(self, connection, job):
        self.core.sendAssign(connection, job, constants.JOB_ASSIGN_ALL)

    def sendNoJob(self, connection):
        self.core.send(connection, _NO_JOB)

    def sendError(self, connection, code, text):
        """Send ERROR ``code\\0text`` (symbolic code, no trailing NUL)."""
        self.core.sendError(connection, code, text)

    # -- scheduling hooks -----------------------------------------------------

    def getJobForConnection(self, connection, peek=False):
        """The next job for a worker connection (the scheduling seam).

        With ``peek`` the job stays queued.  Otherwise it is taken and
        assigned to ``connection``.  A subclass may override this to
        schedule jobs its own way; the server then asks it for every
        GRAB_JOB* and PRE_SLEEP.
        """
        return self.core.jobFor(connection, peek)

    def wakeConnection(self, connection):
        """NOOP a sleeping worker connection (callable from any thread)."""
        self._onCoreThread(self.core.wakeOne, connection)

    def wakeConnections(self, job=None):
        """NOOP the sleeping workers that can run ``job`` (all if None).

        Callable from any thread.  A subclass's override is called for
        every job queued.
        """
        self._onCoreThread(self.core.wakeJob, job)

    def _onCoreThread(self, step, arg):
        if self.onLoopThread():
            step(arg)
            return
        with self.lock:
            step(arg)
        self._kick()

    def getQueue(self):
        """All queued jobs as a list: high, then normal, then low."""
        with self.lock:
            return (list(self.high_queue) + list(self.normal_queue) +
                    list(self.low_queue))

    def _removeJob(self, job, dequeue=True):
        """Forget a job (gear's private seam); ``dequeue`` is accepted for
        compatibility, the queue always knows where the job is."""
        with self.lock:
            self.core.finishJob(job)

    # -- statistics -----------------------------------------------------------

    def reportTimingStats(self, ptype, duration):
        """Report how long a packet took (statsd ``packet.<NAME>``)."""
        stats = self.stats
        if stats is not None:
            stats.packet(ptype, duration)

    def _updateStats(self):
        self.core.updateStats()

    # -- gear-compatible accessors --------------------------------------------

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


#: gear's steps shared by several hooks: overriding one routes the
#: packet types behind it through their gear-named hooks.
_SHARED_STEPS = dict(
    [(ptype, '_handleSubmitJob') for ptype in constants.SUBMIT_TYPES] +
    [(ptype, 'handlePassthrough') for ptype in constants.WORK_TYPES])

_HOOK_DOC = ("gear's hook for this packet type: the server core answers "
             "it.  Override it to see or change the packet; call the base "
             "method to have it answered.")


def _request_hook(ptype, name):
    if ptype in constants.SUBMIT_TYPES:
        precedence, background = constants.SUBMIT_TYPES[ptype]

        def hook(self, packet):
            self._handleSubmitJob(packet, precedence, background)
    elif ptype in constants.WORK_TYPES:
        finished = ptype in constants.FINAL_WORK_TYPES

        def hook(self, packet):
            self.handlePassthrough(packet, finished)
    else:
        def hook(self, packet):
            self._request(packet)
    hook.__name__ = hook.__qualname__ = name
    hook.__doc__ = _HOOK_DOC
    return hook


for _ptype, _name in PACKET_HANDLERS.items():
    if _ptype not in constants.RESPONSE_TYPES:
        setattr(Server, _name, _request_hook(_ptype, _name))
del _ptype, _name
