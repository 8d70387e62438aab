"""What the server's metrics cost per job, measured without sockets.

The load generator measures whole processes, whose CPU time on a shared
machine varies by more than the few hundred nanoseconds the metrics
cost.  This drives the server's own packet handlers in one process,
with and without ``metrics=True``, and reports the best of several runs
of CPU time per job for:

* ``submit``: SUBMIT_JOB_BG of a new job (JOB_CREATED queued);
* ``drain``: GRAB_JOB_UNIQ of a queued job and its WORK_COMPLETE;
* ``pipeline`` (only if asked for with ``--paths``): a foreground
  SUBMIT_JOB, its GRAB_JOB_UNIQ and its WORK_COMPLETE, with a window of
  jobs queued ahead, as clients and workers at full speed keep the
  server.  Jobs are born and freed while others run, so what the
  metrics keep alive after a job ends (and for how long) shows here: a
  job's memory is reused hot when it is freed at once.

Between every ``--per-turn`` jobs, the loop's start-of-turn work is
done as the server's loop does it (the turn's clock read; when it moved
on by a ``TICK``, the completed jobs are counted and the recorder's time
moves on), so the batch counting is timed where it happens.

Run it from the repository root::

    python3 -m bench.metrics_cost --n 30000 --repeat 7 \\
        --paths submit,drain,pipeline

On a busy machine these differences drown in noise; instruction and
cache-miss counts do not.  With ``--turn-step`` the turns' times advance
by a fixed step instead of following the clock, so that a run does the
same work every time, and ``--once PATH:on`` (or ``:off``) runs one
path once, for ``valgrind --tool=cachegrind`` with ``PYTHONHASHSEED=0``.
The difference of the totals of two job counts, divided by the
difference of the counts, is the count per job::

    PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=yes \\
        --LL=1048576,16,64 python3 -m bench.metrics_cost \\
        --once pipeline:on --n 12000 --turn-step 0.00016
"""

import argparse
import gc
import json
import socket
import sys
import time

from gear import constants as C
from gear.server.connection import ServerConnection
from gear.server.server import Server

PATHS = ('submit', 'drain', 'pipeline')
DEFAULT_PATHS = ('submit', 'drain')


def _turn_function(server, step=None):
    """The metrics part of the start of a loop turn, as the loop does it
    (``Recorder.beginTurn``): the recorder's time moves on when the
    clock did by a TICK or more.  With ``step``, each turn is that many
    seconds after the previous one."""
    recorder = server.metrics
    if recorder is None:
        return lambda: None
    if step:
        times = [recorder.now]

        def clock():
            times[0] += step
            return times[0]
    else:
        clock = time.monotonic

    def turn():
        recorder.beginTurn(clock())
    return turn


def measure(metrics, n, path, per_turn=8, window=400, step=None):
    """Seconds of CPU per job on ``path`` for one fresh server."""
    server = Server(0, host='127.0.0.1', metrics=metrics)
    socks = socket.socketpair() + socket.socketpair()
    try:
        client = ServerConnection(('client', 1), socks[0], False, 'c')
        worker = ServerConnection(('worker', 2), socks[2], False, 'w')
        # The table of fast handlers by packet type (the scanner's, once
        # the server has one).
        handlers = getattr(server, '_fast', None)
        if handlers is None:
            handlers = server._scanner.handlers
        payloads = [b'fn\x00u%d\x00' % i + b'p' * 100 for i in range(n)]
        turn = _turn_function(server, step)
        with server.lock:
            handlers[C.CAN_DO](worker, b'fn')
            grab = handlers[C.GRAB_JOB_UNIQ]
            complete = handlers[C.WORK_COMPLETE]
            related = worker.related_jobs
            out = worker.send_queue
            replies = client.send_queue
            gc.collect()
            gc.disable()
            try:
                if path in ('submit', 'drain'):
                    submit = handlers[C.SUBMIT_JOB_BG]
                    t0 = time.process_time()
                    for payload in payloads:
                        submit(client, payload)
                    cost = time.process_time() - t0
                    replies.clear()
                if path == 'drain':
                    t0 = time.process_time()
                    for i in range(n):
                        if not i % per_turn:
                            turn()
                        grab(worker, b'')
                        complete(worker, next(iter(related)) + b'\x00done')
                        out.clear()
                    # What is still pending is counted in a later turn.
                    if server.metrics is not None:
                        server.metrics.flush()
                    cost = time.process_time() - t0
                elif path == 'pipeline':
                    submit = handlers[C.SUBMIT_JOB]
                    ahead = min(window, n)
                    t0 = time.process_time()
                    for payload in payloads[:ahead]:
                        submit(client, payload)
                    for i in range(n):
                        if not i % per_turn:
                            turn()
                            replies.clear()
                        if i + ahead < n:
                            submit(client, payloads[i + ahead])
                        grab(worker, b'')
                        complete(worker,
                                 next(reversed(related)) + b'\x00done')
                        out.clear()
                    if server.metrics is not None:
                        server.metrics.flush()
                    cost = time.process_time() - t0
            finally:
                gc.enable()
            del server.core.dirty[:]
        return cost / n
    finally:
        server.shutdown()
        for sock in socks:
            sock.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog='python3 -m bench.metrics_cost',
                                description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=30000, help='jobs per run')
    p.add_argument('--repeat', type=int, default=7,
                   help='runs of each; the best is reported')
    p.add_argument('--per-turn', type=int, default=8,
                   help='jobs handled per turn of the loop')
    p.add_argument('--window', type=int, default=400,
                   help='pipeline: jobs submitted ahead of the worker')
    p.add_argument('--turn-step', type=float, default=None,
                   help='seconds from one turn to the next, instead of '
                        'the clock')
    p.add_argument('--paths', default=','.join(DEFAULT_PATHS),
                   help='comma list of %s' % ', '.join(PATHS))
    p.add_argument('--once', default=None, metavar='PATH:on|off',
                   help='run one path once, with metrics on or off')
    opts = p.parse_args(argv)
    paths = [path.strip() for path in opts.paths.split(',')]
    for path in paths:
        if path not in PATHS:
            p.error('unknown path %r: %s' % (path, ', '.join(PATHS)))
    kw = dict(per_turn=opts.per_turn, window=opts.window,
              step=opts.turn_step)
    if opts.once:
        path, _, state = opts.once.partition(':')
        if path not in PATHS or state not in ('on', 'off'):
            p.error('--once takes PATH:on or PATH:off, PATH one of %s'
                    % ', '.join(PATHS))
        measure(state == 'on', opts.n, path, **kw)
        return 0
    best = {(path, metrics): 1.0 for path in paths
            for metrics in (False, True)}
    for _ in range(opts.repeat):
        for path in paths:
            for metrics in (False, True):
                best[path, metrics] = min(
                    best[path, metrics],
                    measure(metrics, opts.n, path, **kw))
    for path in paths:
        off, on = best[path, False] * 1e9, best[path, True] * 1e9
        print(json.dumps({'path': path, 'ns_per_job_without': round(off),
                          'ns_per_job_with': round(on),
                          'difference_ns': round(on - off)}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
