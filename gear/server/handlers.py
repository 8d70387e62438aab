"""The gear-named packet handlers of the job server.

One ``handle<Packet>`` method per request type (the names gear subclasses
override) plus the ``send*`` replies.  The hot request types have one
operation each taking ``(connection, payload)`` (submission, grab,
pre-sleep, work results, registration); their gear-named hooks are thin
adapters over those operations, so a subclass may override either
without a second copy of the behaviour.
"""

import time

from gear import constants
from gear.protocol import pack
from gear.server import jobs as jobstates
from gear.server.jobs import JobLinks
from gear.server.queue import unique_key
from gear.server.util import (
    MAX_HANDLE, MAX_UNIQUE, _CREATED_HEADERS, _NO_JOB, _CloseConnection,
    _created_header, _new_job, _to_bytes)

RES = constants.RES
NORMAL = constants.PRECEDENCE_NORMAL
HIGH = constants.PRECEDENCE_HIGH
LOW = constants.PRECEDENCE_LOW
RUNNING = jobstates.RUNNING
STATE = jobstates.STATE
FLAGS = jobstates.FLAGS
_QUEUED = jobstates.QUEUED
MAX_CLIENT_ID = 127
MIN_CAN_DO_TIMEOUT = 1000

_NOT_FOUND_TEXT = {
    constants.WORK_STATUS: b'Job given in work result not found',
    constants.WORK_COMPLETE: b'Job given in work result not found',
    constants.WORK_FAIL: b'Job given in work result not found',
    constants.WORK_DATA: b'Job does not exist on server',
    constants.WORK_WARNING: b'Job does not exist on server',
    constants.WORK_EXCEPTION:
        b'An exception was received for a job that does not exist',
}


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


class PacketHandlers(object):
    """Mixin for :class:`gear.server.server.Server`: the gear-named packet
    handlers and the replies they send."""

    # -- replies --------------------------------------------------------------

    def sendJobAssign(self, connection, job):
        self._sendPacket(connection, constants.JOB_ASSIGN, b'\x00'.join(
            (job.handle, job.name, job.arguments)))

    def sendJobAssignUniq(self, connection, job):
        self._sendPacket(connection, constants.JOB_ASSIGN_UNIQ,
                         b'\x00'.join((job.handle, job.name,
                                       job.unique or b'', job.arguments)))

    def sendJobAssignAll(self, connection, job):
        self._sendPacket(connection, constants.JOB_ASSIGN_ALL,
                         b'\x00'.join((job.handle, job.name,
                                       job.unique or b'', job.reducer,
                                       job.arguments)))

    def sendNoJob(self, connection):
        self._send(connection, _NO_JOB)

    def sendError(self, connection, code, text):
        """Send ERROR ``code\\0text`` (symbolic code, no trailing NUL)."""
        self._send(connection, pack(RES, constants.ERROR, b'%s\x00%s' % (
            _to_bytes(code), _to_bytes(text))))

    # -- packet handlers: submission ------------------------------------------

    def _storeJob(self, conn, job, adopted=False):
        """Persist a background job before its JOB_CREATED goes out.

        While the store fails, or if it refuses the job, the submitter
        gets QUEUE_ERROR and False is returned.  Otherwise the reply the
        caller appends next waits for the commit (the store-commit rule,
        ``_commitStore``).
        """
        if self._store_down and not self._storeRecovered():
            self.sendError(conn, b'QUEUE_ERROR', b'Job store is failing')
            return False
        try:
            self.store.add(job)
        except Exception as e:
            self.sendError(conn, b'QUEUE_ERROR',
                           str(e).encode('utf8', 'replace') or
                           b'Job store error')
            self._storeFailed('write of %s' % (job.handle,), e)
            return False
        if self._store_flush is not None:
            self._awaitCommit(conn, job, adopted=adopted)
        return True

    def _adoptInBackground(self, conn, job):
        """A background submission coalesced into a foreground job.

        The submitter was promised the job will run, so from now on it is
        a background job: it outlives its foreground clients and, with a
        store, survives a restart.  Their WORK_* updates are unchanged.
        """
        job.background = True
        if self._persist and not self._storeJob(conn, job, adopted=True):
            job.background = False
            return False
        return True

    def _makeSubmit(self):
        """Build the one implementation of job submission.

        ``submit(conn, name, unique, arguments, precedence, background,
        when=0, reducer=None)`` creates the job (or coalesces into the
        job of the same unique), stores a background job under the
        store-commit rule, queues or parks it, and appends JOB_CREATED
        to the submitter's output.  A closure over the server's state:
        it is the hottest path of the server.
        """
        server = self
        q = self.queue
        functions = q.functions
        index_job = q.jobs.put
        append = q._append
        dirty = self._dirty
        handle_format = self._handle_format
        headers = _CREATED_HEADERS
        new = _new_job
        cls = self._job_class
        links = JobLinks
        state_of = [[jobstates.flags(p, bg) for bg in (False, True)]
                    for p in range(3)]

        def submit(conn, name, unique, arguments, precedence, background,
                   when=0, reducer=None):
            key = None
            if unique:
                if len(unique) > MAX_UNIQUE:
                    server.sendError(conn, b'ARGUMENT_TOO_LARGE',
                                     b'Unique value too large')
                    return
                key = unique if unique != b'-' else \
                    unique_key(unique, arguments)
            else:
                unique = None
            if server.acl is not None and not server.acl.canInvoke(
                    conn.ssl_subject, _decode(name)):
                server.log.info("ACL denied %s submitting %r",
                                conn.ssl_subject, name)
                server.sendError(conn, b'PERMISSION_DENIED',
                                 b'Permission denied by ACL')
                return
            fq = functions.get(name)
            if fq is None:
                fq = q.function(name)
            if key is not None:
                job = fq.uniques.get(key)
                if job is not None:
                    server._coalesce(conn, job, background)
                    return
            if fq.limits is not None and q.isFull(fq, precedence):
                server.sendError(conn, b'QUEUE_ERROR', b'Job queue is full')
                return
            n = q.max_handle = q.max_handle + 1
            handle = handle_format % n
            job = new(cls)
            job.handle = handle
            job.arguments = arguments
            job.unique = unique
            job._fq = fq
            job._state = state_of[precedence][background]
            if background:
                job._links = None
            else:
                job._links = links([conn])
                conn.related_jobs[handle] = job
            if when:
                job.when = when
            if reducer is not None:
                job.reducer = reducer
            if background and server._persist and \
                    not server._storeJob(conn, job):
                return
            index_job(n, job)
            if key is not None:
                fq.uniques[key] = job
            parked = when and when > time.time()
            if parked:
                q._park(job, fq, when)
                server._armEpochTimer(fq)
            else:
                append(job, fq, precedence)
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
            if parked:
                return
            if fq.sleepers:
                server._wakeFunction(fq)
            if server.stats is not None:
                server._updateStats()

        return submit

    def _coalesce(self, conn, job, background):
        """A submission with the unique of a job that exists: attach.

        The reply to a submit coalesced into a job whose add is not
        committed yet waits for the same commit (and is QUEUE_ERROR if
        that fails)."""
        if background and not job.background:
            if not self._adoptInBackground(conn, job):
                return
        elif job in self._uncommitted:
            self._awaitCommit(conn, job, background)
        if not background:
            if job.clients is None:
                job.clients = [conn]
            else:
                job.clients.append(conn)
            conn.related_jobs[job.handle] = job
        self._send(conn, pack(RES, constants.JOB_CREATED, job.handle))

    def _submitOp(self, precedence, background):
        """The SUBMIT_JOB* operation of one (precedence, background)."""
        submit = self._submit

        def op(conn, payload):
            fields = payload.split(b'\x00', 2)
            if len(fields) != 3:
                raise _CloseConnection('malformed SUBMIT_JOB')
            submit(conn, fields[0], fields[1], fields[2], precedence,
                   background)
        return op

    def _submitEpochOp(self, conn, payload):
        fields = payload.split(b'\x00', 3)
        if len(fields) != 4:
            raise _CloseConnection('malformed SUBMIT_JOB_EPOCH')
        name, unique, epoch, arguments = fields
        self._submit(conn, name, unique, arguments, NORMAL, True,
                     when=_parse_decimal(epoch))

    def _submitReduceOp(self, background):
        def op(conn, payload):
            fields = payload.split(b'\x00', 4)
            if len(fields) != 5:
                raise _CloseConnection('malformed SUBMIT_REDUCE_JOB')
            name, unique, reducer, _aggregator, arguments = fields
            if len(reducer) > MAX_UNIQUE:
                self.sendError(conn, b'ARGUMENT_TOO_LARGE',
                               b'Reducer value too large')
                return
            self._submit(conn, name, unique, arguments, NORMAL,
                         background, reducer=reducer)
        return op

    # gear's hooks: adapters over the operations above.

    def handleSubmitJob(self, packet):
        self._op(packet)

    def handleSubmitJobBg(self, packet):
        self._op(packet)

    def handleSubmitJobHigh(self, packet):
        self._op(packet)

    def handleSubmitJobHighBg(self, packet):
        self._op(packet)

    def handleSubmitJobLow(self, packet):
        self._op(packet)

    def handleSubmitJobLowBg(self, packet):
        self._op(packet)

    def handleSubmitJobEpoch(self, packet):
        self._op(packet)

    def handleSubmitReduceJob(self, packet):
        self._op(packet)

    def handleSubmitReduceJobBackground(self, packet):
        self._op(packet)

    def _op(self, packet):
        """Run the server's own operation for a packet (what a gear hook
        does unless a subclass overrides it)."""
        self._ops[packet.ptype](packet.connection, packet.data)

    def handleSubmitJobSched(self, packet):
        self._invalidCommand(packet)

    def handleAllYours(self, packet):
        self._invalidCommand(packet)

    def _invalidCommand(self, packet):
        self.sendError(packet.connection, b'INVALID_COMMAND',
                       b'Command not expected')

    # -- packet handlers: workers ---------------------------------------------

    def _jobSource(self):
        """How a GRAB gets its job, decided once: the default scheduler,
        or a subclass's getJobForConnection followed by the assignment
        bookkeeping (an override may have done only part of it)."""
        get = self.getJobForConnection
        if not self._overridden('getJobForConnection'):
            return get
        assign = self._assignJob

        def source(conn):
            job = get(conn)
            if job is not None:
                assign(conn, job)
            return job
        return source

    def _grabOp(self, kind):
        """The GRAB_JOB* operation answering with ``kind``."""
        server = self
        source = self._jobSource()
        if kind == constants.JOB_ASSIGN:
            send = self.sendJobAssign
        elif kind == constants.JOB_ASSIGN_UNIQ:
            send = self.sendJobAssignUniq
        else:
            send_all = self.sendJobAssignAll
            send_uniq = self.sendJobAssignUniq

            def send(conn, job):
                if job.reducer is not None:
                    send_all(conn, job)
                else:
                    send_uniq(conn, job)

        def op(conn, payload):
            if conn.state == 'SLEEP':
                server._unsleep(conn)
            job = None if server._draining else source(conn)
            if job is None:
                server._send(conn, _NO_JOB)
            else:
                send(conn, job)
        return op

    def _preSleepOp(self, conn, payload):
        conn.state = 'SLEEP'
        if not self._draining and \
                self.getJobForConnection(conn, peek=True) is not None:
            self._wakeOne(conn)
            return
        for fq in conn._fqs:
            fq.sleepers[conn] = None

    def handleGrabJob(self, packet):
        self._op(packet)

    def handleGrabJobUniq(self, packet):
        self._op(packet)

    def handleGrabJobAll(self, packet):
        self._op(packet)

    def handlePreSleep(self, packet):
        self._op(packet)

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
            self._attachFunction(conn, fq)
        if timeout:
            if conn._timeouts is None:
                conn._timeouts = {}
            conn._timeouts[fq.name] = timeout
        elif conn._timeouts:
            conn._timeouts.pop(fq.name, None)

    def _attachFunction(self, conn, fq):
        """The bookkeeping of one function a worker gained: O(1)."""
        conn._fqs[fq] = None
        fq.workers += 1
        if conn.state == 'SLEEP':
            if fq.runnable:
                self._wakeOne(conn)
            else:
                fq.sleepers[conn] = None

    def _detachFunction(self, conn, fq):
        """The bookkeeping of one function a worker lost: O(1)."""
        del conn._fqs[fq]
        fq.workers -= 1
        fq.sleepers.pop(conn, None)
        if conn._timeouts:
            conn._timeouts.pop(fq.name, None)

    def handleCanDo(self, packet):
        self._registerFunction(packet.connection, packet.data, None)

    def _canDo(self, conn, name):
        self._registerFunction(conn, name, None)

    def handleCanDoTimeout(self, packet):
        name, sep, value = packet.data.partition(b'\x00')
        if not sep:
            raise _CloseConnection('malformed CAN_DO_TIMEOUT')
        timeout = max(_parse_decimal(value), MIN_CAN_DO_TIMEOUT)
        self._registerFunction(packet.connection, name, timeout)

    def _dropFunction(self, conn, name):
        """Forget that ``conn`` can do ``name``: O(1), however many
        functions the worker or workers the function has.  Returns False
        if it did not have it."""
        if name not in conn.functions:
            return False
        conn.functions.discard(name)
        fq = self.queue.functions.get(name)
        if fq is not None and fq in conn._fqs:
            self._detachFunction(conn, fq)
        return True

    def _requeueUnregistered(self, conn, names, reason):
        """The jobs a worker runs of functions it gave up go to the
        semantics' policy (requeued, or left to the worker).  One pass
        over the jobs of the connection, whatever the number of
        ``names``."""
        if not conn.related_jobs:
            return
        unregistered = self._semantics.unregistered
        for job in list(conn.related_jobs.values()):
            if job.worker_connection is conn and \
                    (job._state & STATE) == RUNNING and job.name in names:
                unregistered(self, job, reason)

    def _unregisterFunction(self, conn, name):
        if self._dropFunction(conn, name):
            self._requeueUnregistered(conn, (name,), 'worker sent CANT_DO')

    def handleCantDo(self, packet):
        self._unregisterFunction(packet.connection, packet.data)

    def handleResetAbilities(self, packet):
        conn = packet.connection
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

    def _syncFunctions(self, conn):
        """Match the bookkeeping to ``conn.functions`` after a subclass's
        hook replaced or edited that set, as gear 0.16 subclasses do
        (Zuul's MASS_DO handler assigns a new set and adds every name).
        O(functions of the worker), and only after such a change."""
        names = conn.functions
        held = {fq.name: fq for fq in conn._fqs}
        lost = [name for name in held if name not in names]
        for name in lost:
            self._detachFunction(conn, held[name])
        for name in names:
            if name not in held:
                self._attachFunction(conn, self.queue.function(name))
        conn._synced = names
        if lost:
            self._requeueUnregistered(conn, set(lost),
                                      'worker dropped the function')

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
        # A job a worker may report on is among its own assignments.
        job = conn.related_jobs.get(handle)
        links = None if job is None else job._links
        if links is None or links.worker is not conn or \
                (job._state & STATE) != RUNNING:
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
        clients = links.clients
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
                handle, (job._state & STATE) == RUNNING,
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
                unique, (job._state & STATE) == RUNNING,
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
