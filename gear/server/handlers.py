"""The gear-named packet handlers of the job server.

One ``handle<Packet>`` method per request type (the names gear subclasses
override) plus the ``send*`` replies.  The server's dispatch table points
at these; the tuned copies of the hottest ones are in
:mod:`gear.server.fastpath`.
"""

import time

from gear import constants
from gear.protocol import pack
from gear.server import jobs as jobstates
from gear.server import metrics as metrics_mod
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

    # -- packet handlers: submission ------------------------------------------

    def _handleSubmitJob(self, packet, precedence, background=False):
        fields = packet.data.split(b'\x00', 2)
        if len(fields) != 3:
            raise _CloseConnection('malformed SUBMIT_JOB')
        name, unique, arguments = fields
        self._submit(packet.connection, name, unique, arguments,
                     precedence, background)

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
                self._coalesce(conn, job, background)
                return
        if fq.limits is not None and q.isFull(fq, precedence):
            self.sendError(conn, b'QUEUE_ERROR', b'Job queue is full')
            return
        n = q.max_handle = q.max_handle + 1
        handle = self._handle_format % n
        job = _new_job(self._job_class)
        job.handle = handle
        job.arguments = arguments
        job.unique = unique
        job._state = jobstates.flags(precedence, background)
        job._fq = fq
        if background:
            job._links = None
        else:
            job._links = JobLinks([conn])
            conn.related_jobs[handle] = job
        if when:
            job.when = when
        if reducer is not None:
            job.reducer = reducer
        if background and self._persist and not self._storeJob(conn, job):
            return
        q.jobs[handle] = job
        if key is not None:
            fq.uniques[key] = job
        if self.metrics is not None:
            self.metrics.submitted(fq, precedence)
        if when and when > time.time():
            q._park(job, fq, when)
            self._armEpochTimer(fq)
            self._send(conn, pack(RES, constants.JOB_CREATED, handle))
            return
        else:
            fq.fifos[precedence].append(job)
            fq.queued[precedence] += 1
            q.queued[precedence] += 1
            job._state = (job._state & FLAGS) | _QUEUED
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
        if self.metrics is not None:
            self.metrics.packets_out += 1
        if fq.sleepers:
            self._wakeFunction(fq)
        if self.stats is not None:
            self._updateStats()

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
        job = self.queue.jobs.get(handle)
        if job is None or job.worker_connection is not conn or \
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
            if self.metrics is not None:
                self.metrics.finished(job, metrics_mod.RESULT_KINDS[ptype])
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
