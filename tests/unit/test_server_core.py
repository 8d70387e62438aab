"""The server core driven directly: no sockets, no threads, no sleeps.

:class:`gear.server.core.Core` is a state machine: a request goes in as
``handler(connection, payload)``, replies come out as bytes appended to
``connection.send_queue``, and time only passes when a timer of the fake
loop below is fired.  Most transitions are rows of a table (start steps,
one request, the job's state, the replies of every connection, the queue
counters); the sequences that do not fit a row (fairness, wake-up
rotation, the store-commit rule) are plain tests.
"""

import collections
import random
import struct
from unittest import mock

import testtools

from gear import constants
from gear.acl import ACL, ACLEntry
from gear.constants import (
    CAN_DO, CAN_DO_TIMEOUT, CANT_DO, ECHO_REQ, ECHO_RES, ERROR,
    GET_STATUS, GET_STATUS_UNIQUE, GRAB_JOB, GRAB_JOB_ALL, GRAB_JOB_UNIQ,
    JOB_ASSIGN, JOB_ASSIGN_ALL, JOB_ASSIGN_UNIQ, JOB_CREATED, NO_JOB, NOOP,
    OPTION_REQ, OPTION_RES, PRE_SLEEP, RESET_ABILITIES, STATUS_RES,
    STATUS_RES_UNIQUE, SUBMIT_JOB, SUBMIT_JOB_BG, SUBMIT_JOB_EPOCH,
    SUBMIT_JOB_HIGH, SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_LOW, SUBMIT_JOB_LOW_BG,
    SUBMIT_JOB_SCHED, SUBMIT_REDUCE_JOB, SUBMIT_REDUCE_JOB_BACKGROUND,
    WORK_COMPLETE, WORK_DATA, WORK_EXCEPTION, WORK_FAIL, WORK_STATUS,
    WORK_WARNING)
from gear.server import core as core_mod
from gear.server import metrics as metrics_mod
from gear.server import semantics as semantics_mod
from gear.server.connection import ServerConnection
from gear.server.core import Core, Hooks
from gear.server.jobs import (
    DONE, EPOCH, NEW, QUEUED, RUNNING, STATE, CompactServerJob)
from gear.server.queue import JobQueue
from gear.server.store import NullStore, StoreError, StoredJob
from gear.server.util import _CloseConnection

RES = constants.RES
NORMAL = constants.PRECEDENCE_NORMAL
LOW = constants.PRECEDENCE_LOW
HIGH = constants.PRECEDENCE_HIGH
PREFIX = b'H:test:'
# The clock starts here (wall time); epochs in rows are relative to it.
T0 = 1700000000


def H(n):
    """The handle of the n-th job the core creates."""
    return PREFIX + b'%d' % n


# -- the fake loop ---------------------------------------------------------


class FakeClock(object):
    """Stands in for the ``time`` module inside the core: wall and
    monotonic time move together, and only when a test says so."""

    def __init__(self):
        self.now = float(T0)
        self.mono = 1000.0

    def time(self):
        return self.now

    def monotonic(self):
        return self.mono

    def time_ns(self):
        return int(self.now * 1e9)

    def move(self, seconds):
        self.now += seconds
        self.mono += seconds


class FakeIO(object):
    """The loop side of the core: a manual timer list, and a wire per
    connection that receives its output when the loop would write it."""

    def __init__(self, clock):
        self.clock = clock
        self.core = None
        self.timers = []
        self.seq = 0
        self.open = []
        self.closing = []
        self.flushed = []
        self.wire = {}

    # The interface the core uses.

    def addTimer(self, delay, callback, arg):
        self.seq += 1
        entry = [self.clock.mono + delay, self.seq, callback, arg]
        self.timers.append(entry)
        return entry

    def cancelTimer(self, entry):
        if entry is not None:
            entry[2] = None
            entry[3] = None

    def flushNow(self, conn):
        # As the real loop: a pending commit comes first.
        self.flushed.append(conn)
        if self.core.store_acked:
            self.core.commitStore()
        self.write(conn)

    def closeLater(self, conn):
        if conn not in self.closing:
            self.closing.append(conn)

    def onLoopThread(self):
        return True

    def connections(self):
        return list(self.open)

    # What the tests use.

    def write(self, conn):
        if not conn.closed and conn.send_queue:
            self.wire.setdefault(conn, bytearray()).extend(conn.send_queue)
            conn.send_queue.clear()

    def live_timers(self):
        return sorted(e for e in self.timers if e[2] is not None)

    def advance(self, seconds):
        """Move the clock and fire every timer that falls due, in order
        (timers armed by a callback fire too if they are due)."""
        self.clock.move(seconds)
        while True:
            due = [e for e in self.live_timers()
                   if e[0] <= self.clock.mono]
            if not due:
                break
            entry = due[0]
            self.timers.remove(entry)
            callback, arg = entry[2], entry[3]
            callback(arg)


def decode(data):
    """The response packets in ``data`` as (type, payload) pairs."""
    packets = []
    pos = 0
    while pos < len(data):
        magic, ptype, size = struct.unpack_from('!4sII', data, pos)
        if magic != RES:
            raise AssertionError('not a response at %d: %r' % (
                pos, bytes(data[pos:pos + 12])))
        payload = bytes(data[pos + 12:pos + 12 + size])
        if len(payload) != size:
            raise AssertionError('truncated packet at %d' % pos)
        packets.append((ptype, payload))
        pos += 12 + size
    return packets


# Expected replies.

def created(n):
    return (JOB_CREATED, H(n))


def error(code, text):
    return (ERROR, code + b'\x00' + text)


def work(ptype, n, *fields):
    return (ptype, b'\x00'.join((H(n),) + fields))


def assign(n, fn=b'f', data=b'x'):
    return (JOB_ASSIGN, b'\x00'.join((H(n), fn, data)))


def assign_uniq(n, unique, fn=b'f', data=b'x'):
    return (JOB_ASSIGN_UNIQ, b'\x00'.join((H(n), fn, unique, data)))


NOOP_R = (NOOP, b'')
NO_JOB_R = (NO_JOB, b'')
QUEUE_FULL = error(b'QUEUE_ERROR', b'Job queue is full')
COMMIT_FAILED = error(b'QUEUE_ERROR', b'Job store commit failed')
STORE_FAILING = error(b'QUEUE_ERROR', b'Job store is failing')
NOT_FOUND = error(b'JOB_NOT_FOUND', b'Job given in work result not found')
NOT_FOUND_DATA = error(b'JOB_NOT_FOUND', b'Job does not exist on server')


class FakeStore(object):
    """A store that batches writes (group commit), with switches to make
    its writes or its commits fail."""

    persistent = True

    def __init__(self):
        self.rows = {}         # committed: handle -> (name, unique, when)
        self.batch = {}        # added since the last commit
        self.removals = set()  # removals not committed yet
        self.healthy = True
        self.fail_add = False
        self.fail_commit = False
        self.flushes = 0
        self.probes = 0
        self.discarded = []
        self.stored = []       # StoredJob rows for load()
        self.counter = 0

    @property
    def pending_removals(self):
        return len(self.removals)

    def add(self, job):
        if self.fail_add:
            self.healthy = False
            raise StoreError('disk full')
        self.batch[job.handle] = (job.name, job.unique, job.when)

    def remove(self, job):
        self.batch.pop(job.handle, None)
        self.removals.add(job.handle)

    def _commit(self):
        if self.fail_commit:
            self.healthy = False
            raise StoreError('commit failed')
        self.rows.update(self.batch)
        for handle in self.removals:
            self.rows.pop(handle, None)
        self.batch = {}
        self.removals = set()
        self.healthy = True

    def flush(self):
        self.flushes += 1
        self._commit()

    def discard(self):
        handles = list(self.batch)
        self.discarded.extend(handles)
        self.batch = {}
        return handles

    def probe(self):
        self.probes += 1
        assert not self.batch, 'probe with an open batch'
        try:
            self._commit()
        except StoreError:
            return False
        return True

    def load(self):
        return list(self.stored)

    def handleCounterStart(self):
        return self.counter


class FakeStats(object):
    """A statsd reporter that keeps what it was told."""

    def __init__(self):
        self.reports = []

    def queue(self, total, running, waiting):
        self.reports.append((total, running, waiting))

    def packet(self, ptype, duration):
        pass


class Harness(object):
    """One core, its fake loop, and named connections."""

    def __init__(self, semantics='gearmand', store=None, job_retries=None,
                 worker_wakeup=0, clock=None, recorded=False, **kw):
        self.clock = clock or FakeClock()
        self.io = FakeIO(self.clock)
        self.queue = JobQueue(PREFIX)
        self.store = store if store is not None else NullStore()
        if recorded:
            kw['metrics'] = metrics_mod.Recorder(clock=self.clock.monotonic)
            kw['stats'] = FakeStats()
        self.core = Core(self.queue, self.io, self.store,
                         semantics_mod.POLICIES[semantics], PREFIX + b'%d',
                         CompactServerJob, job_retries=job_retries,
                         worker_wakeup=worker_wakeup, hooks=Hooks(), **kw)
        self.io.core = self.core
        self.core.buildHandlers()
        self.conns = {}
        self.jobs = {}  # every job ever indexed, by handle
        self.delivered = 0  # packets the tests have read

    def conn(self, name):
        conn = self.conns.get(name)
        if conn is None:
            conn = ServerConnection(('peer', len(self.conns) + 1), None,
                                    False, name)
            self.conns[name] = conn
            self.io.open.append(conn)
        return conn

    def send(self, name, ptype, *fields):
        """One request, as the loop would pass it to the core."""
        conn = self.conn(name)
        self.core.handlers[ptype](conn, b'\x00'.join(fields))
        self.track()
        self.checkDirty()

    def track(self):
        for handle, job in self.queue.jobs.items():
            self.jobs[handle] = job

    def checkDirty(self):
        """Every connection with output waiting is listed for the loop."""
        for conn in self.conns.values():
            if conn.send_queue and not conn.closed:
                assert conn in self.core.dirty, conn

    def turn(self):
        """The end of a loop turn: the commit, then the writes."""
        if self.core.store_acked:
            self.core.commitStore()
        dirty = self.core.dirty
        while dirty:
            conns = dirty[:]
            del dirty[:]
            for conn in conns:
                self.io.write(conn)
        for conn in self.io.closing:
            self.drop(conn.name)
        del self.io.closing[:]

    def recv(self, name):
        """The packets ``name`` got since the last look (after the turn)."""
        self.turn()
        packets = decode(self.io.wire.pop(self.conn(name), b''))
        self.delivered += len(packets)
        return packets

    def received(self):
        """Every connection's packets since the last look."""
        self.turn()
        got = {}
        for name, conn in self.conns.items():
            packets = decode(self.io.wire.pop(conn, b''))
            if packets:
                got[name] = packets
                self.delivered += len(packets)
        return got

    def drop(self, name):
        """The connection is lost (as the loop's _lostConnection)."""
        conn = self.conn(name)
        if conn.closed:
            return
        conn.closed = True
        conn.connected = False
        conn.send_queue.clear()
        self.io.open.remove(conn)
        self.io.wire.pop(conn, None)
        self.core.dropConnection(conn)

    def job(self, n=1):
        return self.jobs[H(n)]

    def state(self, n=1):
        return self.job(n)._state & STATE

    def fq(self, name=b'f'):
        return self.queue.functions[name]


# -- the transition table --------------------------------------------------

class Row(object):
    """One transition: the steps to the start state, then one request.

    Steps are ``(connection name, packet type, field, ...)`` or callables
    taking the :class:`Harness`.  Expected: the state of each job (by
    handle number), the replies each connection gets to the request (any
    connection not named gets none), ``queued`` (``queue.queued``, in
    [NORMAL, LOW, HIGH] order), ``running`` (``queue.running``), and
    ``fq``: function name -> (``total``, ``running``, ``workers``).
    ``closes``: the request ends the session (the handler raises) and
    changes nothing.
    """

    def __init__(self, name, start, request, states=None, replies=None,
                 queued=(0, 0, 0), running=0, fq=None, attrs=None,
                 core=None, closes=False):
        self.name = name
        self.closes = closes
        self.start = start
        self.request = request
        self.states = states or {}
        self.replies = replies or {}
        self.queued = list(queued)
        self.running = running
        self.fq = fq or {}
        self.attrs = attrs or {}
        self.core = core or {}


def do(h, step):
    if callable(step):
        step(h)
    else:
        h.send(*step)


def drop(name):
    return lambda h: h.drop(name)


def advance(seconds):
    return lambda h: h.io.advance(seconds)


def clock(seconds):
    """Move the clock without firing timers (a late loop turn)."""
    return lambda h: h.clock.move(seconds)


def cancel(n, expected=True):
    def step(h):
        got = h.core.semantics.cancel(h.core, h.job(n))
        assert got is expected, (got, expected)
    return step


def limits(name, sizes):
    return lambda h: h.queue.setLimits(name, sizes)


def sub(ptype, unique=b'u', data=b'x', conn='c', fn=b'f'):
    return (conn, ptype, fn, unique, data)


def epoch(when, unique=b'e', conn='c', data=b'x'):
    return (conn, SUBMIT_JOB_EPOCH, b'f', unique, b'%d' % when, data)


Q_FG = [sub(SUBMIT_JOB)]
Q_BG = [sub(SUBMIT_JOB_BG)]
WORKER = [('w', CAN_DO, b'f')]
SLEEPING = WORKER + [('w', PRE_SLEEP)]
GRAB = [('w', GRAB_JOB)]
RUN_FG = Q_FG + WORKER + GRAB
RUN_BG = Q_BG + WORKER + GRAB
EXC = [('c', OPTION_REQ, b'exceptions')]
TIMEOUT_WORKER = [('w', CAN_DO_TIMEOUT, b'f\x001500')]
RUN_TIMED = Q_FG + TIMEOUT_WORKER + GRAB


def submission_row(ptype):
    """One submission of each precedence, foreground and background."""
    precedence, background = constants.SUBMIT_TYPES[ptype]
    queued = [0, 0, 0]
    queued[precedence] = 1
    name = {NORMAL: 'normal', HIGH: 'high', LOW: 'low'}[precedence]
    return Row('submit_%s%s' % (name, '_bg' if background else ''),
               [], sub(ptype), {1: QUEUED}, {'c': [created(1)]},
               tuple(queued), 0, {b'f': (1, 0, 0)},
               {'background': background, 'precedence': precedence})


ROWS = [submission_row(ptype) for ptype in sorted(constants.SUBMIT_TYPES)]
ROWS += [
    Row('submit_awake_worker_gets_nothing', WORKER, sub(SUBMIT_JOB),
        {1: QUEUED}, {'c': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('submit_wakes_sleeper', SLEEPING, sub(SUBMIT_JOB), {1: QUEUED},
        {'c': [created(1)], 'w': [NOOP_R]}, (1, 0, 0), 0,
        {b'f': (1, 0, 1)}),
    Row('submit_other_function_leaves_sleeper', SLEEPING,
        sub(SUBMIT_JOB, fn=b'g'), {1: QUEUED}, {'c': [created(1)]},
        (1, 0, 0), 0, {b'f': (0, 0, 1), b'g': (1, 0, 0)}),
    Row('submit_sched_is_refused', [],
        ('c', SUBMIT_JOB_SCHED, b'f', b'u', b'0', b'0', b'0', b'0', b'0',
         b'x'), {},
        {'c': [error(b'INVALID_COMMAND', b'Command not expected')]}),
    Row('submit_unique_too_large', [], sub(SUBMIT_JOB, unique=b'u' * 65),
        {}, {'c': [error(b'ARGUMENT_TOO_LARGE',
                         b'Unique value too large')]}),
    Row('submit_reduce', [],
        ('c', SUBMIT_REDUCE_JOB, b'f', b'u', b'r', b'', b'x'), {1: QUEUED},
        {'c': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 0)},
        {'reducer': b'r', 'background': False}),
    Row('submit_reduce_bg', [],
        ('c', SUBMIT_REDUCE_JOB_BACKGROUND, b'f', b'u', b'r', b'', b'x'),
        {1: QUEUED}, {'c': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 0)},
        {'reducer': b'r', 'background': True}),

    # Coalescing by unique, per function.
    Row('coalesce_queued', Q_FG, sub(SUBMIT_JOB, conn='c2', data=b'y'),
        {1: QUEUED}, {'c2': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 0)},
        {'arguments': b'x'}),
    Row('coalesce_other_precedence', Q_FG,
        sub(SUBMIT_JOB_HIGH, conn='c2'), {1: QUEUED}, {'c2': [created(1)]},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}, {'precedence': NORMAL}),
    Row('coalesce_running', RUN_FG, sub(SUBMIT_JOB, conn='c2'),
        {1: RUNNING}, {'c2': [created(1)]}, (0, 0, 0), 1,
        {b'f': (1, 1, 1)}),
    Row('coalesce_same_connection_twice', Q_FG, sub(SUBMIT_JOB),
        {1: QUEUED}, {'c': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('coalesce_bg_into_bg', Q_BG, sub(SUBMIT_JOB_BG, conn='c2'),
        {1: QUEUED}, {'c2': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 0)},
        {'background': True, 'clients': None}),
    Row('coalesce_fg_into_bg', Q_BG, sub(SUBMIT_JOB, conn='c2'),
        {1: QUEUED}, {'c2': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 0)},
        {'background': True}),
    Row('coalesce_bg_adopts_fg', Q_FG, sub(SUBMIT_JOB_BG, conn='c2'),
        {1: QUEUED}, {'c2': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 0)},
        {'background': True}),
    Row('coalesce_dash_equal_payload', [sub(SUBMIT_JOB, b'-')],
        sub(SUBMIT_JOB, b'-', conn='c2'), {1: QUEUED},
        {'c2': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('no_coalesce_dash_other_payload', [sub(SUBMIT_JOB, b'-')],
        sub(SUBMIT_JOB, b'-', data=b'y', conn='c2'), {1: QUEUED, 2: QUEUED},
        {'c2': [created(2)]}, (2, 0, 0), 0, {b'f': (2, 0, 0)}),
    Row('no_coalesce_dash_empty_payload', [sub(SUBMIT_JOB, b'-', b'')],
        sub(SUBMIT_JOB, b'-', b'', conn='c2'), {1: QUEUED, 2: QUEUED},
        {'c2': [created(2)]}, (2, 0, 0), 0, {b'f': (2, 0, 0)}),
    Row('no_coalesce_empty_unique', [sub(SUBMIT_JOB, b'')],
        sub(SUBMIT_JOB, b'', conn='c2'), {1: QUEUED, 2: QUEUED},
        {'c2': [created(2)]}, (2, 0, 0), 0, {b'f': (2, 0, 0)}),
    Row('no_coalesce_other_function', Q_FG,
        sub(SUBMIT_JOB, conn='c2', fn=b'g'), {1: QUEUED, 2: QUEUED},
        {'c2': [created(2)]}, (2, 0, 0), 0,
        {b'f': (1, 0, 0), b'g': (1, 0, 0)}),
    Row('no_coalesce_after_completion',
        RUN_FG + [('w', WORK_COMPLETE, H(1), b'r')],
        sub(SUBMIT_JOB, conn='c2'), {1: DONE, 2: QUEUED},
        {'c2': [created(2)]}, (1, 0, 0), 0, {b'f': (1, 0, 1)}),

    # maxqueue: the function's total (queued and running) against the
    # limit of the new job's precedence; coalescing is free.
    Row('maxqueue_full', [limits(b'f', [1, 1, 1])] + Q_FG,
        sub(SUBMIT_JOB, b'v', conn='c2'), {1: QUEUED},
        {'c2': [QUEUE_FULL]}, (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('maxqueue_counts_running', [limits(b'f', [1, 1, 1])] + RUN_FG,
        sub(SUBMIT_JOB_BG, b'v', conn='c2'), {1: RUNNING},
        {'c2': [QUEUE_FULL]}, (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('maxqueue_per_precedence', [limits(b'f', [0, 0, 1])] + Q_FG,
        sub(SUBMIT_JOB, b'v', conn='c2'), {1: QUEUED, 2: QUEUED},
        {'c2': [created(2)]}, (2, 0, 0), 0, {b'f': (2, 0, 0)}),
    Row('maxqueue_high_full', [limits(b'f', [0, 0, 1])] + Q_FG,
        sub(SUBMIT_JOB_HIGH, b'v', conn='c2'), {1: QUEUED},
        {'c2': [QUEUE_FULL]}, (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('maxqueue_coalesce_is_free', [limits(b'f', [1, 1, 1])] + Q_FG,
        sub(SUBMIT_JOB, conn='c2'), {1: QUEUED}, {'c2': [created(1)]},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('maxqueue_reset', [limits(b'f', [1, 1, 1])] + Q_FG +
        [limits(b'f', None)],
        sub(SUBMIT_JOB, b'v', conn='c2'), {1: QUEUED, 2: QUEUED},
        {'c2': [created(2)]}, (2, 0, 0), 0, {b'f': (2, 0, 0)}),

    # Grabbing.
    Row('grab_assign', Q_FG + WORKER, ('w', GRAB_JOB), {1: RUNNING},
        {'w': [assign(1)]}, (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('grab_assign_uniq', Q_FG + WORKER, ('w', GRAB_JOB_UNIQ),
        {1: RUNNING}, {'w': [assign_uniq(1, b'u')]}, (0, 0, 0), 1,
        {b'f': (1, 1, 1)}),
    Row('grab_assign_uniq_empty_unique', [sub(SUBMIT_JOB, b'')] + WORKER,
        ('w', GRAB_JOB_UNIQ), {1: RUNNING}, {'w': [assign_uniq(1, b'')]},
        (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('grab_all_without_reducer', Q_FG + WORKER, ('w', GRAB_JOB_ALL),
        {1: RUNNING}, {'w': [assign_uniq(1, b'u')]}, (0, 0, 0), 1,
        {b'f': (1, 1, 1)}),
    Row('grab_all_with_reducer',
        [('c', SUBMIT_REDUCE_JOB, b'f', b'u', b'r', b'', b'x')] + WORKER,
        ('w', GRAB_JOB_ALL), {1: RUNNING},
        {'w': [(JOB_ASSIGN_ALL, H(1) + b'\x00f\x00u\x00r\x00x')]},
        (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('grab_nothing', WORKER, ('w', GRAB_JOB), {}, {'w': [NO_JOB_R]},
        (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('grab_unregistered', Q_FG, ('w', GRAB_JOB), {1: QUEUED},
        {'w': [NO_JOB_R]}, (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('grab_other_function', Q_FG + [('w', CAN_DO, b'g')],
        ('w', GRAB_JOB), {1: QUEUED}, {'w': [NO_JOB_R]}, (1, 0, 0), 0,
        {b'f': (1, 0, 0), b'g': (0, 0, 1)}),
    Row('grab_ends_a_sleep', SLEEPING + [('w', GRAB_JOB)], sub(SUBMIT_JOB),
        {1: QUEUED}, {'c': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('grab_while_sleeping_wakes', Q_FG + SLEEPING + [('w', GRAB_JOB)],
        ('w', GRAB_JOB), {1: RUNNING}, {'w': [NO_JOB_R]}, (0, 0, 0), 1,
        {b'f': (1, 1, 1)}),

    # PRE_SLEEP.
    Row('pre_sleep_with_job_queued', Q_FG + WORKER, ('w', PRE_SLEEP),
        {1: QUEUED}, {'w': [NOOP_R]}, (1, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('pre_sleep_idle', WORKER, ('w', PRE_SLEEP), {}, {}, (0, 0, 0), 0,
        {b'f': (0, 0, 1)}),
    Row('pre_sleep_epoch_not_due', WORKER + [epoch(T0 + 60)],
        ('w', PRE_SLEEP), {1: EPOCH}, {}, (0, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('can_do_while_sleeping_wakes', Q_FG + [('w', CAN_DO, b'g'),
                                               ('w', PRE_SLEEP)],
        ('w', CAN_DO, b'f'), {1: QUEUED}, {'w': [NOOP_R]}, (1, 0, 0), 0,
        {b'f': (1, 0, 1), b'g': (0, 0, 1)}),
    Row('second_submit_no_second_noop',
        SLEEPING + [sub(SUBMIT_JOB, b'a')], sub(SUBMIT_JOB, b'b'),
        {1: QUEUED, 2: QUEUED}, {'c': [created(2)]}, (2, 0, 0), 0,
        {b'f': (2, 0, 1)}),

    # Work results from the job's worker go to every client.
    Row('complete', RUN_FG, ('w', WORK_COMPLETE, H(1), b'r'), {1: DONE},
        {'c': [work(WORK_COMPLETE, 1, b'r')]}, (0, 0, 0), 0,
        {b'f': (0, 0, 1)}),
    Row('complete_bg', RUN_BG, ('w', WORK_COMPLETE, H(1), b'r'), {1: DONE},
        {}, (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('complete_coalesced', RUN_FG + [sub(SUBMIT_JOB, conn='c2'),
                                        sub(SUBMIT_JOB, conn='c2')],
        ('w', WORK_COMPLETE, H(1), b'r'), {1: DONE},
        {'c': [work(WORK_COMPLETE, 1, b'r')],
         'c2': [work(WORK_COMPLETE, 1, b'r')] * 2},
        (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('complete_bg_with_fg_client', RUN_BG + [sub(SUBMIT_JOB, conn='c2')],
        ('w', WORK_COMPLETE, H(1), b'r'), {1: DONE},
        {'c2': [work(WORK_COMPLETE, 1, b'r')]}, (0, 0, 0), 0,
        {b'f': (0, 0, 1)}),
    Row('fail', RUN_FG, ('w', WORK_FAIL, H(1)), {1: DONE},
        {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('exception_without_option', RUN_FG,
        ('w', WORK_EXCEPTION, H(1), b'boom'), {1: DONE},
        {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('exception_with_option', EXC + RUN_FG,
        ('w', WORK_EXCEPTION, H(1), b'boom'), {1: DONE},
        {'c': [work(WORK_EXCEPTION, 1, b'boom')]}, (0, 0, 0), 0,
        {b'f': (0, 0, 1)}),
    Row('exception_mixed_clients',
        RUN_FG + [('c2', OPTION_REQ, b'exceptions'),
                  sub(SUBMIT_JOB, conn='c2')],
        ('w', WORK_EXCEPTION, H(1), b'boom'), {1: DONE},
        {'c': [work(WORK_FAIL, 1)],
         'c2': [work(WORK_EXCEPTION, 1, b'boom')]},
        (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('data', RUN_FG, ('w', WORK_DATA, H(1), b'd'), {1: RUNNING},
        {'c': [work(WORK_DATA, 1, b'd')]}, (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('warning', RUN_FG, ('w', WORK_WARNING, H(1), b'd'), {1: RUNNING},
        {'c': [work(WORK_WARNING, 1, b'd')]}, (0, 0, 0), 1,
        {b'f': (1, 1, 1)}),
    Row('status', RUN_FG, ('w', WORK_STATUS, H(1), b'1', b'2'),
        {1: RUNNING}, {'c': [work(WORK_STATUS, 1, b'1', b'2')]}, (0, 0, 0),
        1, {b'f': (1, 1, 1)}, {'numerator': b'1', 'denominator': b'2'}),
    Row('data_bg_goes_nowhere', RUN_BG, ('w', WORK_DATA, H(1), b'd'),
        {1: RUNNING}, {}, (0, 0, 0), 1, {b'f': (1, 1, 1)}),

    # Results from anyone but the job's worker.
    Row('complete_from_other_worker',
        RUN_FG + [('w2', CAN_DO, b'f')], ('w2', WORK_COMPLETE, H(1), b'r'),
        {1: RUNNING}, {'w2': [NOT_FOUND]}, (0, 0, 0), 1, {b'f': (1, 1, 2)}),
    Row('complete_from_client', RUN_FG, ('c', WORK_COMPLETE, H(1), b'r'),
        {1: RUNNING}, {'c': [NOT_FOUND]}, (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('data_from_other_worker', RUN_FG, ('w2', WORK_DATA, H(1), b'd'),
        {1: RUNNING}, {'w2': [NOT_FOUND_DATA]}, (0, 0, 0), 1,
        {b'f': (1, 1, 1)}),
    Row('exception_from_other_worker', RUN_FG,
        ('w2', WORK_EXCEPTION, H(1), b'e'), {1: RUNNING},
        {'w2': [error(b'JOB_NOT_FOUND', b'An exception was received for a '
                      b'job that does not exist')]},
        (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('complete_queued_job', Q_FG + WORKER,
        ('w', WORK_COMPLETE, H(1), b'r'), {1: QUEUED}, {'w': [NOT_FOUND]},
        (1, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('complete_unknown_handle', WORKER,
        ('w', WORK_COMPLETE, H(99), b'r'), {}, {'w': [NOT_FOUND]},
        (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('complete_twice', RUN_FG + [('w', WORK_COMPLETE, H(1), b'r')],
        ('w', WORK_COMPLETE, H(1), b'r'), {1: DONE}, {'w': [NOT_FOUND]},
        (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('complete_handle_too_long', WORKER,
        ('w', WORK_COMPLETE, b'h' * 65, b'r'), {},
        {'w': [error(b'ARGUMENT_TOO_LARGE',
                     b'Job handle longer than 64 bytes')]},
        (0, 0, 0), 0, {b'f': (0, 0, 1)}),

    # Worker lost, under both semantics, with and without retries.
    Row('lost_gearmand_fg_requeued', RUN_FG, drop('w'), {1: QUEUED}, {},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}, {'retries': 1,
                                          'worker_connection': None}),
    Row('lost_gearmand_bg_requeued', RUN_BG, drop('w'), {1: QUEUED}, {},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}, {'retries': 1}),
    Row('lost_gearmand_retries_0_fails', RUN_FG, drop('w'), {1: DONE},
        {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0, {b'f': (0, 0, 0)},
        core={'job_retries': 0}),
    Row('lost_gearmand_retries_1_requeues', RUN_FG, drop('w'), {1: QUEUED},
        {}, (1, 0, 0), 0, {b'f': (1, 0, 0)}, {'retries': 1},
        core={'job_retries': 1}),
    Row('lost_gearmand_retries_1_second_loss_fails',
        RUN_FG + [drop('w')] + [('w2', CAN_DO, b'f'), ('w2', GRAB_JOB)],
        drop('w2'), {1: DONE}, {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0,
        {b'f': (0, 0, 0)}, core={'job_retries': 1}),
    Row('lost_gearmand_bg_retries_0_dropped', RUN_BG, drop('w'), {1: DONE},
        {}, (0, 0, 0), 0, {b'f': (0, 0, 0)}, core={'job_retries': 0}),
    Row('lost_requeue_wakes_sleeper', RUN_FG + [('w2', CAN_DO, b'f'),
                                                ('w2', PRE_SLEEP)],
        drop('w'), {1: QUEUED}, {'w2': [NOOP_R]}, (1, 0, 0), 0,
        {b'f': (1, 0, 1)}),
    Row('lost_gear_fg_fails', RUN_FG, drop('w'), {1: DONE},
        {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0, {b'f': (0, 0, 0)},
        core={'semantics': 'gear'}),
    Row('lost_gear_bg_requeued', RUN_BG, drop('w'), {1: QUEUED}, {},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}, {'retries': 1},
        core={'semantics': 'gear'}),
    Row('lost_gear_bg_retries_0_dropped', RUN_BG, drop('w'), {1: DONE}, {},
        (0, 0, 0), 0, {b'f': (0, 0, 0)},
        core={'semantics': 'gear', 'job_retries': 0}),
    Row('lost_gear_fg_retries_5_still_fails', RUN_FG, drop('w'), {1: DONE},
        {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0, {b'f': (0, 0, 0)},
        core={'semantics': 'gear', 'job_retries': 5}),
    Row('lost_clears_progress',
        RUN_FG + [('w', WORK_STATUS, H(1), b'1', b'2')], drop('w'),
        {1: QUEUED}, {}, (1, 0, 0), 0, {b'f': (1, 0, 0)},
        {'numerator': None, 'denominator': None, 'worker_connection': None}),
    Row('lost_idle_worker', Q_FG + WORKER, drop('w'), {1: QUEUED}, {},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}, {'retries': 0}),

    # CANT_DO and RESET_ABILITIES while running.
    Row('cant_do_gearmand_requeues', RUN_FG, ('w', CANT_DO, b'f'),
        {1: QUEUED}, {}, (1, 0, 0), 0, {b'f': (1, 0, 0)}, {'retries': 1}),
    Row('cant_do_gearmand_retries_0_fails', RUN_FG, ('w', CANT_DO, b'f'),
        {1: DONE}, {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0,
        {b'f': (0, 0, 0)}, core={'job_retries': 0}),
    Row('cant_do_gear_keeps_running', RUN_FG, ('w', CANT_DO, b'f'),
        {1: RUNNING}, {}, (0, 0, 0), 1, {b'f': (1, 1, 0)}, {'retries': 0},
        core={'semantics': 'gear'}),
    Row('cant_do_gear_result_still_counts',
        RUN_FG + [('w', CANT_DO, b'f')], ('w', WORK_COMPLETE, H(1), b'r'),
        {1: DONE}, {'c': [work(WORK_COMPLETE, 1, b'r')]}, (0, 0, 0), 0,
        {b'f': (0, 0, 0)}, core={'semantics': 'gear'}),
    Row('cant_do_gearmand_late_result',
        RUN_FG + [('w', CANT_DO, b'f')], ('w', WORK_COMPLETE, H(1), b'r'),
        {1: QUEUED}, {'w': [NOT_FOUND]}, (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('cant_do_other_function', RUN_FG + [('w', CAN_DO, b'g')],
        ('w', CANT_DO, b'g'), {1: RUNNING}, {}, (0, 0, 0), 1,
        {b'f': (1, 1, 1), b'g': (0, 0, 0)}),
    Row('cant_do_unknown', RUN_FG, ('w', CANT_DO, b'nope'), {1: RUNNING},
        {}, (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('reset_gearmand_requeues', RUN_FG + [('w', CAN_DO, b'g')],
        ('w', RESET_ABILITIES), {1: QUEUED}, {}, (1, 0, 0), 0,
        {b'f': (1, 0, 0), b'g': (0, 0, 0)}, {'retries': 1}),
    Row('reset_gear_keeps_running', RUN_FG, ('w', RESET_ABILITIES),
        {1: RUNNING}, {}, (0, 0, 0), 1, {b'f': (1, 1, 0)},
        core={'semantics': 'gear'}),

    # CAN_DO_TIMEOUT, with the fake timer.
    Row('timeout_not_yet', RUN_TIMED, advance(1.4), {1: RUNNING}, {},
        (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('timeout_expires_requeues', RUN_TIMED, advance(1.5), {1: QUEUED},
        {}, (1, 0, 0), 0, {b'f': (1, 0, 1)}, {'retries': 1}),
    Row('timeout_expires_retries_0_fails', RUN_TIMED, advance(1.5),
        {1: DONE}, {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0,
        {b'f': (0, 0, 1)}, core={'job_retries': 0}),
    Row('timeout_raised_to_one_second',
        Q_FG + [('w', CAN_DO_TIMEOUT, b'f\x0010')] + GRAB + [advance(0.9)],
        advance(0.1), {1: QUEUED}, {}, (1, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('timeout_late_result', RUN_TIMED + [advance(1.5)],
        ('w', WORK_COMPLETE, H(1), b'r'), {1: QUEUED}, {'w': [NOT_FOUND]},
        (1, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('timeout_requeued_job_regrabbed', RUN_TIMED + [advance(1.5)],
        ('w', GRAB_JOB), {1: RUNNING}, {'w': [assign(1)]}, (0, 0, 0), 1,
        {b'f': (1, 1, 1)}, {'retries': 1}),
    Row('timeout_cleared_by_completion',
        RUN_TIMED + [('w', WORK_COMPLETE, H(1), b'r')], advance(5), {1: DONE},
        {}, (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('timeout_dropped_by_plain_can_do',
        Q_FG + TIMEOUT_WORKER + [('w', CAN_DO, b'f')] + GRAB, advance(5),
        {1: RUNNING}, {}, (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    # gear keeps one timer per job, which PRE_SLEEP leaves alone (gearmand
    # keeps one per connection and clears it on PRE_SLEEP).
    Row('timeout_survives_pre_sleep', RUN_TIMED + [('w', PRE_SLEEP)],
        advance(1.5), {1: QUEUED}, {'w': [NOOP_R]}, (1, 0, 0), 0,
        {b'f': (1, 0, 1)}, {'retries': 1}),
    Row('timeout_malformed_closes', [], ('w', CAN_DO_TIMEOUT, b'f'),
        closes=True),
    Row('timeout_unparsable_closes', [],
        ('w', CAN_DO_TIMEOUT, b'f\x00-5'), closes=True),

    # Epoch jobs: background, NORMAL, parked until due.
    Row('epoch_past_runs_now', WORKER, epoch(T0 - 10), {1: QUEUED},
        {'c': [created(1)]}, (1, 0, 0), 0, {b'f': (1, 0, 1)},
        {'background': True, 'when': T0 - 10}),
    Row('epoch_future_parked', [], epoch(T0 + 60), {1: EPOCH},
        {'c': [created(1)]}, (0, 0, 0), 0, {b'f': (1, 0, 0)},
        {'background': True, 'precedence': NORMAL}),
    Row('epoch_future_not_grabbed', WORKER + [epoch(T0 + 60)],
        ('w', GRAB_JOB), {1: EPOCH}, {'w': [NO_JOB_R]}, (0, 0, 0), 0,
        {b'f': (1, 0, 1)}),
    Row('epoch_future_no_noop', SLEEPING, epoch(T0 + 60), {1: EPOCH},
        {'c': [created(1)]}, (0, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('epoch_timer_not_yet', SLEEPING + [epoch(T0 + 60)], advance(59),
        {1: EPOCH}, {}, (0, 0, 0), 0, {b'f': (1, 0, 1)}),
    Row('epoch_timer_promotes_and_wakes', SLEEPING + [epoch(T0 + 60)],
        advance(60), {1: QUEUED}, {'w': [NOOP_R]}, (1, 0, 0), 0,
        {b'f': (1, 0, 1)}),
    Row('epoch_due_grabbed_before_timer', WORKER + [epoch(T0 + 60),
                                                    clock(61)],
        ('w', GRAB_JOB), {1: RUNNING}, {'w': [assign(1, data=b'x')]},
        (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('epoch_high_priority_first',
        WORKER + [epoch(T0 + 60), sub(SUBMIT_JOB_LOW, b'l'), advance(60)],
        ('w', GRAB_JOB), {1: RUNNING, 2: QUEUED}, {'w': [assign(1)]},
        (0, 1, 0), 1, {b'f': (2, 1, 1)}),
    Row('epoch_coalesce', [epoch(T0 + 60)],
        epoch(T0 + 30, conn='c2'), {1: EPOCH}, {'c2': [created(1)]},
        (0, 0, 0), 0, {b'f': (1, 0, 0)}, {'when': T0 + 60}),
    Row('epoch_malformed_closes', [],
        ('c', SUBMIT_JOB_EPOCH, b'f', b'u', b'soon', b'x'), closes=True),
    Row('submit_malformed_closes', [], ('c', SUBMIT_JOB, b'f', b'u'),
        closes=True),

    # Cancel (the admin command's core), under both semantics.
    Row('cancel_gearmand_queued', Q_FG, cancel(1), {1: DONE},
        {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 0, {b'f': (0, 0, 0)},
        {'ignore': True}),
    Row('cancel_gearmand_queued_bg', Q_BG, cancel(1), {1: DONE}, {},
        (0, 0, 0), 0, {b'f': (0, 0, 0)}),
    Row('cancel_gearmand_running', RUN_FG, cancel(1), {1: RUNNING},
        {'c': [work(WORK_FAIL, 1)]}, (0, 0, 0), 1, {b'f': (1, 1, 1)},
        {'ignore': True, 'clients': []}),
    Row('cancel_gearmand_running_result_discarded',
        RUN_FG + [cancel(1)], ('w', WORK_COMPLETE, H(1), b'r'), {1: DONE},
        {}, (0, 0, 0), 0, {b'f': (0, 0, 1)}),
    Row('cancel_gearmand_running_frees_unique', RUN_FG + [cancel(1)],
        sub(SUBMIT_JOB, conn='c2'), {1: RUNNING, 2: QUEUED},
        {'c2': [created(2)]}, (1, 0, 0), 1, {b'f': (2, 1, 1)}),
    Row('cancel_gearmand_running_worker_lost', RUN_FG + [cancel(1)],
        drop('w'), {1: DONE}, {}, (0, 0, 0), 0, {b'f': (0, 0, 0)}),
    Row('cancel_gearmand_epoch', [epoch(T0 + 60)], cancel(1), {1: DONE},
        {}, (0, 0, 0), 0, {b'f': (0, 0, 0)}),
    Row('cancel_gear_queued_silent', Q_FG, cancel(1), {1: DONE}, {},
        (0, 0, 0), 0, {b'f': (0, 0, 0)}, {'ignore': True},
        core={'semantics': 'gear'}),
    Row('cancel_gear_running_refused', RUN_FG, cancel(1, False),
        {1: RUNNING}, {}, (0, 0, 0), 1, {b'f': (1, 1, 1)}, {'ignore': False},
        core={'semantics': 'gear'}),

    # A client leaves its foreground job.
    Row('abandon_queued', Q_FG, drop('c'), {1: DONE}, {}, (0, 0, 0), 0,
        {b'f': (0, 0, 0)}),
    Row('abandon_running', RUN_FG, drop('c'), {1: RUNNING}, {}, (0, 0, 0),
        1, {b'f': (1, 1, 1)}, {'ignore': True}),
    Row('abandon_running_result_discarded', RUN_FG + [drop('c')],
        ('w', WORK_COMPLETE, H(1), b'r'), {1: DONE}, {}, (0, 0, 0), 0,
        {b'f': (0, 0, 1)}),
    Row('abandon_running_then_worker_lost', RUN_FG + [drop('c')],
        drop('w'), {1: DONE}, {}, (0, 0, 0), 0, {b'f': (0, 0, 0)}),
    Row('abandon_one_of_two_clients', Q_FG + [sub(SUBMIT_JOB, conn='c2')],
        drop('c'), {1: QUEUED}, {}, (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('abandon_bg_unaffected', Q_BG + [sub(SUBMIT_JOB, conn='c2')],
        drop('c2'), {1: QUEUED}, {}, (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('abandon_adopted_unaffected',
        Q_FG + [sub(SUBMIT_JOB_BG, conn='c2')], drop('c'), {1: QUEUED}, {},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}, {'background': True}),

    # Status, echo and options.
    Row('get_status_queued', Q_FG, ('c2', GET_STATUS, H(1)), {1: QUEUED},
        {'c2': [(STATUS_RES, H(1) + b'\x001\x000\x000\x000')]},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('get_status_running', RUN_FG + [('w', WORK_STATUS, H(1), b'3',
                                         b'4')],
        ('c2', GET_STATUS, H(1)), {1: RUNNING},
        {'c2': [(STATUS_RES, H(1) + b'\x001\x001\x003\x004')]},
        (0, 0, 0), 1, {b'f': (1, 1, 1)}),
    Row('get_status_unknown', [], ('c', GET_STATUS, H(7)), {},
        {'c': [(STATUS_RES, H(7) + b'\x000\x000\x000\x000')]}),
    Row('get_status_unique', Q_FG + [sub(SUBMIT_JOB, conn='c2')],
        ('c3', GET_STATUS_UNIQUE, b'u'), {1: QUEUED},
        {'c3': [(STATUS_RES_UNIQUE, b'u\x001\x000\x000\x000\x002')]},
        (1, 0, 0), 0, {b'f': (1, 0, 0)}),
    Row('get_status_unique_unknown', [], ('c', GET_STATUS_UNIQUE, b'v'),
        {}, {'c': [(STATUS_RES_UNIQUE, b'v\x000\x000\x000\x000\x000')]}),
    Row('echo', [], ('c', ECHO_REQ, b'ping'), {},
        {'c': [(ECHO_RES, b'ping')]}),
    Row('option_exceptions', [], ('c', OPTION_REQ, b'exceptions'), {},
        {'c': [(OPTION_RES, b'exceptions')]}),
    Row('option_unknown', [], ('c', OPTION_REQ, b'nope'), {},
        {'c': [error(b'UNKNOWN_OPTION',
                     b'Server does not recognize given option')]}),
]


class CoreTestCase(testtools.TestCase):

    def setUp(self):
        super(CoreTestCase, self).setUp()
        self.clock = FakeClock()
        patcher = mock.patch.object(core_mod, 'time', self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)

    def harness(self, **kw):
        return Harness(clock=self.clock, **kw)

    def assertCounters(self, h, queued, running, fqs):
        self.assertEqual(list(queued), h.queue.queued)
        self.assertEqual(running, h.queue.running)
        for name, (total, frunning, workers) in fqs.items():
            fq = h.fq(name)
            self.assertEqual((total, frunning, workers),
                             (fq.total, fq.running, fq.workers), name)
        # The global counters are the sums of the functions'.
        fqs = list(h.queue.functions.values())
        self.assertEqual(h.queue.running, sum(f.running for f in fqs))
        self.assertEqual(h.queue.epoch_count,
                         sum(f.epoch_count for f in fqs))
        for p in (NORMAL, LOW, HIGH):
            self.assertEqual(h.queue.queued[p],
                             sum(f.queued[p] for f in fqs))

    def assertIndexed(self, h, job):
        """A live job is in the handle index; a finished one in none."""
        fq = job._fq
        if (job._state & STATE) == DONE:
            self.assertIsNone(h.queue.jobs.get(job.handle))
            self.assertNotIn(job, fq.uniques.values())
            for conn in h.conns.values():
                self.assertNotIn(job.handle, conn.related_jobs)
        else:
            self.assertIs(job, h.queue.jobs.get(job.handle))


class TestTransitions(CoreTestCase):
    """One test per row of ROWS."""

    recorded = False

    def runRow(self, row):
        h = self.harness(recorded=self.recorded, **row.core)
        for step in row.start:
            do(h, step)
        h.received()
        if row.closes:
            self.assertRaises(_CloseConnection, do, h, row.request)
            self.assertEqual({}, h.received())
            self.assertEqual(0, len(h.queue.jobs))
            self.assertEqual([], list(h.conn(row.request[0]).functions))
            return
        do(h, row.request)
        self.assertEqual(row.replies, h.received())
        for n, state in row.states.items():
            job = h.job(n)
            self.assertEqual(state, job._state & STATE, 'job %d' % n)
            self.assertIndexed(h, job)
        self.assertEqual(sorted(H(n) for n, s in row.states.items()
                                if s != DONE),
                         sorted(h.queue.jobs.keys()))
        for name, value in row.attrs.items():
            self.assertEqual(value, getattr(h.job(1), name), name)
        self.assertCounters(h, row.queued, row.running, row.fq)
        if self.recorded:
            self.checkRecorded(h)

    def checkRecorded(self, h):
        """The recorder counted every job the table submitted."""
        metrics = h.core.metrics
        metrics.flush()
        submitted = sum(sum(fq.stats.counts[:3])
                        for fq in h.queue.functions.values()
                        if fq.stats is not None)
        self.assertEqual(len(h.jobs), submitted)
        # Counted when appended, so replies to a lost peer count too.
        self.assertGreaterEqual(metrics.packetsOut(), h.delivered)


class TestTransitionsRecorded(TestTransitions):
    """The same rows with a metrics recorder and a statsd reporter: the
    instrumented paths behave the same."""

    recorded = True


def _rowTest(row):
    def test(self):
        self.runRow(row)
    test.__name__ = 'test_' + row.name
    test.__doc__ = None
    return test


def _addRows():
    names = set()
    for row in ROWS:
        if row.name in names:
            raise AssertionError('duplicate row %s' % row.name)
        names.add(row.name)
        setattr(TestTransitions, 'test_' + row.name, _rowTest(row))


_addRows()


# -- sequences ---------------------------------------------------------------


class TestScheduling(CoreTestCase):
    """The order in which GRAB_JOB hands jobs out."""

    def grabAll(self, h, name='w'):
        """Grab until NO_JOB; the handle numbers in the order given."""
        got = []
        while True:
            h.send(name, GRAB_JOB)
            packets = h.recv(name)
            self.assertEqual(1, len(packets))
            ptype, payload = packets[0]
            if ptype == NO_JOB:
                return got
            self.assertEqual(JOB_ASSIGN, ptype)
            handle = payload.split(b'\x00')[0]
            got.append(int(handle[len(PREFIX):]))

    def test_priority_is_global_across_functions(self):
        h = self.harness()
        h.send('w', CAN_DO, b'a')
        h.send('w', CAN_DO, b'b')
        h.send(*sub(SUBMIT_JOB_LOW, b'1', fn=b'a'))
        h.send(*sub(SUBMIT_JOB, b'2', fn=b'b'))
        h.send(*sub(SUBMIT_JOB_HIGH, b'3', fn=b'a'))
        h.send(*sub(SUBMIT_JOB_HIGH_BG, b'4', fn=b'b'))
        h.send(*sub(SUBMIT_JOB_LOW_BG, b'5', fn=b'b'))
        self.assertEqual([3, 4, 2, 1, 5], self.grabAll(h))
        self.assertCounters(h, (0, 0, 0), 5, {b'a': (2, 2, 1),
                                              b'b': (3, 3, 1)})

    def test_round_robin_across_functions(self):
        h = self.harness()
        for fn in (b'a', b'b', b'c'):
            h.send('w', CAN_DO, fn)
        for i, fn in enumerate(b'aaabbc'):
            h.send(*sub(SUBMIT_JOB_BG, b'%d' % i, fn=bytes([fn])))
        # a, b, c take turns; a function with nothing left is skipped.
        self.assertEqual([1, 4, 6, 2, 5, 3], self.grabAll(h))

    def test_fifo_within_function_and_precedence(self):
        h = self.harness()
        h.send('w', CAN_DO, b'f')
        for i in range(5):
            h.send(*sub(SUBMIT_JOB, b'%d' % i))
        self.assertEqual([1, 2, 3, 4, 5], self.grabAll(h))

    def test_requeued_job_goes_to_the_tail(self):
        h = self.harness()
        h.send('w', CAN_DO, b'f')
        h.send(*sub(SUBMIT_JOB, b'1'))
        h.send(*sub(SUBMIT_JOB, b'2'))
        self.assertEqual([1, 2], self.grabAll(h))
        h.send(*sub(SUBMIT_JOB, b'3'))
        h.drop('w')
        h.send('w2', CAN_DO, b'f')
        self.assertEqual([3, 1, 2], self.grabAll(h, 'w2'))
        self.assertEqual([0, 1, 1], [h.job(n).retries for n in (3, 1, 2)])

    def test_worker_gets_only_its_functions(self):
        h = self.harness()
        h.send('w', CAN_DO, b'a')
        h.send(*sub(SUBMIT_JOB_HIGH, b'1', fn=b'b'))
        h.send(*sub(SUBMIT_JOB_LOW, b'2', fn=b'a'))
        self.assertEqual([2], self.grabAll(h))
        self.assertEqual(QUEUED, h.state(1))

    def test_draining_hands_out_nothing(self):
        h = self.harness()
        h.send('w', CAN_DO, b'f')
        h.send(*sub(SUBMIT_JOB))
        h.core.draining = True
        self.assertEqual([], self.grabAll(h))
        h.core.draining = False
        self.assertEqual([1], self.grabAll(h))


class TestWakeUp(CoreTestCase):
    """PRE_SLEEP and the NOOPs that end a sleep."""

    def sleep(self, h, *names):
        for name in names:
            h.send(name, CAN_DO, b'f')
            h.send(name, PRE_SLEEP)
        self.assertEqual({}, h.received())

    def test_one_noop_per_sleep(self):
        h = self.harness()
        self.sleep(h, 'w')
        self.assertEqual('SLEEP', h.conn('w').state)
        h.send(*sub(SUBMIT_JOB, b'1'))
        self.assertEqual([NOOP_R], h.recv('w'))
        self.assertEqual('AWAKE', h.conn('w').state)
        h.send(*sub(SUBMIT_JOB, b'2'))
        self.assertEqual([], h.recv('w'))
        h.send('w', GRAB_JOB)
        self.assertEqual([assign(1)], h.recv('w'))
        # A job is still queued: sleeping now gets a NOOP at once.
        h.send('w', PRE_SLEEP)
        self.assertEqual([NOOP_R], h.recv('w'))
        self.assertEqual({}, dict(h.fq().sleepers))

    def test_every_sleeper_is_woken_by_default(self):
        h = self.harness()
        self.sleep(h, 'w1', 'w2', 'w3')
        h.send(*sub(SUBMIT_JOB))
        got = h.received()
        self.assertEqual({'c': [created(1)], 'w1': [NOOP_R],
                          'w2': [NOOP_R], 'w3': [NOOP_R]}, got)

    def test_worker_wakeup_limit_rotates(self):
        h = self.harness(worker_wakeup=1)
        self.sleep(h, 'w1', 'w2', 'w3')
        woken = []
        for i in range(5):
            h.send(*sub(SUBMIT_JOB_BG, b'%d' % i))
            got = h.received()
            del got['c']
            (name, packets), = got.items()
            self.assertEqual([NOOP_R], packets)
            woken.append(name)
            # It runs the job and sleeps again: the end of the line.
            h.send(name, GRAB_JOB)
            self.assertEqual([assign(i + 1)], h.recv(name))
            h.send(name, WORK_COMPLETE, H(i + 1), b'r')
            h.send(name, PRE_SLEEP)
            self.assertEqual([], h.recv(name))
        self.assertEqual(['w1', 'w2', 'w3', 'w1', 'w2'], woken)

    def test_noop_is_written_at_once(self):
        h = self.harness()
        self.sleep(h, 'w')
        h.send(*sub(SUBMIT_JOB))
        # Before the turn ends: the NOOP already left, JOB_CREATED not.
        self.assertEqual([h.conn('w')], h.io.flushed)
        self.assertEqual([NOOP_R], decode(h.io.wire[h.conn('w')]))
        self.assertNotIn(h.conn('c'), h.io.wire)
        self.assertEqual({'c': [created(1)], 'w': [NOOP_R]}, h.received())

    def test_noop_waits_for_a_pending_commit(self):
        store = FakeStore()
        h = self.harness(store=store)
        self.sleep(h, 'w')
        h.send(*sub(SUBMIT_JOB_BG))
        self.assertEqual([], h.io.flushed)
        self.assertEqual({}, store.rows)
        self.assertEqual({'c': [created(1)], 'w': [NOOP_R]}, h.received())
        self.assertIn(H(1), store.rows)

    def test_requeue_wakes_within_the_limit(self):
        h = self.harness(worker_wakeup=1)
        h.send('w', CAN_DO, b'f')
        h.send(*sub(SUBMIT_JOB))
        h.send('w', GRAB_JOB)
        h.received()
        self.sleep(h, 'w1', 'w2')
        h.drop('w')
        self.assertEqual({'w1': [NOOP_R]}, h.received())

    def test_wake_everyone_wakes_only_sleepers(self):
        # gear's wakeConnections(None).
        h = self.harness()
        self.sleep(h, 'w1', 'w2')
        h.send('w3', CAN_DO, b'f')
        h.send('c', ECHO_REQ, b'')
        h.received()
        h.core.wakeJob(None)
        self.assertEqual({'w1': [NOOP_R], 'w2': [NOOP_R]}, h.received())
        h.core.wakeJob(None)
        self.assertEqual({}, h.received())

    def test_drop_of_a_sleeper_forgets_it(self):
        h = self.harness()
        self.sleep(h, 'w1', 'w2')
        h.drop('w1')
        self.assertEqual([h.conn('w2')], list(h.fq().sleepers))
        h.send(*sub(SUBMIT_JOB))
        self.assertEqual({'c': [created(1)], 'w2': [NOOP_R]}, h.received())


class TestEpochTimers(CoreTestCase):

    def test_one_timer_for_the_earliest_job(self):
        h = self.harness()
        h.send(*epoch(T0 + 60, b'a'))
        self.assertEqual(1, len(h.io.live_timers()))
        h.send(*epoch(T0 + 30, b'b'))
        timers = h.io.live_timers()
        self.assertEqual(1, len(timers))
        self.assertEqual(T0 + 30, timers[0][4])
        h.send(*epoch(T0 + 90, b'c'))
        self.assertEqual(1, len(h.io.live_timers()))
        h.io.advance(30)
        self.assertEqual([QUEUED, EPOCH, EPOCH],
                         [h.state(n) for n in (2, 1, 3)])
        self.assertEqual([T0 + 60], [t[4] for t in h.io.live_timers()])
        h.io.advance(60)
        self.assertEqual([QUEUED, QUEUED, QUEUED],
                         [h.state(n) for n in (2, 1, 3)])
        self.assertEqual([], h.io.live_timers())
        self.assertEqual(0, h.queue.epoch_count)
        self.assertEqual([3, 0, 0], h.queue.queued)

    def test_cancelled_epoch_job_leaves_no_timer_behind(self):
        h = self.harness()
        h.send(*epoch(T0 + 60))
        self.assertTrue(h.core.semantics.cancel(h.core, h.job(1)))
        h.io.advance(60)
        self.assertEqual([], h.io.live_timers())
        self.assertEqual((0, 0), (h.fq().total, h.queue.epoch_count))

    def test_due_jobs_join_the_tail_of_normal(self):
        h = self.harness()
        h.send('w', CAN_DO, b'f')
        h.send(*epoch(T0 + 10, b'e'))
        h.send(*sub(SUBMIT_JOB_BG, b'n'))
        h.io.advance(10)
        h.send('w', GRAB_JOB)
        self.assertEqual([assign(2)], h.recv('w'))
        h.send('w', GRAB_JOB)
        self.assertEqual([assign(1)], h.recv('w'))


class TestTimeouts(CoreTestCase):

    def test_one_timer_per_job(self):
        h = self.harness()
        h.send('w', CAN_DO_TIMEOUT, b'f\x002000')
        h.send(*sub(SUBMIT_JOB, b'1'))
        h.send('w', GRAB_JOB)
        h.io.advance(1)
        h.send(*sub(SUBMIT_JOB, b'2'))
        h.send('w', GRAB_JOB)
        self.assertEqual(2, len(h.io.live_timers()))
        h.io.advance(1)
        self.assertEqual([QUEUED, RUNNING], [h.state(1), h.state(2)])
        h.io.advance(1)
        self.assertEqual([QUEUED, QUEUED], [h.state(1), h.state(2)])
        self.assertEqual([], h.io.live_timers())
        self.assertEqual({}, h.conn('w').related_jobs)

    def test_abandoned_job_times_out_quietly(self):
        h = self.harness()
        h.send('w', CAN_DO_TIMEOUT, b'f\x001000')
        h.send(*sub(SUBMIT_JOB))
        h.send('w', GRAB_JOB)
        h.drop('c')
        h.received()
        h.io.advance(1)
        self.assertEqual(DONE, h.state(1))
        self.assertEqual({}, h.received())
        self.assertEqual(0, len(h.queue.jobs))


class TestCoalescedUpdates(CoreTestCase):

    def test_every_submission_gets_every_update(self):
        h = self.harness()
        h.send(*sub(SUBMIT_JOB))
        h.send(*sub(SUBMIT_JOB, conn='c2'))
        h.send('w', CAN_DO, b'f')
        h.send('w', GRAB_JOB)
        h.send(*sub(SUBMIT_JOB, conn='c2'))
        h.received()
        h.send('w', WORK_DATA, H(1), b'd')
        h.send('w', WORK_STATUS, H(1), b'1', b'2')
        h.send('w', WORK_COMPLETE, H(1), b'r')
        updates = [work(WORK_DATA, 1, b'd'),
                   work(WORK_STATUS, 1, b'1', b'2'),
                   work(WORK_COMPLETE, 1, b'r')]
        got = h.received()
        self.assertEqual(updates, got['c'])
        self.assertEqual(sorted(updates * 2), sorted(got['c2']))
        self.assertEqual([work(WORK_DATA, 1, b'd')] * 2, got['c2'][:2])


class TestStoreCommit(CoreTestCase):
    """A background job is committed before its JOB_CREATED leaves; if
    the commit fails, the job never existed."""

    def setUp(self):
        super(TestStoreCommit, self).setUp()
        self.store = FakeStore()
        self.h = self.harness(store=self.store)

    def fail(self):
        """Make the store's commits fail from now on."""
        self.store.fail_commit = True

    def runStoredJob(self, h):
        """Submit background job 1, end the turn (its commit queues it)
        and have worker 'w' take it."""
        h.send(*sub(SUBMIT_JOB_BG))
        h.received()
        h.send('w', CAN_DO, b'f')
        h.send('w', GRAB_JOB)
        h.received()

    def test_created_waits_for_the_commit(self):
        h, store = self.h, self.store
        c = h.conn('c')
        h.send(*sub(SUBMIT_JOB_BG))
        job = h.job(1)
        # Appended, its offset recorded, nothing committed or written.
        self.assertEqual([created(1)], decode(c.send_queue))
        self.assertEqual([(c, 0, job, True)], h.core.store_acked)
        self.assertEqual({job: False}, h.core.uncommitted)
        self.assertEqual([H(1)], list(store.batch))
        self.assertEqual({}, store.rows)
        self.assertEqual({}, h.io.wire)
        self.assertEqual({'c': [created(1)]}, h.received())
        self.assertEqual((b'f', b'u', 0), store.rows[H(1)])
        self.assertEqual(([], {}), (h.core.store_acked, h.core.uncommitted))
        self.assertEqual(1, store.flushes)

    def test_foreground_jobs_are_not_stored(self):
        h, store = self.h, self.store
        h.send(*sub(SUBMIT_JOB))
        self.assertEqual([], h.core.store_acked)
        self.assertEqual({'c': [created(1)]}, h.received())
        self.assertEqual(({}, {}, 0), (store.batch, store.rows,
                                       store.flushes))

    def test_epoch_job_is_stored_with_its_time(self):
        h, store = self.h, self.store
        h.send(*epoch(T0 + 60))
        self.assertEqual({'c': [created(1)]}, h.received())
        self.assertEqual((b'f', b'e', T0 + 60), store.rows[H(1)])

    def test_offsets_of_several_replies(self):
        h = self.h
        c = h.conn('c')
        h.send(*sub(SUBMIT_JOB_BG, b'1'))
        h.send('c', ECHO_REQ, b'between')
        h.send(*sub(SUBMIT_JOB_BG, b'2'))
        size = len(c.send_queue) - 12 - len(H(2))
        self.assertEqual([(c, 0, h.job(1), True), (c, size, h.job(2), True)],
                         h.core.store_acked)

    def test_failed_commit_refuses_in_place(self):
        h, store = self.h, self.store
        h.send('w', CAN_DO, b'f')
        h.send('w', PRE_SLEEP)
        h.send(*sub(SUBMIT_JOB_BG, b'1'))
        h.send('c', ECHO_REQ, b'between')
        h.send(*sub(SUBMIT_JOB_BG, b'2'))
        h.send(*sub(SUBMIT_JOB, b'3', conn='c2'))
        h.send(*sub(SUBMIT_JOB_BG, b'4', conn='c2'))
        lost = [h.job(1), h.job(2), h.job(4)]
        self.fail()
        self.assertEqual({
            'c': [COMMIT_FAILED, (ECHO_RES, b'between'), COMMIT_FAILED],
            'c2': [created(3), COMMIT_FAILED],
            'w': [NOOP_R]}, h.received())
        for job in lost:
            self.assertEqual(DONE, job._state & STATE)
            self.assertIndexed(h, job)
        self.assertEqual([H(3)], h.queue.jobs.keys())
        self.assertEqual([b'3'], list(h.fq().uniques))
        self.assertCounters(h, (1, 0, 0), 0, {b'f': (1, 0, 1)})
        self.assertEqual([H(1), H(2), H(4)], store.discarded)
        self.assertEqual({}, store.rows)
        self.assertTrue(h.core.store_down)
        # A retry with the same unique is a fresh job.
        store.fail_commit = False
        h.send(*sub(SUBMIT_JOB_BG, b'1'))
        self.assertEqual({'c': [created(5)]}, h.received())
        self.assertEqual([H(5)], list(store.rows))

    def test_failed_commit_refuses_coalesced_submitters(self):
        h = self.h
        h.send(*sub(SUBMIT_JOB_BG))
        h.send(*sub(SUBMIT_JOB_BG, conn='c2'))
        h.send(*sub(SUBMIT_JOB, conn='c3'))
        # Only the foreground submitter waits on the job.
        self.assertEqual([H(1)], list(h.conn('c3').related_jobs))
        self.assertEqual({}, h.conn('c').related_jobs)
        self.fail()
        self.assertEqual({'c': [COMMIT_FAILED], 'c2': [COMMIT_FAILED],
                          'c3': [COMMIT_FAILED]}, h.received())
        self.assertEqual(DONE, h.state(1))
        self.assertEqual({}, h.conn('c3').related_jobs)
        self.assertCounters(h, (0, 0, 0), 0, {b'f': (0, 0, 0)})

    def test_failed_commit_leaves_adopted_job_to_its_clients(self):
        h, store = self.h, self.store
        h.send(*sub(SUBMIT_JOB))
        self.assertEqual({'c': [created(1)]}, h.received())
        h.send(*sub(SUBMIT_JOB_BG, conn='c2'))
        self.assertTrue(h.job(1).background)
        h.send(*sub(SUBMIT_JOB_BG, conn='c3'))
        h.send(*sub(SUBMIT_JOB, conn='c4'))
        self.fail()
        self.assertEqual({'c2': [COMMIT_FAILED], 'c3': [COMMIT_FAILED],
                          'c4': [created(1)]}, h.received())
        job = h.job(1)
        self.assertEqual(QUEUED, job._state & STATE)
        self.assertFalse(job.background)
        self.assertEqual([h.conn('c'), h.conn('c4')], job.clients)
        self.assertIndexed(h, job)
        self.assertEqual({}, store.rows)
        # Its clients still get its result.
        h.send('w', CAN_DO, b'f')
        h.send('w', GRAB_JOB)
        h.send('w', WORK_COMPLETE, H(1), b'r')
        got = h.received()
        self.assertEqual([work(WORK_COMPLETE, 1, b'r')], got['c'])
        self.assertEqual([work(WORK_COMPLETE, 1, b'r')], got['c4'])

    def test_failed_commit_skips_closed_connections(self):
        h = self.h
        h.send(*sub(SUBMIT_JOB_BG))
        h.send(*sub(SUBMIT_JOB_BG, b'v', conn='c2'))
        h.drop('c')
        self.fail()
        self.assertEqual({'c2': [COMMIT_FAILED]}, h.received())
        self.assertEqual([DONE, DONE], [h.state(1), h.state(2)])
        self.assertEqual([], h.io.closing)

    def test_store_down_refuses_background_until_a_probe_succeeds(self):
        h, store = self.h, self.store
        h.send(*sub(SUBMIT_JOB_BG, b'1'))
        self.fail()
        self.assertEqual({'c': [COMMIT_FAILED]}, h.received())
        self.assertTrue(h.core.store_down)
        # Each background submit tries the store once, then is refused.
        probes = store.probes
        h.send(*sub(SUBMIT_JOB_BG, b'2'))
        self.assertEqual(probes + 1, store.probes)
        self.assertEqual({'c': [STORE_FAILING]}, h.received())
        self.assertEqual({}, store.batch)
        self.assertEqual(0, len(h.queue.jobs))
        # Foreground jobs need no store.
        h.send(*sub(SUBMIT_JOB, b'3'))
        h.send(*sub(SUBMIT_JOB_HIGH_BG, b'4'))
        got = h.received()
        self.assertEqual(JOB_CREATED, got['c'][0][0])
        self.assertEqual(STORE_FAILING, got['c'][1])
        # The store works again: the next submit's probe finds out.
        store.fail_commit = False
        h.send(*sub(SUBMIT_JOB_BG, b'5'))
        self.assertFalse(h.core.store_down)
        handle = h.received()['c'][0]
        self.assertEqual(JOB_CREATED, handle[0])
        self.assertIn(handle[1], store.rows)

    def test_refused_adoption_leaves_the_job_in_the_foreground(self):
        h, store = self.h, self.store
        h.send(*sub(SUBMIT_JOB_BG, b'1'))
        self.fail()
        h.received()
        h.send(*sub(SUBMIT_JOB))
        h.send(*sub(SUBMIT_JOB_BG, conn='c2'))
        self.assertEqual({'c': [created(2)], 'c2': [STORE_FAILING]},
                         h.received())
        job = h.job(2)
        self.assertFalse(job.background)
        self.assertEqual([h.conn('c')], job.clients)
        self.assertEqual(({}, {}), (store.batch, store.rows))
        # Its client leaving ends it, as any foreground job.
        h.drop('c')
        self.assertEqual(DONE, h.state(2))

    def test_no_probe_while_a_batch_is_open(self):
        h, store = self.h, self.store
        h.send(*sub(SUBMIT_JOB_BG, b'1'))
        store.fail_add = True
        h.send(*sub(SUBMIT_JOB_BG, b'2'))
        self.assertTrue(h.core.store_down)
        store.fail_add = False
        # The store could take it, but a probe now would commit the
        # open batch behind the turn's back.
        h.send(*sub(SUBMIT_JOB_BG, b'3'))
        self.assertEqual(0, store.probes)
        self.assertEqual({'c': [created(1), error(b'QUEUE_ERROR',
                                                  b'disk full'),
                                STORE_FAILING]}, h.received())
        # The turn's commit worked: the store is trusted again.
        self.assertEqual([H(1)], list(store.rows))
        self.assertFalse(h.core.store_down)
        h.send(*sub(SUBMIT_JOB_BG, b'3'))
        self.assertEqual({'c': [created(4)]}, h.received())

    def test_a_commit_that_works_ends_the_failure(self):
        h, store = self.h, self.store
        h.send(*sub(SUBMIT_JOB_BG, b'1'))
        h.received()  # the commit queues the job
        h.send('w', CAN_DO, b'f')
        h.send('w', GRAB_JOB)
        h.received()
        h.send(*sub(SUBMIT_JOB_BG, b'2'))
        self.fail()
        h.received()
        self.assertTrue(h.core.store_down)
        store.fail_commit = False
        # A removal is committed at the end of this turn, before any
        # probe: that commit tells the core the store works.
        h.send('w', WORK_COMPLETE, H(1), b'r')
        h.received()
        self.assertEqual(0, store.probes)
        self.assertFalse(h.core.store_down)
        self.assertEqual({}, store.rows)
        h.io.advance(h.core.store_probe_interval)
        self.assertEqual(0, store.probes)
        self.assertEqual([], h.io.live_timers())

    def test_probe_timer_follows_the_store(self):
        h, store = self.h, self.store
        h.send(*sub(SUBMIT_JOB_BG))
        self.fail()
        h.received()
        self.assertEqual([1000.0 + h.core.store_probe_interval],
                         [t[0] for t in h.io.live_timers()])
        h.io.advance(h.core.store_probe_interval)
        self.assertEqual(1, store.probes)
        self.assertTrue(h.core.store_down)
        self.assertEqual(1, len(h.io.live_timers()))
        store.fail_commit = False
        h.io.advance(h.core.store_probe_interval)
        self.assertEqual(2, store.probes)
        self.assertFalse(h.core.store_down)
        self.assertEqual([], h.io.live_timers())

    def test_add_failure_refuses_the_job(self):
        h, store = self.h, self.store
        store.fail_add = True
        h.send(*sub(SUBMIT_JOB_BG))
        self.assertEqual([], h.core.store_acked)
        self.assertEqual({'c': [error(b'QUEUE_ERROR', b'disk full')]},
                         h.received())
        self.assertEqual(0, len(h.queue.jobs))
        self.assertEqual({}, h.fq().uniques)
        self.assertTrue(h.core.store_down)
        self.assertEqual(1, len(h.io.live_timers()))

    def test_completion_removes_the_row_this_turn(self):
        h, store = self.h, self.store
        self.runStoredJob(h)
        self.assertIn(H(1), store.rows)
        h.send('w', WORK_COMPLETE, H(1), b'r')
        # No reply waits, yet the removal is committed this turn.
        self.assertEqual([None], h.core.store_acked)
        flushes = store.flushes
        self.assertEqual({}, h.received())
        self.assertEqual(flushes + 1, store.flushes)
        self.assertEqual({}, store.rows)

    def test_failed_removal_is_written_by_the_probe(self):
        h, store = self.h, self.store
        self.runStoredJob(h)
        h.send('w', WORK_FAIL, H(1))
        self.fail()
        h.received()
        self.assertEqual({H(1)}, store.removals)
        self.assertIn(H(1), store.rows)
        self.assertEqual(DONE, h.state(1))
        store.fail_commit = False
        h.io.advance(h.core.store_probe_interval)
        self.assertEqual(({}, set()), (store.rows, store.removals))
        self.assertFalse(h.core.store_down)

    def test_cancel_removes_the_row(self):
        h, store = self.h, self.store
        for semantics in ('gear', 'gearmand'):
            h.core.semantics = semantics_mod.POLICIES[semantics]
            h.send(*sub(SUBMIT_JOB_BG, semantics.encode()))
            h.received()
            handle = h.queue.jobs.keys()[0]
            self.assertIn(handle, store.rows)
            self.assertTrue(h.core.semantics.cancel(
                h.core, h.queue.jobs[handle]))
            h.received()
            self.assertEqual({}, store.rows)

    def test_cancel_running_removes_the_row_once(self):
        h, store = self.h, self.store
        self.runStoredJob(h)
        self.assertTrue(h.core.semantics.cancel(h.core, h.job(1)))
        h.received()
        self.assertEqual({}, store.rows)
        store.fail_add = True  # any further store call would show
        h.send('w', WORK_COMPLETE, H(1), b'r')
        self.assertEqual([], h.core.store_acked)
        self.assertEqual(DONE, h.state(1))

    def test_retry_limit_drop_removes_the_row(self):
        h = Harness(store=self.store, job_retries=0, clock=self.clock)
        self.runStoredJob(h)
        self.assertIn(H(1), self.store.rows)
        h.drop('w')
        h.received()
        self.assertEqual(DONE, h.state(1))
        self.assertEqual({}, self.store.rows)

    def test_requeue_keeps_the_row(self):
        h, store = self.h, self.store
        self.runStoredJob(h)
        h.drop('w')
        self.assertEqual([], h.core.store_acked)
        self.assertEqual([H(1)], list(store.rows))
        self.assertEqual(QUEUED, h.state(1))

    # A job is queued by the commit of its add: a worker cannot be given
    # a job whose submitter may still be told QUEUE_ERROR.
    def test_job_of_a_failed_commit_is_never_assigned(self):
        h = self.h
        h.send('w', CAN_DO, b'f')
        h.send(*sub(SUBMIT_JOB_BG))
        self.fail()  # the commit of this turn will fail
        h.send('w', GRAB_JOB)  # the same loop turn
        got = h.received()
        self.assertEqual([COMMIT_FAILED], got['c'])
        self.assertEqual(DONE, h.state(1))
        self.assertEqual([NO_JOB_R], got['w'])

    def test_committed_job_is_queued_and_wakes_a_sleeper(self):
        h = self.h
        h.send('w', CAN_DO, b'f')
        h.send('w', PRE_SLEEP)
        h.send(*sub(SUBMIT_JOB_BG))
        self.assertEqual(NEW, h.state(1))
        self.assertEqual({'c': [created(1)], 'w': [NOOP_R]}, h.received())
        self.assertEqual(QUEUED, h.state(1))


class TestReplay(CoreTestCase):
    """The jobs a store kept come back queued, under their handles."""

    def test_replay(self):
        store = FakeStore()
        store.counter = 7
        store.stored = [
            StoredJob(H(5), b'f', b'u', b'x', HIGH, 0),
            StoredJob(H(6), b'f', None, b'y', NORMAL, T0 + 60),
            # No handle, and a precedence that does not exist.
            StoredJob(b'', b'g', b'-', b'z', 9, 0),
            # A handle too long to keep.
            StoredJob(b'h' * 65, b'g', None, b'w', LOW, 0),
        ]
        store.rows = {r.handle: (r.name, r.unique, r.when)
                      for r in store.stored}
        h = self.harness(store=store)
        h.core.replay()
        h.track()
        self.assertEqual((QUEUED, HIGH, True, b'x'),
                         (h.state(5), h.job(5).precedence,
                          h.job(5).background, h.job(5).arguments))
        self.assertIs(h.job(5), h.fq().uniques[b'u'])
        self.assertEqual((EPOCH, T0 + 60), (h.state(6), h.job(6).when))
        self.assertEqual(1, len(h.io.live_timers()))
        # The rows whose handle could not be kept are stored again under
        # a new one, committed before the loop starts, and the old rows
        # are gone.
        self.assertEqual(4, len(h.queue.jobs))
        self.assertEqual(set(h.queue.jobs.keys()), set(store.rows))
        self.assertEqual(({}, set(), 1),
                         (store.batch, store.removals, store.flushes))
        fresh = [job for job in h.queue.jobs.values() if job.name == b'g']
        self.assertEqual([(NORMAL, b'z'), (LOW, b'w')],
                         sorted((j.precedence, j.arguments) for j in fresh))
        self.assertEqual([(b'g', QUEUED)] * 2,
                         [(j.name, j._state & STATE) for j in fresh])
        self.assertEqual([1, 1, 1], h.queue.queued)
        # New handles continue after a clock in microseconds.
        h.send(*sub(SUBMIT_JOB, b'new'))
        handle = h.received()['c'][0][1]
        self.assertGreater(int(handle[len(PREFIX):]), T0 * 10 ** 6)
        h.send('w', CAN_DO, b'f')
        h.send('w', GRAB_JOB_UNIQ)
        self.assertEqual([assign_uniq(5, b'u')], h.recv('w'))
        # A replayed job coalesces like any other.
        h.send(*sub(SUBMIT_JOB_BG, b'-', b'z', fn=b'g'))
        self.assertEqual(1, len(h.fq(b'g').uniques))
        self.assertEqual(2, h.fq(b'g').total)

    def test_unreadable_store_stops_the_start(self):
        store = FakeStore()
        store.load = mock.Mock(side_effect=IOError('unreadable'))
        h = self.harness(store=store)
        self.assertRaises(StoreError, h.core.replay)


class TripwireDict(dict):
    """A dict that fails the test if anything walks it."""

    def _walk(self, *args):
        raise AssertionError('walked a %d-entry dict' % len(self))

    __iter__ = keys = values = items = copy = __reversed__ = _walk


class TripwireSet(set):
    """A set that fails the test if anything walks it."""

    def _walk(self, *args):
        raise AssertionError('walked a %d-entry set' % len(self))

    __iter__ = copy = _walk


class TestRegistrationRuns(CoreTestCase):
    """A run of CAN_DO (what the scanner hands over at once) ends in the
    same state, with the same replies, as the same CAN_DOs one by one."""

    NAMES = [b'a', b'b', b'queued', b'a', b'new', b'limited', b'b']

    def prepare(self, h, asleep=False, timeout=False):
        w = h.conn('w')
        w.ssl_subject = 'worker'
        h.conn('c').ssl_subject = 'client'
        h.send('w', CAN_DO, b'b')
        if timeout:
            h.send('w', CAN_DO_TIMEOUT, b'a\x001500')
        h.send(*sub(SUBMIT_JOB_BG, fn=b'queued'))
        if asleep:
            h.send('w', PRE_SLEEP)
        h.recv('c')
        return w

    def outcome(self, h, w):
        return (sorted(w.functions), w.state, h.recv('w'),
                {name: (fq.workers, list(fq.sleepers))
                 for name, fq in sorted(h.queue.functions.items())},
                w._timeouts)

    def compare(self, **kw):
        outcomes = []
        settings = kw.pop('harness', {})
        for as_run in (False, True):
            h = self.harness(**settings)
            w = self.prepare(h, **kw)
            if as_run:
                h.core.canDoMany(w, self.NAMES)
            else:
                for name in self.NAMES:
                    h.send('w', CAN_DO, name)
            outcomes.append(self.outcome(h, w))
        self.assertEqual(outcomes[0], outcomes[1])
        return outcomes[1]

    def test_awake(self):
        functions, state, replies, fqs, _ = self.compare()
        self.assertEqual([b'a', b'b', b'limited', b'new', b'queued'],
                         functions)
        self.assertEqual([], replies)
        self.assertEqual((1, []), fqs[b'new'])

    def test_asleep_is_woken_by_a_function_with_work(self):
        functions, state, replies, fqs, _ = self.compare(asleep=True)
        self.assertEqual([NOOP_R], replies)
        self.assertEqual('AWAKE', state)

    def test_a_timeout_is_cleared_by_a_plain_can_do(self):
        timeouts = self.compare(timeout=True)[4]
        self.assertEqual({}, timeouts)

    def test_acl_refuses_some_names_of_a_run(self):
        acl = ACL()
        acl.add(ACLEntry('worker', register='^(a|b|queued)$'))
        acl.add(ACLEntry('client', invoke='.*'))
        functions = self.compare(harness={'acl': acl})[0]
        self.assertEqual([b'a', b'b', b'queued'], functions)

    def test_one_name_object_per_function(self):
        # Every worker's set holds the queue's own bytes, not a copy
        # sliced out of its packet.
        h = self.harness()
        h.core.canDoMany(h.conn('w1'), [b'f' + 'n'.encode()])
        h.core.canDoMany(h.conn('w2'), [bytes(bytearray(b'fn'))])
        name = h.fq(b'fn').name
        for conn in (h.conn('w1'), h.conn('w2')):
            self.assertIs(name, next(iter(conn.functions)))
        self.assertEqual(2, h.fq(b'fn').workers)


class TestRegistrationCost(CoreTestCase):
    """CAN_DO, CANT_DO and a function's workers cost O(1) each, however
    many functions a worker has or workers a function has: the requests
    must not walk the containers that hold the others."""

    N = 20000

    def bigWorker(self, h, name='w'):
        conn = h.conn(name)
        can_do = h.core.handlers[CAN_DO]
        for i in range(self.N):
            can_do(conn, b'f%d' % i)
        self.assertEqual(self.N, len(conn._fqs))
        return conn

    def arm(self, conn):
        conn._fqs = TripwireDict(conn._fqs)
        conn.functions = conn._synced = TripwireSet(conn.functions)

    def test_cant_do_of_one_of_many_functions(self):
        h = self.harness()
        conn = self.bigWorker(h)
        # Asleep: on every function's list of sleepers.
        h.send('w', PRE_SLEEP)
        self.assertEqual(self.N, sum(
            len(fq.sleepers) for fq in h.queue.functions.values()))
        self.arm(conn)
        h.send('w', CANT_DO, b'f9')
        self.assertEqual({}, h.fq(b'f9').sleepers)
        self.assertEqual(self.N - 1, sum(
            len(fq.sleepers) for fq in h.queue.functions.values()))
        # Waking it takes it off every function's list, as sleeping
        # put it on them: O(functions) once per sleep, not per request.
        conn._fqs = dict(dict.items(conn._fqs))
        h.send(*sub(SUBMIT_JOB, fn=b'f7'))
        self.assertEqual([NOOP_R], h.recv('w'))
        h.send('w', GRAB_JOB)
        self.assertEqual([assign(1, fn=b'f7')], h.recv('w'))
        # Awake, running a job.
        self.arm(conn)
        h.send('w', CANT_DO, b'f123')
        h.send('w', CANT_DO, b'never-registered')
        h.send('w', CAN_DO, b'new')
        h.send('w', CAN_DO, b'f5')  # again: still one registration
        for name in (b'f9', b'f123'):
            self.assertNotIn(h.fq(name), dict.keys(conn._fqs))
            self.assertNotIn(name, conn.functions)
            self.assertEqual(0, h.fq(name).workers)
        self.assertEqual(1, h.fq(b'new').workers)
        self.assertEqual(self.N - 1, dict.__len__(conn._fqs))
        self.assertEqual(self.N - 1,
                         sum(fq.workers for fq in h.queue.functions.values()))
        self.assertEqual(RUNNING, h.state(1))
        # The running job's function is among those given up: one pass
        # over the connection's jobs, not its functions.
        h.send('w', CANT_DO, b'f7')
        self.assertEqual(QUEUED, h.state(1))
        self.assertEqual(1, h.job(1).retries)

    def test_one_of_many_workers_leaves_a_function(self):
        h = self.harness()
        names = ['w%d' % i for i in range(2000)]
        for name in names:
            h.core.canDo(h.conn(name), b'f')
            h.core.preSleep(h.conn(name), b'')
        fq = h.fq()
        fq.sleepers = TripwireDict(fq.sleepers)
        h.send('w5', CANT_DO, b'f')
        h.send('w6', RESET_ABILITIES)
        h.drop('w7')
        h.send('w8', CAN_DO, b'f')  # already registered
        self.assertEqual(len(names) - 3, fq.workers)
        self.assertEqual(len(names) - 3, dict.__len__(fq.sleepers))
        for name in ('w5', 'w6', 'w7'):
            self.assertNotIn(h.conn(name), dict.keys(fq.sleepers))


class TestOutputLimit(CoreTestCase):
    """A peer that leaves its replies unread is disconnected, not
    buffered for without end."""

    def test_client_not_reading_updates(self):
        h = self.harness(max_output_buffer=200)
        for step in RUN_FG:
            do(h, step)
        h.received()
        for i in range(10):
            h.send('w', WORK_DATA, H(1), b'%030d' % i)
            if h.io.closing:
                break
        self.assertEqual([h.conn('c')], h.io.closing)
        self.assertGreater(len(h.conn('c').send_queue), 200)
        # The loop closes it at the end of the turn: the job is
        # abandoned, and the worker's result goes nowhere, silently.
        h.turn()
        self.assertTrue(h.conn('c').closed)
        self.assertTrue(h.job(1).ignore)
        h.send('w', WORK_COMPLETE, H(1), b'r')
        self.assertEqual({}, h.received())
        self.assertEqual(DONE, h.state(1))

    def test_peer_not_reading_replies(self):
        h = self.harness(max_output_buffer=200)
        for i in range(20):
            h.send('c', ECHO_REQ, b'%020d' % i)
        self.assertEqual([h.conn('c')], h.io.closing)
        h.turn()
        self.assertTrue(h.conn('c').closed)
        self.assertEqual({}, h.received())


class TestStatsGauges(CoreTestCase):
    """The statsd queue gauges are published after a job changes state;
    the last one published must match the queue."""

    def check(self, h):
        q = h.queue
        total = len(q.jobs)
        self.assertEqual((total, q.running, total - q.running),
                         h.core.stats.reports[-1])

    def test_gauges_follow_the_common_path(self):
        h = self.harness(recorded=True)
        h.send(*sub(SUBMIT_JOB))
        self.check(h)
        h.send('w', CAN_DO, b'f')
        h.send('w', GRAB_JOB)
        self.check(h)
        self.assertEqual((1, 1, 0), h.core.stats.reports[-1])
        h.send('w', WORK_COMPLETE, H(1), b'r')
        self.check(h)
        self.assertEqual((0, 0, 0), h.core.stats.reports[-1])

    def test_gauges_follow_a_lost_worker(self):
        h = self.harness(recorded=True)
        for step in RUN_FG:
            do(h, step)
        h.drop('w')
        self.check(h)
        self.assertEqual((1, 0, 1), h.core.stats.reports[-1])

    # A requeue publishes the gauges, whatever caused it.
    def test_gauges_follow_a_requeue_by_cant_do(self):
        h = self.harness(recorded=True)
        for step in RUN_FG:
            do(h, step)
        h.send('w', CANT_DO, b'f')
        self.assertEqual(QUEUED, h.state(1))
        self.check(h)

    def test_gauges_follow_a_requeue_by_timeout(self):
        h = self.harness(recorded=True)
        for step in RUN_TIMED:
            do(h, step)
        h.io.advance(1.5)
        self.assertEqual(QUEUED, h.state(1))
        self.check(h)

    # A job parked until its epoch counts in the gauges at once.
    def test_gauges_count_a_future_epoch_job(self):
        h = self.harness(recorded=True)
        h.send(*sub(SUBMIT_JOB))
        h.send(*epoch(T0 + 60))
        self.assertEqual(EPOCH, h.state(2))
        self.check(h)


class TestHooks(CoreTestCase):
    """gear's overridable scheduling steps plug into the core's paths."""

    def hooked(self, **hooks):
        h = self.harness()
        h.core.hooks = Hooks(**hooks)
        h.core.buildHandlers()
        return h

    def test_scheduler_decides_and_the_core_keeps_the_books(self):
        calls = []

        def newest(conn, peek=False):
            # A gear-style override over the queue views: LIFO.
            calls.append(peek)
            jobs = list(h.queue.normal_queue)
            if not jobs:
                return None
            if not peek:
                h.queue.normal_queue.remove(jobs[-1])
            return jobs[-1]

        h = self.hooked(scheduler=newest)
        h.send('w', CAN_DO, b'f')
        for i in range(3):
            h.send(*sub(SUBMIT_JOB, b'%d' % i))
        h.received()
        h.send('w', GRAB_JOB)
        self.assertEqual([assign(3)], h.recv('w'))
        self.assertEqual(RUNNING, h.state(3))
        self.assertIs(h.conn('w'), h.job(3).worker_connection)
        self.assertIn(H(3), h.conn('w').related_jobs)
        self.assertCounters(h, (2, 0, 0), 1, {b'f': (3, 1, 1)})
        h.send('w', PRE_SLEEP)
        self.assertEqual([NOOP_R], h.recv('w'))
        self.assertEqual([False, True], calls)
        h.send('w', WORK_COMPLETE, H(3), b'r')
        self.assertEqual({'c': [work(WORK_COMPLETE, 3, b'r')]},
                         h.received())
        h.core.draining = True
        h.send('w', GRAB_JOB)
        self.assertEqual([NO_JOB_R], h.recv('w'))
        self.assertEqual([False, True], calls)

    def test_send_assign_hook(self):
        sent = []
        h = self.hooked(send_assign=lambda c, job, p: sent.append(
            (c.name, job.handle, p)))
        h.send('w', CAN_DO, b'f')
        h.send(*sub(SUBMIT_JOB))
        h.send(*sub(SUBMIT_JOB, b'v'))
        h.send('w', GRAB_JOB_UNIQ)
        h.send('w', GRAB_JOB_ALL)
        self.assertEqual([('w', H(1), JOB_ASSIGN_UNIQ),
                          ('w', H(2), JOB_ASSIGN_UNIQ)], sent)
        self.assertEqual([], h.recv('w'))
        self.assertEqual([RUNNING, RUNNING], [h.state(1), h.state(2)])

    def test_wake_hook_replaces_the_noops_of_a_submit(self):
        woken = []
        h = self.hooked(wake=lambda job: woken.append(job.handle))
        h.send('w', CAN_DO, b'f')
        h.send('w', PRE_SLEEP)
        h.send(*sub(SUBMIT_JOB))
        h.send(*epoch(T0 + 60))
        self.assertEqual([H(1)], woken)
        self.assertEqual({'c': [created(1), created(2)]}, h.received())
        # The default wakeConnections: the sleepers of the job's function.
        h.core.wakeJob(h.job(1))
        self.assertEqual([NOOP_R], h.recv('w'))

    # An overridden wakeConnections hears of every job queued: new,
    # requeued, or an epoch job falling due.
    def test_wake_hook_hears_of_a_requeued_job(self):
        woken = []
        h = self.hooked(wake=lambda job: woken.append(job.handle))
        for step in RUN_FG:
            do(h, step)
        self.assertEqual([H(1)], woken)
        h.drop('w')
        self.assertEqual(QUEUED, h.state(1))
        self.assertEqual([H(1), H(1)], woken)

    def test_functions_edited_behind_the_core(self):
        # Code written for gear may replace a connection's function set.
        h = self.harness()
        h.send(*sub(SUBMIT_JOB, fn=b'g'))
        h.send(*sub(SUBMIT_JOB, fn=b'f'))
        conn = h.conn('w')
        conn.functions = {b'g'}
        h.send('w', GRAB_JOB)
        self.assertEqual([assign(1, fn=b'g')], h.recv('w'))
        self.assertEqual(1, h.fq(b'g').workers)
        conn.functions = {b'f'}
        h.send('w', GRAB_JOB)
        self.assertEqual([assign(2, fn=b'f')], h.recv('w'))
        # Giving up g requeued the job of g it ran (gearmand semantics).
        self.assertEqual((QUEUED, 1), (h.state(1), h.job(1).retries))
        self.assertEqual((0, 1), (h.fq(b'g').workers, h.fq(b'f').workers))


class TestRandomSequences(CoreTestCase):
    """Seeded random sequences of requests, losses, cancels, timer runs
    and store failures: after every step the core's books agree with
    its jobs, and at the end every foreground submission that got a
    handle gets exactly one WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION."""

    STEPS = 250
    SUBMITS = sorted(constants.SUBMIT_TYPES)

    def checkBooks(self, h):
        q = h.queue
        jobs = dict(q.jobs.items())
        fqs = list(q.functions.values())
        live = [c for c in h.conns.values() if not c.closed]
        self.assertCounters(h, q.queued, q.running, {})
        for fq in fqs:
            mine = [j for j in jobs.values() if j._fq is fq]
            states = [j._state & STATE for j in mine]
            for p in (NORMAL, LOW, HIGH):
                n = sum(1 for j in mine if j._state & STATE == QUEUED and
                        j.precedence == p)
                self.assertEqual(n, fq.queued[p])
                self.assertEqual(n, sum(1 for j in fq.fifos[p]
                                        if j._state & STATE == QUEUED))
            self.assertEqual(states.count(RUNNING), fq.running)
            self.assertEqual(states.count(EPOCH), fq.epoch_count)
            self.assertEqual(sum(1 for c in live if fq in c._fqs),
                             fq.workers)
            for job in fq.uniques.values():
                self.assertIs(job, jobs.get(job.handle))
            for conn in fq.sleepers:
                self.assertEqual('SLEEP', conn.state)
                self.assertIn(fq, conn._fqs)
        for conn in live:
            if conn.state == 'SLEEP':
                # No lost wake-up: a sleeper has nothing it could run.
                self.assertEqual([0] * len(conn._fqs),
                                 [fq.runnable for fq in conn._fqs])
        for handle, job in jobs.items():
            state = job._state & STATE
            if job in h.core.uncommitted:
                # Queued by the commit at the end of the turn.
                self.assertIn(state, (NEW, QUEUED, RUNNING))
            else:
                self.assertIn(state, (QUEUED, EPOCH, RUNNING))
            if state == RUNNING:
                self.assertIs(job, job.worker_connection.related_jobs.get(
                    handle))
            for conn in job.clients or ():
                self.assertFalse(conn.closed)
                self.assertIs(job, conn.related_jobs.get(handle))
            if not job.background:
                # Abandoned queued jobs go at once.
                self.assertTrue(job.clients or state == RUNNING)
        for conn in h.conns.values():
            for handle, job in conn.related_jobs.items():
                self.assertIs(job, jobs.get(handle))
        store = h.store
        if isinstance(store, FakeStore) and not store.fail_commit and \
                not (h.core.store_acked or store.batch or store.removals):
            self.assertEqual(
                sorted(hd for hd, j in jobs.items()
                       if j.background and not j.ignore),
                sorted(store.rows))

    def runSequence(self, seed, semantics, retries, store):
        rnd = random.Random(seed)
        h = self.harness(semantics=semantics, job_retries=retries,
                         store=store)
        names = {}
        submits = {}    # client name -> [background?] in order
        replies = {}    # client name -> every packet it got
        silent = set()  # cancelled without a word (gear semantics)

        def name(kind):
            return '%s.%d' % (kind, names.get(kind, 0))

        def look():
            for n, packets in h.received().items():
                replies.setdefault(n, []).extend(packets)

        for i in range(self.STEPS):
            r = rnd.random()
            c = name('c%d' % rnd.randint(1, 3))
            kind = 'w%d' % rnd.randint(1, 3)
            w = name(kind)
            fn = rnd.choice((b'f', b'g'))
            if r < 0.15:
                ptype = rnd.choice(self.SUBMITS)
                step = (c, ptype, fn, rnd.choice((b'', b'-', b'a', b'b')),
                        rnd.choice((b'x', b'y', b'')))
                if rnd.random() < 0.1:
                    ptype = SUBMIT_JOB_EPOCH
                    when = b'%d' % (self.clock.now + rnd.randint(-5, 20))
                    step = (c, ptype, fn, b'e', when, b'x')
                background = ptype == SUBMIT_JOB_EPOCH or \
                    constants.SUBMIT_TYPES[ptype][1]
                submits.setdefault(c, []).append(background)
            elif r < 0.2:
                step = (c, OPTION_REQ, b'exceptions')
            elif r < 0.3:
                step = (w, rnd.choice((CAN_DO, CAN_DO, CANT_DO)), fn)
            elif r < 0.33:
                step = (w, rnd.choice((RESET_ABILITIES, CAN_DO_TIMEOUT)),
                        fn + b'\x00%d' % rnd.randint(500, 3000))
            elif r < 0.48:
                step = (w, rnd.choice((GRAB_JOB, GRAB_JOB_UNIQ,
                                       GRAB_JOB_ALL)))
            elif r < 0.55:
                step = (w, PRE_SLEEP)
            elif r < 0.75:
                conn = h.conns.get(w)
                held = list(conn.related_jobs) if conn else []
                handle = rnd.choice(held) if held else H(rnd.randint(1, 9))
                ptype = rnd.choice((WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION,
                                    WORK_DATA, WORK_STATUS))
                step = (w, ptype, handle, b'1', b'2')
            elif r < 0.82:
                who = rnd.choice((c, w))
                if who in h.conns:
                    look()
                    h.drop(who)
                    kind = who.split('.')[0]
                    names[kind] = names.get(kind, 0) + 1
                step = None
            elif r < 0.87:
                jobs = h.queue.jobs.values()
                job = rnd.choice(jobs) if jobs else None
                if job is not None and not job.ignore and \
                        h.core.semantics.cancel(h.core, job) and \
                        semantics == 'gear':
                    silent.add(job.handle)
                step = None
            elif r < 0.93:
                h.io.advance(rnd.choice((0.5, 1, 2, 5)))
                step = None
            elif r < 0.95 and isinstance(store, FakeStore):
                store.fail_commit = rnd.random() < 0.3
                store.fail_add = rnd.random() < 0.1
                step = None
            else:
                look()
                step = None
            if step is not None:
                h.send(*step)
                if rnd.random() < 0.5:
                    look()
            h.track()
            self.checkBooks(h)

        # The end: the store works, workers go, one worker runs the rest.
        if isinstance(store, FakeStore):
            store.fail_commit = store.fail_add = False
        look()
        for n in [n for n, conn in h.conns.items()
                  if n.startswith('w') and not conn.closed]:
            h.drop(n)
        h.io.advance(100)
        h.send('last', CAN_DO, b'f')
        h.send('last', CAN_DO, b'g')
        while True:
            h.send('last', GRAB_JOB)
            packet, = h.recv('last')
            if packet[0] == NO_JOB:
                break
            h.send('last', WORK_COMPLETE, packet[1].split(b'\x00')[0],
                   b'r')
        look()
        self.checkBooks(h)
        self.assertEqual(0, len(h.queue.jobs))
        for n, conn in h.conns.items():
            if not n.startswith('c') or conn.closed:
                continue
            got = replies.get(n, [])
            answers = [p for p in got if p[0] in (JOB_CREATED, ERROR)]
            self.assertEqual(len(submits.get(n, [])), len(answers))
            want = collections.Counter(
                p[1] for bg, p in zip(submits.get(n, []), answers)
                if p[0] == JOB_CREATED and not bg and p[1] not in silent)
            ends = collections.Counter(
                p[1].split(b'\x00')[0] for p in got
                if p[0] in (WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION))
            for handle in silent:
                del ends[handle]
            self.assertEqual(want, ends, n)


def _sequenceTest(seed, semantics, retries, stored):
    def test(self):
        self.runSequence(seed, semantics, retries,
                         FakeStore() if stored else None)
    return test


for _seed, _semantics, _retries, _stored in (
        (1, 'gearmand', None, False), (2, 'gearmand', 1, True),
        (3, 'gear', None, True), (4, 'gear', 0, False)):
    setattr(TestRandomSequences, 'test_seed_%d_%s' % (_seed, _semantics),
            _sequenceTest(_seed, _semantics, _retries, _stored))
