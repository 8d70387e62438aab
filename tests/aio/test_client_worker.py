"""gear.aio's client and worker against geard and the C gearmand."""

import asyncio
import time

import pytest

import gear
from gear import aio
from tests.aio.conftest import HOST, WAIT, wait_until

pytestmark = pytest.mark.asyncio


def fast_retry():
    return aio.Retry(aio.ExponentialBackoff(base=0.05, cap=0.5))


async def connect(role, port):
    role.add_server(HOST, port)
    await role.wait_for_server(WAIT)
    return role


class Running(object):
    """An AsyncWorker running in a task for the duration of a test."""

    def __init__(self, port, functions, concurrency=1, client_id='w'):
        self.worker = aio.AsyncWorker(client_id, concurrency=concurrency,
                                      retry=fast_retry())
        for name, handler, *rest in functions:
            self.worker.register(name, handler, *rest)
        self.port = port
        self.task = None

    async def __aenter__(self):
        await connect(self.worker, self.port)
        self.task = asyncio.create_task(self.worker.run())
        return self.worker

    async def __aexit__(self, *exc):
        await self.worker.stop(timeout=WAIT)
        await asyncio.wait_for(self.task, WAIT)


async def reverse(job):
    return job.data[::-1]


async def test_foreground_result_and_updates(server):
    async def chatty(job):
        await job.send_data(b'one')
        await job.send_warning('careful')
        await job.send_status(1, 2)
        await job.send_data(b'two')
        return b'done:' + job.data

    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('chatty', chatty)]):
        await connect(client, server.port)
        job = await client.submit('chatty', b'x', unique='u1')
        assert job.handle
        updates = [u async for u in job.updates()]
        assert await job.result(WAIT) == b'done:x'
        assert updates == [
            aio.JobUpdate('data', b'one'),
            aio.JobUpdate('warning', b'careful'),
            aio.JobUpdate('status', b'', b'1', b'2'),
            aio.JobUpdate('data', b'two'),
        ]
        # The gear.Job attributes are kept as the thread API keeps them.
        assert job.data == [b'one', b'careful', b'two', b'done:x']
        assert job.complete and not job.failure and job.warning
        assert job.fraction_complete == 0.5
        assert job.unique == b'u1'


async def test_failures_and_exceptions(server):
    async def fails(job):
        raise aio.JobFailed()

    async def raises(job):
        raise ValueError('bad input %s' % job.data.decode())

    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('fails', fails), ('raises', raises)]):
        await connect(client, server.port)
        job = await client.submit('fails', b'')
        with pytest.raises(aio.JobFailedError) as info:
            await job.result(WAIT)
        assert not isinstance(info.value, aio.JobExceptionError)
        assert job.failure
        job = await client.submit('raises', b'42')
        with pytest.raises(aio.JobExceptionError) as info:
            await job.result(WAIT)
        assert info.value.data == b'bad input 42'
        assert job.exception == b'bad input 42'


async def test_background_status(server):
    async with aio.AsyncClient('c') as client:
        await connect(client, server.port)
        job = await client.submit('nobody', b'data', background=True)
        # A generated unique keeps persistent queues from merging jobs.
        assert job.unique
        await client.get_status(job, WAIT)
        assert job.known and not job.running
        known, running, numerator, denominator, waiting = \
            await client.get_status_unique(job.unique, WAIT)
        assert known and not running
        assert (await client.get_status_unique('no-such', WAIT))[0] is False
        with pytest.raises(gear.GearmanError):
            await job.result()


async def test_priorities(server):
    order = []

    async def record(job):
        order.append(job.data)
        return b''

    async with aio.AsyncClient('c') as client:
        await connect(client, server.port)
        for precedence, data in ((gear.PRECEDENCE_LOW, b'low'),
                                 (gear.PRECEDENCE_NORMAL, b'normal'),
                                 (gear.PRECEDENCE_HIGH, b'high')):
            await client.submit('prio', data, background=True,
                                precedence=precedence)
        async with Running(server.port, [('prio', record)]):
            await wait_until(lambda: len(order) == 3)
    assert order == [b'high', b'normal', b'low']


@pytest.mark.slow
async def test_epoch_jobs(server):
    ran = {}

    async def record(job):
        ran[job.data] = time.time()
        return b''

    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('later', record)]):
        await connect(client, server.port)
        await client.submit('later', b'past', background=True,
                            when=time.time() - 10)
        await wait_until(lambda: b'past' in ran)
        when = int(time.time()) + 2
        await client.submit('later', b'future', background=True, when=when)
        with pytest.raises(gear.ConfigurationError):
            await client.submit('later', b'', when=when)
        if server.kind == 'gearmand':
            # gearmand 1.1 has no timer for due epoch jobs: the next
            # wake-up of the worker finds it.
            await wait_until(lambda: time.time() > when + 1)
            await client.submit('later', b'nudge', background=True)
        await wait_until(lambda: b'future' in ran)
        # Servers compare whole seconds.
        assert ran[b'future'] >= when - 1


async def test_unique_coalescing(server):
    runs = []
    release = asyncio.Event()

    async def slow(job):
        runs.append(job.unique)
        await release.wait()
        return b'shared'

    async with aio.AsyncClient('c') as client:
        await connect(client, server.port)
        first = await client.submit('co', b'a', unique='same')
        second = await client.submit('co', b'a', unique='same')
        assert first.handle == second.handle
        async with Running(server.port, [('co', slow)]):
            await wait_until(lambda: runs)
            release.set()
            assert await first.result(WAIT) == b'shared'
            assert await second.result(WAIT) == b'shared'
    assert runs == [b'same']


async def test_result_timeout_and_cancellation_keep_the_job(server):
    release = asyncio.Event()

    async def gated(job):
        await release.wait()
        return b'late'

    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('gated', gated)]):
        await connect(client, server.port)
        job = await client.submit('gated', b'')
        with pytest.raises(asyncio.TimeoutError):
            await job.result(timeout=0.05)
        waiter = asyncio.create_task(job.result())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        assert await job.result(WAIT) == b'late'


async def test_cancelled_submit_leaves_the_connection_consistent(server):
    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('rev', reverse)]):
        await connect(client, server.port)
        # Cancel submissions after their packets are queued but before
        # JOB_CREATED: the replies must still be taken off the wire in
        # order, so the next submission gets its own handle.
        for _ in range(3):
            task = asyncio.create_task(client.submit('rev', b'lost'))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        admin = asyncio.create_task(client.status())
        await asyncio.sleep(0)
        admin.cancel()
        job = await client.submit('rev', b'kept')
        assert await job.result(WAIT) == b'tpek'
        assert ('rev', ) == tuple(r[0] for r in await client.status()
                                  if r[0] == 'rev')
        many = await client.submit_many(
            [('rev', b'%d' % i) for i in range(50)], background=False)
        results = await asyncio.gather(*(j.result(WAIT) for j in many))
        assert results == [(b'%d' % i)[::-1] for i in range(50)]


async def test_submit_timeout_consumes_the_late_reply(geard):
    # Pause the server's accept of new packets by not having it answer:
    # a timeout of zero expires before any reply can arrive.
    async with aio.AsyncClient('c') as client:
        await connect(client, geard.port)
        with pytest.raises(asyncio.TimeoutError):
            await client.submit('f', b'', background=True, timeout=0)
        job = await client.submit('f', b'second', background=True)
        await client.get_status(job, WAIT)
        assert job.known
        rows = dict((r[0], r[1]) for r in await client.status())
        assert rows['f'] == 2


@pytest.mark.slow
async def test_can_do_timeout_requeues(server):
    attempts = []

    async def first_hangs(job):
        attempts.append(job.handle)
        if len(attempts) == 1:
            await asyncio.Event().wait()
        return b'second try'

    # gearmand clears a connection's timeout timer on PRE_SLEEP, which
    # a worker with a free slot sends while a job runs: one slot there.
    concurrency = 1 if server.kind == 'gearmand' else 2
    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('hang', first_hangs, 1.0)],
                    concurrency=concurrency) as worker:
        await connect(client, server.port)
        job = await client.submit('hang', b'')
        assert await job.result(WAIT) == b'second try'
        assert len(attempts) == 2
        await wait_until(lambda: worker.running_jobs == 0)


async def test_concurrency_limit(server):
    release = asyncio.Event()
    running = []

    async def gated(job):
        running.append(job.data)
        await release.wait()
        return job.data

    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('gated', gated)],
                    concurrency=3) as worker:
        await connect(client, server.port)
        jobs = [await client.submit('gated', b'%d' % i) for i in range(5)]
        await wait_until(lambda: len(running) == 3)
        rows = {r[0]: r for r in await client.status()}
        assert rows['gated'][1:3] == (5, 3)
        assert worker.running_jobs == 3
        release.set()
        results = await asyncio.gather(*(j.result(WAIT) for j in jobs))
        assert sorted(results) == [b'%d' % i for i in range(5)]


async def test_graceful_stop_finishes_running_jobs(server):
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(job):
        started.set()
        await release.wait()
        return b'finished'

    async with aio.AsyncClient('c') as client:
        await connect(client, server.port)
        worker = aio.AsyncWorker('w', retry=fast_retry())
        worker.register('slow', slow)
        await connect(worker, server.port)
        run = asyncio.create_task(worker.run())
        job = await client.submit('slow', b'')
        await asyncio.wait_for(started.wait(), WAIT)
        stopping = asyncio.create_task(worker.stop())
        await asyncio.sleep(0)
        assert not stopping.done()
        release.set()
        assert await job.result(WAIT) == b'finished'
        await asyncio.wait_for(stopping, WAIT)
        await asyncio.wait_for(run, WAIT)
        # Stopped means gone: nothing takes the next job.
        await wait_until(lambda: not worker.connections)
        later = await client.submit('slow', b'', background=True)
        await client.get_status(later, WAIT)
        assert later.known and not later.running


async def test_worker_reconnects_and_job_is_requeued(server):
    attempts = []

    async def drop_first(job):
        attempts.append(job.handle)
        if len(attempts) == 1:
            # Lose the connection mid-job: the server must hand the job
            # out again, and the worker must come back for it.
            job._conn.abort()
            await asyncio.Event().wait()
        return b'again'

    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('drop', drop_first)]):
        await connect(client, server.port)
        job = await client.submit('drop', b'')
        assert await job.result(WAIT) == b'again'
        assert attempts[0] == attempts[1]


async def test_server_restart_loses_foreground_jobs(server):
    async with aio.AsyncClient('c', retry=fast_retry()) as client:
        await connect(client, server.port)
        job = await client.submit('nobody', b'')
        server.restart()
        with pytest.raises(aio.JobLostError):
            await job.result(WAIT)
        assert job.disconnected
        # The client comes back by itself.
        await client.wait_for_server(WAIT)
        async with Running(server.port, [('rev', reverse)]):
            again = await client.submit('rev', b'ab')
            assert await again.result(WAIT) == b'ba'


async def test_admin_requests(server):
    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('rev', reverse)], client_id='adm-w'):
        await connect(client, server.port)
        job = await client.submit('queued-only', b'', background=True)
        status = {r[0]: r for r in await client.status()}
        assert status['queued-only'] == ('queued-only', 1, 0, 0)
        assert status['rev'][3] == 1
        workers = await client.workers()
        assert any(w[2] == 'adm-w' and w[3] == ('rev',) for w in workers)
        assert await client.version()
        handles = [row[0] for row in await client.show_jobs()]
        assert job.handle.decode() in handles
        assert job.unique.decode() in await client.show_unique_jobs()
        assert await client.cancel_job(job.handle)
        if server.kind == 'geard':
            # gearmand drops a cancelled job lazily, when a worker for
            # its function next reaches it.
            status = {r[0]: r for r in await client.status()}
            assert status.get('queued-only', ('', 0))[1] == 0
            with pytest.raises(gear.AdminError):
                await client.cancel_job(job.handle)
        # The same parse() as the thread API, so the same values.
        thread_client = gear.Client('t')
        thread_client.addServer(HOST, server.port)
        try:
            thread_client.waitForServer(WAIT)
            request = gear.StatusAdminRequest()
            conn = thread_client.active_connections[0]
            conn.sendAdminRequest(request, timeout=WAIT)
            assert request.parse() == await client.status()
        finally:
            thread_client.shutdown()


async def test_submit_many_pipelines(server):
    async with aio.AsyncClient('c') as client:
        await connect(client, server.port)
        jobs = await client.submit_many(
            (('many', b'%d' % i) for i in range(3000)), window=256)
        assert len({j.handle for j in jobs}) == 3000
        rows = {r[0]: r for r in await client.status()}
        assert rows['many'][1] == 3000
        own = aio.AsyncJob('many', b'mine', unique='mine')
        [same] = await client.submit_many([own])
        assert same is own and own.handle


async def test_worker_of_several_servers(geard):
    from gear.testing import GearServerFixture
    other = GearServerFixture()
    other.setUp()
    try:
        async with aio.AsyncClient('c') as client, \
                aio.AsyncWorker('w', concurrency=2) as worker:
            worker.register('rev', reverse)
            client.add_server(HOST, geard.port)
            client.add_server(HOST, other.port)
            worker.add_server(HOST, geard.port)
            worker.add_server(HOST, other.port)
            await wait_until(lambda: len(client.connections) == 2)
            await wait_until(lambda: len(worker.connections) == 2)
            run = asyncio.create_task(worker.run())
            jobs = [await client.submit('rev', b'%02d' % i)
                    for i in range(10)]
            assert {j.connection.name for j in jobs} == {
                '%s:%d' % (HOST, geard.port), '%s:%d' % (HOST, other.port)}
            results = await asyncio.gather(*(j.result(WAIT) for j in jobs))
            assert results == [(b'%02d' % i)[::-1] for i in range(10)]
            await worker.stop()
            await run
    finally:
        other.cleanUp()


async def test_client_without_server():
    client = aio.AsyncClient('c')
    with pytest.raises(gear.NoConnectedServersError):
        await client.submit('f', b'')
    await client.close()


async def test_unregister_waits_for_running_jobs(server):
    started = asyncio.Event()
    release = asyncio.Event()
    runs = []

    async def held(job):
        runs.append(job.handle)
        started.set()
        await release.wait()
        return b'once'

    async with aio.AsyncClient('c') as client, \
            Running(server.port, [('held', held)]) as worker:
        await connect(client, server.port)
        job = await client.submit('held', b'')
        await asyncio.wait_for(started.wait(), WAIT)
        # A CANT_DO now would make the server requeue the running job.
        worker.unregister('held')
        rows = {r[0]: r for r in await client.status()}
        assert rows['held'][2:] == (1, 1)
        release.set()
        assert await job.result(WAIT) == b'once'

        async def unregistered():
            rows = {r[0]: r for r in await client.status()}
            return rows.get('held', ('held', 0, 0, 0))[3] == 0
        for _ in range(int(WAIT / 0.01)):
            if await unregistered():
                break
            await asyncio.sleep(0.01)
        assert await unregistered()
    assert len(runs) == 1


async def test_stop_timeout_cancels_and_the_server_requeues(server):
    started = asyncio.Event()
    cancelled = []

    async def hangs(job):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(job.handle)
            raise

    async with aio.AsyncClient('c') as client:
        await connect(client, server.port)
        worker = aio.AsyncWorker('w')
        worker.register('hangs', hangs)
        await connect(worker, server.port)
        run = asyncio.create_task(worker.run())
        job = await client.submit('hangs', b'', background=True)
        await asyncio.wait_for(started.wait(), WAIT)
        await asyncio.wait_for(worker.stop(timeout=0.1), WAIT)
        await asyncio.wait_for(run, WAIT)
        assert cancelled == [job.handle]

        async def requeued():
            await client.get_status(job, WAIT)
            return job.known and not job.running
        for _ in range(int(WAIT / 0.01)):
            if await requeued():
                break
            await asyncio.sleep(0.01)
        assert await requeued()


async def test_refused_submissions(server):
    async with aio.AsyncClient('c') as client:
        await connect(client, server.port)
        # gearmand keeps a limit only for a function it knows.
        await client.submit('limited', b'first', background=True)
        await client.admin(gear.MaxQueueAdminRequest('limited', 3))
        with pytest.raises(aio.SubmitError) as info:
            await client.submit_many(
                [('limited', b'%d' % i) for i in range(5)])
        assert '3 of 5 submissions refused' in str(info.value)
        with pytest.raises(aio.SubmitError) as info:
            await client.submit('limited', b'one more', background=True)
        assert info.value.code == 'QUEUE_ERROR'
        rows = {r[0]: r for r in await client.status()}
        assert rows['limited'][1] == 3


async def test_submit_goes_on_to_a_server_that_accepts(geard):
    from gear.testing import GearServerFixture
    other = GearServerFixture()
    other.setUp()
    try:
        async with aio.AsyncClient('c') as client:
            for port in (geard.port, other.port):
                client.add_server(HOST, port)
            await wait_until(lambda: len(client.connections) == 2)
            full = '%s:%d' % (HOST, geard.port)
            await client.admin(gear.MaxQueueAdminRequest('f', 1), full)
            await client.submit_many([('f', b'fills it')], server=full)
            jobs = [await client.submit('f', b'%d' % i, background=True)
                    for i in range(4)]
            assert {j.connection.name for j in jobs} == {
                '%s:%d' % (HOST, other.port)}
    finally:
        other.cleanUp()
