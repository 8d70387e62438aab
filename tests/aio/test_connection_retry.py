"""gear.aio's reply routing and retry policy, without a real server.

A scripted asyncio server answers each request with chosen bytes, so
the order of replies, ERRORs and admin text is exact.
"""

import asyncio

import pytest

from gear import admin
from gear import constants as c
from gear import aio
from gear.aio.connection import LOST, open_connection
from gear.errors import ConnectionError
from gear.protocol import InputBuffer, pack
from tests.aio.conftest import HOST, WAIT


def res(ptype, *args):
    return pack(c.RES, ptype, b'\x00'.join(args))


class Scripted(object):
    """Replies with ``script[n]`` to the n-th message it reads."""

    def __init__(self, script):
        self.script = list(script)
        self.seen = []
        self.server = None

    async def start(self):
        self.server = await asyncio.start_server(self.serve, HOST, 0)
        return self.server.sockets[0].getsockname()[1]

    async def serve(self, reader, writer):
        buf = InputBuffer()
        while self.script:
            data = await reader.read(65536)
            if not data:
                break
            buf.feed(data)
            while buf and self.script:
                if buf.nextIsBinary():
                    message = buf.readPacket()
                    if message is None:
                        break
                    self.seen.append(message[1])
                else:
                    line = buf.readLine()
                    if line is None:
                        break
                    self.seen.append(line)
                reply = self.script.pop(0)
                if reply:
                    writer.write(reply)
        await writer.drain()
        writer.close()

    async def close(self):
        self.server.close()
        await self.server.wait_closed()


async def connected(script):
    scripted = Scripted(script)
    port = await scripted.start()
    replies = []
    conn = await open_connection(HOST, port, lambda *a: replies.append(a),
                                 timeout=WAIT)
    return scripted, conn, replies


def collector(into):
    return lambda ptype, payload: into.append((ptype, payload))


@pytest.mark.asyncio
async def test_error_for_a_work_update_is_not_taken_as_a_reply():
    scripted, conn, _ = await connected([
        res(c.ERROR, b'JOB_NOT_FOUND', b'Job given in work result not'
            b' found'),
        res(c.NO_JOB),
    ])
    got = []
    conn.send_update(c.WORK_COMPLETE, b'H:1\x00late')
    conn.request(c.GRAB_JOB_UNIQ, b'', collector(got))
    await asyncio.wait_for(_until(lambda: got), WAIT)
    assert got == [(c.NO_JOB, b'')]
    conn.close()
    await scripted.close()


@pytest.mark.asyncio
async def test_other_errors_skip_updates_that_got_none():
    scripted, conn, _ = await connected([
        b'',
        res(c.ERROR, b'QUEUE_ERROR', b'full'),
    ])
    got = []
    conn.send_update(c.WORK_DATA, b'H:1\x00x')
    conn.request(c.SUBMIT_JOB, b'f\x00\x00x', collector(got))
    await asyncio.wait_for(_until(lambda: got), WAIT)
    assert got == [(c.ERROR, b'QUEUE_ERROR\x00full')]
    conn.close()
    await scripted.close()


@pytest.mark.asyncio
async def test_admin_text_and_packets_interleave():
    scripted, conn, unsolicited = await connected([
        res(c.JOB_CREATED, b'H:1'),
        b'OK 1.2\n',
        res(c.JOB_CREATED, b'H:2') + res(c.WORK_DATA, b'H:2', b'd'),
    ])
    got = []
    conn.request(c.SUBMIT_JOB, b'f\x00\x00a', collector(got))
    version = admin.VersionAdminRequest()
    done = conn.admin(version)
    conn.request(c.SUBMIT_JOB, b'f\x00\x00b', collector(got))
    await asyncio.wait_for(done, WAIT)
    await asyncio.wait_for(_until(lambda: len(got) == 2), WAIT)
    assert version.parse() == '1.2'
    assert got == [(c.JOB_CREATED, b'H:1'), (c.JOB_CREATED, b'H:2')]
    await asyncio.wait_for(_until(lambda: unsolicited), WAIT)
    assert unsolicited == [(conn, c.WORK_DATA, b'H:2\x00d')]
    conn.close()
    await scripted.close()


@pytest.mark.asyncio
async def test_lost_connection_answers_every_waiter():
    scripted, conn, _ = await connected([None])
    got = []
    conn.request(c.ECHO_REQ, b'x', collector(got))
    pending_admin = conn.admin(admin.StatusAdminRequest())
    await asyncio.wait_for(conn.wait_closed(), WAIT)
    assert got == [(LOST, b'')]
    with pytest.raises(ConnectionError):
        await pending_admin
    with pytest.raises(ConnectionError):
        conn.send(b'')
    await scripted.close()


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.005)


def test_exponential_backoff_grows_to_its_cap():
    backoff = aio.ExponentialBackoff(base=0.5, cap=3, jitter=False)
    assert [backoff.compute(n) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]
    jittered = aio.ExponentialBackoff(base=1, cap=100)
    for failures in range(1, 8):
        full = min(100, 2 ** (failures - 1))
        assert full / 2 <= jittered.compute(failures) <= full


def test_retry_gives_up_after_its_retries():
    retry = aio.Retry(aio.ConstantBackoff(0.25), retries=2)
    assert [retry.delay(n) for n in (1, 2, 3)] == [0.25, 0.25, None]
    forever = aio.Retry(aio.NoBackoff())
    assert forever.delay(10 ** 6) == 0.0
    with pytest.raises(ValueError):
        aio.ConstantBackoff(-1)


def test_add_server_needs_a_running_loop():
    client = aio.AsyncClient('c')
    with pytest.raises(RuntimeError) as info:
        client.add_server(HOST, 4730)
    assert 'running event loop' in str(info.value)
    assert client.servers == []
