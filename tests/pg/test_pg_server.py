"""gear.Server with a PostgreSQL store, over real sockets: commit before
acknowledgement, replay, the id lock, and PostgreSQL going away."""

import threading

import pytest

import gear
from gear import constants as C
from gear.errors import ConfigurationError
from tests.pg.test_pg_store import sql
from tests.reliability import peers
from tests.util import wait_for

WAIT = 30.0


@pytest.fixture
def make_server(pg_url):
    started = []

    def make(prefix='H:pg', **kw):
        server = gear.Server(0, host=peers.HOST, job_handle_prefix=prefix,
                             store=kw.pop('store', pg_url), **kw)
        started.append(server)
        return server
    yield make
    for server in started:
        server.shutdown()


def stored_uniques(url, server_id='H:pg'):
    return {bytes(r[0]).decode() for r in sql(
        url, 'SELECT unique_key FROM gear_queue WHERE server_id = %s',
        server_id)}


def test_each_acknowledged_job_is_already_committed(make_server, pg_url):
    server = make_server()
    count = 60
    with peers.RawPeer(server.port) as client:
        # One write: the server takes them in few turns, so batches form.
        client.send(b''.join(peers.req(C.SUBMIT_JOB_BG, 'fn', 'u%d' % i,
                                       'x') for i in range(count)))
        for i in range(count):
            handle = client.expect(C.JOB_CREATED, WAIT)[0]
            # Read from another connection the moment the reply is here.
            rows = sql(pg_url, 'SELECT unique_key FROM gear_queue '
                               'WHERE handle = %s', handle)
            assert [b'u%d' % i] == [bytes(r[0]) for r in rows]


def test_restart_replays_and_finished_jobs_are_removed(make_server, pg_url):
    server = make_server()
    with peers.RawPeer(server.port) as client:
        for i in range(30):
            client.send_packet(C.SUBMIT_JOB_BG, 'fn', 'r%d' % i, 'x')
            client.expect(C.JOB_CREATED, WAIT)
    with peers.RawPeer(server.port) as worker:
        worker.send_packet(C.CAN_DO, 'fn')
        for _ in range(10):
            worker.send_packet(C.GRAB_JOB_UNIQ)
            handle = worker.expect(C.JOB_ASSIGN_UNIQ, WAIT)[0]
            worker.send_packet(C.WORK_COMPLETE, handle, 'done')
        # The echo comes back after the completions were handled.
        worker.send_packet(C.ECHO_REQ, 'sync')
        worker.expect(C.ECHO_RES, WAIT)
    wait_for(lambda: len(stored_uniques(pg_url)) == 20, WAIT)
    server.shutdown()
    again = make_server()
    assert 20 == len(again.jobs)
    assert {'r%d' % i for i in range(10, 30)} == \
        {j.unique.decode() for j in again.jobs.values()}


def test_second_server_with_the_same_id_does_not_start(make_server):
    make_server('H:same')
    with pytest.raises(ConfigurationError, match='server id'):
        make_server('H:same')


def test_server_adopts_with_a_store_object(make_server, pg_url):
    from gear.server.pg_store import PgStore
    dead = make_server('H:dead')
    with peers.RawPeer(dead.port) as client:
        for i in range(5):
            client.send_packet(C.SUBMIT_JOB_BG, 'fn', 'd%d' % i, 'x')
            client.expect(C.JOB_CREATED, WAIT)
    dead.shutdown()
    heir = make_server('H:heir', store=PgStore(pg_url, 'H:heir',
                                               adopt=['H:dead']))
    assert {'d%d' % i for i in range(5)} == \
        {j.unique.decode() for j in heir.jobs.values()}
    assert 5 == len(stored_uniques(pg_url, 'H:heir'))


class Submitter(threading.Thread):
    """Submits background jobs one at a time, reconnecting after a close,
    and records what each submission got."""

    def __init__(self, port):
        super(Submitter, self).__init__(daemon=True)
        self.port = port
        self.acked = []
        self.errors = []
        self.closed = 0
        self.stop = threading.Event()
        self.failure = None

    def run(self):
        n = 0
        peer = None
        try:
            while not self.stop.is_set():
                if peer is None:
                    peer = peers.RawPeer(self.port, timeout=WAIT)
                unique = 's%d' % n
                n += 1
                try:
                    peer.send_packet(C.SUBMIT_JOB_BG, 'fn', unique, 'x')
                    ptype, args = peer.read_packet(WAIT)
                except (peers.PeerClosed, OSError):
                    self.closed += 1
                    peer.close()
                    peer = None
                    continue
                if ptype == C.JOB_CREATED:
                    self.acked.append(unique)
                elif ptype == C.ERROR:
                    self.errors.append(args[0])
                if self.errors or self.closed:
                    # Do not spin while the store is down.
                    self.stop.wait(0.01)
        except Exception as e:
            self.failure = e
        finally:
            if peer is not None:
                peer.close()


def test_postgresql_restart_mid_stream(make_server, pg_url, pg_cluster):
    server = make_server()
    submitter = Submitter(server.port)
    submitter.start()
    try:
        wait_for(lambda: len(submitter.acked) >= 100, WAIT)
        pg_cluster.stop()
        try:
            down_at = len(submitter.acked)
            wait_for(lambda: len(submitter.errors) >= 3, WAIT,
                     message='submissions to fail while PostgreSQL is down')
            # No acknowledgement while the database is away (one batch
            # could have been committed just before the stop).
            assert len(submitter.acked) <= down_at + 1
            assert set(submitter.errors) == {b'QUEUE_ERROR'}
        finally:
            pg_cluster.start()
        wait_for(server.store.probe, WAIT, message='the store to return')
        back_at = len(submitter.acked)
        wait_for(lambda: len(submitter.acked) >= back_at + 100, WAIT,
                 message='submissions to succeed again')
    finally:
        submitter.stop.set()
        submitter.join(WAIT)
    assert submitter.failure is None
    assert set(submitter.acked) <= stored_uniques(pg_url)
    # And a restart replays every acknowledged job.
    server.shutdown()
    again = make_server()
    assert set(submitter.acked) <= \
        {j.unique.decode() for j in again.jobs.values()}


def test_batch_failing_at_commit_gets_queue_error(make_server, pg_cluster):
    # The first batch after PostgreSQL went away fails at commit: its
    # submitter should hear QUEUE_ERROR rather than lose its connection.
    server = make_server()
    with peers.RawPeer(server.port) as client:
        client.send_packet(C.SUBMIT_JOB_BG, 'fn', 'before', 'x')
        client.expect(C.JOB_CREATED, WAIT)
        pg_cluster.stop()
        try:
            client.send_packet(C.SUBMIT_JOB_BG, 'fn', 'during', 'x')
            try:
                ptype, args = client.read_packet(WAIT)
            except peers.PeerClosed:
                ptype, args = None, None
        finally:
            pg_cluster.start()
    assert C.ERROR == ptype
    assert b'QUEUE_ERROR' == args[0]
