"""The Gearman worker: register functions, then take jobs with getJob().

Each server connection runs a small state machine (``Connection.state``):

=========== ================================= ==========
From        Event                             To
=========== ================================= ==========
INIT        connected, functions sent         IDLE
IDLE        a caller waits; GRAB_JOB_UNIQ     GRAB_WAIT
GRAB_WAIT   JOB_ASSIGN*                       IDLE
GRAB_WAIT   NO_JOB; PRE_SLEEP sent            SLEEP
SLEEP       NOOP, a caller waits; GRAB        GRAB_WAIT
SLEEP       NOOP, every caller already served AWAKE
AWAKE       a caller waits; GRAB_JOB_UNIQ     GRAB_WAIT
SLEEP       registerFunction                  IDLE
SLEEP/AWAKE no caller waiting                 IDLE
=========== ================================= ==========

Grabs are rationed: across all servers, the GRAB_JOB_UNIQ requests in
flight plus the jobs already queued never exceed the callers waiting in
getJob(), so one caller never ends up holding jobs from several servers.
"""

import collections
import logging
import math
import threading
import time
import warnings

from gear import constants
from gear.base import BaseClient
from gear.errors import (
    ConfigurationError, InterruptedError, InvalidDataError, TimeoutError)
from gear.job import FunctionRecord, TextWorkerJob, WorkerJob
from gear.protocol import Packet
from gear.util import convert_to_bytes, to_text

INIT = 'INIT'
IDLE = 'IDLE'
GRAB_WAIT = 'GRAB_WAIT'
SLEEP = 'SLEEP'
AWAKE = 'AWAKE'

# How long stopWaitingForJobs() waits for grabs already in flight.
_STOP_GRACE = 5.0


def timeout_to_wire(timeout):
    """Validate a CAN_DO_TIMEOUT value (milliseconds) and encode it.

    Accepts a non-negative int, a finite float (truncated), or str/bytes
    holding decimal digits.  Returns bytes, or None for no timeout.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool):
        raise TypeError("timeout must be a number of milliseconds")
    if isinstance(timeout, float):
        if not math.isfinite(timeout):
            raise ConfigurationError("timeout must be finite")
        timeout = int(timeout)
    if isinstance(timeout, int):
        if timeout < 0:
            raise ConfigurationError("timeout must not be negative")
        return str(timeout).encode('ascii')
    if isinstance(timeout, (str, bytes, bytearray)):
        value = convert_to_bytes(timeout)
        value = bytes(value).strip()
        if not value.isdigit() or len(value) > 20:
            raise ConfigurationError(
                "timeout must be a decimal number of milliseconds")
        return value
    raise TypeError("timeout must be int, float, str or bytes")


def _can_do_packet(record):
    wire = timeout_to_wire(record.timeout)
    if wire is None:
        return Packet(constants.REQ, constants.CAN_DO, record.name)
    return Packet(constants.REQ, constants.CAN_DO_TIMEOUT,
                  record.name + b'\x00' + wire)


class Worker(BaseClient):
    """A Gearman worker.

    :arg str client_id: the worker's name, shown by the server's
        ``workers`` command.
    :arg str worker_id: deprecated alias of ``client_id``.
    """

    job_class = WorkerJob

    def __init__(self, client_id=None, worker_id=None):
        if worker_id is not None:
            warnings.warn("worker_id is deprecated, use client_id",
                          DeprecationWarning, stacklevel=2)
            if not client_id:
                client_id = worker_id
        if not client_id:
            raise ConfigurationError("A client_id must be provided")
        self.functions = {}
        self.job_lock = threading.RLock()
        # getJob() callers wait on the first (one is woken per job that
        # arrives); stopWaitingForJobs() waits on the second for the
        # answers to grabs in flight.
        self._job_available = threading.Condition(self.job_lock)
        self._grab_answered = threading.Condition(self.job_lock)
        self.waiting_for_jobs = 0
        self.job_queue = collections.deque()
        self._interrupts = 0
        self._grab_turn = 0
        # Connections whose server answered GRAB_JOB_UNIQ with an ERROR
        # (Perl's Gearman::Server): they are sent GRAB_JOB instead.  And
        # those that assigned a job with a unique, so they support it.
        self._plain_grab = set()
        self._uniq_grab_ok = set()
        super(Worker, self).__init__(client_id)
        self.worker_id = self.client_id
        self.log = logging.getLogger(
            "gear.Worker.%s" % (to_text(self.client_id),))

    def __repr__(self):
        return '<gear.Worker 0x%x>' % id(self)

    # Functions

    def registerFunction(self, name, timeout=None):
        """Tell every server this worker can do ``name``.

        :arg timeout: a run time limit in **milliseconds** (int, float,
            str or bytes); the server requeues a job that runs longer.
        """
        record = FunctionRecord(name, timeout)
        packet = _can_do_packet(record)    # validates before recording
        with self.broadcast_lock:
            self.functions[record.name] = record
            self.broadcast(packet)
            with self.job_lock:
                for conn in self.active_connections[:]:
                    if conn.state == SLEEP:
                        conn.changeState(IDLE)
                self._updateStateMachines()

    def unRegisterFunction(self, name):
        """Tell every server this worker no longer does ``name``.

        CANT_DO is sent at once, as gear 0.16 did; jobs of that function
        already running here go on and may still send their results, and
        the connection keeps taking jobs of the other functions.
        """
        name = convert_to_bytes(name)
        with self.broadcast_lock:
            self.functions.pop(name, None)
            for conn in self.active_connections[:]:
                self._retireFunction(conn, name)

    def setFunctions(self, functions):
        """Replace the registered functions with ``functions``.

        :arg list functions: :class:`FunctionRecord` objects.
        :raises InvalidDataError: an item is not a FunctionRecord.
        """
        new = {}
        for record in functions:
            if not isinstance(record, FunctionRecord):
                raise InvalidDataError(
                    "An iterable of FunctionRecords is required.")
            new[convert_to_bytes(record.name)] = record
        packets = {name: _can_do_packet(record)
                   for name, record in new.items()}
        with self.broadcast_lock:
            old = self.functions
            removed = [name for name in old if name not in new]
            added = [name for name, record in new.items()
                     if name not in old or
                     timeout_to_wire(old[name].timeout) !=
                     timeout_to_wire(record.timeout)]
            self.functions = new
            for conn in self.active_connections[:]:
                for name in removed:
                    self._retireFunction(conn, name)
                for name in added:
                    try:
                        conn.sendPacket(packets[name])
                    except Exception:
                        self.log.exception("Error registering on %s", conn)
                        self._lostConnection(conn)
                        break
            if added:
                with self.job_lock:
                    for conn in self.active_connections[:]:
                        if conn.state == SLEEP:
                            conn.changeState(IDLE)
                    self._updateStateMachines()

    def _retireFunction(self, conn, name):
        # Called with broadcast_lock held.
        try:
            conn.sendPacket(Packet(constants.REQ, constants.CANT_DO, name))
        except Exception:
            self.log.exception("Error unregistering on %s", conn)
            self._lostConnection(conn)

    # Connection life cycle

    def _onConnect(self, conn):
        if self.client_id:
            conn.sendPacket(Packet(constants.REQ, constants.SET_CLIENT_ID,
                                   self.client_id))
        for record in list(self.functions.values()):
            conn.sendPacket(_can_do_packet(record))
        conn.changeState(IDLE)

    def _onActiveConnection(self, conn):
        with self.job_lock:
            self._updateStateMachines()

    def _lostConnection(self, conn):
        super(Worker, self)._lostConnection(conn)
        with self.job_lock:
            self._job_available.notify_all()
            self._grab_answered.notify_all()
            self._updateStateMachines()

    def _shutdown(self):
        super(Worker, self)._shutdown()
        with self.job_lock:
            self._job_available.notify_all()
            self._grab_answered.notify_all()

    # The grab state machine

    def _updateStateMachines(self):
        """Send grabs where callers need them; park idle connections."""
        with self.job_lock:
            if not self.running:
                return
            conns = self.active_connections[:]
            if self.waiting_for_jobs <= 0:
                for conn in conns:
                    if conn.state in (SLEEP, AWAKE):
                        conn.changeState(IDLE)
                return
            demand = self.waiting_for_jobs - len(self.job_queue)
            for conn in conns:
                if conn.state == GRAB_WAIT:
                    demand -= 1
            if demand <= 0:
                return
            count = len(conns)
            self._grab_turn = (self._grab_turn + 1) % max(count, 1)
            ordered = conns[self._grab_turn:] + conns[:self._grab_turn]
            # Servers that told us they have work come first.
            candidates = [c for c in ordered if c.state == AWAKE] + \
                [c for c in ordered if c.state == IDLE]
            for conn in candidates:
                if demand <= 0:
                    break
                if self._sendGrabJobUniq(conn):
                    demand -= 1

    def _sendGrabJobUniq(self, connection=None):
        """Send GRAB_JOB_UNIQ (GRAB_JOB where the server refused it) on
        ``connection``; True if it was sent.

        Without a connection, grab wherever the waiting callers need it.
        """
        if connection is None:
            self._updateStateMachines()
            return True
        connection.changeState(GRAB_WAIT)
        ptype = constants.GRAB_JOB if connection in self._plain_grab \
            else constants.GRAB_JOB_UNIQ
        try:
            connection.sendPacket(Packet(constants.REQ, ptype, b''))
        except Exception:
            self.log.exception("Error sending %s to %s",
                               constants.types[ptype], connection)
            self._lostConnection(connection)
            return False
        return True

    def _sendPreSleep(self, connection):
        connection.changeState(SLEEP)
        try:
            connection.sendPacket(Packet(constants.REQ, constants.PRE_SLEEP,
                                         b''))
        except Exception:
            self.log.exception("Error sending PRE_SLEEP to %s", connection)
            self._lostConnection(connection)

    def handleNoop(self, packet):
        conn = packet.connection
        with self.job_lock:
            if conn.state == SLEEP:
                conn.changeState(AWAKE)
                self._updateStateMachines()
            else:
                self.log.debug("Ignoring NOOP on %s in state %s", conn,
                               conn.state)

    def handleNoJob(self, packet):
        conn = packet.connection
        with self.job_lock:
            if conn.state == GRAB_WAIT:
                self._sendPreSleep(conn)
                self._grab_answered.notify_all()
                self._updateStateMachines()
            else:
                self.log.debug("Ignoring NO_JOB on %s in state %s", conn,
                               conn.state)

    def handleJobAssign(self, packet):
        return self._handleJobAssignment(
            packet, packet.getArgument(0), packet.getArgument(1),
            packet.getArgument(2, True), None)

    def handleError(self, packet):
        """An ERROR while a grab is outstanding, on a connection that never
        assigned a job with a unique, means the server does not know
        GRAB_JOB_UNIQ: grab with GRAB_JOB there from now on."""
        conn = packet.connection
        with self.job_lock:
            if conn.state == GRAB_WAIT and not conn.pending_tasks and \
                    packet.getArgument(0) not in self._UNSOLICITED_ERRORS and \
                    conn not in self._plain_grab and \
                    conn not in self._uniq_grab_ok:
                self._plain_grab.add(conn)
                self.log.info("%s refused GRAB_JOB_UNIQ (ERROR %s); using"
                              " GRAB_JOB on it", conn,
                              to_text(packet.getArgument(0)))
                self._sendGrabJobUniq(conn)
                return None
        return super(Worker, self).handleError(packet)

    def handleJobAssignUnique(self, packet):
        if packet.connection not in self._uniq_grab_ok:
            self._uniq_grab_ok.add(packet.connection)
        unique = packet.getArgument(2)
        return self._handleJobAssignment(
            packet, packet.getArgument(0), packet.getArgument(1),
            packet.getArgument(3, True), unique or None)

    def handleJobAssignAll(self, packet):
        unique = packet.getArgument(2)
        return self._handleJobAssignment(
            packet, packet.getArgument(0), packet.getArgument(1),
            packet.getArgument(4, True), unique or None)

    def _handleJobAssignment(self, packet, handle, name, arguments, unique):
        conn = packet.connection
        job = self.job_class(handle, name, arguments, unique)
        job.connection = conn
        job._generation = conn._generation
        with self.job_lock:
            if conn.state == GRAB_WAIT:
                conn.changeState(IDLE)
            self.job_queue.append(job)
            try:
                self._updateStateMachines()
            finally:
                # Woken last, once the next grab is sent: a caller woken
                # earlier would only block again on job_lock, held
                # across that send.  One job, one caller: waking them
                # all would make the rest contend for the lock only to
                # wait again.
                self._job_available.notify()
                self._grab_answered.notify_all()
        return job

    # Taking jobs

    def getJob(self, timeout=None):
        """Wait for a job and return it.

        Many threads may wait at once.

        :arg timeout: seconds to wait, or None to wait indefinitely.
        :raises InterruptedError: stopWaitingForJobs() or shutdown() was
            called.
        :raises TimeoutError: no job within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.job_lock:
            if not self.running:
                raise InterruptedError()
            interrupts = self._interrupts
            self.waiting_for_jobs += 1
            returning = False
            try:
                self._updateStateMachines()
                while True:
                    if self.job_queue:
                        returning = True
                        return self.job_queue.popleft()
                    if not self.running or interrupts != self._interrupts:
                        raise InterruptedError()
                    if deadline is None:
                        self._job_available.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            "no job arrived within %gs" % timeout)
                    self._job_available.wait(remaining)
            finally:
                self.waiting_for_jobs -= 1
                if not returning or self.waiting_for_jobs <= 0:
                    # Taking a queued job lowers the callers and the
                    # queue by one each: the grab demand is unchanged,
                    # and every event that could let a grab go out
                    # (a connection idle or awake again, a CANT_DO
                    # sent) runs the state machines itself.
                    self._updateStateMachines()

    def stopWaitingForJobs(self):
        """Interrupt every waiting getJob() with InterruptedError.

        Then wait (up to 5 s) for the answers to grabs already sent; jobs
        they bring stay queued for the next getJob().
        """
        deadline = time.monotonic() + _STOP_GRACE
        with self.job_lock:
            self._interrupts += 1
            self._job_available.notify_all()
            while True:
                if not any(conn.state == GRAB_WAIT
                           for conn in self.active_connections[:]):
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._grab_answered.wait(remaining)


class TextWorker(Worker):
    """A :class:`Worker` whose jobs are :class:`~gear.TextWorkerJob`."""

    job_class = TextWorkerJob
