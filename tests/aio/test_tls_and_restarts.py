"""gear.aio over mutual TLS, and across a geard restart."""

import asyncio
import os

import pytest

import gear
from gear import aio
from gear.testing import GearServerFixture
from tests.aio.conftest import HOST, WAIT, wait_until

pytestmark = pytest.mark.asyncio


def quick_retry(retries=-1):
    return aio.Retry(aio.ConstantBackoff(0.05), retries=retries)


@pytest.fixture
def tls_server():
    fixture = GearServerFixture(ssl=True)
    fixture.setUp()
    yield fixture
    fixture.cleanUp()


async def test_tls_with_client_certificates(tls_server):
    async def shout(job):
        return job.data.upper()

    client = aio.AsyncClient('tls-client')
    worker = aio.AsyncWorker('tls-worker')
    worker.register('shout', shout)
    try:
        for role, cn in ((client, 'client'), (worker, 'worker')):
            key, cert, ca = tls_server.client_cert(cn)
            role.add_server(HOST, tls_server.port, ssl_key=key,
                            ssl_cert=cert, ssl_ca=ca)
            await role.wait_for_server(WAIT)
        run = asyncio.create_task(worker.run())
        job = await client.submit('shout', b'secret')
        assert await job.result(WAIT) == b'SECRET'
        subjects = sorted(c.ssl_subject for c in
                          tls_server.server.connection_map.values())
        assert subjects == ['client', 'worker']
        await worker.stop()
        await run
    finally:
        await client.close()
        await worker.close()


async def test_tls_without_certificate_is_refused(tls_server):
    client = aio.AsyncClient('anonymous', retry=quick_retry(retries=2))
    server = client.add_server(HOST, tls_server.port,
                               ssl_ca=tls_server.ssl_ca)
    try:
        await wait_until(lambda: server.given_up)
        assert server.failures == 3
        assert client.connections == []
        with pytest.raises(gear.NoConnectedServersError):
            await client.submit('f', b'')
    finally:
        await client.close()


async def test_client_job_lost_with_its_server(geard):
    client = aio.AsyncClient('c', retry=quick_retry())
    client.add_server(HOST, geard.port)
    try:
        await client.wait_for_server(WAIT)
        job = await client.submit('nobody', b'')
        geard.server.shutdown()
        with pytest.raises(aio.JobLostError) as info:
            await job.result(WAIT)
        assert isinstance(info.value, gear.ConnectionError)
        assert job.disconnected and job.failure
    finally:
        await client.close()


async def test_worker_gets_stored_job_after_geard_restart(tmp_path):
    store = os.path.join(str(tmp_path), 'jobs.sqlite')
    first = gear.Server(0, host=HOST, store=store)
    port = first.port
    attempts = []
    started = asyncio.Event()

    async def work(job):
        attempts.append(job.unique)
        if len(attempts) == 1:
            started.set()
            await asyncio.Event().wait()
        return b'done'

    worker = aio.AsyncWorker('w', retry=quick_retry())
    worker.register('stored', work)
    second = None
    try:
        async with aio.AsyncClient('c') as client:
            client.add_server(HOST, port)
            await client.wait_for_server(WAIT)
            job = await client.submit('stored', b'payload', unique='keep',
                                      background=True)
        worker.add_server(HOST, port)
        run = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), WAIT)
        # The server goes away mid-job, and comes back on the same port
        # with the same store: the worker reconnects and gets the job.
        first.shutdown()
        await wait_until(lambda: not worker.connections)
        assert worker.running_jobs == 0
        second = gear.Server(port, host=HOST, store=store)
        await wait_until(lambda: len(attempts) == 2)
        assert attempts == [b'keep', b'keep']
        async with aio.AsyncClient('c2') as client:
            client.add_server(HOST, port)
            await client.wait_for_server(WAIT)
            # The handle survived the restart; once the second attempt
            # completed, the server forgets the job.
            job.connection = client.connections[0]
            await wait_until_done(client, job)
        await worker.stop()
        await run
    finally:
        await worker.close()
        first.shutdown()
        if second is not None:
            second.shutdown()


async def wait_until_done(client, job):
    """Poll GET_STATUS until the server no longer knows the job."""
    for _ in range(int(WAIT / 0.05)):
        await client.get_status(job, WAIT)
        if not job.known:
            return
        await asyncio.sleep(0.05)
    raise AssertionError('%r is still known' % (job,))
