"""A smoke run of bench.aio with a few jobs: the harness works and its
counts verify.  Nothing here is about speed."""

import json
import subprocess
import sys

import pytest

from tests.util import REPO, child_env


@pytest.mark.slow
def test_bench_aio_smoke():
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.aio', '--servers', 'geard,gearmand',
         '--n', '300', '--concurrency', '2'],
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    measured = [r for r in lines if 'jobs_per_s' in r]
    assert {(r['scenario'], r['api']) for r in measured} == {
        ('submit', 'thread'), ('submit', 'aio'), ('work', 'thread'),
        ('work', 'aio')}
    assert all(r['n'] == 300 and r['jobs_per_s'] > 0 for r in measured)
    assert not [r for r in lines if 'error' in r]
