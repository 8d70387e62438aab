"""The job server's core: every request and every job transition, once.

:class:`Core` owns the job table and the queues, answers each request
packet, moves jobs between states (queued, running, finished, requeued,
failed) and keeps the store-commit rule.  It does no I/O: a request comes
in as ``(connection, payload)``; replies are appended to the connection's
``send_queue`` (a bytearray) and the connection is listed in
:attr:`Core.dirty` for the loop to write.  What it needs of the loop --
timers, writing one connection at once, closing one later, knowing which
thread it runs on -- it asks through the small ``io`` object it is given
(see :class:`gear.server.loop.EventLoop` for the real one).

The hottest requests (SUBMIT_JOB*, GRAB_JOB*, PRE_SLEEP, WORK_*) are
closures over the core's state, built once by :meth:`Core.buildHandlers`;
they are the only implementation of those requests.  gear's subclass
hooks plug into them: an overridden ``getJobForConnection`` is the
scheduler, overridden ``sendJobAssign*`` methods send the assignments,
an overridden ``wakeConnections`` wakes workers (see :class:`Hooks`).
"""

import functools
import itertools
import logging
import struct
import time

from gear import constants
from gear.protocol import pack
from gear.server import jobs as jobstates
from gear.server import metrics as metrics_mod
from gear.server.jobs import JobLinks
from gear.server.queue import unique_key
from gear.server.store import StoreError
from gear.server.util import (
    MAX_HANDLE, MAX_UNIQUE, _CREATED_HEADERS, _NO_JOB, _CloseConnection,
    _created_header, _new_job, _to_bytes)

RES = constants.RES
NORMAL = constants.PRECEDENCE_NORMAL
HIGH = constants.PRECEDENCE_HIGH
LOW = constants.PRECEDENCE_LOW
NEW = jobstates.NEW
RUNNING = jobstates.RUNNING
BACKGROUND = jobstates.BACKGROUND
STATE = jobstates.STATE
FLAGS = jobstates.FLAGS
MAX_CLIENT_ID = 127
MIN_CAN_DO_TIMEOUT = 1000
# Store errors that do not stop the store are logged at most this often.
STORE_LOG_INTERVAL = 60.0

_NOOP = pack(RES, constants.NOOP)
_NOT_FOUND_TEXT = {
    constants.WORK_STATUS: b'Job given in work result not found',
    constants.WORK_COMPLETE: b'Job given in work result not found',
    constants.WORK_FAIL: b'Job given in work result not found',
    constants.WORK_DATA: b'Job does not exist on server',
    constants.WORK_WARNING: b'Job does not exist on server',
    constants.WORK_EXCEPTION:
        b'An exception was received for a job that does not exist',
}
_pack_header = struct.Struct('!4sII').pack
_COMMIT_REFUSED = pack(RES, constants.ERROR,
                       b'QUEUE_ERROR\x00Job store commit failed')


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


def _decode(value):
    if isinstance(value, bytes):
        return value.decode('utf8', 'surrogateescape')
    return value


class Hooks(object):
    """The overridable steps of a :class:`Core`; None means the core's own.

    :ivar scheduler: ``f(connection, peek=False)``: the next job for a
        worker (gear's ``getJobForConnection``); the core assigns what it
        returns.
    :ivar send_assign: ``f(connection, job, ptype)``: send JOB_ASSIGN,
        JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL.
    :ivar wake: ``f(job)``: wake the workers that can run a job just
        queued (gear's ``wakeConnections``).
    """

    def __init__(self, scheduler=None, send_assign=None, wake=None):
        self.scheduler = scheduler
        self.send_assign = send_assign
        self.wake = wake


class Core(object):
    """The job table, its transitions and the requests that drive them.

    :arg queue: the ``gear.server.queue.JobQueue``.
    :arg io: the loop's side: ``addTimer(delay, callback, arg)`` (returns
        an entry, a list), ``cancelTimer(entry)``, ``flushNow(connection)``,
        ``closeLater(connection)``, ``onLoopThread()`` and
        ``connections()`` (every open connection).
    :arg store: the job store (:mod:`gear.server.store`).
    :arg semantics: the policy where gear and gearmand differ
        (:mod:`gear.server.semantics`).
    :arg handle_format: ``prefix + b':%d'``.
    :arg job_class: the class of new jobs.
    :arg metrics: a ``gear.server.metrics.Recorder`` or None.
    :arg stats: a statsd reporter (:mod:`gear.server.stats`) or None.
    """

    log = logging.getLogger('gear.Server')

    #: Seconds between two tries of a failing store (or of one with
    #: removals still to write).
    store_probe_interval = 1.0

    def __init__(self, queue, io, store, semantics, handle_format,
                 job_class, metrics=None, stats=None, acl=None,
                 job_retries=None, worker_wakeup=0,
                 max_output_buffer=128 * 1024 * 1024, hooks=None,
                 log=None):
        self.queue = queue
        self.io = io
        self.semantics = semantics
        self.handle_format = handle_format
        self.metrics = metrics
        if metrics is not None:
            # Every function queue gets its counters when it is made,
            # and every job a slot for when it entered its queue.
            metrics.watch(queue)
            job_class = metrics_mod.timed_class(job_class)
        self.job_class = job_class
        self.stats = stats
        self.acl = acl
        self.job_retries = job_retries
        self.worker_wakeup = worker_wakeup
        self.max_output_buffer = max_output_buffer
        self.hooks = hooks or Hooks()
        if log is not None:
            self.log = log
        self.debug = self.log.isEnabledFor(logging.DEBUG)
        # Connections with output this turn; the loop writes and empties
        # it (in place: the handlers hold the list).
        self.dirty = []
        # While draining (a graceful shutdown) no job is handed out.
        self.draining = False

        self.store = store
        self.persist = getattr(store, 'persistent', True)
        # Stores that batch writes commit once per loop turn, before the
        # JOB_CREATED replies of that turn are sent.  store_acked holds
        # the replies waiting for that commit, as (connection, offset in
        # its output, job, background), or None for a removal.
        self.store_flush = getattr(store, 'flush', None) \
            if self.persist else None
        self.store_acked = []
        # Background jobs stored this turn but not committed yet; if the
        # commit fails they never existed (see commitStore).
        self.uncommitted = {}
        # True while the store fails (see storeCheck).
        self.store_down = False
        self._store_quiet_until = 0.0
        self._probe_timer = None

        queue.on_enqueue = self.wakeFunction
        self.handlers = None

    # -- output ---------------------------------------------------------------

    def send(self, conn, data):
        """Append one reply to a connection's output."""
        if self.metrics is not None:
            self.metrics.packets_out += 1
        out = conn.send_queue
        if out:
            out += data
            if len(out) > self.max_output_buffer:
                self.outputOverflow(conn)
        elif not conn.closed:
            self.dirty.append(conn)
            out += data

    def outputOverflow(self, conn):
        if not conn.closed:
            self.log.warning("%s is not reading its replies; "
                             "disconnecting it", conn)
            self.io.closeLater(conn)

    def sendError(self, conn, code, text):
        """ERROR ``code\\0text`` (symbolic code, no trailing NUL)."""
        self.send(conn, pack(RES, constants.ERROR, b'%s\x00%s' % (
            _to_bytes(code), _to_bytes(text))))

    def sendAssign(self, conn, job, ptype):
        """JOB_ASSIGN, JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL for ``job``."""
        if ptype == constants.JOB_ASSIGN_UNIQ:
            data = b'\x00'.join((job.handle, job.name, job.unique or b'',
                                 job.arguments))
        elif ptype == constants.JOB_ASSIGN:
            data = b'\x00'.join((job.handle, job.name, job.arguments))
        else:
            data = b'\x00'.join((job.handle, job.name, job.unique or b'',
                                 job.reducer, job.arguments))
        self.send(conn, pack(RES, ptype, data))

    # -- the request table ----------------------------------------------------

    def buildHandlers(self):
        """Packet type -> ``f(connection, payload)`` for every request the
        core answers (None for the others)."""
        t = [None] * (constants.MAX_TYPE + 1)
        for ptype, (precedence, background) in \
                constants.SUBMIT_TYPES.items():
            t[ptype] = self._makeSubmit(precedence, background)
        t[constants.SUBMIT_JOB_EPOCH] = self.submitEpoch
        t[constants.SUBMIT_REDUCE_JOB] = self.submitReduce
        t[constants.SUBMIT_REDUCE_JOB_BACKGROUND] = self.submitReduceBg
        t[constants.SUBMIT_JOB_SCHED] = self.invalidCommand
        t[constants.ALL_YOURS] = self.invalidCommand
        t[constants.GRAB_JOB] = self._makeGrab(constants.JOB_ASSIGN)
        t[constants.GRAB_JOB_UNIQ] = self._makeGrab(
            constants.JOB_ASSIGN_UNIQ)
        t[constants.GRAB_JOB_ALL] = self._makeGrab(constants.JOB_ASSIGN_ALL)
        t[constants.PRE_SLEEP] = self.preSleep
        t[constants.CAN_DO] = self.canDo
        t[constants.CAN_DO_TIMEOUT] = self.canDoTimeout
        t[constants.CANT_DO] = self.cantDo
        t[constants.RESET_ABILITIES] = self.resetAbilities
        t[constants.SET_CLIENT_ID] = self.setClientId
        for ptype in constants.WORK_TYPES:
            t[ptype] = self._makeWorkResult(ptype)
        t[constants.GET_STATUS] = self.getStatus
        t[constants.GET_STATUS_UNIQUE] = self.getStatusUnique
        t[constants.ECHO_REQ] = self.echo
        t[constants.OPTION_REQ] = self.option
        self.handlers = t
        return t

    def invalidCommand(self, conn, payload):
        self.sendError(conn, b'INVALID_COMMAND', b'Command not expected')

    # -- submission -----------------------------------------------------------

    def _makeSubmit(self, precedence, background):
        """The SUBMIT_JOB* request of one (precedence, background) pair.

        ``submit(conn, payload)`` parses the three fields;
        ``submit(conn, None, (name, unique, arguments, when, reducer))``
        is how SUBMIT_JOB_EPOCH and SUBMIT_REDUCE_JOB* come in.  It reads
        ``acl`` and the maxqueue limits on every call, so changing them
        takes effect at once; the store, metrics, statistics and hooks
        are fixed when the table is built.
        """
        core = self
        q = self.queue
        index_job = q.jobs.put
        functions = q.functions
        queue_new = self.queueNew
        enqueue = q.enqueue
        wake_for = self.wakeFor
        wake_hook = self.hooks.wake is not None
        dirty = self.dirty
        handle_format = self.handle_format
        headers = _CREATED_HEADERS
        new = _new_job
        links = JobLinks
        state = jobstates.flags(precedence, background)
        stored = background and self.persist
        # A batching store commits at the end of the turn, and the
        # commit queues the job (commitStore): no worker may get a job
        # that could still turn out never to have existed.
        commit_queues = stored and self.store_flush is not None
        metrics = self.metrics
        stats = self.stats
        job_class = self.job_class

        def submit(conn, payload, parsed=None):
            if parsed is None:
                fields = payload.split(b'\x00', 2)
                if len(fields) != 3:
                    raise _CloseConnection('malformed SUBMIT_JOB')
                name, unique, arguments = fields
                when = 0
                reducer = None
            else:
                name, unique, arguments, when, reducer = parsed
            if unique:
                if len(unique) > MAX_UNIQUE:
                    core.sendError(conn, b'ARGUMENT_TOO_LARGE',
                                   b'Unique value too large')
                    return
                key = unique if unique != b'-' else \
                    unique_key(unique, arguments)
            else:
                unique = key = None
            acl = core.acl
            if acl is not None and not acl.canInvoke(conn.ssl_subject,
                                                     _decode(name)):
                core.log.info("ACL denied %s submitting %r",
                              conn.ssl_subject, name)
                core.sendError(conn, b'PERMISSION_DENIED',
                               b'Permission denied by ACL')
                return
            fq = functions.get(name)
            if fq is None:
                fq = q.function(name)
            if key is not None:
                job = fq.uniques.get(key)
                if job is not None:
                    core.coalesce(conn, job, background)
                    return
            if fq.limits is not None and q.isFull(fq, precedence):
                core.sendError(conn, b'QUEUE_ERROR', b'Job queue is full')
                return
            n = q.max_handle = q.max_handle + 1
            handle = handle_format % n
            job = new(job_class)
            job.handle = handle
            job.arguments = arguments
            job.unique = unique
            job._fq = fq
            job._state = state
            if background:
                job._links = None
            else:
                job._links = links([conn])
                conn.related_jobs[handle] = job
            if parsed is not None:
                if when:
                    job.when = when
                if reducer is not None:
                    job.reducer = reducer
            if stored and not core.storeJob(conn, job):
                return
            index_job(n, job)
            if key is not None:
                fq.uniques[key] = job
            if metrics is not None:
                # Recorder.submitted(), inlined: the queue has its stats,
                # the job a slot for when it entered its queue (a job
                # due later: queueNew).  The count stands for the
                # JOB_CREATED packet too (Recorder.packetsOut).
                fq.stats.counts[precedence] += 1
                job._since = metrics.now
            out = conn.send_queue
            if out or not conn.closed:
                if not out:
                    dirty.append(conn)
                hdr = headers.get(len(handle))
                if hdr is None:
                    hdr = _created_header(len(handle))
                out += hdr
                out += handle
            elif metrics is not None:
                # The client is gone: its JOB_CREATED is never sent.
                metrics.packets_out -= 1
            if commit_queues:
                return
            if when:
                queue_new(job, fq, precedence, when)
                return
            # queueNew() for a job due now, without the call.
            enqueue(job, fq, precedence)
            if fq.sleepers or wake_hook:
                wake_for(job, fq)
            if stats is not None:
                core.updateStats()

        return submit

    def submitEpoch(self, conn, payload):
        fields = payload.split(b'\x00', 3)
        if len(fields) != 4:
            raise _CloseConnection('malformed SUBMIT_JOB_EPOCH')
        name, unique, epoch, arguments = fields
        self.handlers[constants.SUBMIT_JOB_BG](
            conn, None, (name, unique, arguments, _parse_decimal(epoch),
                         None))

    def _submitReduce(self, conn, payload, ptype):
        fields = payload.split(b'\x00', 4)
        if len(fields) != 5:
            raise _CloseConnection('malformed SUBMIT_REDUCE_JOB')
        name, unique, reducer, _aggregator, arguments = fields
        if len(reducer) > MAX_UNIQUE:
            self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                           b'Reducer value too large')
            return
        self.handlers[ptype](conn, None, (name, unique, arguments, 0,
                                          reducer))

    def submitReduce(self, conn, payload):
        self._submitReduce(conn, payload, constants.SUBMIT_JOB)

    def submitReduceBg(self, conn, payload):
        self._submitReduce(conn, payload, constants.SUBMIT_JOB_BG)

    def queueNew(self, job, fq, precedence, when=0):
        """A new job, committed if it has to be, joins its queue: QUEUED,
        or EPOCH until ``when``; the workers that can run it are woken."""
        if when and when > time.time():
            if self.metrics is not None:
                self.metrics.queued(job, when)
            self.queue.park(job, fq, when)
            self.armEpochTimer(fq)
        else:
            self.queue.enqueue(job, fq, precedence)
            if fq.sleepers or self.hooks.wake is not None:
                self.wakeFor(job, fq)
        if self.stats is not None:
            self.updateStats()

    def coalesce(self, conn, job, background):
        """A submission with the unique of a job that exists: attach.

        The reply to a submit coalesced into a job whose add is not
        committed yet waits for the same commit (and is QUEUE_ERROR if
        that fails)."""
        if background and not job.background:
            if not self.adoptInBackground(conn, job):
                return
        elif job in self.uncommitted:
            self.awaitCommit(conn, job, background)
        if not background:
            if job.clients is None:
                job.clients = [conn]
            else:
                job.clients.append(conn)
            conn.related_jobs[job.handle] = job
        self.send(conn, pack(RES, constants.JOB_CREATED, job.handle))

    def adoptInBackground(self, conn, job):
        """A background submission coalesced into a foreground job.

        The submitter was promised the job will run, so from now on it is
        a background job: it outlives its foreground clients and, with a
        store, survives a restart.  Their WORK_* updates are unchanged.
        """
        job.background = True
        if self.persist and not self.storeJob(conn, job, adopted=True):
            job.background = False
            return False
        return True

    # -- the store-commit rule ------------------------------------------------

    def storeJob(self, conn, job, adopted=False):
        """Persist a background job before its JOB_CREATED goes out.

        While the store fails, or if it refuses the job, the submitter
        gets QUEUE_ERROR and False is returned.  Otherwise the reply the
        caller appends next waits for the commit (:meth:`commitStore`).
        """
        if self.store_down and not self.storeRecovered():
            self.sendError(conn, b'QUEUE_ERROR', b'Job store is failing')
            return False
        try:
            self.store.add(job)
        except Exception as e:
            self.sendError(conn, b'QUEUE_ERROR',
                           str(e).encode('utf8', 'replace') or
                           b'Job store error')
            self.storeFailed('write of %s' % (job.handle,), e)
            return False
        if self.store_flush is not None:
            self.awaitCommit(conn, job, adopted=adopted)
        return True

    def awaitCommit(self, conn, job, background=True, adopted=False):
        """Hold the JOB_CREATED that ``conn`` is about to be sent for
        ``job`` until the job's add is committed.  Nothing else is
        appended to the output in between, and output only leaves after
        a commit, so its offset stays valid until then.  ``adopted``: a
        foreground job that a background submit made background."""
        self.store_acked.append(
            (conn, len(conn.send_queue), job, background))
        if job not in self.uncommitted:
            self.uncommitted[job] = adopted

    def commitStore(self):
        """The store-commit rule: a background job is committed before
        its JOB_CREATED leaves.  The loop calls this before it writes
        any output while :attr:`store_acked` is not empty."""
        acked = self.store_acked
        uncommitted = self.uncommitted
        self.store_acked = []
        self.uncommitted = {}
        metrics = self.metrics
        start = time.monotonic() if metrics is not None else 0.0
        try:
            self.store_flush()
        except Exception as e:
            if metrics is not None:
                metrics.committed(time.monotonic() - start, False)
            self._commitFailed(acked, uncommitted, e)
            return
        if metrics is not None:
            metrics.committed(time.monotonic() - start)
        for job in uncommitted:
            if (job._state & STATE) == NEW:
                self.queueNew(job, job._fq, job.precedence, job.when)
        if self.store_down or getattr(self.store, 'pending_removals', 0):
            self.storeCheck()

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
        self.storeFailed('commit', error)
        kept = set()
        for job in lost:
            if uncommitted.get(job) and job.clients:
                # A foreground job a background submit adopted: its own
                # clients keep it, in memory only.
                job.background = False
                kept.add(job)
            else:
                self.finishJob(job, stored=False)
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
                out[offset:end] = _COMMIT_REFUSED
            else:
                self.log.error("Lost track of the reply to %s on %s; "
                               "disconnecting it", job.handle, conn)
                out.clear()
                self.io.closeLater(conn)
        self.updateStats()

    def storeFailed(self, what, error):
        """A store call failed.  Logged once when the store starts
        failing (and at most once a minute while it stays healthy, e.g.
        removals that will be retried), never once per job."""
        down = self.store_down
        self.storeCheck(error)
        if down or self.store_down:
            if self.debug:
                self.log.debug("Job store %s failed: %s", what, error)
            return
        now = time.monotonic()
        if now >= self._store_quiet_until:
            self._store_quiet_until = now + STORE_LOG_INTERVAL
            self.log.warning("Job store %s failed: %s; it will be retried",
                             what, error)

    def storeCheck(self, error=None):
        """Follow the store's health: background submits are refused
        while it fails, and a timer probes it until it works and every
        pending removal is written.  Logs the start and the end."""
        store = self.store
        down = not getattr(store, 'healthy', True)
        if down != self.store_down:
            self.store_down = down
            if down:
                self.log.warning(
                    "Job store commit failed: %s; background submits get "
                    "QUEUE_ERROR until the store works again", error)
            else:
                self.log.warning("Job store works again; background "
                                 "submits are accepted")
        if (down or getattr(store, 'pending_removals', 0)) and \
                self._probe_timer is None:
            self._probe_timer = self.io.addTimer(
                self.store_probe_interval, self._probeStore, None)

    def storeRecovered(self):
        """While the store fails, a background submit tries it once
        (with no add pending) before it is refused, so that the first
        job after the store recovers is accepted."""
        if self.uncommitted:
            return False
        try:
            self.store.probe()
        except Exception:
            self.log.exception("Job store probe failed")
        self.storeCheck()
        return not self.store_down

    def _probeStore(self, _):
        """The probe timer: between batches, try the store again."""
        self._probe_timer = None
        if self.store_acked:
            # Adds of this turn: commit them (with the removals) first.
            self.commitStore()
            if self._probe_timer is not None:
                return
        store = self.store
        if getattr(store, 'healthy', True) and \
                not getattr(store, 'pending_removals', 0):
            self.storeCheck()
            return
        try:
            store.probe()
        except Exception:
            self.log.exception("Job store probe failed")
        self.storeCheck()

    def unstore(self, job):
        """Remove a background job from the store, committed this turn
        even if nothing is acknowledged (or a crash would replay it)."""
        try:
            self.store.remove(job)
        except Exception as e:
            # The store keeps the removal pending and writes it later.
            self.storeFailed('removal of %s' % (job.handle,), e)
        if self.store_flush is not None and not self.store_acked:
            self.store_acked.append(None)

    # -- workers: grabbing and sleeping ---------------------------------------

    def _makeGrab(self, kind):
        """A GRAB_JOB* request answered with ``kind`` (JOB_ASSIGN*)."""
        core = self
        scheduler = self.hooks.scheduler
        send_assign = self.hooks.send_assign
        job_for = self.jobFor
        dirty = self.dirty
        metrics = self.metrics
        join = b'\x00'.join
        uniq = constants.JOB_ASSIGN_UNIQ
        assign_all = constants.JOB_ASSIGN_ALL

        def grab(conn, payload):
            if conn.state == 'SLEEP':
                core.unsleep(conn)
            if scheduler is None:
                job = job_for(conn)
            elif core.draining:
                job = None
            else:
                job = scheduler(conn)
                if job is not None:
                    # An override may have done only part of the
                    # bookkeeping.
                    core.assign(conn, job)
            if job is None:
                core.send(conn, _NO_JOB)
                return
            ptype = kind
            if ptype == assign_all and job.reducer is None:
                ptype = uniq
            if send_assign is not None:
                send_assign(conn, job, ptype)
                return
            if ptype == uniq:
                data = join((job.handle, job._fq.name, job.unique or b'',
                             job.arguments))
            elif ptype == constants.JOB_ASSIGN:
                data = join((job.handle, job._fq.name, job.arguments))
            else:
                data = join((job.handle, job._fq.name, job.unique or b'',
                             job.reducer, job.arguments))
            # The worker asked for it: no output cap (backpressure holds
            # it back).
            out = conn.send_queue
            if not out:
                if conn.closed:
                    return
                dirty.append(conn)
            out += _pack_header(RES, ptype, len(data))
            out += data
            if metrics is not None:
                metrics.packets_out += 1

        return grab

    def jobFor(self, conn, peek=False):
        """The default scheduler (gear's ``getJobForConnection``): the
        next job for a worker, taken and assigned to it unless
        ``peek``."""
        if self.draining:
            return None
        fqs = conn._fqs
        functions = conn.functions
        if functions is not conn._synced or len(functions) != len(fqs):
            # Code outside any hook replaced or edited the set (as
            # Zuul's GearServer may): follow it.
            self.syncFunctions(conn)
            fqs = conn._fqs
        if not fqs:
            return None
        q = self.queue
        if q.epoch_count:
            self._promoteDue(fqs)
        if peek:
            return q.peek(fqs)
        job = q.take(fqs)
        if job is not None:
            self.assign(conn, job)
        return job

    def assign(self, conn, job):
        """A job goes to a worker (RUNNING); safe to repeat (a repeat in
        a later turn restarts the job's run time)."""
        metrics = self.metrics
        self.queue.start(job, conn)
        if metrics is not None:
            # Recorder.started(), inlined: the function's last Timing,
            # which lasts until the time moves on, fits when the job
            # entered its queue at the same time.
            try:
                timing = job._fq.stats.timing
                if timing.since is not job._since:
                    timing = metrics.timing(job)
                job._links.started = timing
            except AttributeError:
                # A job not of the server's own job class, or one that
                # could not start (DONE) and has no links.
                if job._links is not None:
                    job._links.started = metrics.timing(job)
        conn.related_jobs[job.handle] = job
        timeouts = conn._timeouts
        if timeouts and job._timer is None:
            ms = timeouts.get(job.name)
            if ms:
                job._timer = self.io.addTimer(ms / 1000.0,
                                              self._jobTimedOut, job)
        if self.stats is not None:
            self.updateStats()

    def preSleep(self, conn, payload):
        conn.state = 'SLEEP'
        scheduler = self.hooks.scheduler
        if scheduler is None:
            found = self.jobFor(conn, peek=True)
        else:
            found = not self.draining and scheduler(conn, peek=True)
        if found:
            self.wakeOne(conn)
            return
        for fq in conn._fqs:
            fq.sleepers[conn] = None

    def _promoteDue(self, fqs):
        now = None
        for fq in fqs:
            if fq.epoch_count:
                if now is None:
                    now = time.time()
                if fq.epoch and fq.epoch[0][0] <= now:
                    self.queue.promoteDue(fq, now)

    def unsleep(self, conn):
        conn.state = 'AWAKE'
        for fq in conn._fqs:
            fq.sleepers.pop(conn, None)

    def wakeOne(self, conn):
        if conn.state == 'SLEEP' and not conn.closed:
            self.unsleep(conn)
            self.send(conn, _NOOP)

    def wakeJob(self, job):
        """The default ``wakeConnections``: the sleepers that can run
        ``job``, or every sleeping connection if it is None."""
        if job is None:
            for conn in list(self.io.connections()):
                self.wakeOne(conn)
            return
        fq = self.queue.functions.get(job.name)
        if fq is not None:
            self.wakeFunction(fq)

    def wakeFor(self, job, fq):
        """``job`` of ``fq`` became runnable: wake the workers that can
        run it, through an overridden ``wakeConnections`` if there is
        one."""
        wake = self.hooks.wake
        if wake is not None:
            wake(job)
        elif fq.sleepers:
            self.wakeFunction(fq)

    def wakeFunction(self, fq):
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
            self.send(conn, _NOOP)
        if not self.store_acked and self.io.onLoopThread():
            for conn in conns:
                if conn.send_queue and not conn.closed:
                    self.io.flushNow(conn)

    # -- workers: registration ------------------------------------------------

    def canDo(self, conn, name):
        """CAN_DO (one; see :meth:`canDoMany`)."""
        self.canDoMany(conn, (name,))

    def canDoMany(self, conn, names):
        """CAN_DO of each of ``names``, in order: O(1) per name.

        A worker of a CI farm announces tens of thousands of functions
        in a row and the scanner hands such a run over at once, so the
        common case (no ACL, a worker neither asleep nor holding
        timeouts) is one loop here; anything else takes :meth:`register`
        name by name.
        """
        if self.acl is not None or conn.state == 'SLEEP' or conn._timeouts:
            register = self.register
            for name in names:
                if conn.closed:
                    return
                register(conn, name, None)
            return
        q = self.queue
        known = q.functions.get
        functions = conn.functions
        add = functions.add
        fqs = conn._fqs
        for name in names:
            fq = known(name)
            if fq is None:
                fq = q.function(name)
            # Every worker's set holds the queue's own name object.
            name = fq.name
            if name not in functions:
                add(name)
                # _attach() for a worker that is awake, inlined.
                fqs[fq] = None
                fq.workers += 1

    def canDoTimeout(self, conn, payload):
        name, sep, value = payload.partition(b'\x00')
        if not sep:
            raise _CloseConnection('malformed CAN_DO_TIMEOUT')
        timeout = max(_parse_decimal(value), MIN_CAN_DO_TIMEOUT)
        self.register(conn, name, timeout)

    def register(self, conn, name, timeout):
        """CAN_DO: O(1), however many functions the worker has."""
        acl = self.acl
        if acl is not None and not acl.canRegister(conn.ssl_subject,
                                                   _decode(name)):
            # CAN_DO has no reply: the log is the worker's only hint.
            self.log.warning("ACL denied %s registering %r",
                             conn.ssl_subject, name)
            return
        fq = self.queue.function(name)
        if fq.name not in conn.functions:
            conn.functions.add(fq.name)
            self._attach(conn, fq)
        if timeout:
            if conn._timeouts is None:
                conn._timeouts = {}
            conn._timeouts[fq.name] = timeout
        elif conn._timeouts:
            conn._timeouts.pop(fq.name, None)

    def _attach(self, conn, fq):
        """The bookkeeping of one function a worker gained: O(1)."""
        conn._fqs[fq] = None
        fq.workers += 1
        if conn.state == 'SLEEP':
            if fq.runnable:
                self.wakeOne(conn)
            else:
                fq.sleepers[conn] = None

    def _detach(self, conn, fq):
        """The bookkeeping of one function a worker lost: O(1)."""
        del conn._fqs[fq]
        fq.workers -= 1
        fq.sleepers.pop(conn, None)
        if conn._timeouts:
            conn._timeouts.pop(fq.name, None)

    def cantDo(self, conn, name):
        """CANT_DO: O(1), however many functions the worker or workers
        the function has."""
        if name not in conn.functions:
            return
        conn.functions.discard(name)
        fq = self.queue.functions.get(name)
        if fq is not None and fq in conn._fqs:
            self._detach(conn, fq)
        self._requeueUnregistered(conn, (name,), 'worker sent CANT_DO')

    def resetAbilities(self, conn, payload):
        names = self._dropAllFunctions(conn)
        if names:
            self._requeueUnregistered(conn, names,
                                      'worker sent RESET_ABILITIES')

    def _dropAllFunctions(self, conn):
        """Forget every function of ``conn`` (O(1) each); returns the
        set of names it had."""
        names = conn.functions
        for fq in conn._fqs:
            fq.workers -= 1
            fq.sleepers.pop(conn, None)
        conn._fqs = {}
        conn.functions = conn._synced = set()
        conn._timeouts = None
        return names

    def _requeueUnregistered(self, conn, names, reason):
        """The jobs a worker runs of functions it gave up go to the
        semantics' policy (requeued, or left to the worker).  One pass
        over the jobs of the connection, whatever the number of
        ``names``."""
        if not conn.related_jobs:
            return
        unregistered = self.semantics.unregistered
        for job in list(conn.related_jobs.values()):
            if job.worker_connection is conn and \
                    (job._state & STATE) == RUNNING and job.name in names:
                unregistered(self, job, reason)

    def syncFunctions(self, conn):
        """Match the bookkeeping to ``conn.functions`` after a subclass's
        hook replaced or edited that set, as gear 0.16 subclasses do
        (Zuul's MASS_DO handler assigns a new set and adds every name).
        O(functions of the worker), and only after such a change."""
        names = conn.functions
        held = {fq.name: fq for fq in conn._fqs}
        lost = [name for name in held if name not in names]
        for name in lost:
            self._detach(conn, held[name])
        for name in names:
            if name not in held:
                self._attach(conn, self.queue.function(name))
        conn._synced = names
        if lost:
            self._requeueUnregistered(conn, set(lost),
                                      'worker dropped the function')

    def setClientId(self, conn, payload):
        conn.client_id = bytes(payload[:MAX_CLIENT_ID])

    # -- workers: results -----------------------------------------------------

    def _makeWorkResult(self, ptype):
        """A WORK_* request: forwarded to every client of the job (RES
        magic); COMPLETE, FAIL and EXCEPTION finish it.

        Only the worker the job is assigned to may send it; anything else
        gets ERROR JOB_NOT_FOUND.  WORK_EXCEPTION becomes WORK_FAIL for
        clients without the ``exceptions`` option.
        """
        core = self
        finished = ptype in constants.FINAL_WORK_TYPES
        status = ptype == constants.WORK_STATUS
        exception = ptype == constants.WORK_EXCEPTION
        kind = metrics_mod.RESULT_KINDS.get(ptype)
        max_output = self.max_output_buffer
        dirty = self.dirty
        finish = self.finishJob
        pack_header = _pack_header
        metrics = self.metrics
        # Recorder.finished(), for this result: completed jobs' Timings
        # are only listed, which the list's own append does.
        noted = None
        if metrics is not None and finished:
            noted = metrics.ended.append if kind == metrics_mod.COMPLETED \
                else functools.partial(metrics.file, kind=kind)

        def work_result(conn, data):
            end = data.find(b'\x00')
            handle = data if end < 0 else data[:end]
            # The worker's own assignments: a small dict, found faster
            # than through the server-wide index.
            job = conn.related_jobs.get(handle)
            links = None if job is None else job._links
            if links is None or links.worker is not conn or \
                    (job._state & STATE) != RUNNING:
                core._refuseResult(conn, ptype, handle)
                return
            if status:
                fields = data.split(b'\x00', 2)
                job.numerator = fields[1] if len(fields) > 1 else b'0'
                job.denominator = fields[2] if len(fields) > 2 else b'0'
            clients = links.clients
            if clients:
                if exception:
                    core._forwardException(clients, handle, data)
                else:
                    if metrics is not None:
                        metrics.packets_out += len(clients)
                    header = pack_header(RES, ptype, len(data))
                    for c in clients:
                        out = c.send_queue
                        if out:
                            out += header
                            out += data
                            if len(out) > max_output:
                                core.outputOverflow(c)
                        elif not c.closed:
                            dirty.append(c)
                            out += header
                            out += data
            if finished:
                if noted is not None:
                    # Every job a worker runs got its Timing when it was
                    # handed out (assign).
                    noted(links.started)
                finish(job)

        return work_result

    def _refuseResult(self, conn, ptype, handle):
        if len(handle) > MAX_HANDLE:
            self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                           b'Job handle longer than 64 bytes')
        else:
            self.sendError(conn, b'JOB_NOT_FOUND', _NOT_FOUND_TEXT[ptype])

    def _forwardException(self, clients, handle, data):
        exc = fail = None
        for c in clients:
            if c.exceptions:
                if exc is None:
                    exc = pack(RES, constants.WORK_EXCEPTION, data)
                self.send(c, exc)
            else:
                if fail is None:
                    fail = pack(RES, constants.WORK_FAIL, handle)
                self.send(c, fail)

    # -- status and options ---------------------------------------------------

    def getStatus(self, conn, handle):
        if len(handle) > MAX_HANDLE:
            self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                           b'Job handle longer than 64 bytes')
            return
        job = self.queue.jobs.get(handle)
        if job is None:
            payload = handle + b'\x000\x000\x000\x000'
        else:
            payload = b'%s\x001\x00%d\x00%d\x00%d' % (
                handle, (job._state & STATE) == RUNNING,
                _atoi(job.numerator or b''), _atoi(job.denominator or b''))
        self.send(conn, pack(RES, constants.STATUS_RES, payload))

    def getStatusUnique(self, conn, unique):
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
                unique, (job._state & STATE) == RUNNING,
                _atoi(job.numerator or b''), _atoi(job.denominator or b''),
                len(job.clients or ()))
        self.send(conn, pack(RES, constants.STATUS_RES_UNIQUE, payload))

    def echo(self, conn, payload):
        self.send(conn, pack(RES, constants.ECHO_RES, payload))

    def option(self, conn, name):
        if len(name) < 64 and name.lower() == b'exceptions':
            conn.exceptions = True
            conn.options.add(b'exceptions')
            self.send(conn, pack(RES, constants.OPTION_RES, name))
        else:
            self.sendError(conn, b'UNKNOWN_OPTION',
                           b'Server does not recognize given option')

    # -- job lifecycle --------------------------------------------------------

    def finishJob(self, job, stored=True):
        """A job ends for good: take it out of the queues, the unique and
        handle indexes, its connections, its timer and (unless
        ``stored`` is False: its commit failed) the store."""
        self.queue.remove(job)
        handle = job.handle
        links = job._links
        if links is not None:
            worker = links.worker
            if worker is not None:
                worker.related_jobs.pop(handle, None)
            clients = links.clients
            if clients:
                for c in clients:
                    c.related_jobs.pop(handle, None)
            if links.extra:
                timer = job._timer
                if timer is not None:
                    self.io.cancelTimer(timer)
                    job._timer = None
        if stored and self.persist and job._state & BACKGROUND and \
                not job.ignore:
            self.unstore(job)
        if self.stats is not None:
            self.updateStats()

    def requeueJob(self, job, reason):
        """Give a job that lost its worker back to the queue, or fail it
        once it has used up its retries."""
        worker = job.worker_connection
        timer = job._timer
        if timer is not None:
            self.io.cancelTimer(timer)
            job._timer = None
        job.retries += 1
        if worker is not None:
            clients = job.clients
            if not clients or worker not in clients:
                worker.related_jobs.pop(job.handle, None)
        if job.ignore:
            self.finishJob(job)
            return
        limit = self.job_retries
        metrics = self.metrics
        if limit is not None and job.retries > limit:
            self.log.info("Job %s failed after %d retries (%s)",
                          job.handle, job.retries, reason)
            if metrics is not None:
                metrics.gaveUp(job)
            self.failJob(job)
            return
        if self.debug:
            self.log.debug("Requeueing %s (%s)", job.handle, reason)
        if metrics is not None:
            metrics.requeued(job)
        self.queue.requeue(job)
        self.wakeFor(job, job._fq)
        if self.stats is not None:
            self.updateStats()

    def failJob(self, job):
        """A job ends in failure: its clients get WORK_FAIL."""
        if job.clients:
            fail = pack(RES, constants.WORK_FAIL, job.handle)
            for c in job.clients:
                self.send(c, fail)
        self.finishJob(job)

    def _jobTimedOut(self, job):
        del job._timer
        if (job._state & STATE) == RUNNING:
            self.log.info("Job %s exceeded its worker's timeout", job.handle)
            if self.metrics is not None:
                self.metrics.timedOut(job)
            self.requeueJob(job, 'CAN_DO_TIMEOUT expired')

    def cancelJob(self, job):
        """Cancel: clients get WORK_FAIL; queued jobs go, running ones are
        left to finish with their result discarded."""
        clients = job.clients
        if clients:
            fail = pack(RES, constants.WORK_FAIL, job.handle)
            for c in clients:
                self.send(c, fail)
                c.related_jobs.pop(job.handle, None)
            job.clients = []
        if (job._state & STATE) == RUNNING:
            if job.background and self.persist:
                self.unstore(job)
            job.ignore = True
            self.queue.releaseUnique(job)
        else:
            self.finishJob(job)
            job.ignore = True

    def abandonJob(self, job):
        """The last client of a foreground job left."""
        state = job._state & STATE
        if state == RUNNING:
            # Let it finish; its result goes nowhere.
            job.ignore = True
            self.queue.releaseUnique(job)
        elif state != jobstates.DONE:
            self.finishJob(job)

    def armEpochTimer(self, fq):
        due = fq.nextEpoch()
        timer = fq.timer
        if timer is not None:
            if due is not None and timer[2] is not None and \
                    timer[4:] == [due]:
                return
            self.io.cancelTimer(timer)
            fq.timer = None
        if due is None:
            return
        delay = max(0.001, due - time.time())
        entry = self.io.addTimer(delay, self._epochDue, fq)
        entry.append(due)
        fq.timer = entry

    def _epochDue(self, fq):
        fq.timer = None
        for job in self.queue.promoteDue(fq, time.time()):
            self.wakeFor(job, fq)
        self.armEpochTimer(fq)

    # -- the jobs a store kept ----------------------------------------------

    def replay(self):
        """Queue the background jobs the store kept from a previous run."""
        q = self.queue
        start = 0
        try:
            start = int(self.store.handleCounterStart() or 0)
        except Exception:
            self.log.exception("Job store could not report its handles")
        if self.persist:
            # Stored rows only remember the handles still queued; a clock
            # in microseconds (faster than any job rate) keeps handles of
            # finished jobs from coming back after a restart.
            start = max(start, time.time_ns() // 1000)
        if start > q.max_handle:
            q.max_handle = start
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
        if self.store_flush is not None:
            # Rows replay had to re-key: commit them now, so that no batch
            # is open when the loop starts (probe() needs none).
            try:
                self.store_flush()
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
            handle = self.handle_format % q.nextHandleNumber()
            self._rekey(handle, name, unique, arguments, precedence, record)
        fq = q.function(name)
        key = unique_key(unique, arguments)
        job = self.job_class._new(handle, name, arguments, unique,
                                  None, precedence, True, fq)
        if record.when:
            job.when = record.when
        if self.metrics is not None:
            self.metrics.queued(job, record.when)
        job._order = (q.max_handle, 0)
        if key is not None and key in fq.uniques:
            key = None
        q.add(job, fq, key, now)
        if (job._state & STATE) == jobstates.EPOCH:
            self.armEpochTimer(fq)

    def _rekey(self, handle, name, unique, arguments, precedence, record):
        """A replayed row whose handle had to change: store it anew and
        drop the old row."""
        fresh = self.job_class._new(handle, name, arguments, unique,
                                    None, precedence, True)
        if record.when:
            fresh.when = record.when
        try:
            self.store.add(fresh)
            self.store.remove(record)
        except Exception:
            self.log.exception("Cannot re-key stored job %r", record)

    # -- connections ----------------------------------------------------------

    def dropConnection(self, conn):
        """A connection is gone: its functions, the jobs it ran (to the
        semantics' policy) and the foreground jobs it waited on."""
        self._dropAllFunctions(conn)
        lost = self.semantics.workerLost
        for job in list(conn.related_jobs.values()):
            if job.worker_connection is conn and \
                    (job._state & STATE) == RUNNING:
                lost(self, job, 'worker disconnected')
            clients = job.clients
            if clients and conn in clients:
                job.clients = [c for c in clients if c is not conn]
                if not job.clients and not job.background:
                    self.abandonJob(job)
        conn.related_jobs = {}
        self.updateStats()

    def updateStats(self):
        stats = self.stats
        if stats is not None:
            q = self.queue
            total = len(q.jobs)
            stats.queue(total, q.running, total - q.running)
