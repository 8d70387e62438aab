"""The asyncio Gearman worker: run ``async def`` handlers for jobs."""

import asyncio
import math
from typing import (
    Awaitable, Callable, Dict, List, Optional, Set, Tuple, Union)

from gear import constants
from gear.errors import ConfigurationError, ConnectionError, GearmanError
from gear.job import BaseJob, _as_bytes, _decimal
from gear.protocol import DEFAULT_MAX_PACKET_SIZE
from gear.util import convert_to_bytes
from gear.worker import timeout_to_wire

from gear.aio.base import DEFAULT_CONNECT_TIMEOUT, Endpoint
from gear.aio.connection import Connection, split_error
from gear.aio.retry import Retry

__all__ = ['AsyncWorker', 'AsyncWorkerJob', 'Handler', 'JobFailed']

Data = Union[bytes, bytearray, str]


class JobFailed(Exception):
    """Raise it in a handler to end the job with a plain WORK_FAIL.

    Any other exception ends it with WORK_EXCEPTION, carrying
    ``str(exception)``.
    """


class AsyncWorkerJob(BaseJob):
    """A job given to an :class:`AsyncWorker` handler.

    ``name`` (str), ``data`` (bytes), ``unique`` and ``handle`` (bytes)
    describe it; ``send_data``, ``send_warning`` and ``send_status``
    report on it while it runs.  The handler's return value completes
    it.
    """

    __slots__ = ('_conn',)

    def __init__(self, conn: Connection, handle: bytes, name: bytes,
                 unique: bytes, data: bytes) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            name, data, unique or None, handle)
        self._conn = conn

    def __repr__(self) -> str:
        return '<gear.aio.AsyncWorkerJob handle: %r name: %s>' % (
            self.handle, self.name)

    @property
    def data(self) -> bytes:
        """The job's input (an alias of ``arguments``)."""
        data: bytes = self.arguments
        return data

    async def _send(self, ptype: int, payload: bytes) -> None:
        conn = self._conn
        if not conn.connected:
            raise ConnectionError('Connection to %s lost' % conn.name)
        conn.send_update(ptype, self.handle + b'\x00' + payload)
        if conn.writing_paused:
            await conn.drain()

    async def send_data(self, data: Data) -> None:
        """Send intermediate data to the clients (WORK_DATA)."""
        await self._send(constants.WORK_DATA, _as_bytes(data))

    async def send_warning(self, data: Data) -> None:
        """Send a warning to the clients (WORK_WARNING)."""
        await self._send(constants.WORK_WARNING, _as_bytes(data))

    async def send_status(self, numerator: int, denominator: int) -> None:
        """Report progress (WORK_STATUS)."""
        await self._send(constants.WORK_STATUS,
                         _decimal(numerator) + b'\x00' +
                         _decimal(denominator))


#: ``async def handler(job) -> bytes | str | None``.
Handler = Callable[[AsyncWorkerJob], Awaitable[Optional[Data]]]


class _Function(object):
    __slots__ = ('name', 'handler', 'timeout', 'wire_timeout')

    def __init__(self, name: bytes, handler: Handler,
                 timeout: Optional[float]) -> None:
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(
                    timeout, (int, float)) or not math.isfinite(timeout) \
                    or timeout <= 0:
                raise ConfigurationError(
                    'timeout must be a positive number of seconds')
        self.name = name
        self.handler = handler
        self.timeout = timeout
        self.wire_timeout: Optional[bytes] = timeout_to_wire(
            None if timeout is None else int(math.ceil(timeout * 1000)))

    def can_do(self) -> bytes:
        if self.wire_timeout is None:
            return self.name
        return self.name + b'\x00' + self.wire_timeout


class AsyncWorker(Endpoint):
    """An asyncio Gearman worker.

    :arg client_id: the worker's name in the server's ``workers`` list.
    :arg concurrency: how many jobs it runs at once, over all servers;
        it never asks for more jobs than it has free slots.
    :arg retry: the reconnection policy (:class:`gear.aio.Retry`).
    :arg connect_timeout: seconds for one connection attempt.
    """

    _log_name = 'gear.aio.Worker'

    def __init__(self, client_id: str, concurrency: int = 1,
                 retry: Optional[Retry] = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        if not client_id:
            raise ConfigurationError('A client_id must be provided')
        if concurrency < 1:
            raise ConfigurationError('concurrency must be at least 1')
        super().__init__(client_id, retry, connect_timeout,
                         max_packet_size)
        self.concurrency = concurrency
        self.functions: Dict[bytes, _Function] = {}
        # Made in the event loop (a Python 3.9 Semaphore binds the loop
        # current at construction).
        self._slot_pool: Optional[asyncio.Semaphore] = None
        self._started = False
        self._stopping = False
        self._stopped: Optional['asyncio.Future[None]'] = None
        self._noop: Dict[Connection, 'asyncio.Future[None]'] = {}
        self._grabbers: Dict[Connection, Set['asyncio.Task[None]']] = {}
        # The job each running task works on, and its connection; and
        # the CANT_DOs that wait for running jobs of an unregistered
        # function.
        self._jobs: Dict['asyncio.Task[None]',
                         Tuple[AsyncWorkerJob, Connection]] = {}
        self._deferred_cant_do: Set[Tuple[Connection, bytes]] = set()

    def __repr__(self) -> str:
        return '<gear.aio.AsyncWorker %r>' % (self.client_id,)

    # Functions

    def register(self, name: Data, handler: Handler,
                 timeout: Optional[float] = None) -> None:
        """Offer function ``name``, run by ``await handler(job)``.

        :arg timeout: seconds a job may run (sent as CAN_DO_TIMEOUT, so
            the server requeues a job that takes longer; the handler is
            cancelled then and nothing is sent for it).
        """
        key = convert_to_bytes(name)
        function = _Function(key, handler, timeout)
        self.functions[key] = function
        for conn in self.connections:
            self._send_can_do(conn, function)

    def unregister(self, name: Data) -> None:
        """Stop offering ``name`` (CANT_DO).

        Where jobs of ``name`` are still running, CANT_DO waits for them
        to finish: gearmand would otherwise requeue them, and they would
        run twice.
        """
        key = convert_to_bytes(name)
        if self.functions.pop(key, None) is None:
            return
        busy = {(conn, job.binary_name) for job, conn in
                self._jobs.values()}
        for conn in self.connections:
            if (conn, key) in busy:
                self._deferred_cant_do.add((conn, key))
            else:
                conn.send_packet(constants.CANT_DO, key)

    @staticmethod
    def _send_can_do(conn: Connection, function: _Function) -> None:
        if function.wire_timeout is None:
            conn.send_packet(constants.CAN_DO, function.name)
        else:
            conn.send_packet(constants.CAN_DO_TIMEOUT, function.can_do())

    async def _greet(self, conn: Connection) -> None:
        await super()._greet(conn)
        for function in self.functions.values():
            self._send_can_do(conn, function)
        if self._started and not self._stopping:
            self._start_grabbers(conn)

    # Running

    async def run(self) -> None:
        """Take and run jobs until :meth:`stop`.

        Cancelling the task that runs it stops the worker gracefully.
        """
        if self._started:
            raise GearmanError('%r is already running' % (self,))
        self._started = True
        self._stopped = asyncio.get_running_loop().create_future()
        for conn in self.connections:
            self._start_grabbers(conn)
        try:
            await asyncio.shield(self._stopped)
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def stop(self, timeout: Optional[float] = None) -> None:
        """Stop taking jobs, let the running ones finish, disconnect.

        :arg timeout: seconds to wait for running jobs; those still
            running then are cancelled (the server requeues them).
        """
        if self._stopping:
            if self._stopped is not None:
                await asyncio.shield(self._stopped)
            return
        self._stopping = True
        for conn in list(self._noop):
            self._wake(conn)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # A grab still in flight may yet bring a job, which runs too:
        # wait until no grab and no job is left.
        while True:
            tasks: List['asyncio.Task[None]'] = list(self._jobs)
            for grabbers in self._grabbers.values():
                tasks.extend(grabbers)
            if not tasks:
                break
            remaining = None if deadline is None else \
                max(0.0, deadline - loop.time())
            _done, pending = await asyncio.wait(tasks, timeout=remaining)
            if pending and deadline is not None and \
                    loop.time() >= deadline:
                for task in pending:
                    task.cancel()
                self.log.warning('Cancelled %d jobs still running at stop',
                                 len(self._jobs))
                await asyncio.wait(pending)
                break
        await self.close()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def close(self) -> None:
        """Disconnect at once; running handlers are cancelled."""
        self._stopping = True
        for conn in list(self._noop):
            self._wake(conn)
        await super().close()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    @property
    def _slots(self) -> asyncio.Semaphore:
        if self._slot_pool is None:
            self._slot_pool = asyncio.Semaphore(self.concurrency)
        return self._slot_pool

    @property
    def running_jobs(self) -> int:
        """How many handlers are running now."""
        return len(self._jobs)

    def _start_grabbers(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        tasks = self._grabbers.setdefault(conn, set())
        for _ in range(self.concurrency):
            task = loop.create_task(self._grab_loop(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _grab_loop(self, conn: Connection) -> None:
        """Ask ``conn`` for a job whenever a slot is free; sleep with
        PRE_SLEEP until a NOOP when it has none."""
        loop = asyncio.get_running_loop()
        while not self._stopping and conn.connected:
            await self._slots.acquire()
            if self._stopping or not conn.connected:
                self._slots.release()
                return
            outcome: 'asyncio.Future[bool]' = loop.create_future()
            try:
                conn.request(constants.GRAB_JOB_UNIQ, b'',
                             self._grab_reply(conn, outcome))
            except ConnectionError:
                self._slots.release()
                return
            if await outcome:
                continue
            if self._stopping or not conn.connected:
                return
            wake = self._noop.get(conn)
            if wake is None or wake.done():
                wake = self._noop[conn] = loop.create_future()
            conn.send_packet(constants.PRE_SLEEP)
            await asyncio.shield(wake)

    def _grab_reply(self, conn: Connection, outcome: 'asyncio.Future[bool]'
                    ) -> Callable[[int, bytes], None]:
        # The slot taken for this grab passes to the job, or is freed
        # here: never by the grabbing task, which may be gone.
        def on_reply(ptype: int, payload: bytes) -> None:
            got_job = False
            if ptype == constants.JOB_ASSIGN_UNIQ:
                handle, name, unique, data = payload.split(b'\x00', 3)
                self._start_job(conn, AsyncWorkerJob(
                    conn, handle, name, unique, data))
                got_job = True
            elif ptype == constants.JOB_ASSIGN:
                handle, name, data = payload.split(b'\x00', 2)
                self._start_job(conn, AsyncWorkerJob(
                    conn, handle, name, b'', data))
                got_job = True
            else:
                if ptype == constants.ERROR:
                    self.log.warning('%s refused a grab: %s %s', conn.name,
                                     *split_error(payload))
                self._slots.release()
            if not outcome.done():
                outcome.set_result(got_job)
        return on_reply

    def _on_packet(self, conn: Connection, ptype: int,
                   payload: bytes) -> None:
        if ptype == constants.NOOP:
            self._wake(conn)
        else:
            super()._on_packet(conn, ptype, payload)

    def _wake(self, conn: Connection) -> None:
        wake = self._noop.pop(conn, None)
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _start_job(self, conn: Connection, job: AsyncWorkerJob) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run_job(conn, job))
        self._jobs[task] = (job, conn)

    async def _run_job(self, conn: Connection, job: AsyncWorkerJob) -> None:
        try:
            function = self.functions.get(job.binary_name)
            if function is None:
                self.log.warning('%s assigned %r, which is not registered',
                                 conn.name, job)
                self._finish(conn, job, constants.WORK_FAIL, None)
                return
            try:
                work = function.handler(job)
                if function.timeout is not None:
                    result = await asyncio.wait_for(work, function.timeout)
                else:
                    result = await work
            except asyncio.TimeoutError:
                if function.timeout is not None:
                    # The server requeues it; nothing we send would count.
                    self.log.warning('%r ran over its %s s timeout', job,
                                     function.timeout)
                    return
                raise
            except JobFailed:
                self._finish(conn, job, constants.WORK_FAIL, None)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.exception('Handler for %r failed', job)
                self._finish(conn, job, constants.WORK_EXCEPTION,
                             _as_bytes(str(e) or type(e).__name__))
            else:
                self._finish(conn, job, constants.WORK_COMPLETE,
                             _as_bytes(result))
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._jobs.pop(current, None)
            self._slots.release()
            self._send_deferred_cant_do(conn, job.binary_name)

    def _send_deferred_cant_do(self, conn: Connection, name: bytes) -> None:
        if (conn, name) not in self._deferred_cant_do:
            return
        if any(c is conn and j.binary_name == name
               for j, c in self._jobs.values()):
            return
        self._deferred_cant_do.discard((conn, name))
        if conn.connected and name not in self.functions:
            conn.send_packet(constants.CANT_DO, name)

    def _finish(self, conn: Connection, job: AsyncWorkerJob, ptype: int,
                data: Optional[bytes]) -> None:
        if not conn.connected:
            self.log.info('%r ended after its server connection was lost',
                          job)
            return
        payload = job.handle if data is None else \
            job.handle + b'\x00' + data
        conn.send_update(ptype, payload)

    def _lost(self, conn: Connection) -> None:
        self._wake(conn)
        self._deferred_cant_do = {
            (c, name) for c, name in self._deferred_cant_do if c is not conn}
        self._grabbers.pop(conn, None)
        # Their results could not be delivered: the server gives the
        # jobs to another worker.
        for task, (_job, job_conn) in list(self._jobs.items()):
            if job_conn is conn:
                task.cancel()
