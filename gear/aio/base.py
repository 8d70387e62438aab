"""What the asyncio client and worker share: servers, reconnection with
backoff, and admin requests.

Each server added with :meth:`Endpoint.add_server` gets one task that
connects, lets the subclass greet the server, waits for the connection
to be lost and connects again, pausing as its :class:`~gear.aio.Retry`
says.  Nothing else in :mod:`gear.aio` sleeps.
"""

import asyncio
import logging
import ssl
from typing import Any, List, Optional, Tuple, TypeVar

from gear import admin as admin_requests
from gear import constants
from gear.errors import (
    ConfigurationError, ConnectionError, NoConnectedServersError)
from gear.protocol import DEFAULT_MAX_PACKET_SIZE
from gear.util import convert_to_bytes, create_ssl_context, to_text

from gear.aio.connection import LOST, Connection, open_connection
from gear.aio.retry import Retry

__all__ = ['Endpoint', 'Server']

_Self = TypeVar('_Self', bound='Endpoint')

#: Seconds allowed for a TCP connection plus its TLS handshake.
DEFAULT_CONNECT_TIMEOUT = 10.0


class Server(object):
    """One server an endpoint talks to, and its current connection."""

    def __init__(self, host: str, port: int,
                 ssl_context: Optional[ssl.SSLContext]) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.connection: Optional[Connection] = None
        self.task: Optional['asyncio.Task[None]'] = None
        #: Failed connection attempts in a row.
        self.failures = 0
        #: True once the retry policy gave this server up.
        self.given_up = False

    @property
    def name(self) -> str:
        return '%s:%s' % (self.host, self.port)

    def __repr__(self) -> str:
        state = 'connected' if self.connection is not None else \
            ('given up' if self.given_up else 'connecting')
        return '<gear.aio.Server %s %s>' % (self.name, state)


class Endpoint(object):
    """Base of :class:`~gear.aio.AsyncClient` and
    :class:`~gear.aio.AsyncWorker`.

    :arg client_id: sent as SET_CLIENT_ID; shown by ``workers``.
    :arg retry: the reconnection policy (exponential backoff with
        jitter, forever, by default).
    :arg connect_timeout: seconds for one connection attempt.
    """

    _log_name = 'gear.aio.Endpoint'

    def __init__(self, client_id: Optional[str] = None,
                 retry: Optional[Retry] = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.client_id: Optional[bytes] = convert_to_bytes(client_id)
        self.retry = retry if retry is not None else Retry()
        self.connect_timeout = connect_timeout
        self.max_packet_size = max_packet_size
        self.servers: List[Server] = []
        self.log = logging.getLogger('%s.%s' % (
            self._log_name, to_text(self.client_id or b'')))
        self._closing = False
        self._turn = 0
        self._connected_event: Optional[asyncio.Event] = None

    # Servers

    def add_server(self, host: str, port: int = constants.DEFAULT_PORT,
                   ssl_key: Optional[str] = None,
                   ssl_cert: Optional[str] = None,
                   ssl_ca: Optional[str] = None,
                   check_hostname: bool = False) -> Server:
        """Connect to a server now and whenever it comes back.

        Must be called with the event loop running.  With ``ssl_ca`` the
        connection uses TLS, verifying the server against that CA and
        presenting ``ssl_cert``/``ssl_key`` when given.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError('add_server() needs a running event loop:'
                               ' call it from a coroutine') from None
        if self._closing:
            raise ConfigurationError('%r is closed' % (self,))
        for server in self.servers:
            if (server.host, server.port) == (host, port):
                raise ConfigurationError('Server %s:%s already added'
                                         % (host, port))
        context = None
        if ssl_ca or ssl_cert or ssl_key:
            context = create_ssl_context(ssl_key, ssl_cert, ssl_ca,
                                         check_hostname=check_hostname)
        server = Server(host, int(port), context)
        self.servers.append(server)
        server.task = loop.create_task(self._keep_connected(server))
        return server

    @property
    def connections(self) -> List[Connection]:
        """The connections that are up, in the order servers were added."""
        return [s.connection for s in self.servers
                if s.connection is not None]

    def _connections_in_turn(self) -> List[Connection]:
        """Connected servers, starting with the next one in turn."""
        conns = self.connections
        if len(conns) > 1:
            self._turn = (self._turn + 1) % len(conns)
            conns = conns[self._turn:] + conns[:self._turn]
        return conns

    def _connection(self, server: Optional[str] = None) -> Connection:
        conns = self.connections
        if server is not None:
            conns = [c for c in conns if c.name == server]
        if not conns:
            raise NoConnectedServersError('No connected Gearman servers')
        return conns[0]

    def _connected(self) -> asyncio.Event:
        if self._connected_event is None:
            self._connected_event = asyncio.Event()
            if self.connections:
                self._connected_event.set()
        return self._connected_event

    async def wait_for_server(self, timeout: Optional[float] = None) -> None:
        """Wait until at least one server is connected.

        :raises asyncio.TimeoutError: none within ``timeout`` seconds.
        """
        event = self._connected()
        if not event.is_set():
            await asyncio.wait_for(event.wait(), timeout)

    async def _keep_connected(self, server: Server) -> None:
        while not self._closing:
            try:
                conn = await open_connection(
                    server.host, server.port, self._on_packet,
                    server.ssl_context, self.connect_timeout,
                    self.max_packet_size)
            except (OSError, asyncio.TimeoutError) as e:
                server.failures += 1
                delay = self.retry.delay(server.failures)
                if delay is None:
                    self.log.error('Giving up %s after %d failed attempts:'
                                   ' %s', server.name, server.failures, e)
                    server.given_up = True
                    return
                self.log.debug('Cannot connect to %s (%s); again in'
                               ' %.2f s', server.name, e, delay)
                await asyncio.sleep(delay)
                continue
            try:
                await self._greet(conn)
                # One round trip proves the server is serving, so a peer
                # that accepts and drops connections gets the backoff.
                await self.round_trip(conn, constants.ECHO_REQ, b'gear',
                                      self.connect_timeout)
            except asyncio.CancelledError:
                conn.abort()
                self._lost(conn)
                raise
            except (ConnectionError, OSError, asyncio.TimeoutError) as e:
                conn.abort()
                await conn.wait_closed()
                self._lost(conn)
                server.failures += 1
                delay = self.retry.delay(server.failures)
                self.log.warning('%s failed while greeting: %s',
                                 server.name, e)
                if delay is None:
                    server.given_up = True
                    return
                await asyncio.sleep(delay)
                continue
            server.failures = 0
            server.connection = conn
            self.log.info('Connected to %s', server.name)
            self._connected().set()
            try:
                await conn.wait_closed()
            finally:
                server.connection = None
                if not self.connections:
                    self._connected().clear()
                self._lost(conn)
            if not self._closing:
                self.log.warning('Lost the connection to %s', server.name)

    async def round_trip(self, conn: Connection, ptype: int,
                         payload: bytes,
                         timeout: Optional[float] = None
                         ) -> Tuple[int, bytes]:
        """Send a request and return its reply as ``(ptype, payload)``.

        An ERROR reply is returned too, not raised.  If the wait is
        cancelled or times out, the reply is still consumed later.

        :raises gear.ConnectionError: the connection was lost first.
        """
        future: 'asyncio.Future[Tuple[int, bytes]]' = \
            asyncio.get_running_loop().create_future()

        def on_reply(rtype: int, rpayload: bytes) -> None:
            if future.done():
                return
            if rtype == LOST:
                future.set_exception(ConnectionError(
                    'Connection to %s lost' % conn.name))
            else:
                future.set_result((rtype, rpayload))

        conn.request(ptype, payload, on_reply)
        return await asyncio.wait_for(future, timeout)

    # Subclass hooks

    async def _greet(self, conn: Connection) -> None:
        """Send what a new connection needs (SET_CLIENT_ID...)."""
        if self.client_id:
            conn.send_packet(constants.SET_CLIENT_ID, self.client_id)

    def _on_packet(self, conn: Connection, ptype: int,
                   payload: bytes) -> None:
        self.log.debug('%s: unexpected %s', conn.name,
                       constants.types.get(ptype, ptype))

    def _lost(self, conn: Connection) -> None:
        """A connection went away; fail what depended on it."""

    # Closing

    async def close(self) -> None:
        """Close every connection and stop reconnecting."""
        self._closing = True
        tasks = [s.task for s in self.servers if s.task is not None]
        for server in self.servers:
            if server.connection is not None:
                server.connection.close()
            elif server.task is not None:
                server.task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # Admin requests

    async def admin(self, request: admin_requests.AdminRequest,
                    server: Optional[str] = None,
                    timeout: Optional[float] = None) -> Any:
        """Send an admin request and return its parsed reply.

        :arg request: any :class:`gear.AdminRequest`; the result is its
            ``parse()``, exactly as with the thread API.
        :arg server: ``'host:port'`` of the server to ask (by default
            the first connected one).
        :raises gear.AdminError: the server answered ``ERR``.
        :raises asyncio.TimeoutError: no reply within ``timeout``; the
            late reply is still consumed when it comes.
        """
        conn = self._connection(server)
        future = conn.admin(request)
        await asyncio.wait_for(asyncio.shield(future), timeout)
        return request.parse()

    async def status(self, server: Optional[str] = None
                     ) -> List[Tuple[str, int, int, int]]:
        """``status``: ``(function, total, running, workers)`` rows."""
        rows: List[Tuple[str, int, int, int]] = await self.admin(
            admin_requests.StatusAdminRequest(), server)
        return rows

    async def workers(self, server: Optional[str] = None
                      ) -> List[Tuple[int, str, str, Tuple[str, ...]]]:
        """``workers``: ``(fd, ip, client_id, functions)`` rows."""
        rows: List[Tuple[int, str, str, Tuple[str, ...]]] = \
            await self.admin(admin_requests.WorkersAdminRequest(), server)
        return rows

    async def show_jobs(self, server: Optional[str] = None
                        ) -> List[Tuple[str, int, int, int]]:
        """``show jobs``: ``(handle, retries, ignore_job, job_queued)``."""
        rows: List[Tuple[str, int, int, int]] = await self.admin(
            admin_requests.ShowJobsAdminRequest(), server)
        return rows

    async def show_unique_jobs(self, server: Optional[str] = None
                               ) -> List[str]:
        """``show unique jobs``: the unique ids of the queued jobs."""
        rows: List[str] = await self.admin(
            admin_requests.ShowUniqueJobsAdminRequest(), server)
        return rows

    async def cancel_job(self, handle: Any,
                         server: Optional[str] = None) -> bool:
        """``cancel job <handle>``; raises AdminError if unknown."""
        ok: bool = await self.admin(
            admin_requests.CancelJobAdminRequest(handle), server)
        return ok

    async def version(self, server: Optional[str] = None) -> str:
        """``version``: the server's version string."""
        text: str = await self.admin(admin_requests.VersionAdminRequest(),
                                     server)
        return text
