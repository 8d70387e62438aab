"""GearmanClient: python-gearman's client API on top of gear.Client.

Each configured server gets its own :class:`gear.Client` (a
:class:`_ServerClient`), so that the facade, not gear's round-robin,
decides where each request goes, as python-gearman did: every request
gets its own shuffled order of servers and moves to the next one only when
a server cannot be reached.  A request whose caller chose the unique gets
the unique's rendezvous-hash order instead (:mod:`gear.hashing`), so that
equal uniques from any client reach the same server and coalesce.  The
gear Clients' reply hooks hand each packet to a
:class:`~gear.gearman.tracking.RequestTracker`, which updates the
GearmanJobRequest; the caller's thread waits on the tracker.

Submissions are synchronous (gear's submitJob waits for JOB_CREATED), so
a request is never left PENDING: it ends up CREATED, FAILED (the server
refused it with an ERROR), or UNKNOWN (its link failed, or it got no
handle before the deadline, in which case ``timed_out`` is also set).
"""

import binascii
import collections
import logging
import os
import random
import threading
import weakref

import gear
from gear import hashing
from gear.connection import SubmitJobTask
from gear.util import convert_to_bytes

from gear.gearman.constants import (
    JOB_UNKNOWN, PRECEDENCE_FOR_PRIORITY, PRIORITY_NONE)
from gear.gearman.encoder import NoopEncoder
from gear.gearman.errors import (
    ExceededConnectionAttempts, GearmanError, ServerUnavailable)
from gear.gearman.hosts import parse_host_list
from gear.gearman.job import GearmanJob, GearmanJobRequest
from gear.gearman.links import LinkWatch
from gear.gearman.tracking import Deadline, RequestTracker

log = logging.getLogger('gear.gearman.client')

# gear errors that mean "this server did not take the request".
_SUBMIT_FAILURES = (gear.GearmanError, gear.ConnectionError,
                    gear.TimeoutError, OSError)


class _RequestJob(gear.Job):
    """A gear Job that knows the GearmanJobRequest it carries."""

    def __init__(self, request, name, arguments, unique):
        super(_RequestJob, self).__init__(name, arguments, unique)
        self.request = request
        #: (code, text) of an ERROR that refused the submission.
        self.refusal = None


def _request_of(job):
    return job.request if isinstance(job, _RequestJob) else None


class _ServerClient(LinkWatch, gear.Client):
    """A gear Client for one server whose hooks feed the request tracker.
    """

    def __init__(self, tracker, address):
        self._initLinkWatch()
        self.tracker = tracker
        self.address = address
        # python-gearman clients never sent SET_CLIENT_ID.
        super(_ServerClient, self).__init__(client_id=None)
        if address.use_ssl:
            self.addServer(address.host, address.port, address.keyfile,
                           address.certfile, address.ca_certs)
        else:
            self.addServer(address.host, address.port)

    def handleJobCreated(self, packet):
        job = super(_ServerClient, self).handleJobCreated(packet)
        request = _request_of(job)
        if request is not None:
            self.tracker.created(request, job.handle, job.connection)
        return job

    def handleError(self, packet):
        # An ERROR answers the oldest request awaiting a reply on its
        # connection.  submitJob() only reports that the server did not
        # take the job, so record the server's reason on the job first:
        # once gear fails the task, the submitter is already awake.
        conn = packet.connection
        pending = getattr(conn, 'pending_tasks', None)
        head = pending[0] if pending else None
        if isinstance(head, SubmitJobTask) and \
                isinstance(head.job, _RequestJob):
            args = packet.arguments
            head.job.refusal = (args[0] if args else b'',
                                packet.getArgument(1, True)
                                if len(args) > 1 else b'')
        return super(_ServerClient, self).handleError(packet)

    def handleJobEvent(self, job, event, data):
        request = _request_of(job)
        if request is None:
            return
        tracker = self.tracker
        if event == 'complete':
            tracker.work_complete(request, data)
        elif event == 'fail':
            tracker.work_fail(request)
        elif event == 'exception':
            tracker.work_exception(request, data)
        elif event == 'data':
            tracker.work_data(request, data)
        elif event == 'warning':
            tracker.work_warning(request, data)
        elif event == 'status':
            tracker.work_status(request, job.numerator, job.denominator)
        elif event == 'lost':
            # python-gearman never resubmitted a job whose link was lost:
            # the request becomes UNKNOWN at once.
            tracker.lost(request)

    def handleStatusRes(self, packet):
        job = super(_ServerClient, self).handleStatusRes(packet)
        request = _request_of(job)
        if request is not None:
            self.tracker.status_res(request, job.handle, job.known,
                                    job.running, job.numerator,
                                    job.denominator)
        return job


class GearmanClient(object):
    """Submit jobs to Gearman servers and follow them (python-gearman API).

    :arg host_list: servers as ``'host'``, ``'host:port'``,
        ``'[v6addr]:port'``, ``(host, port)`` or a TLS dict with the keys
        ``host``, ``port``, ``keyfile``, ``certfile`` and ``ca_certs``.
    :arg int random_unique_bytes: how many random bytes make up the
        unique of a job submitted without one (it is sent as hex).

    Every wait takes ``poll_timeout`` in seconds; None waits for ever.
    Call :meth:`shutdown` (or use the client as a context manager) to
    close the connections and stop their threads.
    """

    job_class = GearmanJob
    job_request_class = GearmanJobRequest
    data_encoder = NoopEncoder

    #: Seconds to wait for a server that is still connecting before
    #: moving on to the next one.  A refused connection moves on at once.
    connect_timeout = 10.0

    #: Send a request whose unique the caller chose to the server the
    #: unique hashes to (the next in the key's order when that one is
    #: unreachable).  False: every request gets a shuffled order, as in
    #: python-gearman.
    hash_uniques = True

    def __init__(self, host_list=None, random_unique_bytes=16):
        self.host_list = parse_host_list(host_list)
        self.random_unique_bytes = random_unique_bytes
        self._tracker = RequestTracker(self.data_encoder)
        self._clients = {}
        self._clients_lock = threading.Lock()
        # python-gearman code often drops clients without closing them;
        # their connection threads must not outlive them.
        self._finalizer = weakref.finalize(
            self, _shutdown_all, self._clients, self._clients_lock)
        self._finalizer.atexit = False

    # Life cycle

    def shutdown(self):
        """Close every server connection (the client can be used again)."""
        _shutdown_all(self._clients, self._clients_lock)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.shutdown()

    def _client_for(self, address):
        with self._clients_lock:
            client = self._clients.get(address)
            if client is None:
                client = _ServerClient(self._tracker, address)
                self._clients[address] = client
            return client

    # Building requests

    def _make_unique(self):
        return binascii.hexlify(
            os.urandom(self.random_unique_bytes)).decode('ascii')

    def _create_request_from_dictionary(self, job_info, background=False,
                                        max_retries=0):
        priority = job_info.get('priority', PRIORITY_NONE)
        if priority not in PRECEDENCE_FOR_PRIORITY:
            raise GearmanError('Unknown priority %r' % (priority,))
        unique = job_info.get('unique')
        job = self.job_class(None, None, job_info['task'],
                             unique or self._make_unique(), job_info['data'])
        request = self.job_request_class(job, initial_priority=priority,
                                         background=background,
                                         max_attempts=max_retries + 1)
        request._unique_generated = not unique
        return request

    # Submitting

    def submit_job(self, task, data, unique=None, priority=PRIORITY_NONE,
                   background=False, wait_until_complete=True, max_retries=0,
                   poll_timeout=None):
        """Submit one job; returns its GearmanJobRequest."""
        job_info = dict(task=task, data=data, unique=unique,
                        priority=priority)
        request = self._create_request_from_dictionary(
            job_info, background=background, max_retries=max_retries)
        self.submit_multiple_requests([request],
                                      wait_until_complete=wait_until_complete,
                                      poll_timeout=poll_timeout)
        return request

    def submit_multiple_jobs(self, jobs_to_submit, background=False,
                             wait_until_complete=True, max_retries=0,
                             poll_timeout=None):
        """Submit dicts of ``task``, ``data``, ``unique``, ``priority``.
        """
        _check_many(jobs_to_submit, 'jobs')
        requests = [self._create_request_from_dictionary(
            job_info, background=background, max_retries=max_retries)
            for job_info in jobs_to_submit]
        return self.submit_multiple_requests(
            requests, wait_until_complete=wait_until_complete,
            poll_timeout=poll_timeout)

    def submit_multiple_requests(self, job_requests,
                                 wait_until_complete=True, poll_timeout=None):
        """Send the requests, wait until accepted and, if asked, complete.

        Both waits share one deadline of ``poll_timeout`` seconds.
        Afterwards check ``timed_out`` and ``state == JOB_UNKNOWN``.
        """
        _check_many(job_requests, 'job requests')
        deadline = Deadline(poll_timeout)
        self._accept(job_requests, deadline)
        if wait_until_complete and not deadline.expired():
            self._complete(job_requests, deadline)
        return job_requests

    def wait_until_jobs_accepted(self, job_requests, poll_timeout=None):
        """(Re)send the requests in state UNKNOWN; wait for their handles.
        """
        self._accept(job_requests, Deadline(poll_timeout))
        return job_requests

    def wait_until_jobs_completed(self, job_requests, poll_timeout=None):
        """Wait until every request is complete, or its link failed.

        A request whose connection is lost becomes UNKNOWN and is not
        resubmitted: how far its worker got is unknown.
        """
        self._complete(job_requests, Deadline(poll_timeout))
        return job_requests

    def _accept(self, job_requests, deadline):
        for request in job_requests:
            if request.state == JOB_UNKNOWN:
                # Each explicit (re)submission gets the full retry budget.
                request.connection_attempts = 0
                self._send_job_request(request, deadline)

    def _complete(self, job_requests, deadline):
        tracker = self._tracker

        def settled():
            return all(r.complete or r.state == JOB_UNKNOWN
                       for r in job_requests)

        tracker.wait_for(settled, deadline)
        with tracker.condition:
            for request in job_requests:
                request.timed_out = not request.complete and \
                    request.state != JOB_UNKNOWN

    def send_job_request(self, current_request, poll_timeout=None):
        """Send one request and wait for its handle (one attempt budget).
        """
        return self._send_job_request(current_request, Deadline(poll_timeout))

    def _send_job_request(self, request, deadline):
        tracker = self._tracker
        job = request.job
        if request.priority not in PRECEDENCE_FOR_PRIORITY:
            raise GearmanError('Unknown priority %r' % (request.priority,))
        precedence = PRECEDENCE_FOR_PRIORITY[request.priority]
        payload = self.data_encoder.encode(job.data)
        while True:
            if request.connection_attempts >= \
                    request.max_connection_attempts:
                raise ExceededConnectionAttempts(
                    'Exceeded %d connection attempt(s) :: %r'
                    % (request.max_connection_attempts, request))
            client = self._choose_client(request, deadline)
            if client is None:
                tracker.abandoned(request, timed_out=True)
                return request
            if getattr(request, '_sent', False) and not request.background \
                    and getattr(request, '_unique_generated', False):
                # A foreground job whose client vanished is dropped by the
                # server, but gearmand 1.1 still attaches a new submission
                # with the same unique to it, and that one never ends.  The
                # unique was ours to choose: pick a fresh one.
                job.unique = self._make_unique()
            request._sent = True
            gear_job = _RequestJob(request, job.task, payload, job.unique)
            request._gear_job = gear_job
            request._gear_client = client
            request.connection_attempts += 1
            tracker.submitting(request)
            try:
                client.submitJob(gear_job, background=request.background,
                                 precedence=precedence,
                                 timeout=deadline.remaining())
            except gear.NoConnectedServersError:
                # The link dropped between the check and the send: nothing
                # reached the server, so this was no attempt.
                request.connection_attempts -= 1
                tracker.abandoned(request, timed_out=False)
                continue
            except _SUBMIT_FAILURES as e:
                if gear_job.refusal is not None:
                    tracker.refused(request, *gear_job.refusal)
                    return request
                if deadline.expired():
                    tracker.abandoned(request, timed_out=True)
                    return request
                log.debug('Submission of %r to %s failed (%s); retrying',
                          request, client.address, e)
                tracker.abandoned(request, timed_out=False)
                self._demote(request, client.address)
                continue
            tracker.created(request, gear_job.handle, gear_job.connection)
            return request

    def _choose_client(self, request, deadline):
        """The first reachable server in the request's own rotation.

        Returns None when the deadline passes first; raises
        ServerUnavailable when every server refused.
        """
        if not self.host_list:
            raise ServerUnavailable('No servers in host_list')
        rotation = getattr(request, '_server_rotation', None)
        if not rotation:
            rotation = collections.deque(self._server_order(request))
            request._server_rotation = rotation
        for skipped, address in enumerate(list(rotation)):
            client = self._client_for(address)
            if not client.isConnected():
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    return None
                wait = self.connect_timeout if remaining is None \
                    else min(remaining, self.connect_timeout)
                if not client.waitConnected(wait):
                    if deadline.expired():
                        return None
                    continue
            # Skip the unreachable servers next time as well.
            rotation.rotate(-skipped)
            return client
        raise ServerUnavailable('Found no valid connections in list: %r'
                                % (self.host_list,))

    def _server_order(self, request):
        """The order in which ``request`` tries the servers."""
        servers = list(self.host_list)
        key = None
        if self.hash_uniques and len(servers) > 1 and \
                not getattr(request, '_unique_generated', False):
            job = request.job
            unique = convert_to_bytes(job.unique or b'')
            # Only a '-' unique is hashed by the payload.
            payload = self.data_encoder.encode(job.data) \
                if unique == b'-' else b''
            key = hashing.routing_key(unique, convert_to_bytes(payload))
        if key:
            return hashing.rendezvous_order(
                key, servers,
                lambda address: hashing.server_key(address.host,
                                                   address.port))
        random.shuffle(servers)
        return servers

    @staticmethod
    def _demote(request, address):
        """Send the next attempt elsewhere first: ``address`` lost it."""
        rotation = getattr(request, '_server_rotation', None)
        if rotation and rotation[0] == address:
            rotation.rotate(-1)

    # Status

    def get_job_status(self, current_request, poll_timeout=None):
        """Ask the request's server for its status; fills ``status``."""
        return self.get_job_statuses([current_request],
                                     poll_timeout=poll_timeout)[0]

    def get_job_statuses(self, job_requests, poll_timeout=None):
        """Ask for the status of several requests (GET_STATUS).

        A request whose server cannot answer (no handle, link gone, no
        reply in time) is marked ``timed_out``.
        """
        _check_many(job_requests, 'job requests')
        tracker = self._tracker
        deadline = Deadline(poll_timeout)
        unanswerable = set()
        with tracker.condition:
            for request in job_requests:
                request.status['last_time_received'] = \
                    request.status.get('time_received')
        for request in job_requests:
            gear_job = getattr(request, '_gear_job', None)
            client = getattr(request, '_gear_client', None)
            if gear_job is None or client is None or not gear_job.handle \
                    or deadline.expired():
                unanswerable.add(id(request))
                continue
            try:
                client.getStatus(gear_job, timeout=deadline.remaining())
            except (gear.GearmanError, gear.ConnectionError,
                    gear.TimeoutError, gear.UnknownJobError, OSError) as e:
                log.debug('No status for %r: %r', request, e)
                unanswerable.add(id(request))
        return self._wait_statuses(job_requests, deadline, unanswerable)

    def wait_until_job_statuses_received(self, job_requests,
                                         poll_timeout=None):
        """Wait until each request's status changed since it was asked."""
        return self._wait_statuses(job_requests, Deadline(poll_timeout),
                                   set())

    def _wait_statuses(self, job_requests, deadline, unanswerable):
        tracker = self._tracker

        def not_updated(request):
            status = request.status
            return status.get('time_received') == \
                status.get('last_time_received')

        def settled():
            return not any(not_updated(r) for r in job_requests
                           if id(r) not in unanswerable)

        tracker.wait_for(settled, deadline)
        with tracker.condition:
            for request in job_requests:
                request.timed_out = not_updated(request)
        return job_requests


def _shutdown_all(clients, lock):
    with lock:
        doomed = list(clients.values())
        clients.clear()
    for client in doomed:
        client.shutdown()


def _check_many(items, what):
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise TypeError('Expected a list, tuple or set of %s, got %s'
                        % (what, type(items).__name__))
