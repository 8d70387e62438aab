"""gear.aio against the thread API, in one process and one event loop.

Two comparisons, each against every server given, with the same jobs
(uniques and payloads as ``bench.library``):

``submit``
    background submissions per second: ``AsyncClient.submit_many`` over
    one connection against ``gear.Client.submitJob`` from the submitting
    threads of ``bench.library.LibrarySubmitter``;
``work``
    jobs per second completed from a full queue: ``AsyncWorker`` with
    ``--concurrency`` slots against ``bench.library.LibraryWorker`` with
    as many ``getJob`` threads.

Each server is a fresh child process (``bench.servers``), so the server
does not share this process's interpreter lock.  Prints one JSON line
per measurement, then a table::

    python3 -m bench.aio --servers geard,gearmand --n 20000
"""

import argparse
import array
import asyncio
import json
import os
import statistics
import sys
import time

if __package__ in (None, ''):  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))

from bench import library  # noqa: E402
from bench import servers as servers_mod  # noqa: E402
from gear import aio  # noqa: E402

DEFAULT_N = 20000
PAYLOAD = b'x' * 100
STALL_TIMEOUT = 60.0
WINDOW = 512


class BenchError(Exception):
    """A measurement did not verify (its message says how)."""


def _spec(server, fn, tag, count):
    return {'fn': fn, 'tag': tag, 'first': 0, 'count': count,
            'payload': PAYLOAD, 'foreground': False,
            'stall_timeout': STALL_TIMEOUT, 'window': WINDOW,
            'host': server.host, 'port': server.port}


def _jobs(fn, tag, count):
    return ((fn, PAYLOAD, tag + b'%09d' % j) for j in range(count))


async def _queued(client, fn):
    rows = {row[0]: row for row in await client.status()}
    return rows.get(fn.decode(), (fn, 0))[1]


async def _aio_client(server):
    client = aio.AsyncClient('bench-aio')
    client.add_server(server.host, server.port)
    await client.wait_for_server(STALL_TIMEOUT)
    return client


# -- submissions -------------------------------------------------------------

def thread_submit(server, n):
    fn = b'bench-thread-submit'
    submitter = library.LibrarySubmitter(_spec(server, fn, b'ts', n))
    try:
        start = time.monotonic()
        cpu = time.process_time()
        submitter.run()
        cpu = time.process_time() - cpu
        elapsed = submitter.t_end - start
        created = len(set(submitter.handles))
    finally:
        submitter.close()
    if created != n:
        raise BenchError('thread submitter: %d distinct handles of %d'
                         % (created, n))
    return elapsed, cpu


async def aio_submit(server, n):
    fn = b'bench-aio-submit'
    client = await _aio_client(server)
    try:
        start = time.monotonic()
        cpu = time.process_time()
        jobs = await client.submit_many(_jobs(fn, b'as', n), window=WINDOW)
        elapsed = time.monotonic() - start
        cpu = time.process_time() - cpu
        distinct = len({job.handle for job in jobs})
        queued = await _queued(client, fn)
    finally:
        await client.close()
    if distinct != n or queued != n:
        raise BenchError('submit_many: %d distinct handles, %d queued, of'
                         ' %d' % (distinct, queued, n))
    return elapsed, cpu


# -- workers ------------------------------------------------------------------

async def _fill(server, fn, tag, n):
    client = await _aio_client(server)
    try:
        await client.submit_many(_jobs(fn, tag, n), window=WINDOW)
        if await _queued(client, fn) != n:
            raise BenchError('%s: the queue holds fewer than %d jobs'
                             % (fn, n))
    finally:
        await client.close()


def thread_work(server, n, concurrency):
    fn = b'bench-thread-work'
    asyncio.run(_fill(server, fn, b'tw', n))
    spec = {'fn': fn, 'slot': 0, 'target': n, 'grab_window': concurrency,
            'stall_timeout': STALL_TIMEOUT, 'host': server.host,
            'port': server.port}
    worker = library.LibraryWorker(spec, array.array('q', [0]))
    try:
        start = time.monotonic()
        cpu = time.process_time()
        worker.run()
        cpu = time.process_time() - cpu
        elapsed = worker.t_last - start
        done = len(set(worker.uniques))
    finally:
        worker.close()
    if done != n:
        raise BenchError('thread worker: %d distinct jobs of %d'
                         % (done, n))
    return elapsed, cpu


async def aio_work(server, n, concurrency):
    fn = b'bench-aio-work'
    await _fill(server, fn, b'aw', n)
    uniques = set()
    finished = asyncio.Event()
    last = [0.0]

    async def complete(job):
        uniques.add(job.unique)
        if len(uniques) == n:
            last[0] = time.monotonic()
            finished.set()
        return b''

    worker = aio.AsyncWorker('bench-aio-worker', concurrency=concurrency)
    worker.register(fn, complete)
    worker.add_server(server.host, server.port)
    await worker.wait_for_server(STALL_TIMEOUT)
    start = time.monotonic()
    cpu = time.process_time()
    run = asyncio.create_task(worker.run())
    seen, last_change = -1, time.monotonic()
    try:
        while not finished.is_set():
            try:
                await asyncio.wait_for(finished.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            if len(uniques) != seen:
                seen, last_change = len(uniques), time.monotonic()
            elif time.monotonic() - last_change > STALL_TIMEOUT:
                raise BenchError('AsyncWorker: no progress for %.0f s at'
                                 ' %d/%d' % (STALL_TIMEOUT, seen, n))
        cpu = time.process_time() - cpu
    finally:
        await worker.stop(timeout=STALL_TIMEOUT)
        await run
    return last[0] - start, cpu


# -- driver -------------------------------------------------------------------

def measure(server, n, concurrency, round_no=1):
    """Yield one result dictionary per measurement against ``server``."""
    runs = (
        ('submit', 'thread', lambda: thread_submit(server, n)),
        ('submit', 'aio', lambda: asyncio.run(aio_submit(server, n))),
        ('work', 'thread', lambda: thread_work(server, n, concurrency)),
        ('work', 'aio',
         lambda: asyncio.run(aio_work(server, n, concurrency))),
    )
    for scenario, api, run in runs:
        elapsed, cpu = run()
        yield {'server': server.name, 'scenario': scenario, 'api': api,
               'round': round_no, 'n': n, 'concurrency': concurrency,
               'seconds': round(elapsed, 4),
               'jobs_per_s': round(n / elapsed, 1),
               'client_cpu_us_per_job': round(cpu * 1e6 / n, 1)}


def _median(results, key, field):
    values = [r[field] for r in results
              if (r['server'], r['scenario'], r['api']) == key]
    return statistics.median(values) if values else None


def table(results):
    """Medians over the rounds: jobs/s and client CPU per job."""
    lines = ['%-9s %-7s %9s %9s %6s %11s %11s %6s' % (
        'server', 'scenario', 'thread/s', 'aio/s', 'ratio',
        'thread us/j', 'aio us/j', 'ratio')]
    for server, scenario in sorted({(r['server'], r['scenario'])
                                    for r in results}):
        row = []
        for field in ('jobs_per_s', 'client_cpu_us_per_job'):
            thread = _median(results, (server, scenario, 'thread'), field)
            fast = _median(results, (server, scenario, 'aio'), field)
            if not thread or not fast:
                break
            ratio = fast / thread if field == 'jobs_per_s' \
                else thread / fast
            row.append('%9.0f %9.0f %5.1fx' % (thread, fast, ratio))
        if len(row) == 2:
            lines.append('%-9s %-7s %s %s' % (server, scenario, *row))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--servers', default='geard,gearmand',
                        help='comma-separated: geard, gearmand')
    parser.add_argument('--n', type=int, default=DEFAULT_N,
                        help='jobs per measurement (default %(default)s)')
    parser.add_argument('--concurrency', type=int, default=8,
                        help='jobs at once per worker (default '
                        '%(default)s)')
    parser.add_argument('--rounds', type=int, default=1,
                        help='repeat every measurement; the table shows'
                        ' medians (default %(default)s)')
    opts = parser.parse_args(argv)
    results = []
    failed = False
    names = [name.strip() for name in opts.servers.split(',')]
    skipped = set()
    # Rounds alternate between the servers, so that a busy moment of the
    # machine does not fall on one server's runs only.
    for round_no in range(1, opts.rounds + 1):
        for name in names:
            if name in skipped:
                continue
            try:
                server = servers_mod.make_server(name)
            except servers_mod.ServerUnavailable as e:
                print(json.dumps({'server': name, 'skipped': str(e)}),
                      flush=True)
                skipped.add(name)
                continue
            with server:
                try:
                    for result in measure(server, opts.n,
                                          opts.concurrency, round_no):
                        results.append(result)
                        print(json.dumps(result), flush=True)
                except (BenchError, library.LoadError) as e:
                    print(json.dumps({'server': name, 'error': str(e)}),
                          flush=True)
                    failed = True
    sys.stdout.flush()
    print(table(results), file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
