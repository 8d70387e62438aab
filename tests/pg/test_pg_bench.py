"""The benchmark's --store plumbing runs and verifies its counts."""

import pytest

from bench import pgcluster, servers
from tests.unit.test_bench_smoke import run_loadgen


@pytest.mark.slow
def test_submit_bg_with_both_stores():
    reason = pgcluster.missing()
    if reason is not None:
        pytest.skip('no PostgreSQL for the benchmark: %s' % reason)
    names = 'geard,gearmand' if servers._gearmand_has('--libpq-conninfo') \
        else 'geard'
    code, lines, err = run_loadgen(
        '--scenario', 'submit-bg', '--servers', names,
        '--store', 'postgresql,sqlite', '--n', '300')
    assert 0 == code, err
    runs = {r['server']: r for r in lines if 'round' in r}
    for name in names.split(','):
        for store in ('postgresql', 'sqlite'):
            run = runs['%s+%s' % (name, store)]
            assert run['verified'], run
            assert 300 == run['n']
