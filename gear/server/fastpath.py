"""The server's hot-path packet handlers, built once per server.

The commonest packets (SUBMIT_JOB*, GRAB_JOB*, WORK_*) are handled by
closures taking ``(connection, payload)`` that skip the Packet object and
inline the queue bookkeeping.  They live apart from the gear-named
handlers in :mod:`gear.server.handlers` because they are a copy of the
same behaviour, tuned for speed, and only used while no subclass overrides
the hook they stand in for.
"""

import functools
import struct

from gear import constants
from gear.server import jobs as jobstates
from gear.server import metrics as metrics_mod
from gear.server.jobs import JobLinks
from gear.server.util import (
    MAX_UNIQUE, _CREATED_HEADERS, _NO_JOB, _CloseConnection,
    _created_header, _new_job)

RES = constants.RES
RUNNING = jobstates.RUNNING
STATE = jobstates.STATE
FLAGS = jobstates.FLAGS
_QUEUED = jobstates.QUEUED
_pack_header = struct.Struct('!4sII').pack


class FastPaths(object):
    """Mixin for :class:`gear.server.server.Server`: the hot-path handler
    factories."""

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
        if not self._overridden('getJobForConnection'):
            fast[constants.PRE_SLEEP] = self._makePreSleepHandler()
        # Registration has no reply; a CI worker sends thousands at once.
        fast[constants.CAN_DO] = self._canDo
        fast[constants.CANT_DO] = self._unregisterFunction
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
            if self._timed or self._hooked_packets:
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
        index_job = q.jobs.put
        functions = q.functions
        queued = q.queued
        dirty = self._dirty
        handle_format = self._handle_format
        headers = _CREATED_HEADERS
        submit = self._submit
        new = _new_job
        cls = self._job_class
        links = JobLinks
        state = _QUEUED | jobstates.flags(precedence, background)
        metrics = self.metrics

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
            job._fq = fq
            job._state = state
            if background:
                job._links = None
            else:
                job._links = links([conn])
                conn.related_jobs[handle] = job
            index_job(n, job)
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
            if metrics is not None:
                # Recorder.submitted() for a function that has its
                # counters: the hottest transition, so without a call.
                st = fq.stats
                if st is None:
                    metrics.submitted(fq, precedence)
                else:
                    st.counts[precedence] += 1
                metrics.packets_out += 1
            if fq.sleepers:
                server._wakeFunction(fq)
            if server.stats is not None:
                server._updateStats()

        return handler

    def _makePreSleepHandler(self):
        """PRE_SLEEP: :meth:`handlePreSleep` without building a Packet,
        for the default scheduler (an idle worker sends one per job)."""
        server = self
        q = self.queue
        peek = q.peek

        def handler(conn, payload):
            conn.state = 'SLEEP'
            fqs = conn._fqs
            names = conn.functions
            if names is not conn._synced or len(names) != len(fqs):
                server._syncFunctions(conn)
                fqs = conn._fqs
            if fqs and not server._draining:
                if q.epoch_count:
                    server._promoteDue(fqs)
                if peek(fqs) is not None:
                    server._wakeOne(conn)
                    return
            for fq in fqs:
                fq.sleepers[conn] = None

        return handler

    def _makeResultHandler(self, ptype):
        """A WORK_COMPLETE or WORK_FAIL handler: :meth:`_passthrough` with
        the forward to each attached client inlined; refusals and their
        ERROR replies go through :meth:`_passthrough` itself."""
        server = self
        q = self.queue
        drop = q.jobs.discard
        passthrough = self._passthrough
        finish = self._finishJob
        dirty = self._dirty
        pack_header = _pack_header
        done = jobstates.DONE
        background = jobstates.BACKGROUND
        metrics = self.metrics
        kind = metrics_mod.RESULT_KINDS[ptype]
        ended = metrics.ended.append if metrics is not None else None

        def handler(conn, data):
            end = data.find(b'\x00')
            handle = data if end < 0 else data[:end]
            # The worker's own assignments: a small dict, found faster
            # than through the server-wide index.
            related = conn.related_jobs
            job = related.get(handle)
            links = None if job is None else job._links
            if links is None or links.worker is not conn or \
                    (job._state & STATE) != RUNNING:
                passthrough(ptype, True, conn, data)
                return
            if metrics is not None:
                # Recorder.finished(), inlined.
                ended((job, kind, metrics.now))
            clients = links.clients
            if clients:
                if metrics is not None:
                    metrics.packets_out += len(clients)
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
            if links.extra is not None or server.stats is not None or (
                    server._persist and job._state & background):
                # Timers, rare fields, statistics, the store.
                finish(job)
                return
            # _finishJob, inlined for a job that needs none of the above.
            fq = job._fq
            fq.running -= 1
            q.running -= 1
            job._state = (job._state & FLAGS) | done
            drop(handle, job)
            unique = job.unique
            if unique is not None:
                uniques = fq.uniques
                if uniques.get(unique) is job:
                    del uniques[unique]
                elif unique == b'-':
                    q.releaseUnique(job)
            del related[handle]
            if clients:
                for c in clients:
                    c.related_jobs.pop(handle, None)

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
        new_links = JobLinks
        metrics = self.metrics
        running = metrics._running if metrics is not None else None

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
                    names = conn.functions
                    if names is not conn._synced or \
                            len(names) != len(fqs):
                        # Edited outside any hook (see
                        # getJobForConnection).
                        server._syncFunctions(conn)
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
                            job._state = (job._state & FLAGS) | RUNNING
                            links = job._links
                            if links is None:
                                job._links = new_links(None, conn)
                            else:
                                links.worker = conn
                            conn.related_jobs[job.handle] = job
                            if metrics is not None:
                                # Recorder.started(), without a call.
                                running[job] = metrics.now
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
            if metrics is not None:
                metrics.packets_out += 1

        return handler
