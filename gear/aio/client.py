"""The asyncio Gearman client: submit jobs and follow them."""

import asyncio
import collections
import uuid
from typing import (
    AsyncIterator, Callable, Deque, Dict, Iterable, List, NamedTuple, Optional,
    Tuple, Union)

from gear import constants
from gear.errors import (
    ConnectionError, GearmanError, NoConnectedServersError, UnknownJobError)
from gear.job import Job, _as_bytes
from gear.protocol import (
    DEFAULT_MAX_PACKET_SIZE, fraction, status_fields, submit_request,
    work_handle)
from gear.util import convert_to_bytes

from gear.aio.base import DEFAULT_CONNECT_TIMEOUT, Endpoint
from gear.aio.connection import Connection, split_error
from gear.aio.retry import Retry

__all__ = ['AsyncClient', 'AsyncJob', 'JobExceptionError', 'JobFailedError',
           'JobLostError', 'JobUpdate', 'SubmitError']

Data = Union[bytes, bytearray, str]
#: What :meth:`AsyncClient.submit_many` takes: a job, or
#: ``(name, data)`` or ``(name, data, unique)``.
JobSpec = Union['AsyncJob', Tuple[Data, Data], Tuple[Data, Data, Data]]


class SubmitError(GearmanError):
    """A server refused a submission with an ERROR packet."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__('%s %s' % (code, message))
        self.code = code
        self.message = message


class JobFailedError(GearmanError):
    """A foreground job ended without success (WORK_FAIL)."""

    def __init__(self, job: 'AsyncJob', message: str) -> None:
        super().__init__(message)
        self.job = job


class JobExceptionError(JobFailedError):
    """The worker ended the job with WORK_EXCEPTION; ``data`` holds
    what it sent."""

    def __init__(self, job: 'AsyncJob', data: bytes) -> None:
        super().__init__(job, 'Job %s raised: %s' % (
            job, data.decode('utf-8', 'replace')))
        self.data = data


class JobLostError(JobFailedError, ConnectionError):
    """The connection to the job's server was lost before it ended."""


class JobUpdate(NamedTuple):
    """One WORK_DATA, WORK_WARNING or WORK_STATUS for a job.

    ``kind`` is ``'data'``, ``'warning'`` or ``'status'``; a status has
    ``numerator`` and ``denominator`` (decimal bytes) and empty ``data``.
    """

    kind: str
    data: bytes
    numerator: Optional[bytes] = None
    denominator: Optional[bytes] = None


class AsyncJob(Job):
    """A job submitted by an :class:`AsyncClient`.

    It is a :class:`gear.Job`: ``handle``, ``arguments``, ``unique``,
    ``data`` (every non-empty WORK_DATA, WORK_WARNING and WORK_COMPLETE
    payload), ``complete``, ``failure``, ``exception``, ``numerator``,
    ``denominator``, ``fraction_complete``, ``known``, ``running`` and
    ``disconnected`` mean what they mean there.  On top, a foreground
    job can be awaited with :meth:`result` and its updates read with
    :meth:`updates`.
    """

    __slots__ = ('background', '_result', '_outcome', '_done', '_updates',
                 '_update_waiter')

    def __init__(self, name: Data, arguments: Data = b'',
                 unique: Optional[Data] = None,
                 background: bool = False) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            name, _as_bytes(arguments), unique)
        self.background = bool(background)
        self._result: Optional[bytes] = None
        self._outcome: Optional[BaseException] = None
        self._done: Optional['asyncio.Future[None]'] = None
        # Made on the first update: most jobs never get one.
        self._updates: Optional[Deque[JobUpdate]] = None
        self._update_waiter: Optional['asyncio.Future[None]'] = None

    def __repr__(self) -> str:
        return '<gear.aio.AsyncJob handle: %s name: %s unique: %s>' % (
            self.handle, self.name, self.unique)

    @property
    def done(self) -> bool:
        """True once the job completed, failed or was lost."""
        return bool(self.complete)

    async def result(self, timeout: Optional[float] = None) -> bytes:
        """Wait for the job to end; return its WORK_COMPLETE data.

        Cancelling or timing out the wait leaves the job and its
        connection as they were; wait again later if you like.

        :raises JobFailedError: WORK_FAIL.
        :raises JobExceptionError: WORK_EXCEPTION.
        :raises JobLostError: the server connection was lost.
        :raises asyncio.TimeoutError: not ended within ``timeout``.
        """
        if self.background:
            raise GearmanError('A background job has no result')
        if not self.complete:
            if self._done is None:
                self._done = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        if self._outcome is not None:
            raise self._outcome
        return self._result if self._result is not None else b''

    async def updates(self) -> AsyncIterator[JobUpdate]:
        """Yield the job's WORK_DATA, WORK_WARNING and WORK_STATUS
        updates in order, from the first; stop when the job ends.

        Each update is handed out once (one reader per job).
        """
        if self.background:
            raise GearmanError('A background job sends no updates')
        while True:
            if self._updates:
                yield self._updates.popleft()
                continue
            if self.complete:
                return
            waiter = asyncio.get_running_loop().create_future()
            self._update_waiter = waiter
            await waiter

    # Called by the client as packets arrive.

    def _push(self, update: JobUpdate) -> None:
        if self._updates is None:
            self._updates = collections.deque()
        self._updates.append(update)
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter, self._update_waiter = self._update_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, result: Optional[bytes],
                outcome: Optional[BaseException]) -> None:
        self.complete = True
        self.failure = outcome is not None
        self._result = result
        self._outcome = outcome
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        self._wake_reader()


class _Tracked(object):
    """The foreground jobs followed on one connection, by handle.

    A server that coalesces several submissions of one connection into
    one job sends one copy of each WORK_* packet per submission; the
    copies go to the jobs in turn.
    """

    __slots__ = ('jobs', 'coalesced')

    def __init__(self) -> None:
        self.jobs: Dict[bytes, AsyncJob] = {}
        self.coalesced: Dict[bytes, Deque[AsyncJob]] = {}

    def add(self, handle: bytes, job: AsyncJob) -> None:
        first = self.jobs.get(handle)
        if first is None:
            self.jobs[handle] = job
            return
        group = self.coalesced.get(handle)
        if group is None:
            group = self.coalesced[handle] = collections.deque([first])
        group.append(job)

    def find(self, handle: bytes, final: bool) -> Optional[AsyncJob]:
        group = self.coalesced.get(handle)
        if group:
            job = group[0]
            group.rotate(-1)
            if final:
                group.remove(job)
                self.jobs[handle] = group[0]
                if len(group) == 1:
                    del self.coalesced[handle]
            return job
        if final:
            return self.jobs.pop(handle, None)
        return self.jobs.get(handle)

    def all(self) -> List[AsyncJob]:
        jobs = list(self.jobs.values())
        for handle, group in self.coalesced.items():
            jobs.extend(j for j in group if j is not self.jobs.get(handle))
        return jobs


class _Batch(object):
    """The submissions of one :meth:`AsyncClient.submit_many` still
    waiting for JOB_CREATED."""

    __slots__ = ('client', 'conn', 'outstanding', 'errors', 'lost',
                 'waiter', 'wake_at')

    def __init__(self, client: 'AsyncClient', conn: Connection) -> None:
        self.client = client
        self.conn = conn
        self.outstanding = 0
        self.errors: List[Tuple[AsyncJob, str]] = []
        self.lost = False
        self.waiter: Optional['asyncio.Future[None]'] = None
        self.wake_at = 0

    def callback(self, job: AsyncJob) -> Callable[[int, bytes], None]:
        def on_reply(ptype: int, payload: bytes) -> None:
            if ptype == constants.JOB_CREATED:
                job.handle = payload
                job.connection = self.conn
                if not job.background:
                    self.client._track(self.conn, payload, job)
            elif ptype == constants.ERROR:
                self.errors.append((job, '%s %s' % split_error(payload)))
            else:
                self.lost = True
            self.outstanding -= 1
            if self.outstanding <= self.wake_at and self.waiter is not None:
                waiter, self.waiter = self.waiter, None
                if not waiter.done():
                    waiter.set_result(None)
        return on_reply

    async def wait(self, at_most: int) -> None:
        while self.outstanding > at_most:
            self.wake_at = at_most
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


class AsyncClient(Endpoint):
    """An asyncio Gearman client.

    :arg client_id: sent as SET_CLIENT_ID; shown by ``workers``.
    :arg exceptions: ask each server for WORK_EXCEPTION packets (the
        OPTION_REQ ``exceptions``) on every connection.
    :arg retry: the reconnection policy (:class:`gear.aio.Retry`).
    :arg connect_timeout: seconds for one connection attempt.
    """

    _log_name = 'gear.aio.Client'

    def __init__(self, client_id: Optional[str] = None,
                 exceptions: bool = True, retry: Optional[Retry] = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        super().__init__(client_id, retry, connect_timeout,
                         max_packet_size)
        self.exceptions = exceptions
        self._tracked: Dict[Connection, _Tracked] = {}

    def __repr__(self) -> str:
        return '<gear.aio.AsyncClient %r>' % (self.client_id,)

    async def _greet(self, conn: Connection) -> None:
        await super()._greet(conn)
        self._tracked[conn] = _Tracked()
        if self.exceptions:
            rtype, payload = await self.round_trip(
                conn, constants.OPTION_REQ, b'exceptions',
                self.connect_timeout)
            if rtype == constants.ERROR:
                self.log.info('%s does not offer exceptions: %s %s',
                              conn.name, *split_error(payload))

    # Submitting

    def _make_job(self, name: Data, data: Data, unique: Optional[Data],
                  background: bool) -> AsyncJob:
        if background and unique is None:
            # Without a unique, gearmand's persistent queues would let
            # such jobs overwrite one another.
            unique = uuid.uuid4().hex
        return AsyncJob(name, data, unique, background)

    async def submit(self, name: Data, data: Data = b'',
                     unique: Optional[Data] = None,
                     background: bool = False,
                     precedence: int = constants.PRECEDENCE_NORMAL,
                     when: Optional[object] = None,
                     timeout: Optional[float] = None) -> AsyncJob:
        """Submit a job to the next connected server in turn; return it
        once the server has created it (JOB_CREATED).

        :arg precedence: one of ``gear.PRECEDENCE_*``.
        :arg when: run no earlier than this (epoch seconds or an aware
            datetime); needs ``background=True``.
        :raises gear.NoConnectedServersError: no server is connected.
        :raises SubmitError: every server refused it (the last ERROR).
        :raises asyncio.TimeoutError: no JOB_CREATED within ``timeout``
            (the late reply is consumed, and the job not followed).
        """
        job = self._make_job(name, data, unique, background)
        ptype, payload = submit_request(
            job.binary_name, job.binary_unique, job.binary_arguments,
            background, precedence, when)
        conns = self._connections_in_turn()
        if not conns:
            raise NoConnectedServersError('No connected Gearman servers')
        error: Exception = NoConnectedServersError(
            'No connected Gearman servers')
        for conn in conns:
            try:
                await self._submit_on(conn, job, ptype, payload, timeout)
                return job
            except (SubmitError, ConnectionError) as e:
                self.log.debug('Submission of %s to %s failed: %s', job,
                               conn.name, e)
                error = e
        raise error

    async def _submit_on(self, conn: Connection, job: AsyncJob, ptype: int,
                         payload: bytes, timeout: Optional[float]) -> None:
        future: 'asyncio.Future[None]' = \
            asyncio.get_running_loop().create_future()

        def on_reply(rtype: int, rpayload: bytes) -> None:
            if future.done():
                if rtype == constants.JOB_CREATED:
                    self.log.debug('Late JOB_CREATED %r for an abandoned'
                                   ' submission', rpayload)
                return
            if rtype == constants.JOB_CREATED:
                job.handle = rpayload
                job.connection = conn
                if not job.background:
                    # Now, not after the await: WORK_* may follow in the
                    # same read.
                    self._track(conn, rpayload, job)
                future.set_result(None)
            elif rtype == constants.ERROR:
                future.set_exception(SubmitError(*split_error(rpayload)))
            else:
                future.set_exception(ConnectionError(
                    'Connection to %s lost' % conn.name))

        conn.request(ptype, payload, on_reply)
        await asyncio.wait_for(future, timeout)

    async def submit_many(self, jobs: Iterable[JobSpec],
                          background: bool = True,
                          precedence: int = constants.PRECEDENCE_NORMAL,
                          window: int = 512,
                          server: Optional[str] = None) -> List[AsyncJob]:
        """Submit many jobs over one connection, pipelined.

        Up to ``window`` submissions are on the wire at once; their
        JOB_CREATED replies arrive in order.  Returns the jobs, each with
        its handle, once every one was answered.

        :arg jobs: :class:`AsyncJob` objects, or ``(name, data)`` or
            ``(name, data, unique)`` tuples.
        :arg server: ``'host:port'`` to use (else the next in turn).
        :raises SubmitError: some submissions were refused (the others
            were made); ``str()`` says how many.
        :raises gear.ConnectionError: the connection was lost.
        """
        if window < 1:
            raise ValueError('window must be at least 1')
        if server is not None:
            conn = self._connection(server)
        else:
            conns = self._connections_in_turn()
            if not conns:
                raise NoConnectedServersError('No connected Gearman servers')
            conn = conns[0]
        batch = _Batch(self, conn)
        submitted: List[AsyncJob] = []
        request = conn.request
        for spec in jobs:
            if isinstance(spec, AsyncJob):
                job = spec
                job.background = background
                if background and job.binary_unique is None:
                    job.unique = uuid.uuid4().hex.encode('ascii')
            else:
                job = self._make_job(spec[0], spec[1],
                                     spec[2] if len(spec) > 2 else None,
                                     background)
            ptype, payload = submit_request(
                job.binary_name, job.binary_unique, job.binary_arguments,
                background, precedence)
            request(ptype, payload, batch.callback(job))
            batch.outstanding += 1
            submitted.append(job)
            if batch.outstanding >= window:
                await batch.wait(window // 2)
            if conn.writing_paused:
                await conn.drain()
            if batch.lost:
                break
        await batch.wait(0)
        if batch.lost:
            raise ConnectionError('Connection to %s lost during'
                                  ' submit_many' % conn.name)
        if batch.errors:
            job, message = batch.errors[0]
            raise SubmitError('SUBMIT_MANY', '%d of %d submissions refused;'
                              ' the first (%s): %s' % (
                                  len(batch.errors), len(submitted), job,
                                  message))
        return submitted

    # Status

    async def get_status(self, job: AsyncJob,
                         timeout: Optional[float] = None) -> AsyncJob:
        """Ask the job's server for its status; update and return it.

        Sets ``known``, ``running``, ``numerator``, ``denominator`` and
        ``fraction_complete``.
        """
        conn = job.connection
        if not job.handle or not isinstance(conn, Connection):
            raise UnknownJobError('%r has not been created' % (job,))
        if not conn.connected:
            raise ConnectionError('%s is not connected' % conn.name)
        rtype, payload = await self.round_trip(
            conn, constants.GET_STATUS, job.handle, timeout)
        if rtype != constants.STATUS_RES:
            raise GearmanError('Status request for %s failed: %r' % (
                job, payload))
        known, running, numerator, denominator = status_fields(
            payload.split(b'\x00', 4))
        job.known = known
        job.running = running
        job.numerator = numerator
        job.denominator = denominator
        job.fraction_complete = fraction(numerator, denominator)
        return job

    async def get_status_unique(
            self, unique: Data, timeout: Optional[float] = None
    ) -> Tuple[bool, bool, bytes, bytes, int]:
        """Look a job up by its unique on every connected server.

        :returns: ``(known, running, numerator, denominator,
            waiting_clients)`` from the first server that knows it, else
            ``(False, False, b'0', b'0', 0)``.
        """
        conns = self.connections
        if not conns:
            raise NoConnectedServersError('No connected Gearman servers')
        key = convert_to_bytes(unique)
        replies = await asyncio.gather(*[
            self.round_trip(c, constants.GET_STATUS_UNIQUE, key, timeout)
            for c in conns])
        for rtype, payload in replies:
            if rtype != constants.STATUS_RES_UNIQUE:
                continue
            args = payload.split(b'\x00', 5)
            known, running, numerator, denominator = status_fields(args)
            if known:
                try:
                    waiting = int(args[5])
                except (IndexError, ValueError):
                    waiting = 0
                return (known, running, numerator or b'0',
                        denominator or b'0', waiting)
        return (False, False, b'0', b'0', 0)

    # Packets

    def _track(self, conn: Connection, handle: bytes, job: AsyncJob) -> None:
        tracked = self._tracked.get(conn)
        if tracked is None:
            tracked = self._tracked[conn] = _Tracked()
        tracked.add(handle, job)

    def _on_packet(self, conn: Connection, ptype: int,
                   payload: bytes) -> None:
        handler = _UPDATE_HANDLERS.get(ptype)
        if handler is None:
            super()._on_packet(conn, ptype, payload)
            return
        final = ptype in _FINAL
        handle, _, rest = payload.partition(b'\x00')
        tracked = self._tracked.get(conn)
        job = tracked.find(work_handle(handle), final) if tracked else None
        if job is None:
            self.log.debug('%s for a job this client does not follow: %r',
                           constants.types.get(ptype), handle)
            return
        handler(job, rest)

    def _lost(self, conn: Connection) -> None:
        tracked = self._tracked.pop(conn, None)
        if tracked is None:
            return
        for job in tracked.all():
            job.disconnected = True
            job._finish(None, JobLostError(
                job, 'Lost the connection to %s before %s ended'
                % (conn.name, job)))


_FINAL = frozenset((constants.WORK_COMPLETE, constants.WORK_FAIL,
                    constants.WORK_EXCEPTION))


def _work_complete(job: AsyncJob, data: bytes) -> None:
    if data:
        job.data.append(data)
    job._finish(data, None)


def _work_fail(job: AsyncJob, data: bytes) -> None:
    job._finish(None, JobFailedError(job, 'Job %s failed' % (job,)))


def _work_exception(job: AsyncJob, data: bytes) -> None:
    job.exception = data
    job._finish(None, JobExceptionError(job, data))


def _work_data(job: AsyncJob, data: bytes) -> None:
    if data:
        job.data.append(data)
    job._push(JobUpdate('data', data))


def _work_warning(job: AsyncJob, data: bytes) -> None:
    if data:
        job.data.append(data)
    job.warning = True
    job._push(JobUpdate('warning', data))


def _work_status(job: AsyncJob, data: bytes) -> None:
    numerator, _, denominator = data.partition(b'\x00')
    job.numerator = numerator
    job.denominator = denominator
    job.fraction_complete = fraction(numerator, denominator)
    job._push(JobUpdate('status', b'', numerator, denominator))


_UPDATE_HANDLERS: Dict[int, Callable[[AsyncJob, bytes], None]] = {
    constants.WORK_COMPLETE: _work_complete,
    constants.WORK_FAIL: _work_fail,
    constants.WORK_EXCEPTION: _work_exception,
    constants.WORK_DATA: _work_data,
    constants.WORK_WARNING: _work_warning,
    constants.WORK_STATUS: _work_status,
}
