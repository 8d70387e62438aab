"""Multi-process load generator for Gearman job servers.

Clients and workers run in separate processes, each driving one or more
non-blocking sockets with a window of pipelined requests, so that the
job server -- not one Python thread of the harness -- is the bottleneck.
Packets are pre-built bytes sent in batches; replies are read with large
``recv`` calls and split by :class:`gear.protocol.InputBuffer`.

Every scenario checks its counts (every submission acknowledged, every
job completed exactly once) and prints one JSON line per run; see
``bench/README.rst``.  ``--load library`` runs the same scenarios with
load processes that use gear's own Client and Worker (``bench.library``).

    python3 -m bench.loadgen --scenario submit-bg --servers geard,gearmand
"""

import argparse
import array
import collections
import copy
import json
import multiprocessing
import os
import queue
import select
import signal
import socket
import statistics
import sys
import time
import traceback
import uuid

if __package__ in (None, ''):  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))

from bench import library  # noqa: E402
from bench import scraper  # noqa: E402
from bench import registration  # noqa: E402
from bench import servers as servers_mod  # noqa: E402
from gear import constants as C  # noqa: E402
from gear.protocol import InputBuffer, pack  # noqa: E402

SCENARIOS = ('submit-bg', 'drain', 'pipeline', 'roundtrip', 'deepqueue',
             'registration', 'registration-flood')
# workers x functions of the registration scenarios.
REGISTRATION_SIZES = {'registration': (10, 20000),
                      'registration-flood': (50, 10000)}
LOADS = ('raw', 'library')
DEFAULT_N = 100000
DEFAULT_DEEP_N = 1000000
RECV_SIZE = 1 << 18
READY_TIMEOUT = 30.0
STALL_TIMEOUT = 60.0
PROBES = 51

GRAB = pack(C.REQ, C.GRAB_JOB_UNIQ)
PRE_SLEEP = pack(C.REQ, C.PRE_SLEEP)
# A status query for a handle that never exists: every server answers it
# in order, so its reply proves all earlier packets were processed.
BARRIER = pack(C.REQ, C.GET_STATUS, b'H:bench:barrier')


class BenchError(Exception):
    """A run failed: a count did not verify, or the server misbehaved."""


# -- sockets and the event loop -------------------------------------------

class Conn(object):
    """One non-blocking socket with its input parser and output queue."""

    __slots__ = ('sock', 'fd', 'inbuf', 'out', 'writing', 'state')

    def __init__(self, host, port):
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = InputBuffer()
        self.out = []
        self.writing = False
        self.state = None

    def flush(self):
        """Send what the socket takes now; True when nothing is left."""
        out = self.out
        if not out:
            return True
        data = out[0] if len(out) == 1 else b''.join(out)
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self.out = [data[sent:]]
            return False
        self.out = []
        return True

    def close(self):
        self.sock.close()


def drive(conns, role, stall_timeout):
    """Run ``role`` over ``conns`` until it reports that it is finished.

    Raises BenchError when the server closes a connection or nothing
    happens for ``stall_timeout`` seconds.
    """
    ep = select.epoll()
    by_fd = {}
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
    try:
        for c in conns:
            ep.register(c.fd, EPOLLIN)
            by_fd[c.fd] = c
            role.start(c)
        for c in conns:
            if not c.flush():
                ep.modify(c.fd, EPOLLIN | EPOLLOUT)
                c.writing = True
        monotonic = time.monotonic
        last_activity = monotonic()
        poll = ep.poll
        interval = role.poll_interval
        while not role.finished:
            events = poll(interval)
            if not events:
                now = monotonic()
                if role.idle():
                    last_activity = now
                elif now - last_activity > stall_timeout:
                    raise BenchError('no progress for %.0f s: %s'
                                     % (stall_timeout, role.describe()))
                for c in conns:
                    if c.out and not c.writing:
                        ep.modify(c.fd, EPOLLIN | EPOLLOUT)
                        c.writing = True
                continue
            last_activity = monotonic()
            for fd, ev in events:
                c = by_fd[fd]
                if ev & EPOLLIN or ev & (select.EPOLLERR | select.EPOLLHUP):
                    try:
                        data = c.sock.recv(RECV_SIZE)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    if data is not None:
                        if not data:
                            raise BenchError('server closed a connection: %s'
                                             % role.describe())
                        c.inbuf.feed(data)
                        role.on_readable(c)
                if c.out or c.writing:
                    if c.flush():
                        if c.writing:
                            ep.modify(fd, EPOLLIN)
                            c.writing = False
                    elif not c.writing:
                        ep.modify(fd, EPOLLIN | EPOLLOUT)
                        c.writing = True
    finally:
        ep.close()


# -- roles ----------------------------------------------------------------

class _SubmitState(object):
    __slots__ = ('next', 'stop', 'outstanding', 'sent_times', 'pending',
                 'closed')

    def __init__(self, first, count):
        self.closed = False
        self.next = first
        self.stop = first + count
        self.outstanding = 0
        self.sent_times = None
        self.pending = None


class Submitter(object):
    """Keeps ``window`` submissions in flight on each connection.

    Background jobs count when JOB_CREATED arrives; foreground jobs when
    WORK_COMPLETE arrives, and their latency (send to completion) is
    recorded.  Uniques are ``<tag><index>`` with a fixed-width index, so
    every packet header is the same and is computed once.
    """

    poll_interval = 0.05

    def __init__(self, fn, tag, first, count, conns, window, payload,
                 foreground, checkpoint_step=0):
        self.fn = fn
        self.tag = tag
        self.window = window
        self.foreground = foreground
        ptype = C.SUBMIT_JOB if foreground else C.SUBMIT_JOB_BG
        sample = fn + b'\x00' + tag + b'%09d' % 0 + b'\x00' + payload
        self._head = pack(C.REQ, ptype, sample)[:12] + fn + b'\x00' + tag
        self._tail = b'\x00' + payload
        # Split [first, first+count) evenly over the connections.
        self._slices = []
        base, extra = divmod(count, conns)
        start = first
        for i in range(conns):
            size = base + (1 if i < extra else 0)
            self._slices.append((start, size))
            start += size
        self.count = count
        self.created = 0
        self.completed = 0
        self.handles = set()
        self.latencies = array.array('d')
        self.errors = []
        self.checkpoint_step = checkpoint_step
        self.checkpoints = []
        self._next_checkpoint = checkpoint_step
        self._open = 0
        self.t_end = None

    @property
    def finished(self):
        return self._open == 0

    def describe(self):
        return ('submitter %s: %d/%d created, %d completed, errors %s'
                % (self.tag.decode(), self.created, self.count,
                   self.completed, self.errors[:3]))

    def idle(self):
        return False

    def start(self, conn):
        first, size = self._slices.pop(0)
        st = conn.state = _SubmitState(first, size)
        if self.foreground:
            st.sent_times = collections.deque()
            st.pending = {}
        if size:
            self._open += 1
            self._refill(conn, st, time.perf_counter())

    def _refill(self, conn, st, now):
        k = min(self.window - st.outstanding, st.stop - st.next)
        if k <= 0:
            return
        head, tail, i = self._head, self._tail, st.next
        conn.out.append(b''.join(
            [head + b'%09d' % j + tail for j in range(i, i + k)]))
        st.next = i + k
        st.outstanding += k
        if st.sent_times is not None:
            st.sent_times.extend([now] * k)

    def on_readable(self, conn):
        st = conn.state
        read = conn.inbuf.readPacket
        now = time.perf_counter()
        created = done = 0
        handles_add = self.handles.add
        if self.foreground:
            pending = st.pending
            popleft = st.sent_times.popleft
            lat_append = self.latencies.append
        while True:
            packet = read()
            if packet is None:
                break
            ptype = packet[1]
            if ptype == C.JOB_CREATED:
                created += 1
                handles_add(packet[2])
                if self.foreground:
                    pending[packet[2]] = popleft()
            elif ptype == C.WORK_COMPLETE and self.foreground:
                handle = packet[2].partition(b'\x00')[0]
                sent = pending.pop(handle, None)
                if sent is None:
                    self.errors.append('WORK_COMPLETE for unknown handle %r'
                                       % handle)
                else:
                    done += 1
                    lat_append(now - sent)
            elif ptype in (C.WORK_DATA, C.WORK_WARNING, C.WORK_STATUS):
                pass
            else:
                self.errors.append('unexpected %s %r' % (
                    C.types.get(ptype, ptype), packet[2][:200]))
        self.created += created
        if self.foreground:
            self.completed += done
            st.outstanding -= done
        else:
            self.completed += created
            st.outstanding -= created
        if self.errors:
            raise BenchError(self.describe())
        if self.checkpoint_step and self.created >= self._next_checkpoint:
            self.checkpoints.append((time.monotonic(), self.created))
            self._next_checkpoint = (
                self.created // self.checkpoint_step + 1) * \
                self.checkpoint_step
        if st.next < st.stop:
            self._refill(conn, st, now)
        elif st.outstanding == 0 and not st.closed:
            st.closed = True
            self._open -= 1
            self.t_end = time.monotonic()
            if self._open == 0 and self.checkpoint_step and (
                    not self.checkpoints or
                    self.checkpoints[-1][1] != self.created):
                self.checkpoints.append((self.t_end, self.created))

    def result(self):
        return {
            'role': 'submitter', 'count': self.count,
            'created': self.created, 'completed': self.completed,
            'distinct_handles': len(self.handles),
            'latencies': self.latencies.tobytes(),
            'checkpoints': self.checkpoints, 't_end': self.t_end,
        }


class _WorkerState(object):
    __slots__ = ('outstanding', 'sleeping', 'finishing', 'done')

    def __init__(self):
        self.outstanding = 0
        self.sleeping = False
        self.finishing = False
        self.done = False


class Worker(object):
    """Grabs and completes jobs until ``target`` jobs are done overall.

    Each connection keeps up to ``grab_window`` GRAB_JOB_UNIQ in flight.
    NO_JOB shrinks that window; when none is left the connection sends
    PRE_SLEEP and waits for NOOP, as a real worker does.  Progress is
    published in a shared array (one slot per process, no lock) so that
    every worker process can tell when the whole run is complete.
    """

    poll_interval = 0.01

    def __init__(self, fn, grab_window, progress, slot, target,
                 result=b''):
        self.fn = fn
        self.grab_window = grab_window
        self.progress = progress
        self.slot = slot
        self.target = target
        self.result_bytes = result
        self.uniques = []
        self.errors = []
        self.conns = []
        self.t_last = None
        self._done_conns = 0
        self._seen = -1

    @property
    def completed(self):
        return len(self.uniques)

    @property
    def finished(self):
        return self._done_conns == len(self.conns)

    def describe(self):
        return ('worker %d: completed %d, overall %d/%d, errors %s'
                % (self.slot, self.completed, sum(self.progress),
                   self.target, self.errors[:3]))

    def start(self, conn):
        self.conns.append(conn)
        conn.state = _WorkerState()
        conn.out.append(pack(C.REQ, C.CAN_DO, self.fn))
        self._grab(conn)

    def _grab(self, conn):
        st = conn.state
        conn.out.append(GRAB * self.grab_window)
        st.outstanding = self.grab_window
        st.sleeping = False

    def _maybe_finish(self):
        if sum(self.progress) < self.target:
            return False
        for conn in self.conns:
            st = conn.state
            if not st.finishing:
                st.finishing = True
                conn.out.append(BARRIER)
        return True

    def idle(self):
        before = self._seen
        now = sum(self.progress)
        self._seen = now
        self._maybe_finish()
        return now != before

    def on_readable(self, conn):
        st = conn.state
        read = conn.inbuf.readPacket
        out = conn.out
        uniques_append = self.uniques.append
        result = self.result_bytes
        complete_type = C.WORK_COMPLETE
        did = 0
        while True:
            packet = read()
            if packet is None:
                break
            ptype = packet[1]
            if ptype == C.JOB_ASSIGN_UNIQ:
                handle, _fn, unique, _data = packet[2].split(b'\x00', 3)
                out.append(pack(C.REQ, complete_type,
                                handle + b'\x00' + result))
                uniques_append(unique)
                did += 1
                if not st.finishing:
                    out.append(GRAB)
                else:
                    st.outstanding -= 1
            elif ptype == C.NO_JOB:
                st.outstanding -= 1
                if st.outstanding == 0 and not st.finishing:
                    out.append(PRE_SLEEP)
                    st.sleeping = True
            elif ptype == C.NOOP:
                if st.outstanding == 0 and not st.finishing:
                    self._grab(conn)
            elif ptype == C.STATUS_RES and st.finishing:
                st.done = True
                self._done_conns += 1
            else:
                self.errors.append('unexpected %s %r' % (
                    C.types.get(ptype, ptype), packet[2][:200]))
        if self.errors:
            raise BenchError(self.describe())
        if did:
            self.t_last = time.monotonic()
            self.progress[self.slot] = len(self.uniques)
        self._maybe_finish()

    def result(self):
        return {'role': 'worker', 'completed': self.completed,
                'uniques': self.uniques, 't_end': self.t_last}


# -- processes ------------------------------------------------------------

def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context(
        'fork' if 'fork' in methods else 'spawn')


def _child_main(spec, index, msgs, go, progress):
    """Entry point of one load process: connect, wait for go, run."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        library_load = spec['load'] == 'library'
        conns = []
        if library_load:
            role = library.make_role(spec, progress)
        else:
            conns = [Conn(spec['host'], spec['port'])
                     for _ in range(spec['conns'])]
            if spec['kind'] == 'submitter':
                role = Submitter(
                    spec['fn'], spec['tag'], spec['first'], spec['count'],
                    len(conns), spec['window'], spec['payload'],
                    spec['foreground'], spec.get('checkpoint_step', 0))
            else:
                role = Worker(spec['fn'], spec['grab_window'], progress,
                              spec['slot'], spec['target'])
        msgs.put(('ready', index, None))
        if not go.wait(READY_TIMEOUT * 4):
            raise BenchError('never told to start')
        cpu0 = time.process_time()
        if library_load:
            role.run()
        else:
            drive(conns, role, spec['stall_timeout'])
        res = role.result()
        res['cpu'] = time.process_time() - cpu0
        for c in conns:
            c.close()
        if library_load:
            role.close()
        msgs.put(('ok', index, res))
    except BaseException as e:
        detail = ('%s: %s' % (type(e).__name__, e) if isinstance(
            e, (BenchError, library.LoadError, OSError))
            else traceback.format_exc())
        msgs.put(('error', index, detail))


class Phase(object):
    """The outcome of one timed section."""

    def __init__(self, t0, results, server_cpu, wall_end):
        self.t0 = t0
        self.results = results
        self.server_cpu = server_cpu
        self.wall_end = wall_end

    def of(self, role):
        return [r for r in self.results if r['role'] == role]

    def seconds(self, role):
        ends = [r['t_end'] for r in self.of(role) if r['t_end'] is not None]
        return (max(ends) if ends else self.wall_end) - self.t0

    @property
    def client_cpu(self):
        return sum(r['cpu'] for r in self.results)


def run_phase(server, specs, opts):
    """Start one process per spec, release them together, collect results.

    Server CPU time is read just before the release and just after the
    last process reports, so connection set-up is not counted.
    """
    ctx = _mp_context()
    msgs = ctx.Queue()
    go = ctx.Event()
    workers = sum(1 for s in specs if s['kind'] == 'worker')
    progress = ctx.Array('q', max(1, workers), lock=False)
    procs = []
    for i, spec in enumerate(specs):
        spec = dict(spec, host=server.host, port=server.port,
                    stall_timeout=opts.stall_timeout, load=opts.load)
        spec.setdefault('conns', opts.conns)
        p = ctx.Process(target=_child_main,
                        args=(spec, i, msgs, go, progress), daemon=True)
        procs.append(p)
    try:
        for p in procs:
            p.start()
        pending = set(range(len(specs)))
        _collect(msgs, procs, pending, 'ready', READY_TIMEOUT, {})
        cpu0 = _server_cpu(server)
        t0 = time.monotonic()
        go.set()
        results = {}
        _collect(msgs, procs, set(range(len(specs))), 'ok', opts.timeout,
                 results)
        wall_end = time.monotonic()
        cpu1 = _server_cpu(server)
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        msgs.close()
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Phase(t0, [results[i] for i in range(len(specs))], server_cpu,
                 wall_end)


def _collect(msgs, procs, pending, kind, timeout, results):
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError('timed out waiting for %d load process(es) '
                             'to report %s' % (len(pending), kind))
        try:
            what, index, payload = msgs.get(timeout=min(left, 1.0))
        except queue.Empty:
            for i in pending:
                if procs[i].exitcode is not None:
                    raise BenchError('load process %d died (exit %s)'
                                     % (i, procs[i].exitcode))
            continue
        if what == 'error':
            raise BenchError('load process %d failed: %s' % (index, payload))
        if what == kind:
            pending.discard(index)
            results[index] = payload


def _server_cpu(server):
    if not server.pid:
        return None
    try:
        return servers_mod.cpu_seconds(server.pid)
    except OSError:
        return None


def _server_memory(server):
    if not server.pid:
        return None, None
    try:
        return servers_mod.memory_bytes(server.pid)
    except OSError:
        return None, None


# -- blocking helpers (admin and probes) ------------------------------------

def admin_status(server, timeout=30.0):
    """Return ``{function: (total, running, workers)}`` from ``status``."""
    with socket.create_connection((server.host, server.port),
                                  timeout=timeout) as s:
        s.sendall(b'status\n')
        reply = b''
        while not (reply == b'.\n' or reply.endswith(b'\n.\n')):
            chunk = s.recv(65536)
            if not chunk:
                raise BenchError('server closed during admin status')
            reply += chunk
    table = {}
    for line in reply.split(b'\n'):
        parts = line.split(b'\t')
        if len(parts) >= 4:
            table[parts[0]] = tuple(int(x) for x in parts[1:4])
    return table


class BlockingPeer(object):
    """A plain blocking connection for sequential request/reply probes."""

    def __init__(self, server, timeout=30.0):
        self.sock = socket.create_connection((server.host, server.port),
                                             timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inbuf = InputBuffer()

    def send(self, data):
        self.sock.sendall(data)

    def read(self, skip=(C.NOOP,)):
        while True:
            packet = self.inbuf.readPacket()
            if packet is None:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    raise BenchError('server closed a probe connection')
                self.inbuf.feed(data)
                continue
            if packet[1] not in skip:
                return packet

    def close(self):
        self.sock.close()


def grab_latencies(server, fn, count, tag):
    """Time GRAB_JOB_UNIQ -> JOB_ASSIGN_UNIQ for ``count`` single jobs.

    Each job is submitted (background) and acknowledged before the
    worker grabs it, so only the grab itself is timed.
    """
    client, worker = BlockingPeer(server), BlockingPeer(server)
    try:
        worker.send(pack(C.REQ, C.CAN_DO, fn))
        out = []
        for i in range(count):
            unique = b'%s%d' % (tag, i)
            client.send(pack(C.REQ, C.SUBMIT_JOB_BG,
                             fn + b'\x00' + unique + b'\x00probe'))
            reply = client.read()
            if reply[1] != C.JOB_CREATED:
                raise BenchError('probe submit got %s'
                                 % C.types.get(reply[1]))
            t0 = time.perf_counter()
            worker.send(GRAB)
            reply = worker.read()
            t1 = time.perf_counter()
            if reply[1] != C.JOB_ASSIGN_UNIQ:
                raise BenchError('probe grab got %s'
                                 % C.types.get(reply[1]))
            handle, _fn, got, _data = reply[2].split(b'\x00', 3)
            if got != unique:
                raise BenchError('probe grabbed %r, expected %r'
                                 % (got, unique))
            # Wait until the completion is processed, so the next grab
            # is timed on its own.
            worker.send(pack(C.REQ, C.WORK_COMPLETE, handle + b'\x00') +
                        BARRIER)
            reply = worker.read()
            if reply[1] != C.STATUS_RES:
                raise BenchError('probe completion got %s'
                                 % C.types.get(reply[1]))
            out.append((t1 - t0) * 1e6)
        return out
    finally:
        client.close()
        worker.close()


# -- scenarios --------------------------------------------------------------

def _split(total, parts):
    base, extra = divmod(total, parts)
    first = 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        yield first, size
        first += size


def submitter_specs(fn, n, clients, window, payload, foreground,
                    checkpoint_step=0):
    return [dict(kind='submitter', fn=fn, tag=b'c%02d-' % i, first=first,
                 count=size, window=window, payload=payload,
                 foreground=foreground,
                 checkpoint_step=checkpoint_step)
            for i, (first, size) in enumerate(_split(n, clients))]


def worker_specs(fn, workers, grab_window, target):
    return [dict(kind='worker', fn=fn, grab_window=grab_window, slot=i,
                 target=target, conns=1) for i in range(workers)]


def _percentiles(samples_us):
    if not samples_us:
        return {}
    s = sorted(samples_us)

    def pick(q):
        return round(s[min(len(s) - 1, int(q * len(s)))], 1)
    return {'latency_p50_us': pick(0.50), 'latency_p90_us': pick(0.90),
            'latency_p99_us': pick(0.99), 'latency_max_us': round(s[-1], 1)}


def _latencies_us(phase):
    out = []
    for r in phase.of('submitter'):
        a = array.array('d')
        a.frombytes(r['latencies'])
        out.extend(x * 1e6 for x in a)
    return out


def _check_submitters(phase, n, foreground):
    subs = phase.of('submitter')
    created = sum(r['created'] for r in subs)
    distinct = sum(r['distinct_handles'] for r in subs)
    if created != n:
        raise BenchError('%d of %d submissions got JOB_CREATED'
                         % (created, n))
    if distinct != n:
        raise BenchError('%d distinct handles for %d jobs' % (distinct, n))
    if foreground:
        completed = sum(r['completed'] for r in subs)
        if completed != n:
            raise BenchError('%d of %d foreground jobs completed'
                             % (completed, n))


def _check_workers(phase, n, clients=None):
    """Every job was completed by a worker exactly once."""
    uniques = []
    for r in phase.of('worker'):
        uniques.extend(r['uniques'])
    if len(uniques) != n:
        raise BenchError('workers completed %d jobs, expected %d'
                         % (len(uniques), n))
    if len(set(uniques)) != n:
        raise BenchError('%d jobs were completed more than once'
                         % (n - len(set(uniques))))
    if clients is not None:
        expected = set()
        for i, (first, size) in enumerate(_split(n, clients)):
            tag = b'c%02d-' % i
            expected.update(tag + b'%09d' % j
                            for j in range(first, first + size))
        if expected != set(uniques):
            raise BenchError('completed uniques differ from submitted ones')


def _check_queue(server, fn, expected_total):
    status = admin_status(server)
    total = status.get(fn, (0, 0, 0))[0]
    if total != expected_total:
        raise BenchError('admin status shows %d jobs of %s, expected %d'
                         % (total, fn.decode(), expected_total))


def _base_record(phase, server, n, seconds):
    rss, hwm = _server_memory(server)
    rec = {
        'n': n,
        'seconds': round(seconds, 4),
        'jobs_per_sec': round(n / seconds, 1) if seconds > 0 else None,
        'server_cpu_us_per_job': (
            round(phase.server_cpu * 1e6 / n, 2)
            if phase.server_cpu is not None and n else None),
        'server_rss_bytes': rss,
        'server_hwm_bytes': hwm,
        'client_cpu_us_per_job': round(phase.client_cpu * 1e6 / n, 2),
    }
    return rec


def _fn(opts, scenario):
    return b'bench-%s-%s' % (scenario.encode(), opts.run_token.encode())


def scenario_submit_bg(server, opts, n):
    fn = _fn(opts, 'submit-bg')
    phase = run_phase(server, submitter_specs(
        fn, n, opts.clients, opts.window, opts.payload_bytes, False), opts)
    _check_submitters(phase, n, False)
    _check_queue(server, fn, n)
    rec = _base_record(phase, server, n, phase.seconds('submitter'))
    rec.update(clients=opts.clients, window=opts.window)
    if not server.managed:
        _cleanup(server, fn, n, opts)
    return rec


def _preload(server, fn, n, opts):
    phase = run_phase(server, submitter_specs(
        fn, n, opts.clients, opts.window, opts.payload_bytes, False), opts)
    _check_submitters(phase, n, False)
    _check_queue(server, fn, n)
    return phase


def _cleanup(server, fn, n, opts):
    """Drain jobs a run left in a server that outlives it."""
    run_phase(server, worker_specs(fn, opts.workers, opts.grab_window, n),
              opts)


def scenario_drain(server, opts, n):
    fn = _fn(opts, 'drain')
    preload = _preload(server, fn, n, opts)
    phase = run_phase(server, worker_specs(
        fn, opts.workers, opts.grab_window, n), opts)
    _check_workers(phase, n, opts.clients)
    _check_queue(server, fn, 0)
    rec = _base_record(phase, server, n, phase.seconds('worker'))
    rec.update(workers=opts.workers, grab_window=opts.grab_window,
               preload_seconds=round(preload.seconds('submitter'), 4))
    return rec


def scenario_pipeline(server, opts, n):
    fn = _fn(opts, 'pipeline')
    specs = (submitter_specs(fn, n, opts.clients, opts.window,
                             opts.payload_bytes, True) +
             worker_specs(fn, opts.workers, opts.grab_window, n))
    phase = run_phase(server, specs, opts)
    _check_submitters(phase, n, True)
    _check_workers(phase, n, opts.clients)
    _check_queue(server, fn, 0)
    rec = _base_record(phase, server, n, phase.seconds('submitter'))
    rec.update(_percentiles(_latencies_us(phase)))
    rec.update(clients=opts.clients, workers=opts.workers,
               window=opts.window, grab_window=opts.grab_window)
    return rec


def scenario_roundtrip(server, opts, n):
    fn = _fn(opts, 'roundtrip')
    specs = (submitter_specs(fn, n, 1, 1, opts.payload_bytes, True) +
             worker_specs(fn, 1, 1, n))
    for s in specs:
        s['conns'] = 1
    phase = run_phase(server, specs, opts)
    _check_submitters(phase, n, True)
    _check_workers(phase, n, 1)
    rec = _base_record(phase, server, n, phase.seconds('submitter'))
    rec.update(_percentiles(_latencies_us(phase)))
    return rec


def _enqueue_rates(phase, n):
    """Jobs/s over the first and the last 10% of all acknowledgements."""
    events = []
    for r in phase.of('submitter'):
        prev = 0
        for t, created in r['checkpoints']:
            events.append((t, created - prev))
            prev = created
    events.sort()
    cum = 0
    t10 = c10 = t90 = c90 = None
    for t, delta in events:
        cum += delta
        if t10 is None and cum >= 0.1 * n:
            t10, c10 = t, cum
        if t90 is None and cum >= 0.9 * n:
            t90, c90 = t, cum
    t_end = events[-1][0]
    first = c10 / (t10 - phase.t0) if t10 and t10 > phase.t0 else None
    last = ((n - c90) / (t_end - t90)
            if t90 is not None and t_end > t90 else None)
    return first, last


def scenario_deepqueue(server, opts, n):
    fn = _fn(opts, 'deepqueue')
    other = fn + b'-other'
    shallow = grab_latencies(server, other, opts.probes, b'shallow-')
    rss0, _ = _server_memory(server)
    step = max(1, n // opts.clients // 200)
    phase = run_phase(server, submitter_specs(
        fn, n, opts.clients, opts.window, opts.payload_bytes, False,
        checkpoint_step=step), opts)
    _check_submitters(phase, n, False)
    _check_queue(server, fn, n)
    rss1, _ = _server_memory(server)
    deep = grab_latencies(server, other, opts.probes, b'deep-')
    _check_queue(server, fn, n)
    first, last = _enqueue_rates(phase, n)
    rec = _base_record(phase, server, n, phase.seconds('submitter'))
    rec.update(
        clients=opts.clients, window=opts.window,
        enqueue_rate_first10=round(first, 1) if first else None,
        enqueue_rate_last10=round(last, 1) if last else None,
        last10_vs_first10=(round(last / first, 3)
                           if first and last else None),
        rss_delta_per_job_bytes=(round((rss1 - rss0) / n, 1)
                                 if rss0 is not None else None),
        grab_us_shallow=round(statistics.median(shallow), 1),
        grab_us_deep=round(statistics.median(deep), 1))
    if not server.managed:
        _cleanup(server, fn, n, opts)
    return rec


def scenario_registration(server, opts, n, name='registration'):
    run_opts = copy.copy(opts)
    w, k = REGISTRATION_SIZES[name]
    run_opts.reg_workers = opts.reg_workers or w
    run_opts.reg_functions = opts.reg_functions or k
    try:
        rec = registration.scenario(
            server, run_opts, lambda: _server_cpu(server),
            lambda: admin_status(server))
    except registration.RegistrationError as e:
        raise BenchError(str(e))
    rec['server_rss_bytes'], rec['server_hwm_bytes'] = \
        _server_memory(server)
    return rec


def scenario_registration_flood(server, opts, n):
    return scenario_registration(server, opts, n, 'registration-flood')


RUNNERS = {
    'registration': scenario_registration,
    'registration-flood': scenario_registration_flood,
    'submit-bg': scenario_submit_bg,
    'drain': scenario_drain,
    'pipeline': scenario_pipeline,
    'roundtrip': scenario_roundtrip,
    'deepqueue': scenario_deepqueue,
}

# Metrics a summary reports per server (median over rounds), and the
# ones whose ratio to the baseline server it prints.
SUMMARY_METRICS = ('jobs_per_sec', 'server_cpu_us_per_job',
                   'client_cpu_us_per_job', 'server_rss_bytes',
                   'latency_p50_us', 'latency_p99_us',
                   'enqueue_rate_first10', 'enqueue_rate_last10',
                   'last10_vs_first10', 'rss_delta_per_job_bytes',
                   'grab_us_shallow', 'grab_us_deep',
                   'server_cpu_us_per_can_do_register',
                   'server_cpu_us_per_reset_function',
                   'server_cpu_us_per_can_do_reregister',
                   'rt_idle_p50_us', 'rt_flood_p50_us', 'rt_flood_p99_us')
RATIO_METRICS = ('jobs_per_sec', 'server_cpu_us_per_job',
                 'latency_p50_us', 'latency_p99_us',
                 'rss_delta_per_job_bytes', 'grab_us_deep',
                 'server_cpu_us_per_can_do_register',
                 'server_cpu_us_per_reset_function',
                 'rt_flood_p50_us', 'rt_flood_p99_us')
# Ratios of the library load to the raw load on the same server.
LOAD_RATIO_METRICS = ('jobs_per_sec', 'client_cpu_us_per_job',
                      'server_cpu_us_per_job', 'latency_p50_us',
                      'latency_p99_us')


# -- the command line -------------------------------------------------------

def emit(record, stream=None):
    stream = stream or sys.stdout
    stream.write(json.dumps(record, sort_keys=False) + '\n')
    stream.flush()


def _summary_key(server, load):
    """``geard`` for the raw load, ``geard:library`` for the library's."""
    return server if load == 'raw' else '%s:%s' % (server, load)


def _ratios(a, b, metrics):
    out = {}
    for metric in metrics:
        x, y = a.get(metric), b.get(metric)
        if x is not None and y:
            out[metric] = round(x / y, 3)
    return out


def _paired_ratios(records, name, baseline, load):
    """Median and mean over rounds of one round's CPU-per-job ratio.

    Rounds share the machine's state of the moment, so a ratio taken
    within a round cancels much of what drifts between rounds.
    """
    def by_round(server):
        return {r['round']: r['server_cpu_us_per_job'] for r in records
                if r.get('server') == server and r.get('verified')
                and 'round' in r
                and r.get('load', 'raw') == load
                and r.get('server_cpu_us_per_job')}
    mine, theirs = by_round(name), by_round(baseline)
    ratios = [mine[k] / theirs[k] for k in mine if k in theirs]
    if not ratios:
        return None
    return {'rounds': len(ratios),
            'median': round(statistics.median(ratios), 3),
            'mean': round(statistics.mean(ratios), 3)}


def summarize(scenario, records, server_names, loads=('raw',),
              baseline=None):
    per_server = {}
    for load in loads:
        for name in server_names:
            runs = [r for r in records if r.get('server') == name
                    and r.get('load', 'raw') == load and r.get('verified')]
            if not runs:
                continue
            medians = {}
            for metric in SUMMARY_METRICS:
                values = [r[metric] for r in runs
                          if r.get(metric) is not None]
                if values:
                    medians[metric] = statistics.median(values)
            medians['runs'] = len(runs)
            per_server[_summary_key(name, load)] = medians
    summary = {'summary': True, 'scenario': scenario, 'servers': per_server,
               'ratios': {}}
    for load in loads:
        candidates = (baseline,) if baseline else ('gearmand', 'gearmand-mt')
        base = next((s for s in candidates
                     if _summary_key(s, load) in per_server), None)
        if not base:
            continue
        base_key = _summary_key(base, load)
        for name in server_names:
            key = _summary_key(name, load)
            if key == base_key or key not in per_server:
                continue
            pair = '%s/%s' % (key, base_key)
            summary['ratios'][pair] = _ratios(
                per_server[key], per_server[base_key], RATIO_METRICS)
            paired = _paired_ratios(records, name, base, load)
            if paired:
                summary.setdefault('paired_cpu_ratios', {})[pair] = paired
    if 'raw' in loads:
        for load in loads:
            for name in server_names:
                key = _summary_key(name, load)
                if load == 'raw' or key not in per_server or \
                        name not in per_server:
                    continue
                summary['ratios']['%s/raw' % key] = _ratios(
                    per_server[key], per_server[name], LOAD_RATIO_METRICS)
    return summary


def run_one(scenario, server, opts, round_no, load='raw'):
    n = opts.n_for(scenario)
    record = {'scenario': scenario, 'server': server.name, 'load': load,
              'round': round_no}
    run_opts = copy.copy(opts)
    run_opts.load = load
    try:
        with server:
            with scraper.Scraping(server, opts.scrape_interval) as scraping:
                record.update(RUNNERS[scenario](server, run_opts, n))
            if scraping.result is not None:
                record['scraper'] = scraping.result
        record['verified'] = True
    except servers_mod.ServerUnavailable as e:
        record.update(skipped=str(e))
        sys.stderr.write('skipping %s: %s\n' % (server.name, e))
    except BenchError as e:
        record.update(n=n, verified=False, error=str(e))
    return record


def build_servers(opts):
    """Server factories (one fresh server per run), plus skip records."""
    if opts.port:
        name = opts.servers or 'external'

        def factory():
            return servers_mod.ExternalServer(name, opts.host, opts.port,
                                              opts.pid)
        return [(name, factory)], []
    factories, skipped = [], []
    for name in opts.servers.split(','):
        for store in opts.stores:
            def factory(name=name.strip(), store=store):
                return servers_mod.add_store(servers_mod.make_server(
                    name, opts.gear016_python, opts.base_root), store)
            try:
                probe = factory()
                label = probe.name
                probe.stop()
            except servers_mod.ServerUnavailable as e:
                skipped.append((_store_label(name.strip(), store), str(e)))
                continue
            factories.append((label, factory))
    return factories, skipped


def _store_label(name, store):
    return name if store == 'none' else '%s+%s' % (name, store)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog='python3 -m bench.loadgen',
        description='Multi-process Gearman load generator.')
    p.add_argument('--scenario', default='submit-bg',
                   help='one of %s, a comma list, or "all"'
                   % ', '.join(SCENARIOS))
    p.add_argument('--servers', default=None,
                   help='comma list of %s (default geard,gearmand)'
                   % ', '.join(servers_mod.KNOWN_SERVERS))
    p.add_argument('--n', type=int, default=None,
                   help='jobs per run (default %d; deepqueue %d)'
                   % (DEFAULT_N, DEFAULT_DEEP_N))
    p.add_argument('--deep-n', type=int, default=None,
                   help='jobs for deepqueue (overrides --n for it)')
    p.add_argument('--rounds', type=int, default=1)
    p.add_argument('--clients', type=int, default=4,
                   help='client processes (default 4)')
    p.add_argument('--workers', type=int, default=4,
                   help='worker processes (default 4)')
    p.add_argument('--conns', type=int, default=1,
                   help='sockets per client process (default 1)')
    p.add_argument('--window', type=int, default=100,
                   help='outstanding submissions per socket (default 100)')
    p.add_argument('--grab-window', type=int, default=4,
                   help='outstanding GRAB_JOB_UNIQ per worker (default 4)')
    p.add_argument('--payload-size', type=int, default=100)
    p.add_argument('--reg-workers', type=int, default=None,
                   help='worker connections of the registration scenarios'
                   ' (default 10; registration-flood 50)')
    p.add_argument('--reg-functions', type=int, default=None,
                   help='functions each of them registers (default 20000;'
                   ' registration-flood 10000)')
    p.add_argument('--probes', type=int, default=PROBES,
                   help='grab probes per depth in deepqueue')
    p.add_argument('--timeout', type=float, default=3600.0,
                   help='cap on one timed section, seconds')
    p.add_argument('--stall-timeout', type=float, default=STALL_TIMEOUT,
                   help='fail a run after this long without progress')
    p.add_argument('--host', default=servers_mod.HOST)
    p.add_argument('--port', type=int, default=None,
                   help='use an already running server instead')
    p.add_argument('--pid', type=int, default=None,
                   help='PID of that server, for CPU and memory figures')
    p.add_argument('--pin', action='store_true',
                   help='run managed servers on the last CPU and the load '
                   'on the others')
    p.add_argument('--baseline', default=None, metavar='SERVER',
                   help='the server ratios divide by (default gearmand, '
                   'else gearmand-mt)')
    p.add_argument('--base-root', default=None,
                   help='another checkout whose geard runs as geard-base')
    p.add_argument('--gear016-python', default=None,
                   help='Python of a separate environment with gear 0.16')
    p.add_argument('--scrape-interval', type=float, default=None,
                   metavar='SECONDS',
                   help='for servers with an HTTP side (geard-http): GET '
                        '/metrics every SECONDS from a separate process '
                        'while the scenario runs (0: back to back)')
    p.add_argument('--store', default='none',
                   help='comma list of job stores every server runs with '
                   'in turn: %s (default none)'
                   % ', '.join(servers_mod.STORES))
    p.add_argument('--load', choices=LOADS + ('both',), default='raw',
                   help='load processes: raw sockets (default), gear.Client'
                   ' and gear.Worker ("library"), or both in turn')
    opts = p.parse_args(argv)
    opts.loads = LOADS if opts.load == 'both' else (opts.load,)
    opts.stores = [s.strip() for s in opts.store.split(',')]
    for store in opts.stores:
        if store not in servers_mod.STORES:
            p.error('unknown store %r' % store)
    if opts.scenario == 'all':
        opts.scenarios = list(SCENARIOS)
    else:
        opts.scenarios = [s.strip() for s in opts.scenario.split(',')]
        for s in opts.scenarios:
            if s not in SCENARIOS:
                p.error('unknown scenario %r' % s)
    if opts.servers is None and not opts.port:
        opts.servers = 'geard,gearmand'
    for name in ('rounds', 'clients', 'workers', 'conns', 'window',
                 'grab_window', 'probes'):
        if getattr(opts, name) < 1:
            p.error('--%s must be at least 1' % name.replace('_', '-'))
    opts.payload_bytes = b'x' * opts.payload_size
    opts.run_token = uuid.uuid4().hex[:8]

    def n_for(scenario):
        if scenario == 'deepqueue' and opts.deep_n:
            return opts.deep_n
        if opts.n:
            return opts.n
        return DEFAULT_DEEP_N if scenario == 'deepqueue' else DEFAULT_N
    opts.n_for = n_for
    return opts


def main(argv=None):
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (e.g. ``| head``); nothing left to say.
        sys.stderr.close()
        return 1


def _main(argv=None):
    opts = parse_args(argv)
    # Turn SIGTERM into a normal exit so every server is stopped.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    if opts.pin:
        cpus = servers_mod.pin()
        if cpus is None:
            sys.stderr.write('--pin: one CPU only, nothing pinned\n')
        else:
            emit({'pinned': {'server_cpus': cpus[0], 'load_cpus': cpus[1]}})
    factories, skipped = build_servers(opts)
    failed = False
    for scenario in opts.scenarios:
        for name, reason in skipped:
            emit({'scenario': scenario, 'server': name, 'skipped': reason})
        loads = [load for load in opts.loads
                 if load == 'raw' or scenario in library.SCENARIOS]
        if len(loads) < len(opts.loads):
            emit({'scenario': scenario, 'load': 'library',
                  'skipped': 'measures the server alone: no library load'})
        records = []
        for round_no in range(1, opts.rounds + 1):
            # Even rounds run the servers the other way round, so that
            # neither always starts on a machine the other has warmed.
            ordered = factories if round_no % 2 else factories[::-1]
            for name, factory in ordered:
                for load in loads:
                    record = run_one(scenario, factory(), opts, round_no,
                                     load)
                    emit(record)
                    records.append(record)
                    if record.get('verified') is False:
                        failed = True
        if factories and loads:
            emit(summarize(scenario, records, [n for n, _ in factories],
                           loads, opts.baseline))
    if not factories:
        sys.stderr.write('no server could be run\n')
        return 2
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
