"""Job queues of the server, as plain data structures (no sockets).

Layout, chosen so that no operation depends on how many jobs are queued:

* one :class:`FunctionQueue` per function name, holding three FIFOs (one
  per precedence), a heap of epoch jobs that are not due yet, a dict of
  uniques for coalescing, the counters that ``status`` and
  ``prioritystatus`` print, and the set of sleeping workers to wake;
* :class:`JobQueue` on top: the function table, the handle index, the
  global counters and the gear-compatible sequence views
  (``high_queue``, ``normal_queue``, ``low_queue``).

The FIFOs are deques.  A job that leaves its FIFO for good (cancel,
abandon) is only marked DONE and skipped when it reaches the head, so the
removal is O(1); the dead entries are counted and the deque is compacted
when they outnumber the live ones.  Removals through a view (scheduling
overrides written for gear, which walk the queue anyway) take the entry
out at once.

Requeued jobs (worker lost, CANT_DO, CAN_DO_TIMEOUT) go to the *tail* of
their FIFO, as gearmand does: a job that keeps killing its workers cannot
starve the jobs queued behind it.  An epoch job that becomes due is
likewise appended to the tail of its function's NORMAL FIFO.
"""

import collections
import hashlib
import heapq

from gear import constants
from gear.server.handles import HandleIndex
from gear.server.jobs import (
    QUEUED, EPOCH, DETACHED, RUNNING, DONE, STATE, FLAGS, JobLinks)

HIGH = constants.PRECEDENCE_HIGH
NORMAL = constants.PRECEDENCE_NORMAL
LOW = constants.PRECEDENCE_LOW

# Grab order: global priority.
PRECEDENCE_ORDER = (HIGH, NORMAL, LOW)
# Indexes into the [normal, low, high] lists follow the constant values.
PRECEDENCES = (NORMAL, LOW, HIGH)

# A deque is compacted once it holds this many dead entries and more dead
# than live ones.
COMPACT_MIN = 1024

_deque = collections.deque
# The FIFO of a (function, precedence) that never had a job: a CI farm
# registers tens of thousands of functions, most of which never get a
# job at some precedences, and an empty deque costs ~600 bytes.
_NO_FIFO = ()
_heappush = heapq.heappush
_heappop = heapq.heappop


def unique_key(unique, arguments):
    """The coalescing key for a submission, or None if it never coalesces.

    An empty unique never coalesces; ``-`` means "the payload is the
    unique" (and an empty payload then never coalesces).  The NUL in the
    hashed form cannot occur in a unique sent on the wire, so the two
    kinds of key never collide.
    """
    if not unique:
        return None
    if unique == b'-':
        if not arguments:
            return None
        return b'-\x00' + hashlib.sha1(arguments).digest()
    return unique


class FunctionQueue(object):
    """Everything the server keeps per function name."""

    __slots__ = ('name', 'fifos', 'queued', 'stale', 'epoch',
                 'epoch_count', 'running', 'workers', 'uniques',
                 'sleepers', 'limits', 'timer', 'stats')

    def __init__(self, name, limits=None):
        self.name = name
        # Indexed by precedence value: [NORMAL, LOW, HIGH]; a deque from
        # the first job of that precedence on (_NO_FIFO before).
        self.fifos = [_NO_FIFO, _NO_FIFO, _NO_FIFO]
        self.queued = [0, 0, 0]
        self.stale = [0, 0, 0]
        self.epoch = []          # heap of (when, seq, job)
        self.epoch_count = 0
        self.running = 0
        self.workers = 0
        self.uniques = {}
        self.sleepers = {}       # connection -> None, in rotation order
        self.limits = limits     # None or [normal, low, high] sizes
        self.timer = None        # the server's epoch wake-up timer
        self.stats = None        # metrics.FunctionStats when recording

    @property
    def total(self):
        """Queued (any precedence, due or not) plus running jobs."""
        q = self.queued
        return q[0] + q[1] + q[2] + self.epoch_count + self.running

    def waiting(self, precedence):
        """Queued jobs of one precedence, epoch jobs counted as NORMAL."""
        n = self.queued[precedence]
        if precedence == NORMAL:
            n += self.epoch_count
        return n

    @property
    def runnable(self):
        q = self.queued
        return q[0] + q[1] + q[2]

    def nextEpoch(self):
        """The time of the earliest waiting epoch job, or None."""
        heap = self.epoch
        while heap and (heap[0][2]._state & STATE) != EPOCH:
            _heappop(heap)
        return heap[0][0] if heap else None

    def __repr__(self):
        return '<FunctionQueue %r queued=%s epoch=%d running=%d>' % (
            self.name, self.queued, self.epoch_count, self.running)


class FunctionNames(set):
    """The names of every known function: gear 0.16's ``Server.functions``.

    A set, as it was, that the queue keeps in step with its functions;
    :meth:`add` (what gear's subclasses call, Zuul's MASS_DO handler
    for one) also creates the function's queue.
    """

    __slots__ = ('_queue',)

    def __init__(self, queue):
        super(FunctionNames, self).__init__()
        self._queue = queue

    def add(self, name):
        if isinstance(name, str):
            name = name.encode('utf8')
        self._queue.function(name)

    def discard(self, name):
        """Forget ``name`` unless workers or jobs still use it."""
        self._queue.dropFunction(name)

    def remove(self, name):
        if name not in self:
            raise KeyError(name)
        self.discard(name)


class JobQueue(object):
    """All functions, all jobs, and the operations the server needs.

    Every method is O(1) in the number of queued jobs, except
    :meth:`detach` of a job that is still in its FIFO (used only by
    gear-style scheduling overrides) and the views' iteration.
    """

    def __init__(self, handle_prefix=None):
        self.functions = {}  # name -> FunctionQueue
        self.names = FunctionNames(self)  # the same names, as a set
        # handle -> ServerJob; handles made of ``handle_prefix`` and the
        # counter are indexed by number (see gear.server.handles).
        self.jobs = HandleIndex(handle_prefix)
        # name -> [normal, low, high]; kept for functions that do not
        # exist yet.
        self.limits = {}
        self.queued = [0, 0, 0]  # runnable queued jobs by precedence
        self.epoch_count = 0
        self.running = 0
        self.max_handle = 0
        self._subseq = 0
        self._epoch_seq = 0
        # Called with the FunctionQueue when a view's append() queues a job,
        # so that the server can wake that function's sleepers.
        self.on_enqueue = None
        # Called with a new function's name for its FunctionQueue.stats
        # when the server records metrics (metrics.Recorder.watch).
        self.new_stats = None
        self.high_queue = PriorityView(self, HIGH)
        self.normal_queue = PriorityView(self, NORMAL)
        self.low_queue = PriorityView(self, LOW)

    # -- functions --------------------------------------------------------

    def function(self, name):
        """Return the FunctionQueue for ``name``, creating it if needed."""
        fq = self.functions.get(name)
        if fq is None:
            fq = self.functions[name] = FunctionQueue(
                name, self.limits.get(name))
            if self.new_stats is not None:
                fq.stats = self.new_stats(name)
            set.add(self.names, name)
        return fq

    def setLimits(self, name, limits):
        """Set maxqueue sizes ([normal, low, high]; None resets)."""
        if limits is None:
            self.limits.pop(name, None)
        else:
            self.limits[name] = limits
        fq = self.functions.get(name)
        if fq is not None:
            fq.limits = limits

    def isFull(self, fq, precedence):
        """True if maxqueue forbids a new job of this precedence."""
        limits = fq.limits
        if limits is None:
            return False
        limit = limits[precedence]
        return limit > 0 and fq.total >= limit

    def dropFunction(self, name):
        """Forget a function with no workers and no jobs.

        Returns None on success, or the reason as a short string.
        """
        fq = self.functions.get(name)
        if fq is None:
            return 'missing'
        if fq.workers or fq.total:
            return 'busy'
        del self.functions[name]
        set.discard(self.names, name)
        return None

    # -- adding and queueing ---------------------------------------------

    def nextHandleNumber(self):
        self.max_handle += 1
        return self.max_handle

    def add(self, job, fq, key=None, now=None):
        """Index a new job and queue it (or park it until its epoch)."""
        job._fq = fq
        self.jobs[job.handle] = job
        if key is not None:
            fq.uniques[key] = job
        when = job.when
        if when and now is not None and when > now:
            self.park(job, fq, when)
        else:
            self.enqueue(job, fq, job.precedence)

    def park(self, job, fq, when):
        """EPOCH: wait in the function's heap until ``when``."""
        self._epoch_seq += 1
        _heappush(fq.epoch, (when, self._epoch_seq, job))
        fq.epoch_count += 1
        self.epoch_count += 1
        job._state = (job._state & FLAGS) | EPOCH

    def enqueue(self, job, fq, p):
        """QUEUED: at the tail of the (function, precedence) FIFO."""
        try:
            fq.fifos[p].append(job)
        except AttributeError:
            # The function's first job of this precedence (_NO_FIFO, an
            # empty tuple, has no append).
            fq.fifos[p] = _deque((job,))
        fq.queued[p] += 1
        self.queued[p] += 1
        job._state = (job._state & FLAGS) | QUEUED

    def _purge(self, job, fq):
        # A finished job is being queued again by hand (a view's append):
        # drop any dead entry it left behind so it is not served twice.
        for p in PRECEDENCES:
            fifo = fq.fifos[p]
            if fq.stale[p]:
                try:
                    fifo.remove(job)
                except ValueError:
                    continue
                fq.stale[p] -= 1

    def _mark(self, job):
        """A later position in FIFO order, for the views' merge."""
        self._subseq += 1
        job._order = (self.max_handle, self._subseq)

    def requeue(self, job):
        """Put a running (or detached) job back at the tail of its FIFO."""
        state = job._state & STATE
        fq = job._fq
        if state == RUNNING:
            fq.running -= 1
            self.running -= 1
        elif state != DETACHED:
            return False
        job.worker_connection = None
        del job.numerator, job.denominator, job._timer
        self._mark(job)
        self.enqueue(job, fq, job.precedence)
        return True

    def promoteDue(self, fq, now):
        """Move epoch jobs that are due into the NORMAL FIFO.

        Returns the jobs that became runnable.
        """
        heap = fq.epoch
        moved = []
        while heap and heap[0][0] <= now:
            job = _heappop(heap)[2]
            if (job._state & STATE) != EPOCH:
                continue
            fq.epoch_count -= 1
            self.epoch_count -= 1
            self._mark(job)
            self.enqueue(job, fq, NORMAL)
            moved.append(job)
        return moved

    # -- selection ---------------------------------------------------------

    def _first(self, fq, p):
        """The live job at the head of a FIFO (dead heads are dropped)."""
        fifo = fq.fifos[p]
        job = fifo[0]
        while (job._state & STATE) != QUEUED:
            fifo.popleft()
            fq.stale[p] -= 1
            job = fifo[0]
        return job

    def peek(self, fqs):
        """The job :meth:`take` would return for these functions, or None.
        """
        for p in PRECEDENCE_ORDER:
            for fq in fqs:
                if fq.queued[p]:
                    return self._first(fq, p)
        return None

    def take(self, fqs):
        """Pop the next job for a worker whose functions are ``fqs``.

        Global priority first (HIGH of any function, then NORMAL, then
        LOW), FIFO within a (function, precedence), and round-robin across
        the functions: the function served moves to the end of ``fqs``
        (the worker's rotation, a dict of FunctionQueue -> None, changed
        in place in O(1)).  The job is left DETACHED; :meth:`start` makes
        it RUNNING.
        """
        for p in PRECEDENCE_ORDER:
            if not self.queued[p]:
                continue
            i = 0
            for fq in fqs:
                if fq.queued[p]:
                    fifo = fq.fifos[p]
                    job = fifo.popleft()
                    while (job._state & STATE) != QUEUED:
                        fq.stale[p] -= 1
                        job = fifo.popleft()
                    fq.queued[p] -= 1
                    self.queued[p] -= 1
                    job._state = (job._state & FLAGS) | DETACHED
                    if i < len(fqs) - 1:
                        del fqs[fq]
                        fqs[fq] = None
                    return job
                i += 1
        return None

    def detach(self, job):
        """Take a QUEUED job out of its FIFO now (O(n); views only)."""
        fq = job._fq
        p = job.precedence
        fq.fifos[p].remove(job)
        fq.queued[p] -= 1
        self.queued[p] -= 1
        job._state = (job._state & FLAGS) | DETACHED

    def start(self, job, connection):
        """Mark a job running on ``connection``.  Idempotent."""
        state = job._state & STATE
        # DETACHED first: what take() leaves for the default scheduler.
        if state == DETACHED:
            pass
        elif state == RUNNING:
            job.worker_connection = connection
            return
        elif state == QUEUED:
            self.detach(job)
        elif state == EPOCH:
            fq = job._fq
            fq.epoch_count -= 1
            self.epoch_count -= 1
        else:
            return
        fq = job._fq
        fq.running += 1
        self.running += 1
        job._state = (job._state & FLAGS) | RUNNING
        links = job._links
        if links is None:
            job._links = JobLinks(None, connection)
        else:
            links.worker = connection

    # -- removal -------------------------------------------------------------

    def releaseUnique(self, job):
        """Free the job's unique so that new submissions do not attach."""
        fq = job._fq
        unique = job.unique
        if unique and fq is not None:
            if unique == b'-':
                unique = unique_key(unique, job.arguments)
            uniques = fq.uniques
            if unique is not None and uniques.get(unique) is job:
                del uniques[unique]

    def remove(self, job):
        """Forget a job for good (finished, cancelled, dropped).  O(1)."""
        state = job._state & STATE
        if state == DONE:
            return
        fq = job._fq
        if state == RUNNING:
            fq.running -= 1
            self.running -= 1
        elif state == QUEUED:
            p = job.precedence
            fq.queued[p] -= 1
            self.queued[p] -= 1
            stale = fq.stale[p] = fq.stale[p] + 1
            if stale >= COMPACT_MIN and stale > fq.queued[p]:
                self._compact(fq, p)
        elif state == EPOCH:
            fq.epoch_count -= 1
            self.epoch_count -= 1
        job._state = (job._state & FLAGS) | DONE
        self.jobs.discard(job.handle, job)
        unique = job.unique
        if unique:
            uniques = fq.uniques
            if uniques.get(unique) is job:
                del uniques[unique]
            elif unique == b'-':
                self.releaseUnique(job)

    def _compact(self, fq, p):
        fq.fifos[p].__init__(
            [job for job in fq.fifos[p] if (job._state & STATE) == QUEUED])
        fq.stale[p] = 0

    # -- counters and listing ---------------------------------------------

    @property
    def total(self):
        return len(self.jobs)

    def queuedJobs(self, precedence):
        """Live queued jobs of one precedence, FIFO across functions."""
        runs = []
        for fq in list(self.functions.values()):
            if fq.queued[precedence]:
                live = [j for j in list(fq.fifos[precedence])
                        if (j._state & STATE) == QUEUED]
                if live:
                    runs.append(live)
        if not runs:
            return []
        if len(runs) == 1:
            return runs[0]
        return list(heapq.merge(*runs, key=order_key))


def order_key(job):
    """Where a job sits in global FIFO order (see JobQueue._mark)."""
    order = job._order
    if order is not None:
        return order
    handle = job.handle
    try:
        return (int(handle[handle.rindex(b':') + 1:]), 0)
    except ValueError:
        return (0, 0)


class PriorityView(object):
    """A gear-compatible sequence view of one precedence's queued jobs.

    Supports iteration (FIFO), ``len``, ``in``, ``remove(job)`` and
    ``append(job)``.  Iteration works on a snapshot, so callers may remove
    jobs while they iterate.
    """

    __slots__ = ('_jq', 'precedence')

    def __init__(self, jobqueue, precedence):
        self._jq = jobqueue
        self.precedence = precedence

    def __len__(self):
        return self._jq.queued[self.precedence]

    def __bool__(self):
        return self._jq.queued[self.precedence] > 0

    def __iter__(self):
        return iter(self._jq.queuedJobs(self.precedence))

    def __getitem__(self, index):
        return self._jq.queuedJobs(self.precedence)[index]

    def __contains__(self, job):
        return ((getattr(job, '_state', 0) & STATE) == QUEUED and
                job.precedence == self.precedence and
                self._jq.jobs.get(job.handle) is job)

    def remove(self, job):
        if job not in self:
            raise ValueError('job is not in this queue')
        self._jq.detach(job)

    def append(self, job):
        jq = self._jq
        if job in self:
            raise ValueError('job is already in this queue')
        if (job._state & STATE) == QUEUED:
            jq.detach(job)
        fq = jq.function(job.name)
        del job._name
        if (job._state & STATE) == RUNNING:
            fq.running -= 1
            jq.running -= 1
        elif (job._state & STATE) == EPOCH:
            fq.epoch_count -= 1
            jq.epoch_count -= 1
        old = job._fq
        if (job._state & STATE) == DONE and old is not None:
            jq._purge(job, old)
        job._fq = fq
        job.precedence = self.precedence
        if old is None or jq.jobs.get(job.handle) is not job:
            jq.jobs[job.handle] = job
            job._order = None
            if job.unique:
                key = unique_key(job.unique, job.arguments)
                if key is not None:
                    fq.uniques.setdefault(key, job)
        else:
            jq._mark(job)
        job.worker_connection = None
        jq.enqueue(job, fq, self.precedence)
        if jq.on_enqueue is not None:
            jq.on_enqueue(fq)

    def __repr__(self):
        return '<PriorityView %s len=%d>' % (
            {HIGH: 'high', NORMAL: 'normal', LOW: 'low'}[self.precedence],
            len(self))


__all__ = ['FunctionQueue', 'JobQueue', 'PriorityView', 'unique_key',
           'order_key']
