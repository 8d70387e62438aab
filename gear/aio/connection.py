"""One asyncio connection to a Gearman server, on the sans-I/O layer.

:class:`Connection` is an :class:`asyncio.Protocol`: bytes go into a
:class:`gear.protocol.InputBuffer`, and each message is routed:

* replies (JOB_CREATED, STATUS_RES, JOB_ASSIGN_UNIQ, NO_JOB, ERROR...)
  to the oldest request still waiting, because a server answers the
  requests of one connection in the order they were sent;
* admin text to the oldest admin request;
* everything else (WORK_*, NOOP) to the owner's ``on_packet``.

A request's reply callback stays queued even when the coroutine that
sent it is cancelled or times out, so its late reply is still consumed
and the next reply goes to the right request.

Output is corked: everything sent during one turn of the event loop
leaves in a single write.
"""

import asyncio
import collections
import logging
import ssl
from typing import Callable, Deque, List, Optional, Tuple

from gear import constants
from gear.admin import AdminRequest
from gear.errors import ConnectionError, ProtocolError
from gear.protocol import DEFAULT_MAX_PACKET_SIZE, InputBuffer, pack

__all__ = ['Connection', 'LOST', 'ReplyCallback', 'open_connection']

#: The packet type given to reply callbacks whose connection was lost.
LOST = 0

#: ``callback(ptype, payload)``: called once with the reply to a request
#: (its type, or ERROR, or LOST).
ReplyCallback = Callable[[int, bytes], None]

#: ``on_packet(connection, ptype, payload)`` for unsolicited packets.
PacketHandler = Callable[['Connection', int, bytes], None]

# Packet types that answer a request of this side.
_REPLIES = frozenset((
    constants.JOB_CREATED, constants.NO_JOB, constants.JOB_ASSIGN,
    constants.JOB_ASSIGN_UNIQ, constants.JOB_ASSIGN_ALL,
    constants.STATUS_RES, constants.STATUS_RES_UNIQUE,
    constants.OPTION_RES, constants.ECHO_RES))

log = logging.getLogger('gear.aio.Connection')


def split_error(payload: bytes) -> Tuple[str, str]:
    """``(code, message)`` of an ERROR packet, as text."""
    code, _, message = payload.partition(b'\x00')
    return (code.decode('utf-8', 'replace'),
            message.rstrip(b'\x00').decode('utf-8', 'replace'))


class Connection(asyncio.Protocol):
    """A connection to one server; see the module documentation.

    :arg name: ``host:port``, for logs and errors.
    :arg on_packet: called for every packet that is not a reply.
    """

    def __init__(self, name: str, on_packet: PacketHandler,
                 max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.name = name
        self._on_packet = on_packet
        self._buffer = InputBuffer(max_packet_size)
        # None marks a packet (WORK_*) whose only possible answer is an
        # ERROR; it is skipped when a real reply arrives.
        self._pending: Deque[Optional[ReplyCallback]] = collections.deque()
        self._admin: Deque[Tuple[AdminRequest, 'asyncio.Future[None]']] = \
            collections.deque()
        self._out: List[bytes] = []
        self._flush_handle: Optional[asyncio.Handle] = None
        self._paused = False
        self._drain_waiters: List['asyncio.Future[None]'] = []
        self._loop = asyncio.get_running_loop()
        self._closed: 'asyncio.Future[None]' = self._loop.create_future()
        self.transport: Optional[asyncio.Transport] = None
        self.connected = False

    def __repr__(self) -> str:
        return '<gear.aio.Connection %s%s>' % (
            self.name, '' if self.connected else ' (closed)')

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connected = True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.connected = False
        self.transport = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out.clear()
        pending, self._pending = self._pending, collections.deque()
        for callback in pending:
            if callback is not None:
                self._call(callback, LOST, b'')
        admin, self._admin = self._admin, collections.deque()
        lost = ConnectionError('Connection to %s lost' % self.name)
        for _request, future in admin:
            if not future.done():
                future.set_exception(lost)
        self._wake_drainers()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers()

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf.feed(data)
        try:
            while True:
                binary = buf.nextIsBinary()
                if binary is None:
                    return
                if binary:
                    message = buf.readPacket()
                    if message is None:
                        return
                    code, ptype, payload = message
                    if code != constants.RES:
                        raise ProtocolError('A server sent a request')
                    self._dispatch(ptype, payload)
                else:
                    if not self._admin:
                        raise ProtocolError('Unexpected admin text')
                    request, future = self._admin[0]
                    if buf.readText(request.isComplete) is None:
                        return
                    self._admin.popleft()
                    if not future.done():
                        future.set_result(None)
        except ProtocolError as e:
            log.error('Closing %s: %s', self.name, e)
            self.abort()

    # Routing

    def _dispatch(self, ptype: int, payload: bytes) -> None:
        if ptype in _REPLIES:
            pending = self._pending
            while pending and pending[0] is None:
                pending.popleft()
            if not pending:
                log.warning('%s: %s answers no request', self.name,
                            constants.types.get(ptype))
                return
            callback = pending.popleft()
            assert callback is not None
            self._call(callback, ptype, payload)
        elif ptype == constants.ERROR:
            self._dispatch_error(payload)
        else:
            try:
                self._on_packet(self, ptype, payload)
            except Exception:
                # One bad packet must not take the connection down.
                log.exception('%s: handling %s failed', self.name,
                              constants.types.get(ptype, ptype))

    def _dispatch_error(self, payload: bytes) -> None:
        pending = self._pending
        code, message = split_error(payload)
        if pending and pending[0] is None and code == 'JOB_NOT_FOUND':
            # The answer to a WORK_* packet: its job is no longer ours
            # (it timed out and was requeued, or was cancelled).
            pending.popleft()
            log.warning('%s: a work update was refused: %s %s', self.name,
                        code, message)
            return
        while pending and pending[0] is None:
            pending.popleft()
        if not pending:
            log.warning('%s: ERROR %s %s answers no request', self.name,
                        code, message)
            return
        callback = pending.popleft()
        assert callback is not None
        self._call(callback, constants.ERROR, payload)

    def _call(self, callback: ReplyCallback, ptype: int,
              payload: bytes) -> None:
        try:
            callback(ptype, payload)
        except Exception:
            log.exception('%s: reply handler failed', self.name)

    # Output

    def send(self, data: bytes) -> None:
        """Queue ``data``; it leaves at the end of this loop turn.

        :raises gear.ConnectionError: the connection is closed.
        """
        if not self.connected:
            raise ConnectionError('Not connected to %s' % self.name)
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def send_packet(self, ptype: int, payload: bytes = b'') -> None:
        """Queue one request packet."""
        self.send(pack(constants.REQ, ptype, payload))

    def _flush(self) -> None:
        self._flush_handle = None
        out = self._out
        if not out or self.transport is None:
            return
        data = out[0] if len(out) == 1 else b''.join(out)
        out.clear()
        self.transport.write(data)

    def request(self, ptype: int, payload: bytes,
                callback: ReplyCallback) -> None:
        """Send a request and queue ``callback`` for its reply."""
        self.send_packet(ptype, payload)
        self._pending.append(callback)

    def send_update(self, ptype: int, payload: bytes) -> None:
        """Send a WORK_* packet, which gets no reply but may get an
        ERROR."""
        self.send_packet(ptype, payload)
        self._pending.append(None)

    def admin(self, request: AdminRequest) -> 'asyncio.Future[None]':
        """Send an admin request; the future is done once its reply is
        in ``request.response``."""
        future: 'asyncio.Future[None]' = self._loop.create_future()
        self.send(request.getCommand())
        self._admin.append((request, future))
        return future

    @property
    def writing_paused(self) -> bool:
        return self._paused

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its limit."""
        if self._out and self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        if not self._paused or not self.connected:
            return
        waiter: 'asyncio.Future[None]' = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # Closing

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after the queued output is written."""
        if self.transport is not None:
            self._flush()
            self.transport.close()

    async def wait_closed(self) -> None:
        """Return once the connection is lost or closed."""
        await asyncio.shield(self._closed)


async def open_connection(
        host: str, port: int, on_packet: PacketHandler,
        ssl_context: Optional[ssl.SSLContext] = None,
        timeout: Optional[float] = None,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> Connection:
    """Connect to ``host:port`` (with TLS when ``ssl_context`` is given).

    :raises OSError: the connection or the TLS handshake failed.
    :raises asyncio.TimeoutError: not done within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    name = '%s:%s' % (host, port)

    def factory() -> Connection:
        return Connection(name, on_packet, max_packet_size)

    _transport, protocol = await asyncio.wait_for(
        loop.create_connection(
            factory, host, port, ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None),
        timeout)
    return protocol
