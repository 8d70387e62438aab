"""Job lifecycle and scheduling for the job server.

Finishing, requeueing, timing out and cancelling jobs, handing queued jobs
to workers and waking sleeping workers: the state changes that follow a
packet, kept apart from the code that reads and answers packets.
"""

import itertools
import threading
import time

from gear import constants
from gear.protocol import pack
from gear.server import jobs as jobstates

RES = constants.RES
RUNNING = jobstates.RUNNING
BACKGROUND = jobstates.BACKGROUND
STATE = jobstates.STATE
_NOOP = pack(RES, constants.NOOP)


class Scheduling(object):
    """Mixin for :class:`gear.server.server.Server`: job lifecycle,
    scheduling and worker wake-ups."""

    def _abandonJob(self, job):
        """The last client of a foreground job left."""
        state = job._state & STATE
        if state == RUNNING:
            # Let it finish; its result goes nowhere.
            job.ignore = True
            self.queue.releaseUnique(job)
        elif state != jobstates.DONE:
            self._finishJob(job)

    # -- job lifecycle --------------------------------------------------------

    def _finishJob(self, job, stored=True):
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
                    self._cancelTimer(timer)
                    job._timer = None
        if stored and self._persist and job._state & BACKGROUND and \
                not job.ignore:
            self._unstore(job)
        if self.stats is not None:
            self._updateStats()

    def _unstore(self, job):
        """Remove a background job from the store, committed this turn
        even if nothing is acknowledged (or a crash would replay it)."""
        try:
            self.store.remove(job)
        except Exception as e:
            # The store keeps the removal pending and writes it later.
            self._storeFailed('removal of %s' % (job.handle,), e)
        if self._store_flush is not None and not self._store_acked:
            self._store_acked.append(None)

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
        metrics = self.metrics
        if limit is not None and job.retries > limit:
            self.log.info("Job %s failed after %d retries (%s)",
                          job.handle, job.retries, reason)
            if metrics is not None:
                metrics.gaveUp(job)
            self._failJob(job)
            return
        if self._debug:
            self.log.debug("Requeueing %s (%s)", job.handle, reason)
        if metrics is not None:
            metrics.requeued(job)
        self.queue.requeue(job)
        self._wakeFunction(job._fq)

    def _failJob(self, job):
        """A job ends in failure: its clients get WORK_FAIL."""
        if job.clients:
            fail = pack(RES, constants.WORK_FAIL, job.handle)
            for c in job.clients:
                self._send(c, fail)
        self._finishJob(job)

    def _jobTimedOut(self, job):
        del job._timer
        if (job._state & STATE) == RUNNING:
            self.log.info("Job %s exceeded its worker's timeout", job.handle)
            if self.metrics is not None:
                self.metrics.timedOut(job)
            self._requeueJob(job, 'CAN_DO_TIMEOUT expired')

    # -- scheduling -----------------------------------------------------------

    def getJobForConnection(self, connection, peek=False):
        """The next job for a worker connection (the scheduling seam).

        With ``peek`` the job stays queued.  Otherwise it is taken and
        assigned to ``connection``.
        """
        fqs = connection._fqs
        functions = connection.functions
        if functions is not connection._synced or \
                len(functions) != len(fqs):
            # Code outside any hook replaced or edited the set (as
            # Zuul's GearServer may): follow it.
            self._syncFunctions(connection)
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
        if self.metrics is not None and (job._state & STATE) != RUNNING:
            self.metrics.started(job)
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

    # -- cancelling and removal ----------------------------------------------

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
        if (job._state & STATE) == RUNNING:
            if job.background and self._persist:
                self._unstore(job)
            job.ignore = True
            self.queue.releaseUnique(job)
        else:
            self._finishJob(job)
            job.ignore = True

    def _removeJob(self, job, dequeue=True):
        """Forget a job (gear's private seam); ``dequeue`` is accepted for
        compatibility, the queue always knows where the job is."""
        with self.lock:
            self._finishJob(job)
