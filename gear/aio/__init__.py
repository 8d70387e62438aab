"""gear.aio: Gearman for asyncio.

An :class:`AsyncClient` submits jobs and awaits their results; an
:class:`AsyncWorker` runs ``async def`` handlers; both can send admin
requests.  They speak the protocol through :mod:`gear.protocol`, the
same packet layer as the thread API, share its admin reply parsers, job
classes and errors, and reconnect to lost servers as their
:class:`Retry` says.
"""

from gear.aio.base import Endpoint, Server
from gear.aio.client import (
    AsyncClient, AsyncJob, JobExceptionError, JobFailedError, JobLostError,
    JobUpdate, SubmitError)
from gear.aio.connection import Connection
from gear.aio.retry import (
    Backoff, ConstantBackoff, ExponentialBackoff, NoBackoff, Retry)
from gear.aio.worker import AsyncWorker, AsyncWorkerJob, Handler, JobFailed

__all__ = [
    'AsyncClient', 'AsyncJob', 'AsyncWorker', 'AsyncWorkerJob', 'Backoff',
    'Connection', 'ConstantBackoff', 'Endpoint', 'ExponentialBackoff',
    'Handler', 'JobExceptionError', 'JobFailed', 'JobFailedError',
    'JobLostError', 'JobUpdate', 'NoBackoff', 'Retry', 'Server',
    'SubmitError',
]
