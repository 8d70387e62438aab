"""What the server's metrics cost per job, measured without sockets.

The load generator measures whole processes, whose CPU time on a shared
machine varies by more than the few hundred nanoseconds the metrics
cost.  This drives the server's own packet handlers in one process,
with and without ``metrics=True``, and reports the best of several runs
of CPU time per job for:

* ``submit``: SUBMIT_JOB_BG of a new job (JOB_CREATED queued);
* ``drain``: GRAB_JOB_UNIQ of a queued job and its WORK_COMPLETE.

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
from gear.server.connection import ServerConnection
from gear.server.server import Server


def measure(metrics, n):
    """(submit, drain) seconds of CPU per job for one fresh server."""
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
        payloads = [b'fn\x00u%d\x00payload' % i for i in range(n)]
        with server.lock:
            handlers[C.CAN_DO](worker, b'fn')
            submit = handlers[C.SUBMIT_JOB_BG]
            grab = handlers[C.GRAB_JOB_UNIQ]
            complete = handlers[C.WORK_COMPLETE]
            related = worker.related_jobs
            out = worker.send_queue
            gc.collect()
            gc.disable()
            try:
                t0 = time.process_time()
                for payload in payloads:
                    submit(client, payload)
                t1 = time.process_time()
                client.send_queue.clear()
                t2 = time.process_time()
                for _ in range(n):
                    grab(worker, b'')
                    complete(worker, next(iter(related)) + b'\x00done')
                    out.clear()
                # The loop counts ended jobs in batches: that work is
                # part of the per-job cost.
                flush = getattr(server.metrics, 'flush', None)
                if flush is not None:
                    flush()
                t3 = time.process_time()
            finally:
                gc.enable()
            del server.core.dirty[:]
        return (t1 - t0) / n, (t3 - t2) / n
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
    opts = p.parse_args(argv)
    best = {False: [1.0, 1.0], True: [1.0, 1.0]}
    for _ in range(opts.repeat):
        for metrics in (False, True):
            submit, drain = measure(metrics, opts.n)
            best[metrics][0] = min(best[metrics][0], submit)
            best[metrics][1] = min(best[metrics][1], drain)
    for i, name in enumerate(('submit', 'drain')):
        off, on = best[False][i] * 1e9, best[True][i] * 1e9
        print(json.dumps({'path': name, 'ns_per_job_without': round(off),
                          'ns_per_job_with': round(on),
                          'difference_ns': round(on - off)}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
