"""The HTTP side under bad input: garbage, slow clients, a thousand
concurrent scrapes, and job traffic going on meanwhile."""

import resource
import selectors
import socket
import threading

import pytest
import testtools

import gear
from gear.server import exposition
from tests.functional.metrics_util import (
    HOST, WAIT, MetricsServer, client, parse_metrics, worker)
from tests.util import waiter

wait_for = waiter(WAIT, 0.02)


def exchange(port, data, timeout=WAIT):
    """Send ``data``, read until the server closes; the whole answer."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b''.join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()


def status_code(answer):
    return int(answer.split(b' ', 2)[1])


class RoundTrips(object):
    """Foreground jobs submitted one after another in a thread, each
    waited for: the job traffic that bad HTTP clients must not disturb.
    """

    def __init__(self, test, port, count):
        self.count = count
        self.done = 0
        self.error = None
        self.client = client(port)
        test.addCleanup(self.client.shutdown)
        self.worker = worker(port, 'roundtrip-worker', 'echo')
        test.addCleanup(self.worker.shutdown)

        def serve():
            while True:
                try:
                    job = self.worker.getJob()
                except gear.InterruptedError:
                    return
                job.sendWorkComplete(job.arguments)
        self._serve = threading.Thread(target=serve, daemon=True)
        self._serve.start()
        test.addCleanup(self._serve.join, WAIT)
        test.addCleanup(self.worker.stopWaitingForJobs)
        self._run = threading.Thread(target=self._submit, daemon=True)

    def start(self):
        self._run.start()
        return self

    def _submit(self):
        try:
            for number in range(self.count):
                job = gear.Job(b'echo', b'%d' % number)
                self.client.submitJob(job, timeout=WAIT)
                wait_for(lambda: job.complete, message='job %d' % number)
                if job.data != [b'%d' % number]:
                    raise AssertionError('job %d returned %r'
                                         % (number, job.data))
                self.done += 1
        except Exception as e:
            self.error = e

    def join(self):
        self._run.join(WAIT * 4)
        if self.error is not None:
            raise self.error
        return self.done


class HTTPRobustnessTestCase(testtools.TestCase):

    def setUp(self):
        super(HTTPRobustnessTestCase, self).setUp()
        missing = exposition.available()
        if missing:
            self.skipTest(missing)

    def test_bad_requests_get_errors_and_the_server_carries_on(self):
        srv = self.useFixture(MetricsServer())
        port = srv.http.port
        cases = [
            (b'\x00\x01\x02garbage\r\n\r\n', 400),
            (b'GET\r\n\r\n', 400),
            (b'GET /metrics SPDY/9\r\n\r\n', 400),
            (b'GET /\xff\xfe HTTP/1.1\r\n\r\n', 400),
            (b'POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc', 405),
            (b'DELETE / HTTP/1.1\r\n\r\n', 405),
            (b'GET /nothing-here HTTP/1.1\r\n\r\n', 404),
            (b'GET /metrics HTTP/1.1\r\nX-Long: ' + b'a' * 20000, 431),
        ]
        for request, expected in cases:
            answer = exchange(port, request)
            self.assertEqual(expected, status_code(answer), request[:40])
        # Peers that hang up early, with or without a partial request.
        for data in (b'', b'GET /met', b'\x16\x03\x01\x02\x00'):
            sock = socket.create_connection((HOST, port), timeout=WAIT)
            sock.sendall(data)
            sock.close()
        status, headers, body = srv.get('metrics')
        self.assertEqual(200, status)
        self.assertIn('text/plain', headers['Content-Type'])
        parse_metrics(body.decode('utf8'))
        head = exchange(port, b'HEAD /api/status.json HTTP/1.0\r\n\r\n')
        self.assertEqual(200, status_code(head))
        self.assertTrue(head.endswith(b'\r\n\r\n'))

    def test_slow_clients_are_dropped_without_blocking_others(self):
        srv = self.useFixture(MetricsServer(client_timeout=1.0))
        port = srv.http.port
        trickle = socket.create_connection((HOST, port), timeout=WAIT)
        self.addCleanup(trickle.close)
        trickle.sendall(b'GET /metr')
        silent = socket.create_connection((HOST, port), timeout=WAIT)
        self.addCleanup(silent.close)
        # Served while the slow ones hold their connections.
        self.assertEqual(200, srv.get('metrics')[0])
        # The slow ones are closed by the server (recv sees EOF), within
        # the test's bound rather than hanging forever.
        self.assertEqual(b'', trickle.recv(100))
        self.assertEqual(b'', silent.recv(100))

    @pytest.mark.slow
    def test_a_thousand_concurrent_scrapes_during_job_traffic(self):
        clients = 1000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 2 * clients + 200
        if soft < need:
            if hard != resource.RLIM_INFINITY and hard < need:
                self.skipTest('needs %d file descriptors, the hard limit '
                              'is %d' % (need, hard))
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE,
                            (soft, hard))
        # Above the default rate of accepts, which would make a thousand
        # scrapes take twenty seconds.
        srv = self.useFixture(MetricsServer(max_age=0.2, max_rate=500))
        traffic = RoundTrips(self, srv.server.port, 200).start()

        selector = selectors.DefaultSelector()
        self.addCleanup(selector.close)
        answers = {}
        socks = []
        for _ in range(clients):
            sock = socket.create_connection((HOST, srv.http.port),
                                            timeout=WAIT)
            socks.append(sock)
            self.addCleanup(sock.close)
        for sock in socks:
            sock.sendall(b'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n')
            sock.setblocking(False)
            answers[sock] = bytearray()
            selector.register(sock, selectors.EVENT_READ)
        open_socks = set(socks)

        def read_some():
            for key, _ in selector.select(0.5):
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                if chunk:
                    answers[key.fileobj] += chunk
                else:
                    selector.unregister(key.fileobj)
                    open_socks.discard(key.fileobj)
            return not open_socks
        wait_for(read_some, timeout=WAIT * 4,
                 message='every scrape to be answered')
        bodies = set()
        for sock, answer in answers.items():
            head, _, body = bytes(answer).partition(b'\r\n\r\n')
            self.assertEqual(200, status_code(head))
            bodies.add(body)
        for body in bodies:
            parse_metrics(body.decode('utf8'))
        self.assertEqual(200, traffic.join())
