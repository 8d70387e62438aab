"""PgStore on its own against a real PostgreSQL: rows, locks, adoption,
schema versions and a lost connection."""

import sys

import pytest

from gear.errors import ConfigurationError
from gear.server import store as store_mod
from gear.server.jobs import ServerJob
from tests.util import wait_for

NORMAL, LOW, HIGH = 0, 1, 2


def job(n, prefix=b'H:a', unique=None, arguments=b'args', precedence=NORMAL,
        when=0):
    j = ServerJob._new(b'%s:%d' % (prefix, n), b'fn', arguments, unique,
                       None, precedence, True)
    if when:
        j.when = when
    return j


@pytest.fixture
def make_store(pg_url):
    from gear.server.pg_store import PgStore
    opened = []

    def make(server_id='a', **kw):
        store = PgStore(pg_url, server_id, **kw)
        opened.append(store)
        return store
    yield make
    for store in opened:
        store.close()


def sql(url, query, *args):
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, args or None)
        return cur.fetchall() if cur.description else cur.rowcount


def test_round_trip(make_store):
    store = make_store()
    jobs = [job(1, unique=b'u\x00\\1', arguments=b'\x00\xff\\x'),
            job(2, precedence=HIGH), job(3, precedence=LOW),
            job(4, when=2000000000), job(5, arguments=b'')]
    for j in jobs:
        store.add(j)
    store.flush()
    store.close()
    again = make_store()
    loaded = again.load()
    assert [(j.handle, j.name, j.unique, j.arguments, j.precedence,
             j.when or 0) for j in jobs] == [tuple(r) for r in loaded]
    assert again.handleCounterStart() == 5
    assert again.count() == 5


def test_gearmand_priorities_in_the_table(make_store, pg_url):
    store = make_store()
    for n, precedence in enumerate((NORMAL, LOW, HIGH)):
        store.add(job(n, precedence=precedence))
    store.flush()
    rows = sql(pg_url, 'SELECT priority FROM gear_queue ORDER BY seq')
    # gearmand's numbering: 0 high, 1 normal, 2 low.
    assert [1, 2, 0] == [r[0] for r in rows]


def test_remove_and_batches(make_store):
    store = make_store()
    a, b, c = job(1), job(2), job(3)
    store.add(a)
    store.add(b)
    store.flush()
    # Added and removed in one batch: never written.
    store.add(c)
    store.remove(c)
    store.remove(a)
    store.flush()
    assert [b.handle] == [r.handle for r in store.load()]
    # Nothing pending: flush is free.
    store.flush()


def test_discard_forgets_additions_but_keeps_removals(make_store):
    store = make_store()
    a = job(1)
    store.add(a)
    store.flush()
    store.remove(a)
    store.add(job(2))
    store.discard()
    store.flush()
    assert [] == store.load()


def test_second_live_server_with_the_same_id_is_refused(make_store):
    first = make_store('same')
    with pytest.raises(ConfigurationError, match='another --server-id'):
        make_store('same')
    first.close()
    make_store('same')


def test_servers_share_the_table_under_their_ids(make_store):
    one, two = make_store('one'), make_store('two')
    one.add(job(1, prefix=b'H:one'))
    two.add(job(1, prefix=b'H:two'))
    two.add(job(2, prefix=b'H:two'))
    one.flush()
    two.flush()
    assert 1 == one.count()
    assert [b'H:two:1', b'H:two:2'] == [r.handle for r in two.load()]


def test_adopt_a_stopped_server(make_store, pg_url):
    dead = make_store('dead')
    for n in range(10):
        dead.add(job(n, prefix=b'H:dead', unique=b'u%d' % n))
    dead.flush()
    with pytest.raises(ConfigurationError, match='still held'):
        make_store('heir', adopt=['dead'])
    dead.close()
    heir = make_store('heir', adopt=['dead'])
    assert {'dead': 10} == heir.adopted
    assert 10 == heir.count()
    assert [b'u%d' % n for n in range(10)] == \
        [r.unique for r in heir.load()]
    assert [] == sql(pg_url, "SELECT 1 FROM gear_queue "
                             "WHERE server_id = 'dead'")
    # The heir's removals reach the adopted rows.
    heir.remove(heir.load()[0])
    heir.flush()
    assert 9 == heir.count()


def test_cannot_adopt_itself(make_store):
    with pytest.raises(ConfigurationError):
        make_store('me', adopt=['me'])


def test_schema_is_versioned(make_store, pg_url):
    from gear.server.pg_store import SCHEMA_VERSION
    make_store().close()
    assert [(SCHEMA_VERSION,)] == sql(pg_url,
                                      'SELECT version FROM gear_schema')
    # A second server (or start) migrates nothing and keeps the rows.
    make_store('b')
    assert [(SCHEMA_VERSION,)] == sql(pg_url,
                                      'SELECT version FROM gear_schema')
    sql(pg_url, 'UPDATE gear_schema SET version = %s', SCHEMA_VERSION + 1)
    with pytest.raises(ConfigurationError, match='schema version'):
        make_store('c')


def test_unreachable_database_is_a_configuration_error(pg_cluster):
    from gear.server.pg_store import PgStore
    url = 'postgresql://gear@127.0.0.1:%d/nosuchdb' % pg_cluster.port
    with pytest.raises(ConfigurationError, match='Cannot connect'):
        PgStore(url, 'x')


def test_open_store_dispatches_urls(pg_url):
    from gear.server.pg_store import PgStore
    store = store_mod.open_store(pg_url, server_id=b'H:prefix')
    try:
        assert isinstance(store, PgStore)
        assert 'H:prefix' == store.server_id
    finally:
        store.close()


def test_missing_psycopg_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, 'psycopg', None)
    with pytest.raises(ConfigurationError, match=r'gear\[postgresql\]'):
        store_mod.open_store('postgresql://nowhere/db', server_id='x')


def terminate_backends(url):
    sql(url, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
             'WHERE datname = current_database() AND pid <> '
             'pg_backend_pid()')


def test_lost_connection_raises_then_recovers(make_store, pg_url,
                                              monkeypatch):
    from gear.server import pg_store
    from gear.server.pg_store import StoreUnavailable
    # The first reconnection waits long enough for the checks below.
    monkeypatch.setattr(pg_store, 'RECONNECT_MIN', 3.0)
    store = make_store()
    kept, removed = job(1), job(2)
    store.add(kept)
    store.add(removed)
    store.flush()
    assert store.probe()
    terminate_backends(pg_url)
    store.remove(removed)
    store.add(job(3))
    with pytest.raises(StoreUnavailable):
        store.flush()
    store.discard()
    # Until it is back, additions fail at once.
    assert not store.probe()
    with pytest.raises(StoreUnavailable):
        store.add(job(4))
    wait_for(store.probe, 30, message='the store to reconnect')
    # The removal of the failed batch is written now; job 3 never was.
    store.flush()
    assert [kept.handle] == [r.handle for r in store.load()]
    # The lock came back with the connection.
    with pytest.raises(ConfigurationError):
        make_store('a')


def test_database_restart(make_store, pg_cluster):
    store = make_store()
    store.add(job(1))
    store.flush()
    pg_cluster.stop()
    try:
        store.add(job(2))
        with pytest.raises(Exception):
            store.flush()
        store.discard()
        assert not store.probe()
    finally:
        pg_cluster.start()
    wait_for(store.probe, 30, message='the store to reconnect')
    store.add(job(3))
    store.flush()
    assert [b'H:a:1', b'H:a:3'] == [r.handle for r in store.load()]
