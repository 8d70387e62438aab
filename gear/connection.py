"""One TCP (optionally TLS) connection to a Gearman peer.

:class:`Connection` is what clients and workers use: sends block until
the bytes are written, and :meth:`Connection.readPacket` blocks until one
whole message has arrived.  :class:`NonBlockingConnection` is the base of
server-side connections: sends are queued and flushed when the socket is
writable, and reads raise :class:`~gear.errors.RetryIOError` instead of
blocking.

Framing lives in :mod:`gear.protocol`; this module only moves bytes and
keeps the per-connection bookkeeping (requests awaiting replies, jobs by
handle, admin requests, echo waiters).
"""

import collections
import contextlib
import errno
import logging
import select
import socket
import ssl
import threading
import time
import uuid

from gear import constants
from gear.errors import (
    ConnectionError, InvalidDataError, ProtocolError, RetryIOError,
    TimeoutError)
from gear.protocol import DEFAULT_MAX_PACKET_SIZE, InputBuffer, Packet
from gear.util import convert_to_bytes, create_ssl_context, to_text

_WOULD_BLOCK_ERRNOS = frozenset(
    e for e in (getattr(errno, 'EAGAIN', None),
                getattr(errno, 'EWOULDBLOCK', None)) if e is not None)

# A reusable do-nothing context manager for locks a connection does not
# need (plain TCP needs no lock around recv/send; see Connection._io_lock).
_NO_LOCK = contextlib.nullcontext()

_allocate_lock = threading.Lock


# Request type -> the reply type that answers it.
REPLY_TYPES = dict(
    [(ptype, constants.JOB_CREATED) for ptype in constants.SUBMIT_TYPES] +
    [(constants.SUBMIT_JOB_SCHED, constants.JOB_CREATED),
     (constants.SUBMIT_JOB_EPOCH, constants.JOB_CREATED),
     (constants.SUBMIT_REDUCE_JOB, constants.JOB_CREATED),
     (constants.SUBMIT_REDUCE_JOB_BACKGROUND, constants.JOB_CREATED),
     (constants.GET_STATUS, constants.STATUS_RES),
     (constants.GET_STATUS_UNIQUE, constants.STATUS_RES_UNIQUE),
     (constants.OPTION_REQ, constants.OPTION_RES),
     (constants.ECHO_REQ, constants.ECHO_RES)])

# Reply types that name what they answer: the handle (STATUS_RES), the
# unique (STATUS_RES_UNIQUE), the option or the echoed data.  JOB_CREATED
# names nothing: submissions are matched by their order alone.
_KEYED_BY_FIRST_ARGUMENT = frozenset((constants.STATUS_RES,
                                      constants.STATUS_RES_UNIQUE))
_KEYED_BY_PAYLOAD = frozenset((constants.OPTION_RES, constants.ECHO_RES))


def _normal_key(reply_type, key):
    if key is not None and reply_type == constants.OPTION_RES:
        # Option names are not case-sensitive.
        return bytes(key).lower()
    return key


def request_key(ptype, data):
    """The key a reply to a request of type ``ptype`` will carry."""
    reply_type = REPLY_TYPES.get(ptype)
    if reply_type in _KEYED_BY_PAYLOAD:
        return _normal_key(reply_type, data)
    if reply_type in _KEYED_BY_FIRST_ARGUMENT:
        return bytes(data).split(b'\x00', 1)[0]
    return None


def reply_key(packet):
    """The key of a reply packet (None for JOB_CREATED and ERROR)."""
    ptype = packet.ptype
    if ptype in _KEYED_BY_PAYLOAD:
        return _normal_key(ptype, packet.data)
    if ptype in _KEYED_BY_FIRST_ARGUMENT:
        return packet.getArgument(0)
    return None


class Task(object):
    """A request sent on one connection that awaits exactly one reply.

    The connection keeps its tasks in send order (``pending_tasks``).
    A reply goes to the oldest task of its reply type whose key it
    carries (see ``Connection._takeReplyTask()``); an ERROR goes to
    the oldest task of all.
    """

    #: The packet type that answers this request (ERROR answers any).
    reply_type = None
    #: What the reply names (handle, unique, option or echoed data);
    #: None matches any reply of the type.
    key = None

    def __init__(self):
        # The waiter blocks on a plain lock created held, and whoever
        # retires the task releases it: far cheaper than an Event (whose
        # Condition allocates a second lock per wait), and a reply that
        # arrived before wait() is seen through _done without blocking.
        self._gate = _allocate_lock()
        self._gate.acquire()
        self._done = False
        self._lock = _allocate_lock()
        self._answered = False
        #: True once the waiter gave up; a late reply is then consumed.
        self.abandoned = False
        #: True if the request failed (ERROR, never answered, lost link).
        self.failed = False
        #: ``(code, text)`` from an ERROR reply, if any.
        self.error = None

    def __repr__(self):
        return '<gear.%s 0x%x>' % (type(self).__name__, id(self))

    def _open(self):
        # _done first: a waiter that wakes (or checks) sees it set.  A
        # second call finds the gate open and changes nothing.
        self._done = True
        try:
            self._gate.release()
        except RuntimeError:
            pass

    def setComplete(self):
        self._open()

    def wait(self, timeout=None):
        """Wait for the reply; True if it came (or the task failed)."""
        if self._done:
            return True
        gate = self._gate
        if timeout is None:
            got = gate.acquire()
        elif timeout > 0:
            got = gate.acquire(True, min(timeout, threading.TIMEOUT_MAX))
        else:
            got = gate.acquire(False)
        if got:
            # Leave the gate open for any other (or a repeated) wait.
            try:
                gate.release()
            except RuntimeError:
                pass
            return True
        return self._done

    def fail(self, error=None):
        self.failed = True
        if error is not None:
            self.error = error
        self._open()

    def claim(self):
        """Called by the reply handler; False if the waiter gave up."""
        with self._lock:
            if self.abandoned:
                return False
            self._answered = True
            return True

    def abandon(self):
        """Called by a waiter that timed out; False if the reply won."""
        with self._lock:
            if self._answered or self._done:
                return False
            self.abandoned = True
            return True


class UntrackedRequest(Task):
    """A request sent with :meth:`Connection.sendPacket`, without a task.

    Nobody waits for it; it only holds its place in ``pending_tasks`` so
    that its reply (or ERROR) cannot be taken for another request's.  The
    reply still reaches the ``handle*`` method of its type.
    """

    def __init__(self, reply_type, key):
        super(UntrackedRequest, self).__init__()
        self.reply_type = reply_type
        self.key = key


class SubmitJobTask(Task):
    """A SUBMIT_JOB* awaiting its JOB_CREATED."""

    reply_type = constants.JOB_CREATED

    def __init__(self, job):
        super(SubmitJobTask, self).__init__()
        self.job = job
        self.background = False


class OptionReqTask(Task):
    """An OPTION_REQ awaiting its OPTION_RES."""

    reply_type = constants.OPTION_RES

    def __init__(self, option=None):
        super(OptionReqTask, self).__init__()
        self.option = option
        self.key = _normal_key(self.reply_type, option)


class GetStatusTask(Task):
    """A GET_STATUS awaiting its STATUS_RES; holds the job to update."""

    reply_type = constants.STATUS_RES

    def __init__(self, job):
        super(GetStatusTask, self).__init__()
        self.job = job
        self.key = job.handle


class GetStatusUniqueTask(Task):
    """A GET_STATUS_UNIQUE awaiting its STATUS_RES_UNIQUE."""

    reply_type = constants.STATUS_RES_UNIQUE

    def __init__(self, unique):
        super(GetStatusUniqueTask, self).__init__()
        self.unique = unique
        self.key = unique
        self.result = None


class EchoTask(Task):
    """An ECHO_REQ awaiting its ECHO_RES (the waiter is in echo())."""

    reply_type = constants.ECHO_RES

    def __init__(self, data):
        super(EchoTask, self).__init__()
        self.data = data
        self.key = data


class _EchoWaiter(object):
    __slots__ = ('event', 'lost')

    def __init__(self):
        self.event = threading.Event()
        self.lost = False


def _close_quietly(sock):
    for method, args in (('shutdown', (socket.SHUT_RDWR,)), ('close', ())):
        try:
            getattr(sock, method)(*args)
        except Exception:
            pass


def _would_block(exc):
    """Classify a socket exception as "would block".

    Returns 'read' or 'write' (TLS wants that readiness first), 'again'
    (a plain socket would block in the current direction) or None (a real
    error).
    """
    if isinstance(exc, ssl.SSLError):
        if exc.errno == ssl.SSL_ERROR_WANT_READ:
            return 'read'
        if exc.errno == ssl.SSL_ERROR_WANT_WRITE:
            return 'write'
        return None
    if isinstance(exc, OSError) and exc.errno in _WOULD_BLOCK_ERRNOS:
        return 'again'
    return None


class Connection(object):
    """A connection to a Gearman server, used by clients and workers.

    :arg str host: the server's host name or address.
    :arg int port: the server's port.
    :arg str ssl_key: path to the client's TLS private key.
    :arg str ssl_cert: path to the client's TLS certificate.
    :arg str ssl_ca: path to the CA that signed the server's certificate.
        TLS is used only when all three are given.
    :arg str client_id: used in log names.
    :arg bool keepalive: enable TCP keepalive with the three
        ``tcp_keep*`` settings.
    """

    # Defaults at class level so that subclasses which build their own
    # state (server-side connections) still have sane values.
    use_ssl = False
    need_bytes = False
    _io_lock = _NO_LOCK
    _admin_lock = _NO_LOCK
    _generation = 0

    #: How many bytes one recv asks for.
    read_size = 65536
    #: Seconds allowed for TCP connect plus the TLS handshake.
    connect_timeout = 10.0
    #: Seconds a blocking send may go without progress before failing.
    send_timeout = 60.0
    #: Verify the server certificate's host name (off, as in gear).
    ssl_check_hostname = False

    def __init__(self, host, port, ssl_key=None, ssl_cert=None, ssl_ca=None,
                 client_id='unknown', keepalive=False, tcp_keepidle=7200,
                 tcp_keepintvl=75, tcp_keepcnt=9):
        self.log = logging.getLogger(
            "gear.Connection.%s" % (to_text(client_id),))
        self.host = host
        self.port = port
        self.ssl_key = ssl_key
        self.ssl_cert = ssl_cert
        self.ssl_ca = ssl_ca
        self.keepalive = keepalive
        self.tcp_keepidle = tcp_keepidle
        self.tcp_keepintvl = tcp_keepintvl
        self.tcp_keepcnt = tcp_keepcnt
        self.use_ssl = bool(ssl_key and ssl_cert and ssl_ca)
        self._ssl_context = None
        self._max_packet_size = DEFAULT_MAX_PACKET_SIZE
        self.echo_lock = threading.Lock()
        # Re-entrant, so that "append the awaited reply and send" can be
        # one atomic step around sendPacket().
        self.send_lock = threading.RLock()
        # Guards pending_tasks.  Not send_lock: the poll thread must be
        # able to take replies while a sender waits for a full socket.
        self._tasks_lock = threading.Lock()
        # True only inside sendRequest(), with send_lock held.
        self._sending_request = False
        self._admin_lock = threading.Lock()
        # OpenSSL objects must not be used by two threads at once; plain
        # sockets need no lock.
        self._io_lock = threading.Lock() if self.use_ssl else _NO_LOCK
        self.conn = None
        self._init()

    def _init(self):
        """Reset everything that belongs to one socket's lifetime."""
        self.conn = None
        self.connected = False
        self.connect_time = None
        self.related_jobs = {}
        # handle -> deque of every Job sharing that handle (only when a
        # server coalesced several submissions); see gear.client.
        self.coalesced_jobs = {}
        self.pending_tasks = collections.deque()
        self.admin_requests = []
        self.echo_conditions = {}
        self.options = set()
        self.input_buffer = InputBuffer(self._max_packet_size)
        self.need_bytes = False
        self.changeState("INIT")

    def __repr__(self):
        return '<gear.Connection 0x%x host: %s port: %s>' % (
            id(self), self.host, self.port)

    @property
    def max_packet_size(self):
        """The largest payload accepted from the peer, in bytes."""
        return self._max_packet_size

    @max_packet_size.setter
    def max_packet_size(self, value):
        self._max_packet_size = value
        self.input_buffer.max_packet_size = value

    def changeState(self, state):
        self.state = state
        self.state_time = time.time()

    # Connecting

    def _getSSLContext(self):
        if self._ssl_context is None:
            self._ssl_context = create_ssl_context(
                self.ssl_key, self.ssl_cert, self.ssl_ca,
                check_hostname=self.ssl_check_hostname)
        return self._ssl_context

    def _prepareSocket(self, sock):
        # Each option is optional: test doubles may only implement
        # connect() and recv(), and some platforms lack some options.
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        if self.keepalive:
            options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
            for name, value in (('TCP_KEEPIDLE', self.tcp_keepidle),
                                ('TCP_KEEPINTVL', self.tcp_keepintvl),
                                ('TCP_KEEPCNT', self.tcp_keepcnt)):
                opt = getattr(socket, name, None)
                if opt is not None:
                    options.append((socket.IPPROTO_TCP, opt, value))
        for level, opt, value in options:
            try:
                sock.setsockopt(level, opt, value)
            except (AttributeError, OSError):
                pass
        try:
            sock.settimeout(self.connect_timeout)
        except (AttributeError, OSError):
            pass

    @staticmethod
    def _makeNonBlocking(sock):
        # Only sockets we can wait on (fileno) go non-blocking; a blocking
        # read is then emulated by waiting for readability.
        if not hasattr(sock, 'fileno'):
            return
        try:
            sock.settimeout(0.0)
        except (AttributeError, OSError):
            pass

    @staticmethod
    def _isSelfConnected(sock):
        # Reconnecting to a dead local server whose port lies in the
        # ephemeral range can yield a TCP "simultaneous open" with
        # ourselves; that is not a server.
        try:
            return sock.getsockname() == sock.getpeername()
        except (AttributeError, OSError):
            return False

    def connect(self):
        """Open the connection, trying every address the host resolves to.

        :raises ConnectionError: if no address accepts the connection
            or the TLS handshake fails.
        """
        self.log.debug("Connecting to %s port %s", self.host, self.port)
        try:
            addresses = socket.getaddrinfo(self.host, self.port,
                                           socket.AF_UNSPEC,
                                           socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise ConnectionError("Unable to resolve %s: %s" % (self.host, e))
        sock = None
        last_error = None
        for family, socktype, proto, _, address in addresses:
            try:
                candidate = socket.socket(family, socktype, proto)
            except OSError as e:
                last_error = e
                continue
            self._prepareSocket(candidate)
            try:
                candidate.connect(address)
            except OSError as e:
                last_error = e
                _close_quietly(candidate)
                continue
            if self._isSelfConnected(candidate):
                last_error = 'connected to itself (nothing listens there)'
                _close_quietly(candidate)
                continue
            sock = candidate
            break
        if sock is None:
            raise ConnectionError("Unable to open socket to %s port %s: %s" %
                                  (self.host, self.port, last_error))
        if self.use_ssl:
            try:
                server_hostname = (self.host if isinstance(self.host, str)
                                   else None)
                sock = self._getSSLContext().wrap_socket(
                    sock, server_hostname=server_hostname)
            except (ssl.SSLError, OSError, ValueError) as e:
                _close_quietly(sock)
                raise ConnectionError("TLS handshake with %s port %s failed:"
                                      " %s" % (self.host, self.port, e))
        self._makeNonBlocking(sock)
        self.conn = sock
        self.connected = True
        self.connect_time = time.time()
        self._generation += 1
        self.log.debug("Connected to %s port %s", self.host, self.port)

    def _closeSocket(self):
        sock = self.conn
        self.connected = False
        if sock is not None:
            _close_quietly(sock)

    def _failOutstanding(self):
        """Wake everyone waiting on a reply from this socket."""
        with self._tasks_lock:
            tasks = list(self.pending_tasks)
            self.pending_tasks.clear()
        for task in tasks:
            task.fail()
        with self.echo_lock:
            waiters = list(self.echo_conditions.values())
        for waiter in waiters:
            waiter.lost = True
            waiter.event.set()

    def disconnect(self):
        """Close the socket and reset the per-connection state."""
        self.log.debug("Disconnecting from %s port %s", self.host, self.port)
        self._closeSocket()
        self._failOutstanding()
        self._init()

    def reconnect(self):
        self.disconnect()
        self.connect()

    # Waiting for the socket

    def _waitForIO(self, sock, want, deadline=None):
        """Wait until ``sock`` is readable or writable (``want``).

        Waits in short slices so that a socket closed by another thread
        is noticed; raises ConnectionError if that happens or ``deadline``
        passes.
        """
        mask = select.POLLIN if want == 'read' else select.POLLOUT
        while True:
            if self.conn is not sock:
                raise ConnectionError("Connection closed")
            try:
                fd = sock.fileno()
            except Exception:
                fd = -1
            if fd < 0:
                raise ConnectionError("Connection closed")
            poller = select.poll()
            poller.register(fd, mask | select.POLLERR | select.POLLHUP)
            slice_ = 1.0
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionError("Timed out waiting for socket")
                slice_ = min(slice_, remaining)
            if poller.poll(slice_ * 1000):
                return

    # Reading

    def _recvNow(self, count):
        """One recv; returns None if it would block, b'' at EOF."""
        sock = self.conn
        if sock is None:
            raise ConnectionError("Not connected")
        try:
            with self._io_lock:
                data = sock.recv(count)
                if data and self.use_ssl:
                    # Decrypted bytes already buffered inside the TLS
                    # object are invisible to poll(): take them now.
                    pending = sock.pending()
                    if pending:
                        chunks = [data]
                        while pending:
                            chunks.append(sock.recv(pending))
                            pending = sock.pending()
                        data = b''.join(chunks)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # The peer ended the TLS session (cleanly or not): EOF.
            return b''
        except (ssl.SSLError, OSError) as e:
            if _would_block(e):
                return None
            raise
        return data

    def _readRawBytes(self, bytes_to_read):
        """Read at least one byte, blocking as long as needed."""
        while True:
            data = self._recvNow(bytes_to_read)
            if data is not None:
                return data
            self._waitForIO(self.conn, 'read')

    def _getAdminRequest(self):
        """Return the oldest admin request awaiting a reply, or None."""
        if self.admin_requests:
            return self.admin_requests.pop(0)
        return None

    def _putAdminRequest(self, req):
        """Put back a request whose reply is not complete yet."""
        self.admin_requests.insert(0, req)

    def _discardText(self):
        """Drop one line of admin text nobody asked for.  True if dropped.
        """
        buf = self.input_buffer
        available = len(buf)

        def up_to_newline(data):
            index = data.find(b'\n')
            if index >= 0:
                return True, data[index + 1:]
            if len(data) < available:
                # A binary packet follows: the stray text ends here.
                return True, b''
            return False, None

        text = buf.readText(up_to_newline)
        if text is None:
            return False
        self.log.warning("Dropping unsolicited admin text from %s: %r",
                         self, text[:200])
        return True

    def _nextMessage(self):
        """Parse one complete message from the buffer, or return None."""
        buf = self.input_buffer
        try:
            while True:
                binary = buf.nextIsBinary()
                if binary is None:
                    self.need_bytes = False
                    return None
                if binary:
                    parsed = buf.readPacket()
                    if parsed is None:
                        self.need_bytes = True
                        return None
                    self.need_bytes = False
                    code, ptype, payload = parsed
                    return Packet._trusted(code, ptype, payload, self)
                with self._admin_lock:
                    request = self._getAdminRequest()
                    if request is None:
                        if self._discardText():
                            continue
                        self.need_bytes = True
                        return None
                    text = buf.readText(request.isComplete)
                    if text is None:
                        self._putAdminRequest(request)
                        self.need_bytes = True
                        return None
                self.need_bytes = False
                if getattr(request, 'response', None) is None:
                    request.response = text
                return request
        except ProtocolError as e:
            self.log.error("Closing connection to %s: %s", self, e)
            self._closeSocket()
            raise

    def readPacket(self):
        """Return the next message from the peer.

        The result is a :class:`~gear.protocol.Packet`, an admin request
        (with ``response`` set) or None when the peer closed the
        connection.  Messages already complete in the buffer are returned
        before the socket is read again.

        :raises ProtocolError: the stream is corrupt (the socket is
            closed first).
        """
        while True:
            message = self._nextMessage()
            if message is not None:
                return message
            data = self._readRawBytes(self.read_size)
            if not data:
                self.log.debug("Received no data from %s", self)
                return None
            self.input_buffer.feed(data)

    def _readAvailable(self):
        """Read what the socket has now and return every complete message.

        Used by the poll loop after the socket became readable; never
        blocks on a non-blocking socket.  Returns None at EOF.
        """
        data = self._recvNow(self.read_size)
        if data is not None:
            if not data:
                return None
            self.input_buffer.feed(data)
        messages = []
        while True:
            message = self._nextMessage()
            if message is None:
                return messages
            messages.append(message)

    def hasPendingData(self):
        """True if unparsed input is buffered."""
        return bool(self.input_buffer)

    # Writing

    def sendRaw(self, data):
        """Send all of ``data``, waiting for the socket when it is full."""
        with self.send_lock:
            sock = self.conn
            if sock is None:
                raise ConnectionError("Not connected")
            # The usual case is one send of a whole bytes object: no
            # memoryview and no clock reads until the socket is full.
            view = data if type(data) is bytes else memoryview(data).cast('B')
            total = len(view)
            offset = 0
            deadline = None
            while offset < total:
                try:
                    with self._io_lock:
                        sent = sock.send(view[offset:] if offset else view)
                except (ssl.SSLError, OSError) as e:
                    want = _would_block(e)
                    if want is None:
                        raise
                    if want == 'again':
                        want = 'write'
                    if deadline is None:
                        deadline = time.monotonic() + self.send_timeout
                    self._waitForIO(sock, want, deadline)
                    continue
                if not sent:
                    raise ConnectionError("Connection closed while sending")
                offset += sent
                if offset < total:
                    # Partial send: slice without copying from now on,
                    # and allow send_timeout from this progress.
                    if type(view) is bytes:
                        view = memoryview(view)
                    deadline = None

    def sendPacket(self, packet):
        """Send a :class:`~gear.protocol.Packet`.

        A request that has a reply (a submission, GET_STATUS, OPTION_REQ,
        ECHO_REQ...) sent this way keeps its place among the requests
        awaiting replies, so that its reply is never taken for another
        request's; the reply reaches the ``handle*`` method of its type.
        """
        reply_type = REPLY_TYPES.get(packet.ptype)
        if reply_type is None:
            self.sendRaw(packet.toBinary())
            return
        with self.send_lock:
            if self._sending_request:
                # sendRequest() already recorded the task.
                self.sendRaw(packet.toBinary())
                return
            self.sendRequest(packet, UntrackedRequest(
                reply_type, request_key(packet.ptype, packet.data)))

    def sendRequest(self, packet, task):
        """Send a packet that expects a reply, recording ``task`` for it.

        Recording and sending are one step, so concurrent senders cannot
        get their replies crossed.
        """
        with self.send_lock:
            with self._tasks_lock:
                self.pending_tasks.append(task)
            self._sending_request = True
            try:
                self.sendPacket(packet)
            except Exception:
                with self._tasks_lock:
                    try:
                        self.pending_tasks.remove(task)
                    except ValueError:
                        pass
                raise
            finally:
                self._sending_request = False
        return task

    def _takeReplyTask(self, ptype, key=None):
        """Return the task a reply of type ``ptype`` answers, or None.

        The reply belongs to the oldest task expecting that type with
        that ``key`` (None: any key).  An ERROR takes the place of a
        reply, so it belongs to the oldest task of all.  A reply that
        matches no task (sent about a request this connection never
        recorded) takes none.

        Servers answer each connection's requests in order, so tasks
        older than the one answered were skipped (a server that does not
        implement that request): they are retired as failed.
        """
        with self._tasks_lock:
            tasks = self.pending_tasks
            if not tasks:
                return None
            if ptype == constants.ERROR:
                return tasks.popleft()
            for index, task in enumerate(tasks):
                if task.reply_type == ptype and (
                        key is None or task.key is None or task.key == key):
                    break
            else:
                return None
            skipped = [tasks.popleft() for _ in range(index)]
            tasks.popleft()
        for old in skipped:
            self.log.debug("Retiring %s on %s: the server answered a later"
                           " request first", old, self)
            old.fail()
        return task

    # Admin protocol

    def sendAdminRequest(self, request, timeout=90):
        """Send an admin request and wait for its reply.

        :raises TimeoutError: no reply in ``timeout`` seconds; the request
            is then forgotten so that it cannot take a later reply.
        """
        with self.send_lock:
            with self._admin_lock:
                self.admin_requests.append(request)
            try:
                self.sendRaw(request.getCommand())
            except Exception:
                self._forgetAdminRequest(request)
                raise
        if not request.waitForResponse(timeout):
            if not self._forgetAdminRequest(request) and \
                    request.waitForResponse(0):
                return request
            raise TimeoutError()
        return request

    def _forgetAdminRequest(self, request):
        with self._admin_lock:
            for index, pending in enumerate(self.admin_requests):
                if pending is request:
                    del self.admin_requests[index]
                    return True
        return False

    # Echo and options

    def echo(self, data=None, timeout=30):
        """Ask the server to echo ``data`` and wait for it.

        :arg bytes data: random text when None.
        :returns: ``data``, once the server echoed it.
        :raises TimeoutError: no echo within ``timeout`` seconds.
        :raises InvalidDataError: someone already waits for this data.
        """
        if data is None:
            data = uuid.uuid4().hex.encode('ascii')
        data = convert_to_bytes(data)
        waiter = _EchoWaiter()
        with self.echo_lock:
            if data in self.echo_conditions:
                raise InvalidDataError(
                    "This client is already waiting on an echo response"
                    " of: %r" % (data,))
            self.echo_conditions[data] = waiter
        try:
            self.sendEchoReq(data)
            if not waiter.event.wait(timeout):
                raise TimeoutError()
            if waiter.lost:
                raise ConnectionError("Connection lost while waiting for an"
                                      " echo")
        finally:
            with self.echo_lock:
                if self.echo_conditions.get(data) is waiter:
                    del self.echo_conditions[data]
        return data

    def sendEchoReq(self, data):
        packet = Packet(constants.REQ, constants.ECHO_REQ, data)
        self.sendRequest(packet, EchoTask(data))

    def handleEchoRes(self, data):
        """Wake the echo() waiting for ``data``; False if there is none."""
        with self.echo_lock:
            waiter = self.echo_conditions.get(data)
        if waiter is None:
            return False
        waiter.event.set()
        return True

    def handleOptionRes(self, option):
        self.options.add(option)


class NonBlockingConnection(Connection):
    """A connection whose reads and writes never block.

    Writes are queued in ``send_queue`` and flushed as far as the socket
    allows; call :meth:`sendQueuedData` when it becomes writable.  Reads
    raise :class:`RetryIOError` when no data is available, keeping any
    partial message buffered.

    Subclasses that do not call this constructor must set ``conn``,
    ``send_queue`` (a deque), ``send_lock``, ``input_buffer``,
    ``admin_requests``, ``use_ssl`` and ``log`` themselves.
    """

    # Below this size, queued chunks are joined into one send.
    _COALESCE_LIMIT = 256 * 1024

    def __init__(self, host, port, ssl_key=None, ssl_cert=None, ssl_ca=None,
                 client_id='unknown'):
        super(NonBlockingConnection, self).__init__(
            host, port, ssl_key, ssl_cert, ssl_ca, client_id)
        self.send_queue = collections.deque()

    def connect(self):
        super(NonBlockingConnection, self).connect()
        try:
            self.conn.setblocking(False)
        except (AttributeError, OSError):
            pass

    def _readRawBytes(self, bytes_to_read):
        data = self._recvNow(bytes_to_read)
        if data is None:
            raise RetryIOError()
        return data

    def sendRaw(self, data):
        """Queue ``data`` and send as much of the queue as possible."""
        with self.send_lock:
            self.send_queue.append(data)
            self._flush()

    def sendPacket(self, packet):
        self.sendRaw(packet.toBinary())

    def sendQueuedData(self):
        """Send queued data; True when the queue is empty afterwards."""
        with self.send_lock:
            return self._flush()

    def _flush(self):
        queue = self.send_queue
        sock = self.conn
        while queue:
            head = queue[0]
            if (not self.use_ssl and len(queue) > 1 and
                    len(head) < self._COALESCE_LIMIT):
                # Many small packets: one syscall instead of many.  (TLS
                # must retry a blocked write with the same buffer, so it
                # is never re-chunked there.)
                parts = [queue.popleft()]
                size = len(parts[0])
                while queue and size + len(queue[0]) <= self._COALESCE_LIMIT:
                    size += len(queue[0])
                    parts.append(queue.popleft())
                head = b''.join(parts)
                queue.appendleft(head)
            try:
                with self._io_lock:
                    sent = sock.send(head)
            except (ssl.SSLError, OSError) as e:
                if _would_block(e):
                    return False
                raise
            if sent >= len(head):
                queue.popleft()
            else:
                queue[0] = memoryview(head)[sent:]
                if not self.use_ssl:
                    return False
        return True
