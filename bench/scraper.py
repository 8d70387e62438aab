"""A Prometheus-like scraper for the benchmarks: GET /metrics in a loop.

The load generator runs one in a child process next to a ``geard-http``
server (``--scrape-interval``), so a scenario measures the server while
its HTTP side is being read.  An interval of 0 scrapes back to back (a
new connection each time, as Prometheus does after ``Connection:
close``), which is far more than any real scraper asks.

Run alone::

    python3 -m bench.scraper http://127.0.0.1:8080/metrics --interval 0
"""

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_TIMEOUT = 30.0


def scrape_once(host, port, path, timeout=10.0):
    """One GET; returns the body size (raises on a non-200 answer)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(('GET %s HTTP/1.1\r\nHost: %s\r\n'
                      'Accept: text/plain\r\n\r\n' % (path, host)
                      ).encode('ascii'))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b''.join(chunks)
    if not answer.startswith(b'HTTP/1.1 200'):
        raise RuntimeError('bad answer: %r' % answer[:80])
    return len(answer)


class _Stop(Exception):
    pass


class Scraping(object):
    """A scraper child process for the length of a ``with`` block.

    Does nothing when ``interval`` is None or the server has no HTTP
    side; afterwards :attr:`result` holds the scraper's counts (or
    None).
    """

    def __init__(self, server, interval):
        self.server = server
        self.interval = interval
        self.proc = None
        self.result = None

    def __enter__(self):
        port = getattr(self.server, 'http_port', None)
        if self.interval is None or port is None:
            return self
        url = 'http://%s:%d/metrics' % (self.server.host, port)
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'bench.scraper', url, '--interval',
             str(self.interval)], cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [],
                                    READY_TIMEOUT)
        if not ready or self.proc.stdout.readline() != b'ready\n':
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise RuntimeError('the scraper did not start')
        return self

    def __exit__(self, *exc):
        proc = self.proc
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
            lines = out.decode().splitlines()
            self.result = json.loads(lines[-1]) if lines else None
        except (subprocess.TimeoutExpired, ValueError):
            proc.kill()
            proc.wait()


def run(url, interval, stream=sys.stdout):
    """Scrape until SIGTERM or SIGINT, then print one JSON line of
    counts."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    path = parts.path or '/metrics'

    def stop(*_):
        raise _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Tells the harness that SIGTERM now ends the run with a report.
    stream.write('ready\n')
    stream.flush()
    count = errors = size = 0
    start = time.monotonic()
    try:
        while True:
            try:
                size = scrape_once(host, port, path)
                count += 1
            except OSError:
                errors += 1
                time.sleep(0.05)
            except RuntimeError:
                errors += 1
            if interval:
                time.sleep(interval)
    except _Stop:
        pass
    seconds = time.monotonic() - start
    stream.write(json.dumps({
        'scrapes': count, 'errors': errors, 'seconds': round(seconds, 3),
        'scrapes_per_sec': round(count / seconds, 1) if seconds else 0,
        'last_size': size}) + '\n')
    stream.flush()


def main(argv=None):
    p = argparse.ArgumentParser(prog='python3 -m bench.scraper',
                                description='GET /metrics in a loop.')
    p.add_argument('url')
    p.add_argument('--interval', type=float, default=0.0,
                   help='seconds between scrapes (default 0: back to '
                        'back)')
    opts = p.parse_args(argv)
    run(opts.url, opts.interval)
    return 0


if __name__ == '__main__':
    sys.exit(main())
