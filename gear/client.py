"""The Gearman client: submit jobs and follow them to completion."""

import collections
import logging
import threading
import time
import uuid

from gear import constants, hashing
from gear.base import BaseClient
from gear.connection import (
    GetStatusTask, GetStatusUniqueTask, OptionReqTask, SubmitJobTask)
from gear.errors import (
    ConnectionError, GearmanError, NoConnectedServersError, TimeoutError,
    UnknownJobError)
from gear.protocol import (
    Packet, fraction, status_fields, submit_request, work_handle)
from gear.util import convert_to_bytes, to_text


def _handle_of(packet):
    """The job handle of a WORK_* packet (see protocol.work_handle)."""
    return work_handle(packet.getArgument(0))


def _server_key_of(conn):
    return hashing.server_key(conn.host, conn.port)


class Client(BaseClient):
    """A Gearman client.

    :arg str client_id: shown by the server's ``workers`` command and
        used in log names.
    :arg bool exceptions: ask every server for WORK_EXCEPTION packets
        (OPTION_REQ ``exceptions``) on each (re)connection, so that
        ``job.exception`` is set; without it gearmand sends WORK_FAIL.
    :arg bool resubmit: when a connection is lost, submit its unfinished
        foreground jobs again (to any connected server, within
        ``resubmit_timeout`` seconds) instead of marking them failed.
        A job whose worker had already done the work when the server was
        lost then runs twice: use it for jobs that are safe to repeat.
    :arg float resubmit_timeout: how long a lost job may wait for a
        server to take it again before it is marked failed.
    :arg job_callback: called as ``job_callback(job, event, data)`` for
        every update to a foreground job; see :meth:`handleJobEvent`.
        Also settable later as the ``job_callback`` attribute.
    """

    #: Seconds a server may take to answer an echo after it failed to
    #: answer a submission in time; if it does not, it is disconnected.
    probe_timeout = 5.0

    #: With several servers, send a job that has a unique to the server
    #: its unique hashes to (the next one in the key's order if that one
    #: is down), so that equal uniques from any client meet on one
    #: server and coalesce; ``getStatusUnique`` asks that server first.
    #: Jobs without a unique still go to the servers in turn.  False
    #: restores gear 0.16's turn-taking for every job.
    hash_uniques = True

    def __init__(self, client_id='unknown', exceptions=True,
                 resubmit=False, resubmit_timeout=60, job_callback=None):
        super(Client, self).__init__(client_id)
        self.job_callback = job_callback
        self.log = logging.getLogger(
            "gear.Client.%s" % (to_text(self.client_id),))
        self.options = set()
        self.exceptions = exceptions
        self.resubmit = resubmit
        self.resubmit_timeout = resubmit_timeout
        self._lost_jobs = collections.deque()
        self._resubmitter = None
        self._resubmit_lock = threading.Lock()

    def __repr__(self):
        return '<gear.Client 0x%x>' % id(self)

    # Connection set-up

    def _onConnect(self, conn):
        if self.client_id:
            conn.sendPacket(Packet(constants.REQ, constants.SET_CLIENT_ID,
                                   self.client_id))
        options = set(self.options)
        if self.exceptions:
            options.add(b'exceptions')
        for option in sorted(options):
            # Not waited for: a server that never answers OPTION_REQ has
            # the request retired by the next reply it does send.
            conn.sendRequest(
                Packet(constants.REQ, constants.OPTION_REQ, option),
                OptionReqTask(option))

    # Submitting

    def submitJob(self, job, background=False,
                  precedence=constants.PRECEDENCE_NORMAL, timeout=30,
                  when=None):
        """Submit ``job`` to the next server in turn.

        If a server cannot be reached, answers with an ERROR or does not
        answer within ``timeout`` seconds, the next one is tried.

        :arg bool background: the client will not follow the job.
        :arg int precedence: one of the ``PRECEDENCE_*`` constants.
        :arg when: run no earlier than this (epoch seconds or an aware
            datetime); needs ``background=True`` and normal precedence.
        :raises ConfigurationError: bad precedence or ``when``.
        :raises NoConnectedServersError: no server is connected.
        :raises GearmanError: no connected server accepted the job.
        """
        unique = job.binary_unique
        conns = self._connectionsFor(
            hashing.routing_key(unique, job.binary_arguments))
        if background and unique is None:
            # Without a unique, gearmand's persistent queues would let
            # such jobs overwrite one another.
            unique = uuid.uuid4().hex.encode('ascii')
            job._unique = unique
        ptype, payload = submit_request(
            job.binary_name, unique, job.binary_arguments, background,
            precedence, when)
        packet = Packet(constants.REQ, ptype, payload)

        if not conns:
            raise NoConnectedServersError("No connected Gearman servers")
        for conn in conns:
            task = SubmitJobTask(job)
            task.background = bool(background)
            try:
                conn.sendRequest(packet, task)
            except Exception:
                self.log.exception("Error submitting job to %s", conn)
                self._lostConnection(conn)
                continue
            if not task.wait(timeout):
                if task.abandon():
                    self.log.warning("Timed out waiting for a job handle"
                                     " from %s", conn)
                    self._probe(conn)
                    continue
            if task.failed:
                self.log.debug("Submission of %s to %s failed: %s", job,
                               conn, task.error)
                continue
            if not background:
                # What a resubmission after a lost connection needs.
                job._precedence = precedence
            return
        raise GearmanError("Unable to submit job to any connected servers")

    def _connectionsFor(self, unique):
        """The active connections in the order a submission of ``unique``
        tries them: by rendezvous hashing of the unique when
        :attr:`hash_uniques` is on, else the next in turn first."""
        if not unique or not self.hash_uniques:
            return self._connectionsInTurn()
        with self.connections_condition:
            active = self.active_connections[:]
            configured = active + self.inactive_connections
        if len(configured) < 2:
            return active
        live = set(map(id, active))
        return [conn for conn in hashing.rendezvous_order(
                    unique, configured, _server_key_of)
                if id(conn) in live]

    def _probe(self, conn):
        """Drop ``conn`` if it does not answer an echo either."""
        try:
            conn.echo(timeout=self.probe_timeout)
        except (TimeoutError, ConnectionError, OSError) as e:
            self.log.warning("%s does not answer (%s); disconnecting", conn,
                             e.__class__.__name__)
            self._lostConnection(conn)

    def setOption(self, name, timeout=30):
        """Set an option (e.g. ``exceptions``) on every server.

        The option is remembered and set again after reconnections.

        :returns: False if any server timed out or refused it.
        """
        name = convert_to_bytes(name)
        self.options.add(name)
        ok = True
        tasks = []
        with self.broadcast_lock:
            with self.connections_condition:
                conns = self.active_connections[:]
            for conn in conns:
                task = OptionReqTask(name)
                try:
                    conn.sendRequest(
                        Packet(constants.REQ, constants.OPTION_REQ, name),
                        task)
                except Exception:
                    self.log.exception("Error setting option on %s", conn)
                    self._lostConnection(conn)
                    ok = False
                    continue
                tasks.append(task)
        deadline = time.monotonic() + timeout
        for task in tasks:
            remaining = max(0.0, deadline - time.monotonic())
            if not task.wait(remaining) and task.abandon():
                ok = False
            elif task.failed:
                ok = False
        return ok

    # Status queries

    def getStatus(self, job, timeout=30):
        """Ask the job's server for its status and update ``job``.

        Updates ``known``, ``running``, ``numerator``, ``denominator``
        and ``fraction_complete``.

        :raises UnknownJobError: the job has no handle or connection.
        :raises TimeoutError: no answer within ``timeout`` seconds.
        :raises GearmanError: the server answered with an ERROR or the
            connection was lost.
        """
        conn = job.connection
        if not job.handle or conn is None:
            raise UnknownJobError()
        if not conn.connected:
            raise ConnectionError("%s is not connected" % (conn,))
        task = GetStatusTask(job)
        packet = Packet(constants.REQ, constants.GET_STATUS, job.handle)
        try:
            conn.sendRequest(packet, task)
        except Exception:
            self._lostConnection(conn)
            raise
        if not task.wait(timeout) and task.abandon():
            raise TimeoutError("%s did not answer a status request for %s"
                               " within %gs" % (conn, job, timeout))
        if task.failed:
            raise GearmanError("Status request for %s failed: %s" %
                               (job, task.error))
        return job

    def getStatusUnique(self, unique, timeout=30):
        """Look a job up by its unique on the connected servers.

        With :attr:`hash_uniques` on, the servers are asked one by one in
        the unique's hash order (its owner first) until one knows it;
        otherwise all of them at once.

        :returns: ``(known, running, numerator, denominator,
            waiting_clients)`` from the first server that knows it, or
            ``(False, False, b'0', b'0', 0)``.
        :raises NoConnectedServersError: no server is connected.
        :raises TimeoutError: no server answered in time.
        """
        unique = convert_to_bytes(unique)
        if self.hash_uniques and unique:
            conns = self._connectionsFor(unique)
            rounds = [[conn] for conn in conns]
        else:
            with self.connections_condition:
                conns = self.active_connections[:]
            rounds = [conns]
        if not conns:
            raise NoConnectedServersError("No connected Gearman servers")
        deadline = time.monotonic() + timeout
        answered = False
        for group in rounds:
            result, replied = self._askStatusUnique(group, unique, deadline)
            answered = answered or replied
            if result is not None:
                return result
        if not answered:
            raise TimeoutError("no server answered a status request for"
                               " unique %r within %gs" % (unique, timeout))
        return (False, False, b'0', b'0', 0)

    def _askStatusUnique(self, conns, unique, deadline):
        """Send GET_STATUS_UNIQUE to ``conns``; return (the first known
        result or None, whether any server answered)."""
        tasks = []
        for conn in conns:
            task = GetStatusUniqueTask(unique)
            try:
                conn.sendRequest(Packet(constants.REQ,
                                        constants.GET_STATUS_UNIQUE, unique),
                                 task)
            except Exception:
                self.log.exception("Error querying %s", conn)
                self._lostConnection(conn)
                continue
            tasks.append(task)
        answered = not tasks
        for task in tasks:
            remaining = max(0.0, deadline - time.monotonic())
            if not task.wait(remaining) and task.abandon():
                continue
            if task.failed or task.result is None:
                continue
            answered = True
            if task.result[0]:
                return task.result, True
        return None, answered

    # Replies

    def handleJobCreated(self, packet):
        task = self._takeReply(packet)
        handle = packet.getArgument(0)
        if not isinstance(task, SubmitJobTask):
            self.log.warning("JOB_CREATED %s from %s matches no submission",
                             to_text(handle), packet.connection)
            return None
        if not task.claim():
            self.log.debug("Late JOB_CREATED %s for an abandoned submission",
                           to_text(handle))
            return None
        job = task.job
        job.handle = handle
        job.connection = packet.connection
        if not task.background:
            self._trackJob(packet.connection, handle, job)
        task.setComplete()
        return job

    @staticmethod
    def _trackJob(conn, handle, job):
        first = conn.related_jobs.get(handle)
        if first is None:
            conn.related_jobs[handle] = job
            return
        # The server coalesced this submission with an earlier one: it
        # will send one copy of each WORK_* packet per submission.
        group = conn.coalesced_jobs.get(handle)
        if group is None:
            group = conn.coalesced_jobs[handle] = collections.deque([first])
        group.append(job)

    def _jobForUpdate(self, packet, final):
        """The Job a WORK_* packet updates (copies go round-robin)."""
        conn = packet.connection
        handle = _handle_of(packet)
        group = conn.coalesced_jobs.get(handle) if conn is not None \
            else None
        if group:
            job = group[0]
            group.rotate(-1)
            if final:
                group.remove(job)
                if len(group) > 1:
                    conn.related_jobs[handle] = group[0]
                else:
                    del conn.coalesced_jobs[handle]
                    conn.related_jobs[handle] = group[0]
            return job
        if conn is not None and handle != packet.getArgument(0):
            job = conn.related_jobs.get(handle)
        else:
            try:
                job = packet.getJob()
            except UnknownJobError:
                job = None
        if job is None:
            self.log.debug("Packet %s for a job this client does not follow",
                           packet)
            return None
        if final and conn is not None:
            conn.related_jobs.pop(handle, None)
        return job

    def _updateJob(self, packet, event, final, argument=None, **state):
        """Apply one WORK_* packet to the job it names, then report
        ``event``.

        ``argument`` says where the packet's payload goes: ``'data'``
        appends it to ``job.data`` (unless empty), ``'exception'`` stores
        it as ``job.exception``.  Then each ``state`` attribute is set, in
        the order given.  Returns the job, or None when this client does
        not follow it.
        """
        job = self._jobForUpdate(packet, final)
        if job is None:
            return None
        payload = None
        if argument == 'data':
            payload = packet.getArgument(1, True)
            if payload:
                job.data.append(payload)
        elif argument == 'exception':
            payload = job.exception = packet.getArgument(1, True)
        for name, value in state.items():
            setattr(job, name, value)
        self._jobEvent(job, event, payload, final)
        return job

    def _jobEvent(self, job, event, data, final):
        try:
            self.handleJobEvent(job, event, data)
        except Exception:
            self.log.exception("Exception in the %s event handler of %s",
                               event, job)
        if final:
            # getattr: a gear 0.16 program may follow a job object of
            # its own that is not a gear.Job.
            wake = getattr(job, '_wakeWaiters', None)
            if wake is not None:
                wake()

    def handleJobEvent(self, job, event, data):
        """Called for every update to a foreground job, after ``job`` has
        been updated; calls ``job_callback`` if one is set.

        ``event`` is one of ``'data'``, ``'warning'``, ``'status'``
        (progress: see ``job.numerator`` and ``job.denominator``), and the
        final ones ``'complete'``, ``'fail'``, ``'exception'`` and
        ``'lost'`` (see :meth:`handleDisconnect`).  ``data`` is the
        packet's payload as bytes for data, warning, complete and
        exception, else None.

        It runs in the client's poll thread (``'lost'`` may also come from
        the resubmission thread or
        :meth:`~gear.BaseClientServer.shutdown`): it must not block.
        An exception it raises is logged and otherwise ignored.  Override
        it, or set ``job_callback``, instead of the ``handleWork*``
        methods; those still work as in gear 0.16.
        """
        callback = self.job_callback
        if callback is not None:
            callback(job, event, data)

    def waitForJobs(self, jobs, timeout=None):
        """Wait until every job in ``jobs`` has ended (see
        :meth:`Job.wait <gear.Job.wait>`), at most ``timeout`` seconds in
        all (None: no limit).

        :returns: True if all ended; False if ``timeout`` passed first
            (the jobs whose ``complete`` is still False are the ones left).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in jobs:
            remaining = None if deadline is None else \
                max(0.0, deadline - time.monotonic())
            if not job.wait(remaining):
                return False
        return True

    def handleWorkComplete(self, packet):
        return self._updateJob(packet, 'complete', True, 'data',
                               complete=True, failure=False)

    def handleWorkFail(self, packet):
        return self._updateJob(packet, 'fail', True,
                               complete=True, failure=True)

    def handleWorkException(self, packet):
        return self._updateJob(packet, 'exception', True, 'exception',
                               complete=True, failure=True)

    def handleWorkData(self, packet):
        return self._updateJob(packet, 'data', False, 'data')

    def handleWorkWarning(self, packet):
        return self._updateJob(packet, 'warning', False, 'data',
                               warning=True)

    def handleWorkStatus(self, packet):
        job = self._jobForUpdate(packet, False)
        if job is None:
            return None
        self._setProgress(job, packet.getArgument(1), packet.getArgument(2))
        self._jobEvent(job, 'status', None, False)
        return job

    @staticmethod
    def _setProgress(job, numerator, denominator):
        job.numerator = numerator
        job.denominator = denominator
        job.fraction_complete = fraction(numerator, denominator)

    def handleStatusRes(self, packet):
        """Update the job a STATUS_RES is about and return it.

        The job is the one getStatus() asked about or, for a status
        request sent without a task (a plain ``sendPacket``), the job this
        connection follows under that handle.

        :raises UnknownJobError: no such job is followed here (as gear
            0.16 did; subclasses catch it to detect lost jobs).
        """
        task = self._takeReply(packet)
        if isinstance(task, GetStatusTask):
            job = task.job
        else:
            if task is not None:
                task.fail()
            job = packet.getJob()
        job.known, job.running, numerator, denominator = status_fields(
            packet.arguments)
        self._setProgress(job, numerator, denominator)
        if task is not None:
            task.setComplete()
        return job

    def handleStatusResUnique(self, packet):
        task = self._takeReply(packet)
        args = packet.arguments
        try:
            waiting = int(args[5])
        except (IndexError, ValueError):
            waiting = 0
        result = (args[1] == b'1', args[2] == b'1',
                  args[3] if len(args) > 3 else b'0',
                  args[4] if len(args) > 4 else b'0', waiting)
        if isinstance(task, GetStatusUniqueTask):
            task.result = result
            task.setComplete()
        elif task is not None:
            task.fail()
        return result

    def handleOptionRes(self, packet):
        task = self._takeReply(packet)
        option = packet.getArgument(0)
        packet.connection.handleOptionRes(option)
        if task is not None:
            task.setComplete()
        return option

    def handleDisconnect(self, job):
        """A foreground job's connection was lost before it finished.

        With ``resubmit`` the job is queued to be submitted again;
        otherwise (the default) it is marked complete, failed and
        ``disconnected`` so that waiters stop waiting.  Override (without
        calling this) to handle lost jobs yourself.
        """
        if self.resubmit and self.running and not job.complete:
            self._queueResubmission(job)
            return job
        return self._markLost(job)

    def _markLost(self, job):
        job.complete = True
        job.failure = True
        job.disconnected = True
        self._jobEvent(job, 'lost', None, True)
        return job

    def _cleanup(self):
        # Jobs still followed when the client shuts down are lost too:
        # nothing would ever end them, and their waiters must wake.
        # Collected first: disconnecting forgets them.
        with self.connections_condition:
            conns = self.active_connections + self.inactive_connections
        jobs = [job for conn in conns for job in self._relatedJobs(conn)]
        super(Client, self)._cleanup()
        for job in jobs:
            if not job.complete:
                self._markLost(job)

    def _queueResubmission(self, job):
        job.handle = None
        job.connection = None
        del job.data[:]
        job.numerator = job.denominator = job.fraction_complete = None
        deadline = time.monotonic() + self.resubmit_timeout
        with self._resubmit_lock:
            self._lost_jobs.append((job, deadline))
            if self._resubmitter is None:
                # Not the poll thread: submitJob waits for replies that
                # only the poll thread can deliver.
                self._resubmitter = threading.Thread(
                    target=self._resubmitLostJobs,
                    name="Gearman client resubmit", daemon=True)
                self._resubmitter.start()

    def _resubmitLostJobs(self):
        while True:
            with self._resubmit_lock:
                if not self._lost_jobs:
                    self._resubmitter = None
                    return
                job, deadline = self._lost_jobs.popleft()
            self._resubmit(job, deadline)

    def _resubmit(self, job, deadline):
        precedence = getattr(job, '_precedence',
                             constants.PRECEDENCE_NORMAL)
        while self.running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self.waitForServer(timeout=remaining)
                self.submitJob(job, precedence=precedence,
                               timeout=min(30, max(remaining, 0.1)))
                self.log.info("Resubmitted %s after a lost connection", job)
                return
            except (GearmanError, TimeoutError) as e:
                self.log.debug("Resubmission of %s failed: %s", job, e)
                # The servers are reconnecting; try again shortly.
                with self.connections_condition:
                    self.connections_condition.wait(
                        min(0.5, max(0.0, deadline - time.monotonic())))
        self.log.warning("Gave up resubmitting %s", job)
        self._markLost(job)
