"""A PostgreSQL cluster for the whole session, a fresh database per test.
"""

import itertools

import pytest

from bench import pgcluster as cluster_mod

_names = itertools.count(1)


@pytest.fixture(scope='session')
def pg_cluster():
    reason = cluster_mod.missing()
    if reason is not None:
        pytest.skip('no PostgreSQL for the tests: %s' % reason)
    cluster = cluster_mod.Cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster):
    """The URL of an empty database of its own."""
    return pg_cluster.create_database('gear_test_%d' % next(_names))
