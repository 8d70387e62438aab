"""Smoke runs of every benchmark scenario with tiny job counts.

They prove the harness still speaks the protocol and that its count
checks pass against each server; they assert nothing about speed.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import testtools

from bench import library
from bench import loadgen
from bench import servers
from tests.gearmand import skip_without

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SMOKE_N = 200
SMOKE_DEEP_N = 2000
RUN_TIMEOUT = 120


def _geard_reason():
    try:
        servers.check_geard()
    except servers.ServerUnavailable as e:
        return str(e)
    return None


def run_loadgen(*args):
    """Run the command line in a child process; return its JSON lines."""
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.loadgen'] + list(args),
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=RUN_TIMEOUT)
    lines = [json.loads(line) for line in
             proc.stdout.decode().splitlines() if line.strip()]
    return proc.returncode, lines, proc.stderr.decode()


@pytest.mark.slow
class SmokeMixin(object):

    server = None

    def test_every_scenario(self):
        code, lines, err = run_loadgen(
            '--scenario', 'all', '--servers', self.server,
            '--n', str(SMOKE_N), '--deep-n', str(SMOKE_DEEP_N),
            '--probes', '3', '--stall-timeout', '20', '--timeout', '60',
            '--reg-workers', '2', '--reg-functions', str(SMOKE_N // 2))
        runs = [r for r in lines if not r.get('summary')]
        summaries = [r for r in lines if r.get('summary')]
        self.assertEqual(0, code, (lines, err))
        self.assertEqual(list(loadgen.SCENARIOS),
                         [r['scenario'] for r in runs])
        for record in runs:
            self.assertEqual(self.server, record['server'])
            self.assertIs(True, record.get('verified'), record)
            expected_n = (SMOKE_DEEP_N if record['scenario'] == 'deepqueue'
                          else SMOKE_N)
            self.assertEqual(expected_n, record['n'])
            self.assertGreater(record['jobs_per_sec'], 0)
            self.assertIsNotNone(record['server_cpu_us_per_job'])
            self.assertGreater(record['server_rss_bytes'], 0)
        by_name = {r['scenario']: r for r in runs}
        for scenario in ('pipeline', 'roundtrip'):
            self.assertIn('latency_p99_us', by_name[scenario])
        for scenario in ('registration', 'registration-flood'):
            reg = by_name[scenario]
            self.assertEqual(2, reg['reg_workers'])
            for phase in ('register', 'reset', 'reregister'):
                self.assertGreater(reg['%s_seconds' % phase], 0)
            self.assertGreater(reg['rt_idle_samples'], 0)
        deep = by_name['deepqueue']
        for key in ('enqueue_rate_first10', 'enqueue_rate_last10',
                    'rss_delta_per_job_bytes', 'grab_us_shallow',
                    'grab_us_deep'):
            self.assertIsNotNone(deep.get(key), key)
        self.assertEqual(list(loadgen.SCENARIOS),
                         [s['scenario'] for s in summaries])
        for summary in summaries:
            self.assertEqual(1, summary['servers'][self.server]['runs'])

    def test_library_load(self):
        code, lines, err = run_loadgen(
            '--scenario', 'all', '--servers', self.server,
            '--load', 'library', '--n', str(SMOKE_N),
            '--stall-timeout', '20', '--timeout', '60')
        self.assertEqual(0, code, (lines, err))
        runs = [r for r in lines
                if not r.get('summary') and not r.get('skipped')]
        skipped = [r for r in lines if r.get('skipped')]
        summaries = [r for r in lines if r.get('summary')]
        self.assertEqual(list(library.SCENARIOS),
                         [r['scenario'] for r in runs])
        self.assertEqual([(s, 'library') for s in loadgen.SCENARIOS
                          if s not in library.SCENARIOS],
                         [(r['scenario'], r['load']) for r in skipped])
        for record in runs:
            self.assertEqual('library', record['load'])
            self.assertIs(True, record.get('verified'), record)
            self.assertEqual(SMOKE_N, record['n'])
            self.assertGreater(record['client_cpu_us_per_job'], 0)
        self.assertEqual(list(library.SCENARIOS),
                         [s['scenario'] for s in summaries])
        key = '%s:library' % self.server
        for summary in summaries:
            self.assertEqual([key], list(summary['servers']))
            self.assertEqual(1, summary['servers'][key]['runs'])


@pytest.mark.interop
class TestSmokeGearmand(SmokeMixin, testtools.TestCase):

    server = 'gearmand'

    def setUp(self):
        super(TestSmokeGearmand, self).setUp()
        skip_without(self, 'gearmand')


class TestSmokeGeard(SmokeMixin, testtools.TestCase):

    server = 'geard'

    def setUp(self):
        super(TestSmokeGeard, self).setUp()
        reason = _geard_reason()
        if reason:
            self.skipTest(reason)


class TestSummary(testtools.TestCase):
    """The summary line: medians per server and ratios to gearmand."""

    def test_medians_and_ratios(self):
        records = [
            {'server': 'geard', 'verified': True, 'jobs_per_sec': 10.0,
             'server_cpu_us_per_job': 4.0},
            {'server': 'geard', 'verified': True, 'jobs_per_sec': 30.0,
             'server_cpu_us_per_job': 8.0},
            {'server': 'geard', 'verified': False, 'jobs_per_sec': 999.0},
            {'server': 'gearmand', 'verified': True, 'jobs_per_sec': 40.0,
             'server_cpu_us_per_job': 3.0},
        ]
        summary = loadgen.summarize('drain', records, ['geard', 'gearmand'])
        self.assertEqual(20.0, summary['servers']['geard']['jobs_per_sec'])
        self.assertEqual(2, summary['servers']['geard']['runs'])
        ratios = summary['ratios']['geard/gearmand']
        self.assertEqual(0.5, ratios['jobs_per_sec'])
        self.assertEqual(2.0, ratios['server_cpu_us_per_job'])

    def test_library_to_raw_ratios(self):
        records = [
            {'server': 'geard', 'load': 'raw', 'verified': True,
             'jobs_per_sec': 40.0, 'client_cpu_us_per_job': 2.0},
            {'server': 'geard', 'load': 'library', 'verified': True,
             'jobs_per_sec': 10.0, 'client_cpu_us_per_job': 30.0},
            {'server': 'gearmand', 'load': 'raw', 'verified': True,
             'jobs_per_sec': 50.0, 'client_cpu_us_per_job': 2.0},
            {'server': 'gearmand', 'load': 'library', 'verified': True,
             'jobs_per_sec': 20.0, 'client_cpu_us_per_job': 25.0},
        ]
        summary = loadgen.summarize('drain', records, ['geard', 'gearmand'],
                                    loadgen.LOADS)
        self.assertEqual(['geard', 'gearmand', 'geard:library',
                          'gearmand:library'], list(summary['servers']))
        ratios = summary['ratios']
        self.assertEqual(0.8, ratios['geard/gearmand']['jobs_per_sec'])
        self.assertEqual(
            0.5, ratios['geard:library/gearmand:library']['jobs_per_sec'])
        self.assertEqual(0.25, ratios['geard:library/raw']['jobs_per_sec'])
        self.assertEqual(
            15.0, ratios['geard:library/raw']['client_cpu_us_per_job'])
        self.assertEqual(
            12.5, ratios['gearmand:library/raw']['client_cpu_us_per_job'])

    def test_paired_ratios_to_a_chosen_baseline(self):
        records = [
            {'server': name, 'round': round_no, 'verified': True,
             'server_cpu_us_per_job': cpu}
            for round_no, name, cpu in (
                (1, 'geard', 2.0), (1, 'geard-http', 2.2),
                (2, 'geard', 4.0), (2, 'geard-http', 4.0),
                (3, 'geard', 3.0), (3, 'geard-http', 3.3))]
        summary = loadgen.summarize('drain', records,
                                    ['geard', 'geard-http'],
                                    baseline='geard')
        # Each round's ratio (1.1, 1.0, 1.1), not the medians' (3.3/3).
        self.assertEqual({'rounds': 3, 'median': 1.1, 'mean': 1.067},
                         summary['paired_cpu_ratios']['geard-http/geard'])
        self.assertEqual(
            1.1, summary['ratios']['geard-http/geard']
            ['server_cpu_us_per_job'])

    def test_no_baseline_no_ratios(self):
        records = [{'server': 'geard', 'verified': True,
                    'jobs_per_sec': 5.0}]
        summary = loadgen.summarize('drain', records, ['geard'])
        self.assertEqual({}, summary['ratios'])

    def test_unavailable_server_is_reported(self):
        self.assertRaises(servers.ServerUnavailable, servers.make_server,
                          'gear016', None)
        self.assertRaises(servers.ServerUnavailable, servers.make_server,
                          'no-such-server')


class TestMetricsCost(testtools.TestCase):

    def test_both_paths_are_measured(self):
        reason = _geard_reason()
        if reason:
            self.skipTest(reason)
        proc = subprocess.run(
            [sys.executable, '-m', 'bench.metrics_cost', '--n', '200',
             '--repeat', '1'],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=RUN_TIMEOUT)
        self.assertEqual(0, proc.returncode, proc.stderr)
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        self.assertEqual(['submit', 'drain'], [r['path'] for r in rows])
        for row in rows:
            self.assertGreater(row['ns_per_job_without'], 0)
            self.assertGreater(row['ns_per_job_with'], 0)

    def test_geard_http_with_a_scraper(self):
        reason = _geard_reason()
        if reason:
            self.skipTest(reason)
        code, lines, err = run_loadgen(
            '--scenario', 'roundtrip', '--servers', 'geard-http', '--n', '50',
            '--scrape-interval', '0.05')
        self.assertEqual(0, code, err)
        (record,) = [r for r in lines if not r.get('summary')]
        if 'skipped' in record:
            self.skipTest(record['skipped'])
        self.assertTrue(record['verified'], record)
        self.assertEqual(0, record['scraper']['errors'])
        self.assertGreater(record['scraper']['scrapes'], 0)


class TestInstructions(testtools.TestCase):
    """bench/instructions.py: the requests it counts really happen."""

    def test_every_path_does_its_requests(self):
        from bench import instructions
        # (jobs the server holds, functions of the measured worker)
        self.assertEqual((100, 0), instructions.run('submit', 100))
        self.assertEqual((instructions.SIZE - 50, 1),
                         instructions.run('drain', 50))
        self.assertEqual((0, 300), instructions.run('can-do', 300))
        self.assertEqual((0, 300), instructions.run('can-do-new', 300))

    @pytest.mark.slow
    def test_counts_under_valgrind(self):
        if shutil.which('valgrind') is None:
            self.skipTest('valgrind is not installed')
        proc = subprocess.run(
            [sys.executable, '-m', 'bench.instructions', '--paths', 'can-do',
             '--small', '200', '--large', '1200'],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=600)
        self.assertEqual(0, proc.returncode, proc.stderr)
        (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
        self.assertEqual('can-do', row['path'])
        # A registration through the framing and the core: thousands of
        # instructions, not none and not a whole server start.
        self.assertGreater(row['instructions_per_request'], 1000)
        self.assertLess(row['instructions_per_request'], 100000)
