"""The gear-facing parts of Zuul v3 (spring 2019), rewritten for tests.

Each class makes the same overrides and the same calls into gear as its
Zuul counterpart, with Zuul's own logic (Ansible, merges, the scheduler)
replaced by the least that keeps those calls meaningful:

* :class:`HoldingServer`: Zuul's test ``FakeGearmanServer``, which
  overrides ``getJobForConnection`` to hold jobs in the queue, walking
  ``high_queue``/``normal_queue``/``low_queue`` and setting
  ``job.waiting``, ``job.running``, ``job.worker_connection`` itself.
* :class:`MassDoServer`: Zuul's production ``GearServer``, which accepts
  a private packet type (MASS_DO, 101) through a ``handlePacket``
  override and adds the names to ``self.functions`` (a set in gear 0.16).
* :class:`BuildClient` and :class:`ExecutorClient`: the scheduler's side,
  with ``handleWork*``/``handleDisconnect``/``handleStatusRes`` overrides,
  the lost-build probe sent with a plain ``sendPacket``, and cancelling
  through the ``cancel job`` admin command or a stop job.
* :class:`ExecutorWorker` and :class:`Executor`: the executor's side, a
  ``TextWorker`` whose ``handleNoop`` delays grabs, with
  ``register_work``/``unregister_work`` (the load governor) and the
  per-host stop and resume functions.
* :class:`RPCClient`: zuul's command-line RPC, polling ``job.complete``.
* :class:`MergeClient`: a Job subclass with its own ``wait`` and
  ``setComplete``, completed from ``handleWork*`` overrides.
"""

import json
import re
import threading
import time
import uuid

import gear

from .helpers import HOST, WAIT

MASS_DO = 101


class HoldingServer(gear.Server):
    """Hands out ``build:*`` jobs only once released."""

    def __init__(self, port=0, **kw):
        self.hold_jobs_in_queue = False
        self.jobs_history = []
        super(HoldingServer, self).__init__(port, **kw)

    def getJobForConnection(self, connection, peek=False):
        for queue in (self.high_queue, self.normal_queue, self.low_queue):
            for job in queue:
                self.jobs_history.append(job)
                if not hasattr(job, 'waiting'):
                    job.waiting = (job.name.startswith(b'build:') and
                                   self.hold_jobs_in_queue)
                if job.waiting:
                    continue
                if job.name in connection.functions:
                    if not peek:
                        queue.remove(job)
                        connection.related_jobs[job.handle] = job
                        job.worker_connection = connection
                    job.running = True
                    return job
        return None

    def release(self, pattern=None):
        """Let held jobs (whose name matches ``pattern``) go to workers."""
        released = False
        for job in self.getQueue():
            name = job.name.decode('utf8')
            if pattern is None or re.match(pattern, name):
                job.waiting = False
                released = True
        if released:
            self.wakeConnections()
        return released


class MassDoServer(gear.Server):
    """Understands MASS_DO: a worker registering many functions at once."""

    def handlePacket(self, packet):
        if packet.ptype == MASS_DO:
            self.handleMassDo(packet)
            return None
        return super(MassDoServer, self).handlePacket(packet)

    def handleMassDo(self, packet):
        packet.connection.functions = set()
        for name in packet.data.split(b'\x00'):
            packet.connection.functions.add(name)
            self.functions.add(name)


def job_data(job):
    """The JSON of the last WORK_DATA/WORK_COMPLETE payload, or {}."""
    if not job.data or not job.data[-1]:
        return {}
    return json.loads(job.data[-1])


class Build(object):
    """What the scheduler knows about one build."""

    def __init__(self, name, uuid_):
        self.name = name
        self.uuid = uuid_
        self.gearman_job = None
        self.worker_name = None
        self.url = None
        self.result = None
        self.started = threading.Event()
        self.done = threading.Event()


class BuildClient(gear.Client):
    """The scheduler's gear client: every update goes to the executor
    client, as Zuul's ZuulGearmanClient does."""

    def __init__(self, owner):
        super(BuildClient, self).__init__('executor-client')
        self.owner = owner
        #: Set by tests to run a hook before each STATUS_RES is handled.
        self.before_status = None

    def handleWorkComplete(self, packet):
        job = super(BuildClient, self).handleWorkComplete(packet)
        self.owner.onBuildCompleted(job)
        return job

    def handleWorkFail(self, packet):
        job = super(BuildClient, self).handleWorkFail(packet)
        self.owner.onBuildCompleted(job)
        return job

    def handleWorkException(self, packet):
        job = super(BuildClient, self).handleWorkException(packet)
        self.owner.onBuildCompleted(job)
        return job

    def handleWorkStatus(self, packet):
        job = super(BuildClient, self).handleWorkStatus(packet)
        self.owner.onWorkStatus(job)
        return job

    def handleWorkData(self, packet):
        job = super(BuildClient, self).handleWorkData(packet)
        self.owner.onWorkStatus(job)
        return job

    def handleDisconnect(self, job):
        job = super(BuildClient, self).handleDisconnect(job)
        self.owner.onDisconnect(job)

    def handleStatusRes(self, packet):
        if self.before_status is not None:
            self.before_status(packet)
        try:
            job = super(BuildClient, self).handleStatusRes(packet)
        except gear.UnknownJobError:
            handle = packet.getArgument(0)
            for build in list(self.owner.builds.values()):
                if build.gearman_job.handle == handle:
                    self.owner.onUnknownJob(build.gearman_job)
            return None
        self.owner.status_replies.append(job)
        return job


class ExecutorClient(object):
    """Submits builds, follows them, cancels them, probes for lost ones.
    """

    def __init__(self, port):
        self.builds = {}
        self.meta_jobs = {}
        self.completed = []
        #: Completions of builds already finished (Zuul logs "Unable to
        #: find build" for those).
        self.unmatched = []
        self.status_replies = []
        self.gearman = BuildClient(self)
        self.gearman.addServer(HOST, port)
        self.gearman.waitForServer(WAIT)

    def stop(self):
        self.gearman.shutdown()

    def execute(self, name, precedence=gear.PRECEDENCE_NORMAL):
        build = Build(name, uuid.uuid4().hex)
        job = gear.TextJob('build:%s' % name,
                           json.dumps({'job': name, 'uuid': build.uuid}),
                           unique=build.uuid)
        build.gearman_job = job
        self.builds[build.uuid] = build
        self.gearman.submitJob(job, precedence=precedence, timeout=WAIT)
        return build

    def onWorkStatus(self, job):
        build = self.builds.get(job.unique)
        if build is None:
            return
        data = job_data(job)
        build.url = data.get('url', build.url)
        if build.worker_name is None and data.get('worker_name'):
            build.worker_name = data['worker_name']
            build.started.set()

    def onBuildCompleted(self, job, result=None):
        if job.unique in self.meta_jobs:
            del self.meta_jobs[job.unique]
            return
        build = self.builds.pop(job.unique, None)
        if build is None:
            self.unmatched.append((job, result))
            return
        if result is None:
            result = job_data(job).get('result')
        if result is None:
            result = 'FAILURE' if job.failure else 'SUCCESS'
        build.result = result
        self.completed.append((build.name, result))
        build.done.set()

    def onDisconnect(self, job):
        self.onBuildCompleted(job, 'DISCONNECT')

    def onUnknownJob(self, job):
        self.onBuildCompleted(job, 'LOST')

    def cancel(self, build):
        """True if the build was running (a stop job was sent)."""
        if build.url is not None:
            self.cancelRunningBuild(build)
            return True
        self.cancelJobInQueue(build)
        return False

    def cancelJobInQueue(self, build):
        job = build.gearman_job
        request = gear.CancelJobAdminRequest(job.handle)
        job.connection.sendAdminRequest(request, timeout=WAIT)
        build.cancel_response = request.response.strip()
        if request.response.startswith(b'OK'):
            self.builds.pop(job.unique, None)
            build.result = 'CANCELED'
            self.completed.append((build.name, 'CANCELED'))
            build.done.set()
            return True
        return False

    def _metaJob(self, verb, build):
        meta_uuid = uuid.uuid4().hex
        job = gear.TextJob('executor:%s:%s' % (verb, build.worker_name),
                           json.dumps({'uuid': build.uuid}),
                           unique=meta_uuid)
        self.meta_jobs[meta_uuid] = job
        self.gearman.submitJob(job, precedence=gear.PRECEDENCE_HIGH,
                               timeout=WAIT)
        return job

    def cancelRunningBuild(self, build):
        return self._metaJob('stop', build)

    def resumeBuild(self, build):
        return self._metaJob('resume', build)

    def lookForLostBuilds(self):
        for build in list(self.builds.values()):
            job = build.gearman_job
            if build.result or not job.handle:
                continue
            job.connection.sendPacket(gear.Packet(
                gear.constants.REQ, gear.constants.GET_STATUS, job.handle))


class ExecutorWorker(gear.TextWorker):
    """Waits a little before grabbing, the busier the executor is."""

    def __init__(self, executor, *args, **kw):
        self.executor = executor
        super(ExecutorWorker, self).__init__(*args, **kw)

    def handleNoop(self, packet):
        time.sleep((len(self.executor.running) ** 2) / 1000.0)
        return super(ExecutorWorker, self).handleNoop(packet)


class RunningBuild(object):
    """A build an executor runs: it waits until told to finish or stop.
    """

    def __init__(self, job):
        self.job = job
        self.args = json.loads(job.arguments)
        self.finish = threading.Event()
        self.stopped = False
        self.paused = False


class Executor(object):
    """Zuul's ExecutorServer, reduced to its use of gear.Worker."""

    def __init__(self, port, hostname='executor1', wait_for_server=True):
        self.hostname = hostname
        self.running = {}
        self.accepting_work = False
        self._running = True
        self.worker = ExecutorWorker(self, 'executor-%s' % hostname)
        self.worker.addServer(HOST, port)
        if wait_for_server:
            self.worker.waitForServer(WAIT)
        self.register()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def register(self):
        self.register_work()
        self.worker.registerFunction('executor:resume:%s' % self.hostname)
        self.worker.registerFunction('executor:stop:%s' % self.hostname)

    def register_work(self):
        if self._running:
            self.accepting_work = True
            self.worker.registerFunction('build:test')
            # Zuul asks for a job at once, through a private method.
            self.worker._sendGrabJobUniq()

    def unregister_work(self):
        self.accepting_work = False
        self.worker.unRegisterFunction('build:test')

    def run(self):
        while self._running:
            try:
                job = self.worker.getJob()
            except gear.InterruptedError:
                continue
            except Exception:
                continue
            try:
                self.dispatch(job)
            except Exception:
                try:
                    job.sendWorkException('dispatch failed')
                except Exception:
                    pass  # the connection is gone too

    def dispatch(self, job):
        if job.name.startswith('build:'):
            self.startBuild(job)
        elif job.name.startswith('executor:stop:'):
            self.stopBuild(job)
        elif job.name.startswith('executor:resume:'):
            self.resumeBuild(job)
        else:
            job.sendWorkFail()

    def startBuild(self, job):
        build = RunningBuild(job)
        self.running[job.unique] = build
        job.sendWorkData(json.dumps({
            'worker_name': self.hostname,
            'url': 'finger://%s/%s' % (self.hostname, job.unique)}))
        job.sendWorkStatus(0, 100)
        thread = threading.Thread(target=self._runBuild, args=(build,),
                                  daemon=True)
        thread.start()

    def _runBuild(self, build):
        build.finish.wait()
        self.running.pop(build.job.unique, None)
        result = 'ABORTED' if build.stopped else 'SUCCESS'
        try:
            build.job.sendWorkComplete(json.dumps({'result': result}))
        except Exception:
            # The executor's connection is gone (a test killed it).
            pass

    def stopBuild(self, job):
        try:
            build = self.running.get(json.loads(job.arguments)['uuid'])
            if build is not None:
                build.stopped = True
                build.finish.set()
        finally:
            job.sendWorkComplete()

    def resumeBuild(self, job):
        try:
            build = self.running.get(json.loads(job.arguments)['uuid'])
            if build is not None:
                build.paused = False
        finally:
            job.sendWorkComplete()

    def stop(self):
        self._running = False
        self.worker.setFunctions([])
        for build in list(self.running.values()):
            build.stopped = True
            build.finish.set()
        self.worker.shutdown()
        self.thread.join(WAIT)


class RPCClient(object):
    """zuul's command-line client: submit, then poll job.complete."""

    def __init__(self, port):
        self.gearman = gear.Client()
        self.gearman.addServer(HOST, port)
        self.gearman.waitForServer(WAIT)

    def submitJob(self, name, data):
        job = gear.TextJob(name, json.dumps(data), unique=str(time.time()))
        self.gearman.submitJob(job, timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while not job.complete:
            if time.monotonic() > deadline:
                raise AssertionError('RPC job never completed')
            time.sleep(0.01)
        if job.exception:
            raise RuntimeError(job.exception)
        return job

    def stop(self):
        self.gearman.shutdown()


class MergeJob(gear.TextJob):
    """A job with its own completion event, as Zuul's merge client has.
    """

    def __init__(self, *args, **kw):
        super(MergeJob, self).__init__(*args, **kw)
        self.__event = threading.Event()

    def setComplete(self):
        self.__event.set()

    def wait(self, timeout=300):
        return self.__event.wait(timeout)


class MergeGearmanClient(gear.Client):

    def __init__(self, owner):
        super(MergeGearmanClient, self).__init__('merge-client')
        self.owner = owner

    def handleWorkComplete(self, packet):
        job = super(MergeGearmanClient, self).handleWorkComplete(packet)
        self.owner.onBuildCompleted(job)
        return job

    def handleWorkFail(self, packet):
        job = super(MergeGearmanClient, self).handleWorkFail(packet)
        self.owner.onBuildCompleted(job)
        return job

    def handleWorkException(self, packet):
        job = super(MergeGearmanClient, self).handleWorkException(packet)
        self.owner.onBuildCompleted(job)
        return job

    def handleDisconnect(self, job):
        job = super(MergeGearmanClient, self).handleDisconnect(job)
        self.owner.onBuildCompleted(job)


class MergeClient(object):

    def __init__(self, port):
        self.jobs = set()
        self.gearman = MergeGearmanClient(self)
        self.gearman.addServer(HOST, port)
        self.gearman.waitForServer(WAIT)

    def submitJob(self, name, data):
        job = MergeJob(name, json.dumps(data), unique=uuid.uuid4().hex)
        self.jobs.add(job)
        self.gearman.submitJob(job, precedence=gear.PRECEDENCE_HIGH,
                               timeout=WAIT)
        return job

    def onBuildCompleted(self, job):
        job.setComplete()
        self.jobs.discard(job)

    def stop(self):
        self.gearman.shutdown()
