"""Sequential submit -> complete round trips through a job server.

One gear.Client submits a job, waits for its WORK_COMPLETE, and repeats;
one gear.Worker answers each job at once.  Prints one JSON line with the
median and 99th percentile round trip in milliseconds.

    python3 bench/roundtrip.py                  # starts its own gearmand
    python3 bench/roundtrip.py --port 4730      # uses a running server

Without TCP_NODELAY each round trip pays Nagle plus delayed ACK (tens of
milliseconds); with it, a round trip on loopback is well under 5 ms.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import gear  # noqa: E402

GEARMAND = '/usr/sbin/gearmand'


def free_port():
    sock = socket.socket()
    try:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def start_gearmand(port):
    process = subprocess.Popen(
        [GEARMAND, '--listen=127.0.0.1', '--port=%d' % port, '--threads=1',
         '--log-file=none'], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise SystemExit("gearmand did not start")


def percentile(sorted_values, fraction):
    index = min(len(sorted_values) - 1, int(round(fraction *
                                                  (len(sorted_values) - 1))))
    return sorted_values[index]


def run(port, count, warmup, size):
    client = gear.Client('bench-client')
    worker = gear.Worker('bench-worker')
    try:
        client.addServer('127.0.0.1', port)
        worker.addServer('127.0.0.1', port)
        worker.registerFunction('bench')
        client.waitForServer(15)
        worker.waitForServer(15)

        def serve():
            while True:
                try:
                    job = worker.getJob()
                except gear.InterruptedError:
                    return
                job.sendWorkComplete(job.binary_arguments)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()

        payload = b'x' * size
        samples = []
        for i in range(warmup + count):
            job = gear.Job('bench', payload)
            start = time.perf_counter()
            client.submitJob(job)
            if not job.wait(10):
                raise SystemExit("job %d did not complete" % i)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                samples.append(elapsed * 1000.0)
        samples.sort()
        return {
            'benchmark': 'roundtrip',
            'jobs': count,
            'payload_bytes': size,
            'p50_ms': round(percentile(samples, 0.50), 3),
            'p99_ms': round(percentile(samples, 0.99), 3),
            'max_ms': round(samples[-1], 3),
        }
    finally:
        worker.shutdown()
        client.shutdown()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int,
                        help="use a server already listening on this port")
    parser.add_argument('--count', type=int, default=1000)
    parser.add_argument('--warmup', type=int, default=50)
    parser.add_argument('--size', type=int, default=64,
                        help="payload bytes per job")
    args = parser.parse_args(argv)
    process = None
    port = args.port
    if port is None:
        port = free_port()
        process = start_gearmand(port)
    try:
        result = run(port, args.count, args.warmup, args.size)
    finally:
        if process is not None:
            process.kill()
            process.wait(10)
    print(json.dumps(result))


if __name__ == '__main__':
    main()
