"""What the server's metrics cost per job, measured without sockets.

The load generator measures whole processes, whose CPU time on a shared
machine varies by more than the few hundred nanoseconds the metrics
cost.  This drives the server's own packet handlers in one process,
with and without ``metrics=True``, and reports the best of several runs
of CPU time per job for:

* ``submit``: SUBMIT_JOB_BG of a new job (JOB_CREATED queued);
* ``drain``: GRAB_JOB_UNIQ of a queued job and its WORK_COMPLETE;
* ``pipeline``: a foreground SUBMIT_JOB, its GRAB_JOB_UNIQ and its
  WORK_COMPLETE, with a window of jobs queued ahead, as clients and
  workers at full speed keep the server.  Jobs are born and freed while
  others run, so what the metrics keep alive after a job ends (and for
  how long) shows here: a job's memory is reused hot when it is freed
  at once.

Between every ``--per-turn`` jobs, the loop's start-of-turn work is
done as the server's loop does it (the turn's clock read; counting the
ended jobs when enough are pending), so the batch counting is timed
where it happens.

Run it from the repository root::

    python3 -m bench.metrics_cost --n 30000 --repeat 7
"""

import argparse
import gc
import json
import socket
import sys
import time

from gear import constants as C
from gear.server import metrics as metrics_mod
from gear.server.connection import ServerConnection
from gear.server.server import Server


def _turn_function(server):
    """The metrics part of the start of a loop turn (server.py
    ``_pollTurns``): the turn's time, the ended jobs counted when their
    batch is full or due, and a mark when jobs were created."""
    recorder = server.metrics
    if recorder is None:
        return lambda: None
    monotonic = time.monotonic
    ended = recorder.ended
    queue = server.queue

    def turn():
        recorder.now = now = monotonic()
        if ended and (now >= recorder.flush_due or
                      len(ended) >= metrics_mod.FLUSH_AT):
            recorder.flush()
        if queue.max_handle != recorder.marked and (
                now - recorder._mark_t[-1] >= metrics_mod.MARK_RESOLUTION or
                now >= recorder._next_sweep):
            recorder.mark(queue.max_handle)
    return turn


def measure(metrics, n, per_turn=8, window=400):
    """{path: seconds of CPU per job} for one fresh server."""
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
        turn = _turn_function(server)
        with server.lock:
            handlers[C.CAN_DO](worker, b'fn')
            grab = handlers[C.GRAB_JOB_UNIQ]
            complete = handlers[C.WORK_COMPLETE]
            related = worker.related_jobs
            out = worker.send_queue
            costs = {}
            gc.collect()
            gc.disable()
            try:
                submit = handlers[C.SUBMIT_JOB_BG]
                t0 = time.process_time()
                for payload in payloads:
                    submit(client, payload)
                costs['submit'] = time.process_time() - t0
                client.send_queue.clear()

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
                costs['drain'] = time.process_time() - t0
                del server._dirty[:]

                submit = handlers[C.SUBMIT_JOB]
                replies = client.send_queue
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
                    complete(worker, next(reversed(related)) + b'\x00done')
                    out.clear()
                if server.metrics is not None:
                    server.metrics.flush()
                costs['pipeline'] = time.process_time() - t0
            finally:
                gc.enable()
            del server._dirty[:]
        return {path: cost / n for path, cost in costs.items()}
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
                   help='pipeline: jobs submitted ahead of the workers')
    opts = p.parse_args(argv)
    best = {False: {}, True: {}}
    for _ in range(opts.repeat):
        for metrics in (False, True):
            costs = measure(metrics, opts.n, opts.per_turn, opts.window)
            for path, cost in costs.items():
                best[metrics][path] = min(best[metrics].get(path, 1.0),
                                          cost)
    for path in ('submit', 'drain', 'pipeline'):
        off, on = best[False][path] * 1e9, best[True][path] * 1e9
        print(json.dumps({'path': path, 'ns_per_job_without': round(off),
                          'ns_per_job_with': round(on),
                          'difference_ns': round(on - off)}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
