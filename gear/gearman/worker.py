"""GearmanWorker: python-gearman's worker API on top of gear.Worker.

python-gearman ran callbacks inside its own select loop, in the thread
that called ``work()``.  Here ``work()`` takes jobs one at a time from a
gear Worker with ``getJob(timeout=poll_timeout)`` and runs the callback in
that same calling thread; gear's grab rationing guarantees that a single
waiting caller never holds more than one job across all servers.

The gear Worker lives only while ``work()`` runs (python-gearman, too,
closed its connections when the loop ended); registrations and the client
id are remembered and announced again on every (re)connection.
"""

import logging
import sys
import threading

import gear
from gear import constants as wire
from gear.protocol import Packet

from gear.gearman.encoder import NoopEncoder
from gear.gearman.errors import GearmanError, ServerUnavailable
from gear.gearman.hosts import parse_host_list
from gear.gearman.job import GearmanJob
from gear.gearman.links import LinkWatch
from gear.gearman.tracking import WireText, name_text

log = logging.getLogger('gear.gearman.worker')

POLL_TIMEOUT_IN_SECONDS = 60.0

# gear.Worker insists on an id; python-gearman sent none unless asked.
_PLACEHOLDER_ID = 'gear.gearman'


def _as_bytes(name):
    if isinstance(name, str):
        return name.encode('utf-8')
    return bytes(name)


class _FacadeWorker(LinkWatch, gear.Worker):
    """A gear Worker that can report whether its servers are reachable."""

    def __init__(self, client_id):
        self._initLinkWatch()
        super(_FacadeWorker, self).__init__(client_id or _PLACEHOLDER_ID)
        if not client_id:
            # No SET_CLIENT_ID on connect; servers show "-".
            self.client_id = None


class GearmanWorker(object):
    """Run jobs for registered tasks (python-gearman API).

    :arg host_list: servers, in any form GearmanClient accepts.

    A task callback is called as ``callback(gearman_worker, gearman_job)``
    and its return value becomes the job's result.  ``data_encoder``
    decodes the assigned data and encodes everything sent back.
    """

    job_class = GearmanJob
    data_encoder = NoopEncoder

    #: Seconds to wait for a server that is still connecting.  A refused
    #: connection counts as unreachable at once.
    connect_timeout = 10.0

    def __init__(self, host_list=None):
        self.host_list = parse_host_list(host_list)
        self.worker_abilities = {}
        self.worker_client_id = None
        self.command_handler_holding_job_lock = None
        self._task_names = {}
        self._gear_worker = None
        self._lock = threading.RLock()
        # (id(connection), handle) -> the gear WorkerJob being run, and
        # the keys of those that already sent their final packet.
        self._running = {}
        self._finished = set()
        # Tasks unregistered while one of their jobs ran here: their
        # CANT_DO waits for that job's end, since gearmand would requeue
        # the job and refuse its result.
        self._unregister_after_job = set()

    # Configuration

    def register_task(self, task, callback_function):
        """Run ``callback_function`` for jobs of ``task``; returns task."""
        name = _as_bytes(task)
        with self._lock:
            self.worker_abilities[task] = callback_function
            self._task_names[name] = task
            self._unregister_after_job.discard(name)
            if self._gear_worker is not None:
                self._gear_worker.registerFunction(name)
        return task

    def unregister_task(self, task):
        """Stop taking jobs of ``task``; returns task."""
        name = _as_bytes(task)
        with self._lock:
            registered = self._task_names.pop(name, task)
            self.worker_abilities.pop(registered, None)
            if any(job.binary_name == name and key not in self._finished
                   for key, job in self._running.items()):
                self._unregister_after_job.add(name)
            elif self._gear_worker is not None:
                self._gear_worker.unRegisterFunction(name)
        return task

    def _unregisterDeferred(self):
        with self._lock:
            names, self._unregister_after_job = \
                self._unregister_after_job, set()
            if self._gear_worker is not None:
                for name in names:
                    self._gear_worker.unRegisterFunction(name)

    def set_client_id(self, client_id):
        """Name this worker in the server's ``workers`` listing."""
        with self._lock:
            self.worker_client_id = client_id
            worker = self._gear_worker
            if worker is not None:
                worker.client_id = _as_bytes(client_id)
                worker.broadcast(Packet(wire.REQ, wire.SET_CLIENT_ID,
                                        worker.client_id))
        return client_id

    # Connections

    def _start_gear_worker(self):
        worker = _FacadeWorker(self.worker_client_id)
        for name in self._task_names:
            worker.registerFunction(name)
        for address in self.host_list:
            if address.use_ssl:
                worker.addServer(address.host, address.port,
                                 address.keyfile, address.certfile,
                                 address.ca_certs)
            else:
                worker.addServer(address.host, address.port)
        return worker

    def establish_worker_connections(self):
        """Connect (if needed) and return the live server connections.

        :raises ServerUnavailable: no server could be reached.
        """
        with self._lock:
            if not self.host_list:
                raise ServerUnavailable('No servers in host_list')
            worker = self._gear_worker
            if worker is None:
                worker = self._gear_worker = self._start_gear_worker()
        if not worker.isConnected() and \
                not worker.waitConnected(self.connect_timeout):
            raise ServerUnavailable('Found no valid connections in list: %r'
                                    % (self.host_list,))
        return list(worker.active_connections)

    def shutdown(self):
        """Close every server connection; a running work() returns."""
        with self._lock:
            worker, self._gear_worker = self._gear_worker, None
        if worker is not None and worker.running:
            worker.shutdown()

    def handle_error(self, current_connection):
        """Called when sending on ``current_connection`` failed."""
        log.warning('Lost the connection %s', current_connection)

    # The loop

    def work(self, poll_timeout=POLL_TIMEOUT_IN_SECONDS):
        """Take and run jobs until after_poll() or after_job() says stop.

        :raises ServerUnavailable: no server can be reached.
        """
        worker = None
        try:
            self.establish_worker_connections()
            worker = self._gear_worker
            # shutdown() (from a callback or another thread) replaces the
            # gear Worker, which ends the loop.
            while worker is not None and self._gear_worker is worker:
                if not worker.isConnected():
                    self.establish_worker_connections()
                try:
                    gear_job = worker.getJob(timeout=poll_timeout)
                except gear.TimeoutError:
                    if not self.after_poll(False):
                        break
                    continue
                except gear.InterruptedError:
                    break
                self._run(gear_job)
                if not self.after_job() or not self.after_poll(True):
                    break
        finally:
            if worker is None or self._gear_worker is worker:
                self.shutdown()

    def after_poll(self, any_activity):
        """Called after each wait; return False to leave work()."""
        return True

    def after_job(self):
        """Called after each finished job; return False to leave work()."""
        return True

    def _run(self, gear_job):
        key = (id(gear_job.connection), gear_job.handle)
        self._running[key] = gear_job
        try:
            if not self.set_job_lock(gear_job, lock=True):
                raise GearmanError('A job is already running')
            try:
                try:
                    data = self.data_encoder.decode(gear_job.arguments)
                except Exception:
                    log.exception('Unable to decode the data of job %s',
                                  name_text(gear_job.handle))
                    self._finished.add(key)
                    self._send(gear_job, gear_job.sendWorkFail)
                    return
                task = self._task_names.get(gear_job.binary_name,
                                            gear_job.name)
                unique = name_text(gear_job.unique) or WireText('')
                job = self.create_job(gear_job, name_text(gear_job.handle),
                                      task, unique, data)
                try:
                    self.on_job_execute(job)
                except Exception:
                    # E.g. a result the data encoder cannot send (the
                    # python-gearman docs' ``return reversed(data)``):
                    # fail this job and keep the worker serving.
                    log.exception('Job %s of %r could not be reported;'
                                  ' failing it', job.handle, task)
                    self.send_job_failure(job)
            finally:
                self.set_job_lock(gear_job, lock=False)
        finally:
            self._running.pop(key, None)
            self._finished.discard(key)
            if self._unregister_after_job:
                self._unregisterDeferred()

    # Hooks

    def create_job(self, command_handler, job_handle, task, unique, data):
        """Build the job passed to the callback (``command_handler`` is
        opaque)."""
        return self.job_class(command_handler.connection, job_handle, task,
                              unique, data)

    def on_job_execute(self, current_job):
        """Run the task's callback; its result goes to on_job_complete."""
        try:
            callback = self.worker_abilities[current_job.task]
            result = callback(self, current_job)
        except Exception:
            return self.on_job_exception(current_job, sys.exc_info())
        return self.on_job_complete(current_job, result)

    def on_job_exception(self, current_job, exc_info):
        """The callback raised: report WORK_FAIL."""
        log.error('Job %s of %r failed', current_job.handle,
                  current_job.task, exc_info=exc_info)
        self.send_job_failure(current_job)
        return False

    def on_job_complete(self, current_job, job_result):
        """The callback returned: report WORK_COMPLETE with its result."""
        self.send_job_complete(current_job, job_result)
        return True

    # The job lock (one job at a time)

    def set_job_lock(self, command_handler, lock):
        """Take (lock=True) or release the worker-wide job lock.

        Returns False if that is not possible: taking a held lock, or
        releasing one held by another handler.
        """
        with self._lock:
            holder = self.command_handler_holding_job_lock
            if lock:
                if holder is not None:
                    return False
                self.command_handler_holding_job_lock = command_handler
            else:
                if holder is not command_handler:
                    return False
                self.command_handler_holding_job_lock = None
            return True

    def has_job_lock(self):
        return self.command_handler_holding_job_lock is not None

    def check_job_lock(self, command_handler):
        return self.command_handler_holding_job_lock is command_handler

    # Reporting on a job

    def _encode(self, data):
        if data is None and issubclass(self.data_encoder, NoopEncoder):
            return b''
        return self.data_encoder.encode(data)

    def _gear_job_for(self, current_job):
        gear_job = self._running.get(
            (id(current_job.connection), _as_bytes(current_job.handle)))
        if gear_job is None:
            # A job built by hand (or already finished): address it by
            # connection and handle all the same.
            gear_job = gear.WorkerJob(_as_bytes(current_job.handle),
                                      current_job.task or '', b'')
            gear_job.connection = current_job.connection
        return gear_job

    def _send(self, gear_job, method, *args):
        # gear's WorkerJob.send* return False (and send nothing) once the
        # job's connection is gone.
        try:
            sent = method(*args)
        except (gear.ConnectionError, OSError):
            sent = False
        if sent is False:
            self.handle_error(gear_job.connection)

    def _send_final(self, current_job, method_name, *args):
        """Send a job's final packet once; later ones would only earn a
        JOB_NOT_FOUND error (e.g. a callback that called
        send_job_exception() and then returned)."""
        gear_job = self._gear_job_for(current_job)
        key = (id(gear_job.connection), gear_job.handle)
        if key in self._finished:
            log.debug('Job %s already ended; not sending %s',
                      current_job.handle, method_name)
            return
        if key in self._running:
            self._finished.add(key)
        self._send(gear_job, getattr(gear_job, method_name), *args)

    def send_job_status(self, current_job, numerator, denominator,
                        poll_timeout=None):
        """Report progress (WORK_STATUS); numbers must be int or float."""
        for value in (numerator, denominator):
            if isinstance(value, bool) or \
                    not isinstance(value, (int, float)):
                raise GearmanError('Status values must be numbers, not %r'
                                   % (value,))
        gear_job = self._gear_job_for(current_job)
        self._send(gear_job, gear_job.sendWorkStatus, numerator, denominator)

    def send_job_complete(self, current_job, data, poll_timeout=None):
        self._send_final(current_job, 'sendWorkComplete', self._encode(data))

    def send_job_failure(self, current_job, poll_timeout=None):
        self._send_final(current_job, 'sendWorkFail')

    def send_job_exception(self, current_job, data, poll_timeout=None):
        """End the job with an exception (WORK_EXCEPTION only; servers
        turn it into WORK_FAIL for clients that did not ask for it)."""
        self._send_final(current_job, 'sendWorkException',
                         self._encode(data))

    def send_job_data(self, current_job, data, poll_timeout=None):
        gear_job = self._gear_job_for(current_job)
        self._send(gear_job, gear_job.sendWorkData, self._encode(data))

    def send_job_warning(self, current_job, data, poll_timeout=None):
        gear_job = self._gear_job_for(current_job)
        self._send(gear_job, gear_job.sendWorkWarning, self._encode(data))

    def wait_until_updates_sent(self, multiple_gearman_jobs,
                                poll_timeout=None):
        """Every send_job_* already handed its bytes to the socket."""
        return True
