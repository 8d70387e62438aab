"""Nodepool (2014-2017) as a gear user: jobs that carry completion
callbacks fired from the client's handle* overrides, demand read from the
``status`` admin command of a server that holds ``build:`` jobs, and a
builder worker that registers and unregisters functions as images come
and go."""

import json
import threading
import uuid

import pytest

import gear

from . import zuul_like
from .helpers import (
    HOST, WAIT, start_server, stop, wait_for, worker_functions)


class WatchableJob(gear.Job):
    """A job that tells its watchers when it ends."""

    def __init__(self, *args, **kw):
        super(WatchableJob, self).__init__(*args, **kw)
        self.handlers = []
        self.event = threading.Event()
        self.status_updates = 0

    def _ended(self):
        self.event.set()
        for handler in self.handlers:
            handler(self)

    def onCompleted(self):
        self._ended()

    def onFailed(self):
        self._ended()

    def onDisconnect(self):
        self._ended()

    def onWorkStatus(self):
        self.status_updates += 1

    def waitForCompletion(self, timeout=None):
        return self.event.wait(timeout)


class NodepoolClient(gear.Client):

    def __init__(self):
        super(NodepoolClient, self).__init__(client_id='nodepool')

    def handleWorkComplete(self, packet):
        job = super(NodepoolClient, self).handleWorkComplete(packet)
        job.onCompleted()
        return job

    def handleWorkFail(self, packet):
        job = super(NodepoolClient, self).handleWorkFail(packet)
        job.onFailed()
        return job

    def handleWorkException(self, packet):
        job = super(NodepoolClient, self).handleWorkException(packet)
        job.onFailed()
        return job

    def handleDisconnect(self, job):
        super(NodepoolClient, self).handleDisconnect(job)
        job.onDisconnect()

    def handleWorkStatus(self, packet):
        job = super(NodepoolClient, self).handleWorkStatus(packet)
        job.onWorkStatus()
        return job

    def getNeededWorkers(self):
        """Queued ``build:<label>`` jobs per label, from ``status``."""
        needed = {}
        for connection in self.active_connections:
            request = gear.StatusAdminRequest()
            connection.sendAdminRequest(request, timeout=WAIT)
            for line in request.response.decode('utf8').split('\n'):
                parts = [part.strip() for part in line.split('\t')]
                if len(parts) < 4 or not parts[0].startswith('build:'):
                    continue
                label = parts[0][len('build:'):]
                needed[label] = needed.get(label, 0) + int(parts[1])
        return needed


class Builder(gear.Worker):
    """Nodepool's image builder: one function per image it can build."""

    def __init__(self, port):
        super(Builder, self).__init__('nodepool-builder')
        self.addServer(HOST, port)
        self.waitForServer(WAIT)
        self.built = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                job = self.getJob()
            except gear.InterruptedError:
                continue
            self.built.append(job.name)
            job.sendWorkStatus(1, 2)
            job.sendWorkComplete(json.dumps({'image': job.name}).encode())


@pytest.fixture
def server(request):
    server = start_server(zuul_like.HoldingServer)
    request.addfinalizer(lambda: stop(server))
    return server


@pytest.fixture
def client(request, server):
    client = NodepoolClient()
    client.addServer(HOST, server.port)
    client.waitForServer(WAIT)
    request.addfinalizer(lambda: stop(client))
    return client


def test_node_assignment_with_callbacks(request, server, client):
    builder = Builder(server.port)
    request.addfinalizer(lambda: stop(builder))
    builder.registerFunction('image-build:fedora')
    job = WatchableJob('image-build:fedora', json.dumps({'id': 1}).encode(),
                       uuid.uuid4().hex)
    ended = []
    job.handlers.append(ended.append)
    client.submitJob(job, timeout=WAIT)
    assert job.waitForCompletion(WAIT)
    assert ended == [job]
    assert not job.failure
    assert job.status_updates == 1
    assert json.loads(job.data[-1]) == {'image': 'image-build:fedora'}


def test_unregistered_image_is_no_longer_built(request, server, client):
    builder = Builder(server.port)
    request.addfinalizer(lambda: stop(builder))
    builder.registerFunction('image-build:fedora')
    builder.registerFunction('image-build:centos')
    builder.unRegisterFunction('image-build:fedora')
    # The server reads the builder's and the client's packets in no
    # particular order: let it take the CANT_DO before the submissions.
    wait_for(lambda: worker_functions(
        client.active_connections[0], 'nodepool-builder') ==
        {'image-build:centos'}, what='the CANT_DO to be handled')
    fedora = WatchableJob('image-build:fedora', b'', uuid.uuid4().hex)
    centos = WatchableJob('image-build:centos', b'', uuid.uuid4().hex)
    client.submitJob(fedora, timeout=WAIT)
    client.submitJob(centos, timeout=WAIT)
    assert centos.waitForCompletion(WAIT)
    assert builder.built == ['image-build:centos']
    assert not fedora.complete
    assert fedora.handle in server.jobs


def test_demand_from_status(request, server, client):
    server.hold_jobs_in_queue = True
    worker = gear.Worker('label-worker')
    request.addfinalizer(lambda: stop(worker))
    worker.addServer(HOST, server.port)
    worker.registerFunction('build:small')
    worker.waitForServer(WAIT)
    for _ in range(2):
        client.submitJob(WatchableJob('build:small', b'', uuid.uuid4().hex),
                         timeout=WAIT)
    client.submitJob(WatchableJob('build:large', b'', uuid.uuid4().hex),
                     timeout=WAIT)
    assert client.getNeededWorkers() == {'small': 2, 'large': 1}


def test_lost_server_ends_jobs(server, client):
    job = WatchableJob('image-build:none', b'', uuid.uuid4().hex)
    client.submitJob(job, timeout=WAIT)
    server.shutdown()
    assert job.waitForCompletion(WAIT)
    wait_for(lambda: not client.active_connections)


class FixedStatusServer(gear.Server):
    """Nodepool's fake-servers tool: a ``status`` of its own, written
    straight to the admin connection's socket."""

    queued = 0

    def handleStatus(self, request):
        sock = request.connection.conn
        sock.send(('build:fake_job\t%d\t0\t0\n' % self.queued).encode())
        sock.send(b'build:fake_job:precise\t0\t0\t0\n')
        sock.send(b'.\n')


def test_status_override(request):
    server = start_server(FixedStatusServer)
    request.addfinalizer(lambda: stop(server))
    server.queued = 3
    client = NodepoolClient()
    request.addfinalizer(lambda: stop(client))
    client.addServer(HOST, server.port)
    client.waitForServer(WAIT)
    assert client.getNeededWorkers() == {'fake_job': 3,
                                         'fake_job:precise': 0}
