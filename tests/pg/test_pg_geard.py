"""geard processes on one PostgreSQL database: kill -9, the id lock,
takeover with --adopt, and two servers behind hashing clients.

Set GEAR_SOAK=1 for 100,000 jobs per crash run instead of 20,000.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

from gear import constants as C
from gear.cmd import geard
from tests.pg import ha
from tests.pg.test_pg_store import sql
from tests.reliability import crash, peers, servers
from tests.util import child_env, wait_for

SEED = int(os.environ.get('GEAR_RELIABILITY_SEED', '20240611'))
WAIT = 60.0


def lock_free(url, server_id):
    """True when no live session holds ``server_id``'s lock."""
    import psycopg
    from gear.server.pg_store import lock_key
    with psycopg.connect(url, autocommit=True) as conn:
        # Taken and released with the connection at once.
        return conn.execute('SELECT pg_try_advisory_lock(%s)',
                            (lock_key(server_id),)).fetchone()[0]


class PgGeard(servers.Geard):
    """geard on a PostgreSQL store; ``adopt_on_restart`` turns the second
    start into a takeover by another server id."""

    def __init__(self, url, server_id, workdir, adopt_on_restart=None):
        super(PgGeard, self).__init__(
            store=url, workdir=workdir,
            extra=['--job-handle-prefix', server_id])
        self.url = url
        self.server_id = server_id
        self.adopt_on_restart = adopt_on_restart

    def start(self, timeout=servers.START_TIMEOUT):
        if self.starts and self.adopt_on_restart:
            dead = self.server_id
            self.server_id = self.adopt_on_restart
            self.extra = ['--job-handle-prefix', self.server_id,
                          '--adopt', dead]
            # The killed server's session ends once PostgreSQL notices.
            wait_for(lambda: lock_free(self.url, dead), WAIT,
                     message='the lock of %s to be released' % dead)
        return super(PgGeard, self).start(timeout)


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path)


@pytest.fixture
def spawn(pg_url, workdir):
    started = []

    def make(server_id, **kw):
        server = PgGeard(pg_url, server_id, workdir, **kw)
        started.append(server)
        return server
    yield make
    for server in started:
        server.stop()


def run_geard(url, *extra):
    """Run geard in the foreground and return (exit code, stderr)."""
    argv = [sys.executable, '-m', 'gear.cmd.geard', '-d', '-p', '0',
            '--listen-address', peers.HOST, '--store', url] + list(extra)
    result = subprocess.run(argv, env=child_env(), capture_output=True,
                            timeout=WAIT, stdin=subprocess.DEVNULL)
    return result.returncode, result.stderr.decode('utf8', 'replace')


def assert_nothing_lost(result):
    message = 'seed %d: %s' % (SEED, json.dumps(result))
    assert result['acknowledged'] > 0, message
    assert result['acknowledged'] < result['jobs_planned'], message
    assert 0 == result['submit_errors'], message
    assert 0 == result['lost'], message
    assert 0 == result['duplicates_after_restart'], message


def test_url_options_are_checked():
    with pytest.raises(SystemExit):
        geard.parse_args(['--server-id', 'x'])
    with pytest.raises(SystemExit):
        geard.parse_args(['--store', 'postgresql://h/db',
                          '--store-sync', 'full'])
    args = geard.parse_args(['--store', 'postgresql://h/db', '--adopt',
                             'a', '--adopt', 'b'])
    # A URL is not a path to make absolute.
    assert 'postgresql://h/db' == args.store
    assert ['a', 'b'] == args.adopt
    assert 'postgresql://u:***@h/db' == \
        geard.store_label('postgresql://u:secret@h/db')


def test_second_geard_with_a_live_id_refuses_to_start(spawn, pg_url):
    spawn('H:one').start()
    code, err = run_geard(pg_url, '--job-handle-prefix', 'H:one')
    assert code != 0
    assert 'Another live server holds server id' in err, err
    code, err = run_geard(pg_url, '--job-handle-prefix', 'H:two',
                          '--adopt', 'H:one')
    assert code != 0
    assert 'still held by a live server' in err, err


def test_adopt_at_start(spawn, pg_url):
    first = spawn('H:first', adopt_on_restart='H:second')
    first.start()
    with peers.RawPeer(first.port) as client:
        for i in range(50):
            client.send_packet(C.SUBMIT_JOB_BG, 'fn', 'a%d' % i, 'x')
            client.expect(C.JOB_CREATED)
    first.kill()
    first.start()  # as H:second, with --adopt H:first
    assert 50 == peers.function_total(first.port, 'fn')
    assert [('H:second', 50)] == sql(
        pg_url, 'SELECT server_id, count(*) FROM gear_queue '
                'GROUP BY server_id')


@pytest.mark.slow
def test_kill_during_submission_loses_no_acknowledged_job(spawn):
    result = crash.run(spawn('H:crash'), peers.scale(20000, 100000),
                       seed=SEED)
    print(json.dumps(result))
    assert_nothing_lost(result)


@pytest.mark.slow
def test_takeover_by_a_second_geard_loses_nothing(spawn, pg_url):
    # The restart is another server id adopting the killed one's jobs.
    server = spawn('H:victim', adopt_on_restart='H:heir')
    result = crash.run(server, peers.scale(20000, 100000), seed=SEED + 7)
    print(json.dumps(result))
    assert_nothing_lost(result)
    assert [] == sql(pg_url, "SELECT 1 FROM gear_queue "
                             "WHERE server_id = 'H:victim'")


@pytest.mark.slow
def test_two_servers_hashing_clients_one_killed(spawn, pg_url,
                                                record_property):
    """10,000 jobs spread by hashing over two geards sharing a database;
    one is killed -9 mid-stream and the other adopts its jobs."""
    jobs = peers.scale(10000, 50000)
    clients = 4
    fn = 'ha'
    a, b = spawn('H:ha-a'), spawn('H:ha-b')
    a.start()
    b.start()
    ctx = crash.mp_context()
    results = ctx.Queue()
    progress = ctx.Array('q', clients, lock=False)
    per = [jobs // clients + (1 if i < jobs % clients else 0)
           for i in range(clients)]
    subs = [ctx.Process(target=ha.hashing_submitter_main, daemon=True,
                        args=([a.port, b.port], fn, 'ha', i, per[i],
                              progress, results))
            for i in range(clients)]
    # Workers on both servers take jobs while all this happens.
    stop_early = ctx.Event()
    early_results = ctx.Queue()
    early = [ctx.Process(target=crash.drain_main, daemon=True,
                         args=(port, fn, i, stop_early, early_results))
             for i, port in enumerate((a.port, b.port))]
    for p in subs + early:
        p.start()
    wait_for(lambda: sum(progress) >= jobs * 0.4, crash.PHASE_TIMEOUT,
             message='40% of the jobs to be acknowledged', interval=0.005)
    acked_at_kill = sum(progress)
    a.kill()
    submitted = crash._collect(results, subs, 'submitter', clients,
                               crash.PHASE_TIMEOUT)
    stop_early.set()
    taken_before = collections.Counter()
    for d in crash._collect(early_results, early, 'drain', 2, 60):
        taken_before.update(d['seen'])
    for s in submitted:
        assert 'done' == s['reason'], s['reason']
    acked = {}
    for s in submitted:
        acked.update(s['acked'])
    on_a = sum(1 for h in acked.values() if h.startswith('H:ha-a:'))

    # The survivor restarts as itself and adopts the dead server's jobs.
    b.stop()
    wait_for(lambda: lock_free(pg_url, 'H:ha-a'), WAIT,
             message='the killed server to release its lock')
    b.extra = b.extra + ['--adopt', 'H:ha-a']
    b.start()
    stop = ctx.Event()
    drains = [ctx.Process(target=crash.drain_main, daemon=True,
                          args=(b.port, fn, i, stop, results))
              for i in range(2)]
    for p in drains:
        p.start()
    try:
        wait_for(lambda: peers.function_total(b.port, fn) == 0,
                 crash.PHASE_TIMEOUT, message='the workers to drain',
                 interval=0.05)
    finally:
        stop.set()
    seen = collections.Counter(taken_before)
    for d in crash._collect(results, drains, 'drain', 2, 60):
        seen.update(d['seen'])
    lost = sorted(set(acked) - set(seen))
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    report = {
        'jobs': jobs, 'acknowledged': len(acked),
        'acknowledged_at_kill': acked_at_kill,
        'acknowledged_by_killed_server': on_a,
        'retried_submissions': sum(s['retries'] for s in submitted),
        'ran_before_takeover': sum(taken_before.values()),
        'lost': len(lost), 'lost_sample': lost[:10],
        'duplicates': duplicates,
    }
    print(json.dumps(report))
    record_property('ha_report', json.dumps(report))
    assert jobs == len(acked)
    # Hashing spread the work over both servers.
    assert 0.25 * acked_at_kill < on_a < jobs
    assert [] == lost, report
    assert 0 == sql(pg_url, 'SELECT count(*) FROM gear_queue')[0][0]
