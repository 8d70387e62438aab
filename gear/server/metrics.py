"""What the job server counts and times, for ``/metrics`` and the dashboard.

:class:`Recorder` is told about every job transition by the server's loop
thread.  What a transition costs on the server's hot path is an integer
increment, an attribute set or a list append, written out in the
server's requests (no method call, no clock read, no lock, no
prometheus_client object, no logging).  The loop reads the clock once a
turn, and moves the recorder's time (:attr:`Recorder.now`) on in steps
of at least :data:`TICK`: every time the recorder keeps is that of the
turn a transition happened in, or of one less than a TICK before it.

The accounting rests on three things a job carries while the server
records metrics:

* its function's counters: a :class:`FunctionStats` that every function
  queue gets when it is made (:meth:`Recorder.watch`), so the submit
  request increments its counter in place;
* when it entered its queue: the turn time of its submission (or
  requeue, or its due time if it was scheduled), in a slot of its own
  (``_since``): with metrics on, the server's jobs are of a subclass of
  its job class with that slot (:func:`timed_class`);
* while it runs, a :class:`Timing` on its links (``JobLinks.started``):
  the jobs of one function queued since one time and handed out at one
  time share one, made when the first of them is handed out and kept on
  the function's stats for the next.  It holds the jobs' start and their
  wait, whose histogram bucket it finds once for all of them.

A job that completes only appends its Timing to :attr:`Recorder.ended`.
When the time moves on (:meth:`Recorder.advance`), the list is counted
(:meth:`Recorder.flush`): the Timings are counted by identity in one C
call, and each distinct one files its jobs' run and wait into its
function's histograms at once.  The job by job work of the count is
that C call's; nothing holds a finished job alive for longer than a
TICK.

:func:`snapshot` turns the server's queues, connections and the
recorder's counters into plain data (dicts, lists, numbers, str).  Its
copying half, :func:`capture`, runs on the loop thread: the HTTP thread
(:mod:`gear.server.http`) leaves a :class:`CaptureRequest` that the loop
serves at the start of its next turn, and formats the copy itself.
:mod:`gear.server.exposition` turns a snapshot into Prometheus metrics.

Call sites in the server (each behind ``if metrics is not None``):

* a function queue made: its stats (``JobQueue.new_stats``, set by
  :meth:`Recorder.watch`, which ``Core`` calls);
* a loop turn's start: :meth:`Recorder.beginTurn`, which calls
  :meth:`Recorder.advance` when the clock moved on by a :data:`TICK`
  or more, and a snapshot asked for by the HTTP
  thread (:meth:`Recorder.serveCapture`) (loop.py ``_pollTurns``); the
  loop also wakes up within :data:`IDLE_FLUSH` while completed jobs
  wait to be counted;
* bytes read: ``bytes_in`` (loop.py ``_processData``; the packets read
  are the message scanner's own count,
  ``gear.protocol.MessageScanner.messages``); bytes sent: ``bytes_out``
  (``_flushConnection``); packets queued for sending: ``packets_out``
  (core.py ``Core.send``, and the grab and work-result requests where
  they write replies themselves; a new job's JOB_CREATED is counted
  by its submission, see :meth:`Recorder.packetsOut`);
* a new job: :meth:`Recorder.submitted`, inlined (core.py, the submit
  request); one scheduled for later, or replayed from the store:
  :meth:`Recorder.queued` (``Core.queueNew``, ``Core.replay``);
* a job handed to a worker: :meth:`Recorder.started`, inlined
  (``Core.assign``), which calls :meth:`Recorder.timing` when the
  function's last Timing does not fit;
* a worker's WORK_COMPLETE: the work-result request appends to
  :attr:`Recorder.ended` itself; WORK_FAIL / WORK_EXCEPTION:
  :meth:`Recorder.file` at once (see :meth:`Recorder.finished`);
* a job given back to its queue, or failed after its retries:
  :meth:`Recorder.requeued` / :meth:`Recorder.gaveUp`
  (``Core.requeueJob``); a CAN_DO_TIMEOUT: :meth:`Recorder.timedOut`
  (``Core._jobTimedOut``);
* a store commit: :meth:`Recorder.committed` (``Core.commitStore``).
"""

import bisect
import collections
import itertools
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

#: The loop's time for transitions moves on in steps of at least this
#: many seconds (:meth:`Recorder.advance`): every time the recorder
#: notes is that of the turn it happens in, or of an earlier turn less
#: than a TICK before.  Jobs that complete in one TICK are counted
#: together, and jobs handed out in one share their Timing.
TICK = 0.00025
#: Completed jobs wait at most about this long (seconds) to be counted
#: when the server falls idle (the loop wakes up for them).
IDLE_FLUSH = 0.05
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
# Counts the items of an iterable into a dict, in C (what Counter uses).
_count_elements = collections._count_elements
_STATE = jobstates.STATE
_RUNNING = jobstates.RUNNING
_QUEUED = jobstates.QUEUED
PRIORITY_NAMES = {HIGH: 'high', NORMAL: 'normal', LOW: 'low'}
PRECEDENCE_ORDER = (HIGH, NORMAL, LOW)
_FINE_BUCKET = [_bisect(TIME_BOUNDS, (t + 0.5) / _FINE)
                for t in range(_FINE_LIMIT)]


def time_bucket(seconds):
    """The index in a wait or run histogram of ``seconds``."""
    t = int(seconds * _FINE)
    if 0 <= t < _FINE_LIMIT:
        return _FINE_BUCKET[t]
    return _bisect(TIME_BOUNDS, seconds)


class Timing(object):
    """The jobs of one function, queued since one time and handed to
    workers at one time (:attr:`Recorder.now`): their start, and their
    wait (the same for all of them), with its histogram bucket found
    once."""

    __slots__ = ('stats', 'since', 'start', 'wait', 'wait_bucket')

    def __init__(self, stats, since, start):
        self.stats = stats
        self.since = since
        self.start = start
        wait = start - since
        if wait < 0.0:
            # A job due at an epoch time may be handed out a little
            # before the monotonic estimate of that time.
            wait = 0.0
        self.wait = wait
        self.wait_bucket = time_bucket(wait)


# What a function's stats hold before any of its jobs started: no job's
# times are these objects.
_NO_TIMING = Timing(None, 0.0, 0.0)
_NO_TIMING.since = _NO_TIMING.start = object()


class FunctionStats(object):
    """Counters and time histograms of one function name, and the Timing
    its last job handed to a worker got (``timing``) until the time moves
    on."""

    __slots__ = ('counts', 'wait', 'wait_sum', 'run', 'run_sum', 'timing')

    def __init__(self):
        self.counts = [0] * _NCOUNTS
        # One slot per bound plus one for +Inf; not cumulative.
        self.wait = [0] * (len(TIME_BOUNDS) + 1)
        self.wait_sum = 0.0
        self.run = [0] * (len(TIME_BOUNDS) + 1)
        self.run_sum = 0.0
        self.timing = _NO_TIMING


_TIMED_CLASSES = {}


def timed_class(job_class):
    """``job_class`` with a slot for the time a job entered its queue
    (``_since``), made once per class.  Only a server that records
    metrics pays the slot's memory, 16 bytes per queued job."""
    if hasattr(job_class, '_since'):
        return job_class
    cls = _TIMED_CLASSES.get(job_class)
    if cls is None:
        cls = type(job_class)(job_class.__name__, (job_class,), {
            '__slots__': ('_since',),
            '__module__': job_class.__module__,
            '__qualname__': job_class.__qualname__,
            '__doc__': job_class.__doc__})
        _TIMED_CLASSES[job_class] = cls
    return cls


class Recorder(object):
    """The server's counters and timings; every method runs on the loop
    thread (or under the server lock)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        #: The time (``clock``) of the current loop turn, or of one less
        #: than a TICK before (:meth:`advance`): transitions share one
        #: clock read, and one float object, which :class:`Timing` reuse
        #: tests by identity.
        now = self.now = clock()
        self.started_at = now
        self.functions = {}       # name (bytes) -> FunctionStats
        # The stats that got a Timing since the time last moved on.
        self._timed = []
        #: The Timings of the jobs that completed at :attr:`now`, one
        #: entry a job, counted when the time moves on (:meth:`flush`).
        #: Never rebound (the work-result requests hold its append).
        self.ended = []
        #: What counts the packets read: the server's message scanner
        #: (``gear.protocol.MessageScanner.messages``).
        self.scanner = None
        self.bytes_in = 0
        #: Packets queued for sending, except the JOB_CREATED replies to
        #: new jobs, which the submission counters stand for: see
        #: :meth:`packetsOut`.
        self.packets_out = 0
        self.bytes_out = 0
        self.commits = [0] * (len(COMMIT_BOUNDS) + 1)
        self.commit_sum = 0.0
        self.commit_failures = 0
        #: A :class:`CaptureRequest` another thread left for the loop,
        #: which serves it at the start of its next turn.
        self.capture_request = None

    @property
    def packets_in(self):
        """Packets (and admin lines) read."""
        scanner = self.scanner
        return 0 if scanner is None else scanner.messages

    def packetsOut(self):
        """Packets queued for sending: :attr:`packets_out` and a
        JOB_CREATED for every new job (a submission whose client left
        before it took its count back)."""
        total = self.packets_out
        for st in list(self.functions.values()):
            c = st.counts
            total += c[NORMAL] + c[LOW] + c[HIGH]
        return total

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

    def _stats(self, job):
        st = job._fq.stats
        if st is None:
            st = self._attach(job._fq)
        return st

    def committed(self, seconds, ok=True):
        """One store commit took ``seconds``."""
        self.commits[_bisect(COMMIT_BOUNDS, seconds)] += 1
        self.commit_sum += seconds
        if not ok:
            self.commit_failures += 1

    # -- job transitions ---------------------------------------------------

    def submitted(self, job, precedence, when=0):
        """A new job was queued (coalesced submissions are not jobs), and
        its JOB_CREATED reply (:meth:`packetsOut`); ``job`` is of a
        :func:`timed_class`."""
        self._stats(job).counts[precedence] += 1
        self.queued(job, when)

    def queued(self, job, when=0):
        """``job`` waits from now, or from ``when`` (epoch seconds) if
        that is later: a scheduled job waits from its due time."""
        since = self.now
        if when:
            due = since + (when - time.time())
            if due > since:
                since = due
        job._since = since

    def requeued(self, job):
        """A job lost its worker and went back to its queue: it waits
        from now."""
        self._stats(job).counts[REQUEUED] += 1
        job._since = self.now

    def timing(self, job):
        """The :class:`Timing` of ``job``, handed to a worker now: its
        function's last one if that fits, else a new one that
        becomes the function's last."""
        st = self._stats(job)
        try:
            since = job._since
        except AttributeError:
            # Not queued through the server's requests (a job of a class
            # without the slot): it waits from the start.
            since = self.started_at
        now = self.now
        timing = st.timing
        if timing.since is not since or timing.start is not now:
            timing = st.timing = Timing(st, since, now)
            self._timed.append(st)
        return timing

    def started(self, job):
        """A worker was handed ``job``: its Timing goes on its links."""
        job._linked().started = self.timing(job)

    def finished(self, job, kind):
        """A worker finished ``job``; ``kind`` is COMPLETED, FAILED or
        EXCEPTION (see :data:`RESULT_KINDS`).  A completed job is only
        listed (the fast path appends to :attr:`ended` itself) and
        counted when the time moves on; the others are filed at once."""
        links = job._links
        timing = None if links is None else getattr(links, 'started', None)
        if timing is None:
            timing = self.timing(job)
        if kind == COMPLETED:
            self.ended.append(timing)
        else:
            self.file(timing, kind)

    def file(self, timing, kind, n=1):
        """Count ``n`` jobs of ``timing`` that ended now as ``kind``, and
        file their run and wait."""
        st = timing.stats
        st.counts[kind] += n
        run = self.now - timing.start
        st.run[time_bucket(run)] += n
        st.run_sum += run * n
        st.wait[timing.wait_bucket] += n
        st.wait_sum += timing.wait * n

    def beginTurn(self, now):
        """A loop turn starts at ``now`` (a clock read): the recorder's
        time moves on if the clock did by a :data:`TICK` or more.  The
        one place that says what a turn's start does, for the loop and
        for the benches that stand in for it."""
        if now - self.now >= TICK:
            self.advance(now)

    def advance(self, now):
        """The loop's time moves on to ``now``: the jobs that completed
        before are counted first, at the time they completed at."""
        if self.ended:
            self.flush()
        # The functions' last Timings are of the time that ends: the
        # server's requests need not test their start.
        timed = self._timed
        for st in timed:
            st.timing = _NO_TIMING
        del timed[:]
        self.now = now

    def flush(self):
        """Count the jobs in :attr:`ended`, which completed at
        :attr:`now`.

        :meth:`advance` calls this before the time moves on, and every
        capture does first.  The jobs are counted by their Timing, in C;
        each Timing's jobs are filed at once (:meth:`file`).
        """
        ended = self.ended
        if not ended:
            return
        counts = {}
        _count_elements(counts, ended)
        # The fast path holds this very list: empty it in place.
        del ended[:]
        file = self.file
        for timing, n in counts.items():
            file(timing, COMPLETED, n)

    def timedOut(self, job):
        """A job overran its worker's CAN_DO_TIMEOUT."""
        self._stats(job).counts[TIMED_OUT] += 1

    def gaveUp(self, job):
        """A job lost its worker once more than the retry limit allows."""
        self._stats(job).counts[GAVE_UP] += 1

    # -- for snapshots -------------------------------------------------------

    def queuedSince(self, job):
        """When ``job`` last entered its queue (its submission, a
        requeue, or its due time for a scheduled job)."""
        since = getattr(job, '_since', None)
        return self.started_at if since is None else since

    def runningSince(self, job):
        """When the running ``job`` was handed out, or None."""
        links = job._links
        if links is None or job._state & _STATE != _RUNNING:
            return None
        timing = getattr(links, 'started', None)
        return None if timing is None else timing.start

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
    """Cumulative ``[(bound, count), ...]`` plus sum and count (a
    snapshot holds two per function: made in C)."""
    cumulative = list(itertools.accumulate(buckets))
    return {'buckets': list(zip(bounds, cumulative)), 'sum': total,
            'count': cumulative[-1]}


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
    recorder.flush()
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
        'io': (recorder.packets_in, recorder.packetsOut(),
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
