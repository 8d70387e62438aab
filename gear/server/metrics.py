"""What the job server counts and times, for ``/metrics`` and the dashboard.

:class:`Recorder` is told about every job transition by the server's loop
thread.  Its work per transition is an integer increment into a plain
list, a list append or an attribute set, inlined by the server's
requests on their common paths: no method call, no clock read (the loop
reads the clock once a turn), no lock, no prometheus_client object, no
logging.  Counters live
in a :class:`FunctionStats` that every function's queue gets when it is
made (:meth:`Recorder.watch`), so neither a name nor a None is looked up
either.  A job handed to a worker gets the turn's time on its links
(``JobLinks.started``); a job a worker finishes is only appended to
:attr:`Recorder.ended`, and the loop notes once a turn how many ended in
it (:meth:`Recorder.noteEnds`).  :meth:`Recorder.flush` counts such jobs
in batches and files their wait and run times into histograms with
fixed bucket bounds, before any snapshot is copied.

A job's submission time is not stored on the job: the server numbers its
handles in order, so the recorder keeps a short list of (highest job
number, time) marks, one per loop turn in which jobs were created, and
the mark before a job's number says when it was created.  A queue of a
million jobs costs no memory here; a wait is known to within a loop turn
(at most :data:`MARK_RESOLUTION` while submissions stream in).

:func:`snapshot` turns the server's queues, connections and the
recorder's counters into plain data (dicts, lists, numbers, str).  Its
copying half, :func:`capture`, runs on the loop thread: the HTTP thread
(:mod:`gear.server.http`) leaves a :class:`CaptureRequest` that the loop
serves at the start of its next turn, and formats the copy itself.
:mod:`gear.server.exposition` turns a snapshot into Prometheus metrics.

Call sites in the server (each behind ``if metrics is not None``):

* a function queue made: its stats (``JobQueue.new_stats``, set by
  :meth:`Recorder.watch`, which ``Core`` calls);
* loop turn start: :meth:`Recorder.beginTurn` (loop.py ``_pollTurns``),
  which calls :meth:`Recorder.noteEnds` when jobs ended in the turn
  before, :meth:`Recorder.flush` and :meth:`Recorder.mark` when the job
  counter moved;
* bytes read: ``bytes_in``, and ``packets_in`` taken from the message
  scanner's count (``gear.protocol.MessageScanner.messages``) (loop.py
  ``_processData``); bytes sent: ``bytes_out`` (``_flushConnection``);
  packets queued for sending: ``packets_out`` (core.py ``Core.send``,
  and the submit, grab and work-result requests where they write
  replies themselves);
* a new job queued: :meth:`Recorder.submitted`, inlined (core.py, the
  submit request);
* a job handed to a worker: :meth:`Recorder.started`, inlined
  (``Core.assign``);
* a worker's WORK_COMPLETE: the work-result request appends to
  ``Recorder.ended`` itself; WORK_FAIL / WORK_EXCEPTION:
  :meth:`Recorder.finished`;
* ended jobs counted: :meth:`Recorder.flush` (``beginTurn`` when the
  list is long or ``flush_due`` passed; :meth:`Recorder.sweep`,
  which every capture runs first);
* a job given back to its queue, or failed after its retries:
  :meth:`Recorder.requeued` / :meth:`Recorder.gaveUp`
  (``Core.requeueJob``); a CAN_DO_TIMEOUT: :meth:`Recorder.timedOut`
  (``Core._jobTimedOut``);
* a store commit: :meth:`Recorder.committed` (``Core.commitStore``);
* a snapshot asked for by the HTTP thread: :meth:`Recorder.serveCapture`
  (loop.py ``_pollTurns``, at the start of a turn).
"""

import bisect
import collections
import functools
import itertools
import operator
import threading
import time

from gear import constants
from gear.server import jobs as jobstates

NORMAL = constants.PRECEDENCE_NORMAL
LOW = constants.PRECEDENCE_LOW
HIGH = constants.PRECEDENCE_HIGH

#: Upper bounds (seconds) of the wait and run time histogram buckets.
TIME_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
               1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: Upper bounds (seconds) of the store commit latency buckets.
COMMIT_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Indexes into FunctionStats.counts.  The first three are the submissions
# by precedence, indexed by the precedence constants themselves.
SUBMITTED = (NORMAL, LOW, HIGH)
COMPLETED = 3
FAILED = 4
EXCEPTION = 5
REQUEUED = 6
TIMED_OUT = 7
GAVE_UP = 8
_NCOUNTS = 9

#: Which counter a worker's final packet increments.
RESULT_KINDS = {constants.WORK_COMPLETE: COMPLETED,
                constants.WORK_FAIL: FAILED,
                constants.WORK_EXCEPTION: EXCEPTION}

#: Marks closer together than this (seconds) are not kept.
MARK_RESOLUTION = 0.001
#: Past this many marks the older half is thinned (every other one goes),
#: so old jobs' ages get coarser while memory stays bounded.
MAX_MARKS = 8192
#: Ended jobs noted before :meth:`Recorder.flush` counts them, at most
#: (plus one loop turn's worth).  The list keeps each job alive until
#: then, so a small batch matters: while jobs flow through the server,
#: thousands of finished jobs held back push the live ones out of the
#: processor's caches and keep the allocator from reusing the memory it
#: has just freed, which cost more per job than the counting itself.  A
#: hundred or so jobs still share the call's setup.
FLUSH_AT = 128
#: Ended jobs wait at most about this long (seconds) to be counted, so
#: the dashboard's rates, read from another thread, stay current.
FLUSH_INTERVAL = 0.2
#: How often (seconds) the bookkeeping of jobs that are gone is dropped.
SWEEP_INTERVAL = 10.0
#: Samples kept for the dashboard's charts (one a second: ten minutes).
HISTORY = 600
#: How many of the oldest waiting jobs a snapshot lists.
OLDEST = 20
#: How many workers a snapshot lists (all are counted).
MAX_WORKERS_LISTED = 500
#: How many function names and running jobs a snapshot lists per worker
#: (CI farms register thousands of functions per worker).
FUNCTIONS_LISTED = 50
JOBS_LISTED = 16
# How many dead entries at a FIFO's head a snapshot steps over.
_HEAD_SCAN = 64
# Times below _FINE_LIMIT / _FINE seconds find their histogram bucket in
# a table indexed by tenths of milliseconds instead of by bisection (the
# bounds below one second are whole tenths of milliseconds).
_FINE = 10000.0
_FINE_LIMIT = 10000

_bisect = bisect.bisect_left
_bisect_right = bisect.bisect_right
_STATE = jobstates.STATE
_RUNNING = jobstates.RUNNING
_QUEUED = jobstates.QUEUED
PRIORITY_NAMES = {HIGH: 'high', NORMAL: 'normal', LOW: 'low'}
PRECEDENCE_ORDER = (HIGH, NORMAL, LOW)
_FINE_BUCKET = [_bisect(TIME_BOUNDS, (t + 0.5) / _FINE)
                for t in range(_FINE_LIMIT)]
_chain = itertools.chain.from_iterable
_repeat = itertools.repeat
_islice = itertools.islice


class FunctionStats(object):
    """Counters and time histograms of one function name."""

    __slots__ = ('counts', 'wait', 'wait_sum', 'run', 'run_sum')

    def __init__(self):
        self.counts = [0] * _NCOUNTS
        # One slot per bound plus one for +Inf; not cumulative.
        self.wait = [0] * (len(TIME_BOUNDS) + 1)
        self.wait_sum = 0.0
        self.run = [0] * (len(TIME_BOUNDS) + 1)
        self.run_sum = 0.0


class Recorder(object):
    """The server's counters and timings; every method runs on the loop
    thread (or under the server lock).

    :arg handle_prefix: the server's handle prefix including the ``:``
        before the number, to read a job's number from its handle.
    :arg max_handle: the job counter at start: jobs at or below it count
        as created at start (see :meth:`start`).
    """

    def __init__(self, handle_prefix=b'', max_handle=0,
                 clock=time.monotonic):
        self._clock = clock
        #: The time (``clock``) of the current loop turn, which the loop
        #: sets: the turn's transitions share one clock read.
        now = self.now = clock()
        self.started_at = now
        self._prefix = handle_prefix
        self._plen = len(handle_prefix)
        self.functions = {}       # name (bytes) -> FunctionStats
        self._requeued = {}       # job -> time it was queued again
        self._mark_n = [max_handle]
        self._mark_t = [now]
        self._hint = 0
        #: The job counter at the last :meth:`mark` call; the loop calls
        #: mark() when the counter has moved on.
        self.marked = max_handle
        self._next_sweep = now + SWEEP_INTERVAL
        #: Jobs workers finished, not yet counted: see :meth:`flush`.
        #: Never rebound (the work-result requests hold its append).
        self.ended = []
        #: (job, kind) of the jobs in :attr:`ended` that did not
        #: complete (FAILED, EXCEPTION).  Never rebound.
        self.unsuccessful = []
        #: How many of :attr:`ended` :meth:`noteEnds` has given a time.
        self.ends_noted = 0
        # Per loop turn in which jobs ended: how many, and the turn time.
        self._end_k = []
        self._end_t = []
        self.flush_due = now + FLUSH_INTERVAL
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.commits = [0] * (len(COMMIT_BOUNDS) + 1)
        self.commit_sum = 0.0
        self.commit_failures = 0
        #: A :class:`CaptureRequest` another thread left for the loop,
        #: which serves it at the start of its next turn.
        self.capture_request = None

    def start(self, max_handle):
        """The server is ready (its stored jobs replayed): jobs numbered
        up to ``max_handle`` count as created now."""
        now = self._clock()
        self._mark_n[:] = [max_handle]
        self._mark_t[:] = [now]
        self._hint = 0
        self.marked = max_handle

    def stats(self, name):
        """The FunctionStats of ``name``, created on first use."""
        st = self.functions.get(name)
        if st is None:
            st = self.functions[name] = FunctionStats()
        return st

    def watch(self, queue):
        """Give every function queue of ``queue`` its stats, now and when
        it is made, so that the server's requests find them without a
        test (``FunctionQueue.stats``)."""
        queue.new_stats = self.stats
        for fq in list(queue.functions.values()):
            if fq.stats is None:
                self._attach(fq)

    def _attach(self, fq):
        # A function queue gets its stats on first use; a function that
        # was dropped and comes back finds its old counters.
        st = fq.stats = self.stats(fq.name)
        return st

    # -- the loop ------------------------------------------------------------

    def beginTurn(self, now, max_handle):
        """A loop turn starts at ``now`` with the job counter at
        ``max_handle``: the previous turn's ended jobs get that turn's
        time (:meth:`noteEnds`), the ended jobs are counted when their
        batch is full or due (:meth:`flush`), and the creations since the
        last mark are noted (:meth:`mark`).  The one place that says what
        a turn's start does, for the loop and for the benches that stand
        in for it."""
        ended = self.ended
        if len(ended) != self.ends_noted:
            self.noteEnds()
        self.now = now
        if ended and (now >= self.flush_due or len(ended) >= FLUSH_AT):
            self.flush()
        # mark() only notes a turn MARK_RESOLUTION after the last mark;
        # the test here spares the call.
        if max_handle != self.marked and (
                now - self._mark_t[-1] >= MARK_RESOLUTION or
                now >= self._next_sweep):
            self.mark(max_handle)

    def mark(self, max_handle):
        """Jobs were created since the last call: note when.

        The loop sets :attr:`now` at the start of each turn and calls
        this when the job counter differs from :attr:`marked`: jobs
        numbered above ``max_handle`` are created after :attr:`now`.
        """
        self.marked = max_handle
        now = self.now
        marks_t = self._mark_t
        if now - marks_t[-1] >= MARK_RESOLUTION:
            self._mark_n.append(max_handle)
            marks_t.append(now)
            if len(marks_t) > MAX_MARKS:
                self._thin()
        if now >= self._next_sweep:
            self.sweep(now)

    def noteEnds(self):
        """The jobs that joined :attr:`ended` since the last call ended
        at :attr:`now`.  The loop calls this at the start of a turn,
        before it moves :attr:`now` on, when ``len(ended)`` differs from
        :attr:`ends_noted`: a turn's worth of ended jobs shares one
        time, kept once."""
        n = len(self.ended)
        self._end_k.append(n - self.ends_noted)
        self._end_t.append(self.now)
        self.ends_noted = n

    def _thin(self):
        half = len(self._mark_n) // 2
        # Keep the first mark (the start) and every other one after it.
        self._mark_n[1:half] = self._mark_n[2:half:2]
        self._mark_t[1:half] = self._mark_t[2:half:2]

    def sweep(self, now=None):
        """Forget requeued jobs that ended by a path that does not report
        here (cancelled, abandoned, dropped)."""
        self._next_sweep = (now or self._clock()) + SWEEP_INTERVAL
        self.flush()
        table = self._requeued
        gone = [job for job in table if job._state & _STATE != _QUEUED]
        for job in gone:
            del table[job]

    def committed(self, seconds, ok=True):
        """One store commit took ``seconds``."""
        self.commits[_bisect(COMMIT_BOUNDS, seconds)] += 1
        self.commit_sum += seconds
        if not ok:
            self.commit_failures += 1

    # -- job transitions ---------------------------------------------------

    def submitted(self, fq, precedence):
        """A new job was queued (coalesced submissions are not jobs)."""
        st = fq.stats
        if st is None:
            st = self._attach(fq)
        st.counts[precedence] += 1

    def started(self, job):
        """A worker was handed ``job``: its start time goes on the job's
        links (``JobLinks.started``)."""
        job._linked().started = self.now

    def finished(self, job, kind):
        """A worker finished ``job``; ``kind`` is COMPLETED, FAILED or
        EXCEPTION (see :data:`RESULT_KINDS`).  Only noted here: the fast
        path appends to :attr:`ended` (and :attr:`unsuccessful`)
        itself, and :meth:`flush` counts and times the batch."""
        self.ended.append(job)
        if kind != COMPLETED:
            self.unsuccessful.append((job, kind))

    def flush(self):
        """Count the jobs in :attr:`ended` and time their wait and run.

        Runs on the loop thread: when the list grows past
        :data:`FLUSH_AT`, at least every :data:`FLUSH_INTERVAL` while
        jobs end, and before a capture or a sweep, so counters are exact
        in every snapshot and memory stays bounded.

        A job's run is its end turn's time less its start, its wait its
        start less the time it entered its queue.  Jobs that ended in
        one turn share that turn's time, the very same float object, and
        so do the start times of jobs handed out in one turn and the
        creation times of the jobs of one mark's span: most jobs repeat
        the previous job's function and times, tested by identity, and
        such a run of jobs is filed at once (:meth:`_runs`).
        """
        ended = self.ended
        self.flush_due = self.now + FLUSH_INTERVAL
        if not ended:
            return
        batch = ended[:]
        # The fast paths hold these very lists: empty them in place.
        del ended[:]
        others = self.unsuccessful
        if others:
            others_batch = others[:]
            del others[:]
        else:
            others_batch = ()
        end_k = self._end_k
        end_t = self._end_t
        tail = len(batch) - self.ends_noted
        if tail:
            end_k.append(tail)
            end_t.append(self.now)
        runs = None
        sinces = self._createdAll(batch)
        if sinces is not None:
            try:
                runs = self._runs(batch, end_t, end_k, sinces)
            except AttributeError:
                # A job without links, or without a start: it never
                # started.
                pass
        if runs is None:
            runs = self._jobRuns(batch, end_t, end_k)
        del end_k[:], end_t[:]
        self.ends_noted = 0
        attach = self._attach
        fine = _FINE_BUCKET
        for fq, start, now, since, k in runs:
            st = fq.stats
            if st is None:
                st = attach(fq)
            st.counts[COMPLETED] += k
            if start is None:
                continue
            # Turn times never go back: start <= now, and a job's marks
            # and requeue time are no later than its start.
            run = now - start
            t = int(run * _FINE)
            st.run[fine[t] if t < _FINE_LIMIT
                   else _bisect(TIME_BOUNDS, run)] += k
            st.run_sum += run * k
            wait = start - since
            t = int(wait * _FINE)
            st.wait[fine[t] if t < _FINE_LIMIT
                    else _bisect(TIME_BOUNDS, wait)] += k
            st.wait_sum += wait * k
        if others_batch:
            # Counted as completed above.  The corrected counters replace
            # the old in one step: other threads read finished totals
            # (done()) without a lock.
            moved = {}
            for job, kind in others_batch:
                st = self._stats(job)
                counts = moved.get(st)
                if counts is None:
                    counts = moved[st] = st.counts[:]
                counts[COMPLETED] -= 1
                counts[kind] += 1
            for st, counts in moved.items():
                st.counts = counts

    def _runs(self, batch, end_t, end_k, sinces):
        """(function queue, start, end, queued since, how many) of the
        runs of alike jobs in ``batch``, which ended ``end_k[i]`` at a
        time in ``end_t[i]``, each created at the time ``sinces`` gives
        (:meth:`_createdAll`); None if a job has rarely set fields (an
        epoch time), AttributeError if one never started."""
        runs = []
        add = runs.append
        jobs = zip(batch, sinces)
        for end, k in zip(end_t, end_k):
            fq = start = since = None
            n = 0
            for job, created in _islice(jobs, k):
                links = job._links
                if links.started is start and created is since and \
                        job._fq is fq and not links.extra:
                    n += 1
                    continue
                if links.extra:
                    return None
                if n:
                    add((fq, start, end, since, n))
                fq = job._fq
                start = links.started
                since = created
                n = 1
            if n:
                add((fq, start, end, since, n))
        return runs

    def _jobRuns(self, batch, end_t, end_k):
        """:meth:`_runs` job by job, for any batch: each job that does not
        repeat the previous one's function and times is looked at alone
        (:meth:`_jobKey`)."""
        runs = []
        add = runs.append
        jobs = iter(batch)
        for end, k in zip(end_t, end_k):
            fq = start = since = None
            n = 0
            for job in _islice(jobs, k):
                key = self._jobKey(job)
                if key[0] is fq and key[1] is start and key[2] is since:
                    n += 1
                    continue
                if n:
                    add((fq, start, end, since, n))
                fq, start, since = key
                n = 1
            if n:
                add((fq, start, end, since, n))
        return runs

    def _createdAll(self, batch):
        """When each job in ``batch`` was created (an iterator), or None
        if a job needs to be looked at alone: a requeued job, handles of
        several widths or not the server's."""
        requeued = self._requeued
        if requeued and not requeued.keys().isdisjoint(batch):
            return None
        handles = [job.handle for job in batch]
        prefix = self._prefix
        plen = self._plen
        try:
            lowest = min(handles)
            highest = max(handles)
            # Handles that start with the prefix and have one width order
            # as their numbers do.
            if not (lowest.startswith(prefix) and
                    highest.startswith(prefix) and
                    len(set(map(len, handles))) == 1):
                return None
            lo = int(lowest[plen:])
            hi = int(highest[plen:])
        except (TypeError, ValueError):
            # Handles that are not all bytes, or not numbers.
            return None
        # A job numbered n was created after mark i = bisect(marks, n) - 1
        # (the first mark, if none is below n).  The marks between the
        # batch's lowest and highest numbers have their width: the job
        # finds its mark among their handles.
        marks = self._mark_n
        mark_t = self._mark_t
        a = _bisect(marks, lo)
        b = _bisect(marks, hi)
        times = mark_t[a - 1:b] if a else mark_t[:1] + mark_t[:b]
        if a == b:
            return _repeat(times[0])
        between = [prefix + b'%d' % n for n in marks[a:b]]
        if handles == sorted(handles):
            # As jobs mostly end: in the order they were created.  Each
            # mark's handle cuts the batch once.
            cuts = [_bisect_right(handles, h) for h in between]
            cuts.append(len(handles))
            return _chain(map(_repeat, times,
                              map(operator.sub, cuts, [0] + cuts)))
        return map(times.__getitem__,
                   map(functools.partial(_bisect, between), handles))

    def _jobKey(self, job):
        """(function queue, start, queued since) of one job."""
        links = job._links
        start = None if links is None else getattr(links, 'started', None)
        if start is None:
            return job._fq, None, None
        requeued = self._requeued
        if requeued and job in requeued:
            return job._fq, start, requeued.pop(job)
        since = self.createdAt(job)
        if links.extra:
            since = min(start, self._epoch(links.extra, since,
                                           self._clock()))
        return job._fq, start, since

    def requeued(self, job):
        """A job lost its worker and went back to its queue."""
        self._stats(job).counts[REQUEUED] += 1
        self._requeued[job] = self.now

    def timedOut(self, job):
        """A job overran its worker's CAN_DO_TIMEOUT."""
        self._stats(job).counts[TIMED_OUT] += 1

    def gaveUp(self, job):
        """A job lost its worker once more than the retry limit allows."""
        self._stats(job).counts[GAVE_UP] += 1
        self._requeued.pop(job, None)

    def _stats(self, job):
        st = job._fq.stats
        if st is None:
            st = self._attach(job._fq)
        return st

    # -- when jobs entered their queue ---------------------------------------

    def createdAt(self, job):
        """When ``job`` was created, from the marks (monotonic clock)."""
        try:
            n = int(job.handle[self._plen:])
        except (ValueError, TypeError):
            return self._mark_t[0]
        marks = self._mark_n
        # Jobs mostly finish in the order they were created: try the mark
        # the previous lookup found before searching.
        i = self._hint
        if not (i < len(marks) and marks[i] < n and
                (i + 1 == len(marks) or marks[i + 1] >= n)):
            i = _bisect(marks, n) - 1
            if i < 0:
                i = 0
            self._hint = i
        return self._mark_t[i]

    def _epoch(self, extra, since, now):
        # A job submitted with an epoch time waits from that time.
        when = extra.get('when')
        if when:
            due = now - (time.time() - when)
            if due > since:
                return due
        return since

    def queuedSince(self, job):
        """When ``job`` last entered its queue (creation, a requeue, or
        its epoch time for a scheduled job)."""
        since = self._requeued.get(job)
        if since is None:
            since = self.createdAt(job)
            links = job._links
            if links is not None and links.extra:
                since = self._epoch(links.extra, since, self._clock())
        return since

    def runningSince(self, job):
        """When the running ``job`` was handed out, or None."""
        links = job._links
        if links is None or job._state & _STATE != _RUNNING:
            return None
        return getattr(links, 'started', None)

    def serveCapture(self, server):
        """On the loop thread: answer the pending capture request."""
        request = self.capture_request
        self.capture_request = None
        if request is not None:
            try:
                request.raw = capture(server, self)
            finally:
                request.done.set()


class CaptureRequest(object):
    """A :func:`capture` asked of the loop thread by another thread."""

    def __init__(self):
        self.done = threading.Event()
        self.raw = None


# -- snapshots ----------------------------------------------------------------

def _text(value):
    if isinstance(value, bytes):
        return value.decode('utf8', 'backslashreplace')
    return str(value)


def _histogram(bounds, buckets, total):
    """Cumulative ``[[bound, count], ...]`` plus sum and count."""
    out = []
    running = 0
    for bound, n in zip(bounds, buckets):
        running += n
        out.append([bound, running])
    count = running + buckets[-1]
    return {'buckets': out, 'sum': total, 'count': count}


def _queue_head(fq, precedence):
    """The first live job of one FIFO (its oldest), or None."""
    if not fq.queued[precedence]:
        return None
    seen = 0
    for job in fq.fifos[precedence]:
        if job._state & _STATE == _QUEUED:
            return job
        seen += 1
        if seen >= _HEAD_SCAN:
            break
    return None


def capture(server, recorder):
    """Copy what a snapshot shows out of the server, as fast as possible.

    Runs on the loop thread or under ``server.lock`` (it reads the queues
    and connections directly), so it only copies: lists are sliced,
    nothing is formatted or sorted, and per worker at most
    :data:`FUNCTIONS_LISTED` names and :data:`JOBS_LISTED` jobs are
    taken.  :func:`build` makes the snapshot of it without the lock.
    """
    now = recorder._clock()
    recorder.sweep(now)
    q = server.queue
    functions = []
    heads = []
    for name, fq in list(q.functions.items()):
        st = fq.stats or recorder.functions.get(name)
        functions.append((name, True, fq.queued[:], fq.epoch_count,
                          fq.running, fq.workers, _copy_stats(st)))
        for p in PRECEDENCE_ORDER:
            job = _queue_head(fq, p)
            if job is not None:
                heads.append((now - recorder.queuedSince(job), name, p,
                              job.handle))
    present = q.functions
    for name, st in list(recorder.functions.items()):
        if name not in present:
            functions.append((name, False, [0, 0, 0], 0, 0, 0,
                              _copy_stats(st)))
    connections = []
    for conn in list(server.connection_map.values()):
        if conn.functions:
            connections.append(('worker', len(conn.send_queue),
                                _worker_capture(conn, recorder, now)))
        else:
            connections.append(('admin' if getattr(conn, '_admin', False)
                                else 'client', len(conn.send_queue), None))
    queued = q.queued
    return {
        'now': now, 'time': time.time(), 'up': bool(server.running),
        'uptime': now - recorder.started_at,
        'queued': queued[:], 'scheduled': q.epoch_count,
        'running': q.running, 'jobs': len(q.jobs),
        'done': done(recorder),
        'functions': functions, 'heads': heads,
        'connections': connections,
        'io': (recorder.packets_in, recorder.packets_out,
               recorder.bytes_in, recorder.bytes_out),
        'persistent': bool(getattr(getattr(server, 'store', None),
                                   'persistent', False)),
        'commits': (recorder.commits[:], recorder.commit_sum,
                    recorder.commit_failures),
    }


def _copy_stats(st):
    if st is None:
        return None
    return (st.counts[:], st.wait[:], st.wait_sum, st.run[:], st.run_sum)


def _worker_capture(conn, recorder, now):
    jobs = []
    for job in itertools.islice(conn.related_jobs.values(), JOBS_LISTED):
        if job.worker_connection is conn and \
                job._state & _STATE == _RUNNING:
            since = recorder.runningSince(job)
            jobs.append((job.handle, job.name,
                         now - since if since is not None else None))
    return (conn.fd, conn.host, conn.client_id, len(conn.functions),
            list(itertools.islice(conn.functions, FUNCTIONS_LISTED)), jobs)


def build(raw, version=None):
    """The snapshot (plain dicts, lists, numbers and str) of a
    :func:`capture`; needs no lock."""
    functions = [_function_entry(*f) for f in raw['functions']]
    oldest = {}
    for age, name, p, handle in raw['heads']:
        if age > oldest.get(name, -1.0):
            oldest[name] = age
    for entry, f in zip(functions, raw['functions']):
        entry['oldest_age'] = max(0.0, oldest.get(f[0], 0.0))
    functions.sort(key=lambda f: f['name'])
    heads = sorted(raw['heads'], key=lambda item: -item[0])[:OLDEST]

    roles = {'client': 0, 'worker': 0, 'admin': 0}
    workers = []
    output_queued = 0
    for role, pending, worker in raw['connections']:
        roles[role] += 1
        output_queued += pending
        if worker is not None and len(workers) < MAX_WORKERS_LISTED:
            workers.append(_worker_entry(*worker))
    workers.sort(key=lambda w: (w['client_id'], w['fd']))

    queued = raw['queued']
    packets_in, packets_out, bytes_in, bytes_out = raw['io']
    commits, commit_sum, commit_failures = raw['commits']
    return {
        'version': version,
        'time': raw['time'],
        'uptime': raw['uptime'],
        'up': raw['up'],
        'totals': {
            'queued': {'high': queued[HIGH], 'normal': queued[NORMAL],
                       'low': queued[LOW]},
            'waiting': queued[0] + queued[1] + queued[2],
            'scheduled': raw['scheduled'],
            'running': raw['running'],
            'jobs': raw['jobs'],
            'done': raw['done'],
            'functions': sum(1 for f in functions if f['present']),
        },
        'functions': functions,
        'workers': workers,
        'oldest': [{'function': _text(name), 'priority': PRIORITY_NAMES[p],
                    'handle': _text(handle), 'age': max(0.0, age)}
                   for age, name, p, handle in heads],
        'connections': roles,
        'io': {'packets_in': packets_in, 'packets_out': packets_out,
               'bytes_in': bytes_in, 'bytes_out': bytes_out,
               'output_queued_bytes': output_queued},
        'store': {
            'persistent': raw['persistent'],
            'commit_failures': commit_failures,
            'commit_seconds': _histogram(COMMIT_BOUNDS, commits,
                                         commit_sum)},
    }


def snapshot(server, recorder, version=None):
    """:func:`build` of a :func:`capture`: on the loop thread or under
    ``server.lock``."""
    return build(capture(server, recorder), version)


_NO_STATS = ([0] * _NCOUNTS, [0] * (len(TIME_BOUNDS) + 1), 0.0,
             [0] * (len(TIME_BOUNDS) + 1), 0.0)


def _function_entry(name, present, queued, scheduled, running, workers,
                    stats):
    c, wait, wait_sum, run, run_sum = stats or _NO_STATS
    total = queued[0] + queued[1] + queued[2] + scheduled + running
    # False for a function that never had a job (a worker registered
    # it): its counters are all zero, and the entry leaves out its
    # histograms (CI farms register thousands of such functions).
    active = bool(total) or any(c)
    entry = {
        'name': _text(name),
        'present': present,
        'queued': {'high': queued[HIGH], 'normal': queued[NORMAL],
                   'low': queued[LOW]},
        'scheduled': scheduled, 'running': running, 'workers': workers,
        'total': total, 'oldest_age': 0.0,
        'active': active,
        'submitted': {'high': c[HIGH], 'normal': c[NORMAL], 'low': c[LOW]},
        'completed': c[COMPLETED],
        'failed': c[FAILED], 'exception': c[EXCEPTION],
        'requeued': c[REQUEUED], 'timed_out': c[TIMED_OUT],
        'retries_exhausted': c[GAVE_UP],
    }
    if active:
        entry['wait_seconds'] = _histogram(TIME_BOUNDS, wait, wait_sum)
        entry['run_seconds'] = _histogram(TIME_BOUNDS, run, run_sum)
    return entry


def _worker_entry(fd, host, client_id, nfunctions, functions, jobs):
    return {'fd': fd if fd is not None else -1,
            'host': _text(host),
            'client_id': _text(client_id or b'-'),
            'functions': sorted(_text(f) for f in functions),
            'function_count': nfunctions,
            'jobs': [{'handle': _text(handle), 'function': _text(name),
                      'running_for': running_for}
                     for handle, name, running_for in jobs]}


def totals(server, recorder):
    """(waiting, running, done): cheap reads for the chart sampler, safe
    from any thread (each is one int read under the GIL)."""
    q = server.queue
    queued = q.queued
    return (queued[0] + queued[1] + queued[2] + q.epoch_count, q.running,
            done(recorder))


def done(recorder):
    """Jobs finished by workers, all functions; safe from any thread."""
    total = 0
    for st in list(recorder.functions.values()):
        c = st.counts
        total += c[COMPLETED] + c[FAILED] + c[EXCEPTION]
    return total


def finished_by_function(recorder):
    """{function name (str): jobs finished by workers}, safe from any
    thread: the dict is copied in one step, and counts are plain ints."""
    finished = {}
    for name, st in list(recorder.functions.items()):
        c = st.counts
        finished[_text(name)] = c[COMPLETED] + c[FAILED] + c[EXCEPTION]
    return finished


class History(object):
    """A ring of (wall time, waiting, running, done) samples."""

    def __init__(self, size=HISTORY):
        self.samples = collections.deque(maxlen=size)

    def add(self, sample):
        self.samples.append(sample)

    def list(self):
        return [list(s) for s in list(self.samples)]
