"""/metrics scraped from a live server under load, checked against what
the test did: every counter, every histogram count."""

import json
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest
import testtools

import gear
from gear.server import exposition
from tests.functional.metrics_util import (
    WAIT, MetricsServer, client, parse_metrics, value, worker)
from tests.functional.test_geard import Geard
from tests.util import child_env, free_port, waiter

wait_for = waiter(WAIT, 0.02)

PRIORITIES = ((gear.PRECEDENCE_HIGH, 'high'),
              (gear.PRECEDENCE_NORMAL, 'normal'),
              (gear.PRECEDENCE_LOW, 'low'))


def outcome(number):
    """How the workers finish job ``number``."""
    if number % 10 == 3:
        return 'failed'
    if number % 10 == 7:
        return 'exception'
    return 'completed'


class MetricsTestCase(testtools.TestCase):

    def setUp(self):
        super(MetricsTestCase, self).setUp()
        missing = exposition.available()
        if missing:
            self.skipTest(missing)

    def serve(self, **server_kwargs):
        fixture = MetricsServer()
        fixture.server_kwargs = server_kwargs
        return self.useFixture(fixture)

    def start_workers(self, port, count, functions):
        stop = threading.Event()
        threads = []
        for i in range(count):
            w = worker(port, 'metrics-worker-%d' % i, *functions)
            self.addCleanup(w.shutdown)

            def loop(w=w):
                while not stop.is_set():
                    try:
                        job = w.getJob()
                    except gear.InterruptedError:
                        return
                    number = int(job.unique.split(b'-')[1])
                    kind = outcome(number)
                    if kind == 'failed':
                        job.sendWorkFail()
                    elif kind == 'exception':
                        job.sendWorkException(b'boom')
                    else:
                        job.sendWorkComplete(b'done')
            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            threads.append((w, thread))

        def stop_all():
            stop.set()
            for w, thread in threads:
                w.stopWaitingForJobs()
                thread.join(WAIT)
        self.addCleanup(stop_all)

    def test_counters_match_the_traffic(self):
        srv = self.serve()
        port = srv.server.port
        functions = ('metrics-a', 'metrics-b')
        self.start_workers(port, 2, functions)

        # Scrape all the time the jobs flow; every scrape must parse.
        scrapes = []
        errors = []
        done = threading.Event()

        def scraper():
            while not done.is_set():
                try:
                    scrapes.append(srv.scrape())
                except Exception as e:  # reported below
                    errors.append(e)
        thread = threading.Thread(target=scraper, daemon=True)
        thread.start()
        self.addCleanup(thread.join, WAIT)
        self.addCleanup(done.set)

        c = client(port)
        self.addCleanup(c.shutdown)
        n = 240
        expected = {}
        for number in range(n):
            function = functions[number % 4 == 0]
            precedence, priority = PRIORITIES[number % 3]
            job = gear.Job(function, b'payload',
                           unique=b'job-%d' % number)
            c.submitJob(job, background=True, precedence=precedence)
            key = (function, priority)
            expected[key] = expected.get(key, 0) + 1
            key = (function, outcome(number))
            expected[key] = expected.get(key, 0) + 1

        def finished():
            samples = srv.scrape()
            total = sum(value(samples, 'gearman_jobs_%s_total' % kind,
                              default=0, function=f)
                        for f in functions
                        for kind in ('completed', 'failed', 'exception'))
            return samples if total == n else None
        samples = wait_for(finished, message='every job to finish')
        done.set()
        thread.join(WAIT)
        self.assertEqual([], errors)
        self.assertGreater(len(scrapes), 0)

        for f in functions:
            per_function = 0
            for _, priority in PRIORITIES:
                count = expected.get((f, priority), 0)
                per_function += count
                self.assertEqual(count, value(
                    samples, 'gearman_jobs_submitted_total', function=f,
                    priority=priority))
                self.assertEqual(0, value(
                    samples, 'gearman_jobs_queued', function=f,
                    priority=priority))
            finished_here = 0
            for kind in ('completed', 'failed', 'exception'):
                count = expected.get((f, kind), 0)
                finished_here += count
                self.assertEqual(count, value(
                    samples, 'gearman_jobs_%s_total' % kind, function=f))
            self.assertEqual(per_function, finished_here)
            for histogram in ('gearman_job_queue_wait_seconds',
                              'gearman_job_run_seconds'):
                self.assertEqual(per_function, value(
                    samples, histogram + '_count', function=f))
                self.assertEqual(per_function, value(
                    samples, histogram + '_bucket', function=f, le='+Inf'))
            for kind in ('requeued', 'timed_out', 'retries_exhausted'):
                self.assertEqual(0, value(
                    samples, 'gearman_jobs_%s_total' % kind, function=f))
            self.assertEqual(0, value(samples, 'gearman_jobs', function=f))
            self.assertEqual(0, value(samples, 'gearman_jobs_running',
                                      function=f))
            self.assertEqual(0, value(samples, 'gearman_jobs_waiting',
                                      function=f))
            self.assertEqual(2, value(samples, 'gearman_workers',
                                      function=f))
        self.assertEqual(1, value(samples, 'gearman_up'))
        self.assertEqual(2, value(samples, 'gearman_connections',
                                  role='worker'))
        self.assertEqual(1, value(samples, 'gearman_connections',
                                  role='client'))
        # Each job: a SUBMIT_JOB in, JOB_CREATED out, a GRAB in, an
        # assignment out, a final WORK_* in.
        self.assertGreaterEqual(
            value(samples, 'gearman_packets_received_total'), 3 * n)
        self.assertGreaterEqual(
            value(samples, 'gearman_packets_sent_total'), 2 * n)
        self.assertGreater(value(samples, 'gearman_received_bytes_total'),
                           n * len(b'payload'))
        self.assertGreater(value(samples, 'gearman_sent_bytes_total'), 0)

        status = srv.status()
        self.assertEqual(n, status['totals']['done'])
        self.assertEqual(sorted(functions),
                         [f['name'] for f in status['functions']])

    def test_histograms_beyond_the_budget_are_shared(self):
        srv = self.useFixture(MetricsServer(histogram_functions=2))
        port = srv.server.port
        names = ('budget-a', 'budget-b', 'budget-c', 'budget-d')
        self.start_workers(port, 1, names)
        c = client(port)
        self.addCleanup(c.shutdown)
        submitted = iter(range(1000))

        def run(functions, jobs_each, total):
            for f in functions:
                for _ in range(jobs_each):
                    c.submitJob(gear.Job(f, b'x', unique=b'job-%d'
                                         % next(submitted)),
                                background=True)
            wait_for(lambda: srv.status()['totals']['done'] == total,
                     message='%d jobs to finish' % total)
            return srv.scrape()

        def runs(samples, function):
            return value(samples, 'gearman_job_run_seconds_count',
                         default=None, function=function)

        # The first two functions a scrape finds with jobs keep their
        # own histograms for good.
        samples = run(names[2:], 3, 6)
        self.assertEqual([3, 3], [runs(samples, f) for f in names[2:]])
        self.assertIsNone(runs(samples, exposition.OTHER_FUNCTIONS))

        samples = run(names[:2], 2, 10)
        self.assertEqual([None, None, 3, 3],
                         [runs(samples, f) for f in names])
        self.assertEqual(4, runs(samples, exposition.OTHER_FUNCTIONS))
        self.assertEqual(4, value(
            samples, 'gearman_job_queue_wait_seconds_bucket',
            function=exposition.OTHER_FUNCTIONS, le='+Inf'))
        # Counters stay per function.
        for f in names[:2]:
            finished = sum(value(samples, 'gearman_jobs_%s_total' % kind,
                                 function=f)
                           for kind in ('completed', 'failed', 'exception'))
            self.assertEqual(2, finished)

    def test_queued_jobs_by_priority_and_their_age(self):
        srv = self.serve()
        c = client(srv.server.port)
        self.addCleanup(c.shutdown)
        for number in range(6):
            precedence, _ = PRIORITIES[number % 3]
            c.submitJob(gear.Job(b'nobody-runs-this', b'x',
                                 unique=b'q-%d' % number),
                        background=True, precedence=precedence)
        samples = srv.scrape()
        for _, priority in PRIORITIES:
            self.assertEqual(2, value(samples, 'gearman_jobs_queued',
                                      function='nobody-runs-this',
                                      priority=priority))
        self.assertEqual(6, value(samples, 'gearman_jobs',
                                  function='nobody-runs-this'))
        self.assertEqual(6, value(samples, 'gearman_jobs_waiting',
                                  function='nobody-runs-this'))
        self.assertEqual(0, value(samples, 'gearman_workers',
                                  function='nobody-runs-this'))
        first = value(samples, 'gearman_queue_oldest_age_seconds',
                      function='nobody-runs-this')
        self.assertGreaterEqual(first, 0.0)

        def older():
            age = value(srv.scrape(), 'gearman_queue_oldest_age_seconds',
                        default=0.0, function='nobody-runs-this')
            return age > first + 0.05
        wait_for(older, message='the oldest job to age')
        oldest = srv.status()['oldest']
        self.assertEqual({'high', 'normal', 'low'},
                         {j['priority'] for j in oldest})

    def test_statsd_reports_as_before_next_to_the_metrics(self):
        collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(collector.close)
        collector.bind(('127.0.0.1', 0))
        collector.settimeout(WAIT)
        srv = self.serve(statsd_host='127.0.0.1',
                         statsd_port=collector.getsockname()[1],
                         statsd_prefix='gearman')
        c = client(srv.server.port)
        self.addCleanup(c.shutdown)
        c.submitJob(gear.Job(b'both', b'x', unique=b'both-0'),
                    background=True)
        # Each recv is bounded by the socket timeout.
        wanted = {'gearman.queue.total:1|g', 'gearman.packet.SUBMIT_JOB_BG'}
        while wanted:
            for line in collector.recv(4096).decode().split('\n'):
                wanted.discard(line)
                wanted.discard(line.split(':')[0])
        self.assertEqual(1, value(srv.scrape(), 'gearman_jobs',
                                  function='both'))

    def test_timeouts_requeues_and_retry_limit(self):
        srv = self.serve(job_retries=1)
        port = srv.server.port
        c = client(port)
        self.addCleanup(c.shutdown)

        # A worker that overruns its CAN_DO_TIMEOUT: the job is requeued
        # and another worker completes it.
        slow = gear.Worker('slow')
        slow.addServer('127.0.0.1', port)
        slow.waitForServer(WAIT)
        self.addCleanup(slow.shutdown)
        slow.registerFunction('timed', timeout=1000)
        c.submitJob(gear.Job(b'timed', b'x', unique=b'timed-0'),
                    background=True)
        slow.getJob()
        samples = wait_for(
            lambda: srv.scrape_when('gearman_jobs_timed_out_total',
                                    function='timed'),
            message='the CAN_DO_TIMEOUT to expire')
        self.assertEqual(1, value(samples, 'gearman_jobs_requeued_total',
                                  function='timed'))
        fast = worker(port, 'fast', 'timed')
        self.addCleanup(fast.shutdown)
        fast.getJob().sendWorkComplete(b'')
        samples = wait_for(
            lambda: srv.scrape_when('gearman_jobs_completed_total',
                                    function='timed'),
            message='the requeued job to complete')
        # Both histograms observe a job when a worker finishes it.
        self.assertEqual(1, value(
            samples, 'gearman_job_queue_wait_seconds_count',
            function='timed'))
        self.assertEqual(1, value(samples, 'gearman_job_run_seconds_count',
                                  function='timed'))

        # Two workers die holding the same job: one requeue is allowed,
        # the second loss fails it.
        c.submitJob(gear.Job(b'doomed', b'x', unique=b'doomed-0'),
                    background=True)
        for attempt in range(2):
            w = worker(port, 'dying-%d' % attempt, 'doomed')
            w.getJob()
            w.shutdown()
        samples = wait_for(
            lambda: srv.scrape_when('gearman_jobs_retries_exhausted_total',
                                    function='doomed'),
            message='the retry limit to fail the job')
        self.assertEqual(1, value(samples, 'gearman_jobs_requeued_total',
                                  function='doomed'))
        self.assertEqual(0, value(samples, 'gearman_jobs',
                                  function='doomed'))
        self.assertEqual(0, value(samples, 'gearman_job_run_seconds_count',
                                  function='doomed'))


class GeardHTTPTestCase(testtools.TestCase):
    """geard --http-port as operators run it, and gear-admin --http."""

    def setUp(self):
        super(GeardHTTPTestCase, self).setUp()
        missing = exposition.available()
        if missing:
            self.skipTest(missing)

    @pytest.mark.slow
    def test_geard_serves_metrics_and_gear_admin_reads_them(self):
        http_port = free_port()
        geard = self.useFixture(Geard('--http-port', str(http_port),
                                      '--metrics-histogram-functions', '0'))
        geard.wait_ready()
        geard.wait_line(r'Metrics at http://127\.0\.0\.1:%d/metrics'
                        % http_port)
        url = 'http://127.0.0.1:%d/' % http_port
        c = client(geard.port)
        self.addCleanup(c.shutdown)
        for number in range(5):
            c.submitJob(gear.Job(b'geard-fn', b'x',
                                 unique=b'g-%d' % number),
                        background=True)
        with urllib.request.urlopen(url + 'metrics', timeout=WAIT) as r:
            samples = parse_metrics(r.read().decode('utf8'))
        self.assertEqual(5, value(samples, 'gearman_jobs_submitted_total',
                                  function='geard-fn', priority='normal'))
        self.assertEqual(5, value(samples, 'gearman_jobs',
                                  function='geard-fn'))
        self.assertEqual(1, value(samples, 'gearman_up'))
        self.assertIn('gearman_version_info', {k[0] for k in samples})
        # No function has histograms of its own: the shared pair is there.
        self.assertEqual(0, value(samples, 'gearman_job_run_seconds_count',
                                  function=exposition.OTHER_FUNCTIONS))
        self.assertEqual(None, value(samples,
                                     'gearman_job_run_seconds_count',
                                     default=None, function='geard-fn'))

        proc = subprocess.run(
            [sys.executable, '-m', 'gear.cmd.admin', '--http', url,
             '--json', 'status'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env(), timeout=WAIT)
        self.assertEqual(0, proc.returncode, proc.stderr)
        rows = json.loads(proc.stdout)
        self.assertIn({'function': 'geard-fn', 'total': 5, 'running': 0,
                       'workers': 0}, rows)
        proc = subprocess.run(
            [sys.executable, '-m', 'gear.cmd.admin', '--http', url, 'jobs'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env(), timeout=WAIT)
        self.assertEqual(2, proc.returncode)
        self.assertIn(b'--http answers status, priority-status, workers',
                      proc.stderr)

    def test_geard_says_when_prometheus_client_is_missing(self):
        code = ("import sys; sys.modules['prometheus_client'] = None; "
                "from gear.cmd import geard; "
                "sys.exit(geard.main(['-d', '-p', '0', '--http-port', "
                "'0']))")
        proc = subprocess.run([sys.executable, '-c', code],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=child_env(), timeout=WAIT)
        self.assertEqual(1, proc.returncode)
        self.assertIn(b"--http-port: the prometheus_client package is "
                      b"needed for /metrics (pip install 'gear[metrics]')",
                      proc.stderr)

    @pytest.mark.slow
    def test_geard_reports_a_busy_http_port(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(('127.0.0.1', 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        geard = self.useFixture(Geard('--http-port', str(port)))
        self.assertEqual(1, geard.wait_exit())
        self.assertIn('cannot serve HTTP on 127.0.0.1 port %d' % port,
                      geard.stderr())
