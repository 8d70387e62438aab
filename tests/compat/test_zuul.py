"""Zuul's scenarios, played with the classes of zuul_like on real sockets.
"""

import socket
import struct
import threading

import pytest

import gear

from . import zuul_like
from .helpers import (
    HOST, WAIT, admin, start_server, stop, wait_for,
    worker_functions)


@pytest.fixture
def server(request):
    server = start_server(zuul_like.HoldingServer)
    request.addfinalizer(lambda: stop(server))
    return server


@pytest.fixture
def executor_client(request, server):
    client = zuul_like.ExecutorClient(server.port)
    request.addfinalizer(client.stop)
    return client


@pytest.fixture
def executor(request, server):
    executor = zuul_like.Executor(server.port)
    request.addfinalizer(executor.stop)
    return executor


def running_build(executor_client, executor, name='test'):
    build = executor_client.execute(name)
    assert build.started.wait(WAIT), 'the build never started'
    wait_for(lambda: build.gearman_job.unique in executor.running,
             what='the executor to run the build')
    return executor.running[build.gearman_job.unique], build


def sync(client):
    """Return once everything the server sent ``client`` before this
    call has been handled (replies come in order)."""
    for conn in list(client.active_connections):
        admin(conn, gear.StatusAdminRequest())


def test_hold_and_release(server, executor_client, executor):
    server.hold_jobs_in_queue = True
    build = executor_client.execute('test')
    job = build.gearman_job
    server_job = wait_for(lambda: server.jobs.get(job.handle))
    # The executor asked for work and was refused the held job.
    wait_for(lambda: server_job in server.jobs_history,
             what='the held job to be offered')
    wait_for(lambda: hasattr(server_job, 'waiting'))
    assert server_job.waiting
    assert server_job in server.getQueue()
    assert not build.started.is_set()
    # What Zuul's test suite inspects to decide it is settled.
    conn = executor_client.gearman.active_connections[0]
    assert job.unique in [j.unique for j in conn.related_jobs.values()]
    assert server_job.unique.decode('utf8') == build.uuid
    wait_for(lambda: all(c.state != 'GRAB_WAIT'
                         for c in executor.worker.active_connections),
             what='the executor to stop waiting for a grab')

    assert server.release('build:.*')
    assert build.started.wait(WAIT)
    assert server.jobs[job.handle].running
    executor.running[job.unique].finish.set()
    assert build.done.wait(WAIT)
    assert executor_client.completed == [('test', 'SUCCESS')]


def test_lost_build_probe_with_concurrent_submit(server, executor_client,
                                                 executor):
    """The cleanup thread's GET_STATUS must not take a submission's reply.
    """
    running, first = running_build(executor_client, executor)
    client = executor_client.gearman
    probed = threading.Event()

    def hold_reply_until_a_submission_waits(packet):
        # Handle the STATUS_RES only once a submission awaits its
        # JOB_CREATED on the same connection: the two are in flight
        # together, as when the cleanup thread and the scheduler race.
        if probed.is_set():
            return
        probed.set()
        pending = packet.connection.pending_tasks
        wait_for(lambda: any(type(task).__name__ == 'SubmitJobTask'
                             for task in list(pending)),
                 what='a submission in flight')

    client.before_status = hold_reply_until_a_submission_waits
    executor_client.lookForLostBuilds()
    second = executor_client.execute('test')
    assert second.gearman_job.handle
    wait_for(lambda: executor_client.status_replies)
    status = executor_client.status_replies[0]
    assert status is first.gearman_job
    assert status.known and status.running
    assert first.result is None
    running.finish.set()
    assert first.done.wait(WAIT)
    assert second.started.wait(WAIT)
    executor.running[second.gearman_job.unique].finish.set()
    assert second.done.wait(WAIT)
    assert sorted(executor_client.completed) == [('test', 'SUCCESS'),
                                                 ('test', 'SUCCESS')]


def test_lost_build_is_reported_by_the_status_override(server,
                                                       executor_client):
    """A STATUS_RES for a handle the client does not follow raises
    UnknownJobError from handleStatusRes, which Zuul turns into LOST."""
    server.hold_jobs_in_queue = True
    build = executor_client.execute('test')
    job = build.gearman_job
    conn = job.connection
    # The client no longer follows the job (as after a reconnection).
    conn.related_jobs.pop(job.handle)
    executor_client.lookForLostBuilds()
    assert build.done.wait(WAIT)
    assert build.result == 'LOST'


def test_cancel_queued_build_is_silent(server, executor_client):
    server.hold_jobs_in_queue = True
    build = executor_client.execute('test')
    job = build.gearman_job
    wait_for(lambda: server.jobs.get(job.handle) is not None)
    assert executor_client.cancel(build) is False
    assert build.cancel_response == b'OK'
    assert job.handle not in server.jobs
    sync(executor_client.gearman)
    # gear 0.16 tells the client nothing: Zuul reports CANCELED itself.
    assert not job.complete
    assert executor_client.unmatched == []
    assert executor_client.completed == [('test', 'CANCELED')]


def test_cancel_queued_build_removes_it(server, executor_client):
    server.hold_jobs_in_queue = True
    build = executor_client.execute('test')
    job = build.gearman_job
    wait_for(lambda: server.jobs.get(job.handle) is not None)
    assert executor_client.cancel(build) is False
    assert build.cancel_response == b'OK'
    assert job.handle not in server.jobs
    assert all(j.handle != job.handle for j in server.getQueue())
    assert ('test', 'CANCELED') in executor_client.completed


def test_cancel_running_build_with_a_stop_job(server, executor_client,
                                              executor):
    running, build = running_build(executor_client, executor)
    assert executor_client.cancel(build) is True
    assert build.done.wait(WAIT)
    assert build.result == 'ABORTED'
    wait_for(lambda: not executor_client.meta_jobs,
             what='the stop job to complete')


def test_cancel_job_refuses_a_running_build(server, executor_client,
                                            executor):
    running, build = running_build(executor_client, executor)
    # The race Zuul's cancel() allows for: the build started between
    # its check and the admin command.
    assert executor_client.cancelJobInQueue(build) is False
    assert build.cancel_response.startswith(b'ERR UNKNOWN_JOB')
    assert build.gearman_job.handle in server.jobs
    sync(executor_client.gearman)
    assert not build.gearman_job.complete
    # The build goes on, and its result still arrives.
    running.finish.set()
    assert build.done.wait(WAIT)
    assert build.result == 'SUCCESS'


def test_unregister_while_a_build_runs(server, executor_client, executor):
    """The load governor unregisters while builds run; the stop job for
    one of them must still reach the executor, and the build's result
    the scheduler."""
    running, build = running_build(executor_client, executor)
    executor.unregister_work()
    client_conn = executor_client.gearman.active_connections[0]
    wait_for(lambda: 'build:test' not in worker_functions(
        client_conn, 'executor-executor1'), what='the CANT_DO to be handled')
    queued = executor_client.execute('test')
    assert executor_client.cancel(build) is True
    assert build.done.wait(WAIT)
    assert build.result == 'ABORTED'
    # Nothing of the unregistered function is handed out meanwhile.
    assert not queued.started.is_set()
    executor.register_work()
    assert queued.started.wait(WAIT)
    executor.running[queued.gearman_job.unique].finish.set()
    assert queued.done.wait(WAIT)


def test_executor_death_fails_a_running_build(server, executor_client,
                                              executor):
    running, build = running_build(executor_client, executor)
    # The executor dies without a word about its build: its socket goes
    # as a dying process's would (gear 0.16's shutdown() alone may leave
    # it open while its poll thread waits on it).
    executor._running = False
    for conn in list(executor.worker.active_connections):
        conn.conn.shutdown(socket.SHUT_RDWR)
    executor.worker.shutdown()
    assert build.done.wait(WAIT)
    assert build.result == 'FAILURE'
    assert build.gearman_job.failure
    wait_for(lambda: build.gearman_job.handle not in server.jobs,
             what='the server to forget the job')


def test_rpc_round_trip(request, server):
    listener = gear.TextWorker('rpc-listener')
    request.addfinalizer(lambda: stop(listener))
    listener.addServer(HOST, server.port)
    listener.registerFunction('zuul:enqueue')
    listener.registerFunction('zuul:tenant_list')
    listener.waitForServer(WAIT)

    def serve():
        for _ in range(2):
            job = listener.getJob()
            if job.name == 'zuul:tenant_list':
                job.sendWorkComplete('["tenant-one"]')
            else:
                job.sendWorkException('no such pipeline')
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    rpc = zuul_like.RPCClient(server.port)
    request.addfinalizer(rpc.stop)
    job = rpc.submitJob('zuul:tenant_list', {})
    assert not job.failure
    assert job.data == ['["tenant-one"]']
    with pytest.raises(RuntimeError) as caught:
        rpc.submitJob('zuul:enqueue', {'pipeline': 'nope'})
    assert 'no such pipeline' in str(caught.value)
    thread.join(WAIT)


def test_merge_job_with_its_own_wait(request, server):
    merger = gear.TextWorker('merger')
    request.addfinalizer(lambda: stop(merger))
    merger.addServer(HOST, server.port)
    merger.registerFunction('merger:cat')
    merger.waitForServer(WAIT)
    client = zuul_like.MergeClient(server.port)
    request.addfinalizer(client.stop)
    job = client.submitJob('merger:cat', {'files': ['zuul.yaml']})
    task = merger.getJob()
    task.sendWorkComplete('{"files": {"zuul.yaml": ""}}')
    assert job.wait(WAIT)
    assert job.complete and not job.failure
    assert zuul_like.job_data(job) == {'files': {'zuul.yaml': ''}}
    assert not client.jobs


def _packet(ptype, data):
    return gear.Packet(gear.constants.REQ, ptype, data).toBinary()


def _read_packet(sock):
    def exactly(size):
        data = b''
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise AssertionError('connection closed; got %r' % data)
            data += chunk
        return data
    magic, ptype, size = struct.unpack('!4sII', exactly(12))
    return ptype, exactly(size)


def test_mass_do_registers_every_function(request):
    server = start_server(zuul_like.MassDoServer)
    request.addfinalizer(lambda: stop(server))
    sock = socket.create_connection((HOST, server.port), timeout=WAIT)
    request.addfinalizer(sock.close)
    sock.sendall(_packet(zuul_like.MASS_DO, b'merger:merge\x00merger:cat'))
    wait_for(lambda: b'merger:cat' in server.functions,
             what='MASS_DO to register the functions')
    assert {b'merger:merge', b'merger:cat'} <= set(server.functions)
    client = gear.Client('mass-do-client')
    request.addfinalizer(client.shutdown)
    client.addServer(HOST, server.port)
    client.waitForServer(WAIT)
    job = gear.TextJob('merger:cat', 'args', unique='one')
    client.submitJob(job, timeout=WAIT)
    sock.sendall(_packet(gear.constants.GRAB_JOB_UNIQ, b''))
    ptype, payload = _read_packet(sock)
    assert ptype == gear.constants.JOB_ASSIGN_UNIQ
    assert payload.split(b'\x00')[:3] == [job.handle, b'merger:cat', b'one']
