"""The crash-durability scenario, shared by the test and by
compare_persistence.py.

1. Several client processes pipeline SUBMIT_JOB_BG (a unique per job) as
   fast as the server takes them and record, in order, every unique whose
   JOB_CREATED arrived.
2. The server is killed with SIGKILL once a chosen number of jobs has
   been acknowledged.
3. The server is started again on the same store and worker processes
   drain the function, recording every unique they are given.

An acknowledged job is *lost* when no worker ever receives it.
"""

import collections
import multiprocessing
import queue as queue_mod
import random
import select
import socket
import time

from gear import constants as C
from gear.protocol import InputBuffer
from tests.reliability import peers

SUBMIT_WINDOW = 256
GRAB_WINDOW = 16
PHASE_TIMEOUT = 300.0


def mp_context():
    """Children are forked from a clean helper process, never from the
    (threaded) test process."""
    methods = multiprocessing.get_all_start_methods()
    if 'forkserver' in methods:
        return multiprocessing.get_context('forkserver')
    return multiprocessing.get_context('spawn')


def _connect(port):
    sock = socket.create_connection((peers.HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def submitter_main(port, fn, tag, index, count, progress, results):
    """Submit ``count`` background jobs; report what was acknowledged."""
    acked = []
    errors = 0
    sent = 0
    reason = 'done'
    try:
        sock = _connect(port)
        inbuf = InputBuffer()
        inflight = collections.deque()
        out = bytearray()
        ep = select.epoll()
        ep.register(sock.fileno(), select.EPOLLIN)
        writing = False
        deadline = time.monotonic() + PHASE_TIMEOUT
        prefix = '%s-%d-' % (tag, index)
        while len(acked) + errors < count:
            if time.monotonic() > deadline:
                reason = 'timeout'
                break
            while len(inflight) < SUBMIT_WINDOW and sent < count:
                unique = prefix + str(sent)
                out += peers.req(C.SUBMIT_JOB_BG, fn, unique, unique)
                inflight.append(unique)
                sent += 1
            if out:
                try:
                    n = sock.send(out)
                    del out[:n]
                except BlockingIOError:
                    pass
                except OSError:
                    reason = 'closed'
                    break
            if out and not writing:
                ep.modify(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
                writing = True
            elif not out and writing:
                ep.modify(sock.fileno(), select.EPOLLIN)
                writing = False
            events = ep.poll(1.0)
            if not events:
                continue
            try:
                data = sock.recv(peers.RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                reason = 'closed'
                break
            if not data:
                reason = 'closed'
                break
            inbuf.feed(data)
            while True:
                parsed = inbuf.readPacket()
                if parsed is None:
                    break
                ptype = parsed[1]
                if ptype == C.JOB_CREATED:
                    acked.append(inflight.popleft())
                elif ptype == C.ERROR:
                    inflight.popleft()
                    errors += 1
            progress[index] = len(acked)
        sock.close()
    except Exception as e:  # reported, never swallowed
        reason = 'error: %r' % (e,)
    results.put(('submitter', index, {
        'acked': acked, 'errors': errors, 'sent': sent, 'reason': reason}))


def drain_main(port, fn, index, stop, results):
    """Take jobs of ``fn`` until told to stop; report every unique seen."""
    seen = []
    reason = 'done'
    try:
        sock = _connect(port)
        inbuf = InputBuffer()
        sock.sendall(peers.req(C.CAN_DO, fn))
        outstanding = 0
        sleeping = False
        out = bytearray()
        deadline = time.monotonic() + PHASE_TIMEOUT
        while not stop.is_set():
            if time.monotonic() > deadline:
                reason = 'timeout'
                break
            if not sleeping and outstanding < GRAB_WINDOW:
                out += peers.req(C.GRAB_JOB_UNIQ) * (
                    GRAB_WINDOW - outstanding)
                outstanding = GRAB_WINDOW
            if out:
                sock.setblocking(True)
                sock.sendall(out)
                sock.setblocking(False)
                out = bytearray()
            r, _, _ = select.select([sock], [], [], 0.1)
            if not r:
                continue
            data = sock.recv(peers.RECV_SIZE)
            if not data:
                reason = 'closed'
                break
            inbuf.feed(data)
            while True:
                parsed = inbuf.readPacket()
                if parsed is None:
                    break
                ptype, payload = parsed[1], parsed[2]
                if ptype == C.JOB_ASSIGN_UNIQ:
                    outstanding -= 1
                    handle, _, unique, _ = payload.split(b'\x00', 3)
                    seen.append(unique.decode())
                    out += peers.req(C.WORK_COMPLETE, handle, b'ok')
                elif ptype == C.NO_JOB:
                    outstanding -= 1
                    if outstanding == 0:
                        out += peers.req(C.PRE_SLEEP)
                        sleeping = True
                elif ptype == C.NOOP:
                    sleeping = False
        sock.close()
    except Exception as e:
        reason = 'error: %r' % (e,)
    results.put(('drain', index, {'seen': seen, 'reason': reason}))


def _collect(results, procs, kind, expected, timeout):
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < expected:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError('%d %s process(es) did not report' % (
                expected - len(got), kind))
        try:
            what, index, payload = results.get(timeout=min(left, 0.5))
        except queue_mod.Empty:
            dead = [p.exitcode for i, p in enumerate(procs)
                    if i not in got and p.exitcode is not None]
            if dead and results.empty():
                raise AssertionError('%s process(es) died without a '
                                     'report (exit codes %s)' % (kind, dead))
            continue
        got[index] = payload
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)
    return [got[i] for i in range(expected)]


def run(server, jobs, clients=4, workers=3, kill_fraction=None, seed=None,
        fn='crash', tag=None, kill_after=None, workers_during_submit=0):
    """Run the scenario against ``server`` (a servers.ServerProcess that
    keeps its store across ``start()``); return the counts.

    The server is killed once ``kill_fraction`` of ``jobs`` have been
    acknowledged (or ``kill_after`` seconds have passed, whichever is
    first).  With ``workers_during_submit`` that many workers take and
    complete jobs until the kill, so the crash also cuts completions
    short; a job they were given counts as delivered.  ``server`` must not
    be running yet.
    """
    rng = random.Random(seed)
    if kill_fraction is None:
        kill_fraction = rng.uniform(0.4, 0.8)
    tag = tag or 'j%x' % rng.getrandbits(24)
    ctx = mp_context()
    results = ctx.Queue()
    progress = ctx.Array('q', clients, lock=False)
    kill_at = max(1, int(jobs * kill_fraction))
    per = [jobs // clients + (1 if i < jobs % clients else 0)
           for i in range(clients)]

    server.start()
    procs = [ctx.Process(target=submitter_main, daemon=True, args=(
        server.port, fn, tag, i, per[i], progress, results))
        for i in range(clients)]
    # Optionally, workers take jobs while the server is killed too.
    early_stop = ctx.Event()
    early_results = ctx.Queue()
    early = [ctx.Process(target=drain_main, daemon=True, args=(
        server.port, fn, i, early_stop, early_results))
        for i in range(workers_during_submit)]
    t0 = time.monotonic()
    for p in procs + early:
        p.start()
    limit = time.monotonic() + (kill_after or PHASE_TIMEOUT)

    def ready_to_kill():
        return (sum(progress) >= kill_at or time.monotonic() >= limit or
                not any(p.is_alive() for p in procs))
    peers.wait_for(ready_to_kill, PHASE_TIMEOUT + 10, 'kill point',
                   interval=0.002)
    acked_at_kill = sum(progress)
    submit_seconds = time.monotonic() - t0
    server.kill()
    subs = _collect(results, procs, 'submitter', clients, 60)
    early_stop.set()
    taken_before = collections.Counter()
    for d in _collect(early_results, early, 'drain', workers_during_submit,
                      60):
        taken_before.update(d['seen'])
    acked = set()
    for s in subs:
        acked.update(s['acked'])

    t1 = time.monotonic()
    server.start()
    replay_seconds = time.monotonic() - t1
    stop = ctx.Event()
    wprocs = [ctx.Process(target=drain_main, daemon=True, args=(
        server.port, fn, i, stop, results)) for i in range(workers)]
    t2 = time.monotonic()
    for p in wprocs:
        p.start()
    try:
        peers.wait_for(lambda: peers.function_total(server.port, fn) == 0,
                       PHASE_TIMEOUT, 'the workers to drain %s' % fn,
                       interval=0.05)
    finally:
        stop.set()
    drain_seconds = time.monotonic() - t2
    drained = _collect(results, wprocs, 'drain', workers, 60)
    seen = collections.Counter()
    for d in drained:
        seen.update(d['seen'])
    delivered = set(seen) | set(taken_before)
    lost = sorted(acked - delivered)
    return {
        'server': server.name,
        'jobs_planned': jobs,
        'acknowledged': len(acked),
        'acked_at_kill_signal': acked_at_kill,
        'submitted_before_kill': sum(s['sent'] for s in subs),
        'submit_errors': sum(s['errors'] for s in subs),
        'delivered_after_restart': len(set(seen) & acked),
        'delivered_before_kill': len(set(taken_before) & acked),
        'delivered_twice': sum(1 for u in taken_before if u in seen),
        'lost': len(lost),
        'lost_sample': lost[:10],
        'unacknowledged_but_delivered': len(delivered - acked),
        'duplicates_after_restart': sum(n - 1 for n in seen.values()
                                        if n > 1),
        'submit_seconds': round(submit_seconds, 3),
        'restart_seconds': round(replay_seconds, 3),
        'drain_seconds': round(drain_seconds, 3),
        'client_end': sorted(set(s['reason'] for s in subs)),
        'worker_end': sorted(set(d['reason'] for d in drained)),
    }
