"""One accepted connection, as the server sees it.

The server's event loop reads with one large ``recv`` per readable event
and parses with :class:`gear.protocol.MessageScanner`; replies
are appended to :attr:`ServerConnection.send_queue` (a single bytearray)
and flushed once per loop turn.  :meth:`ServerConnection.readPacket` and
:meth:`ServerConnection.sendPacket` remain for gear compatibility (tests
drive them with fake sockets) but the loop does not use them.
"""

import errno
import logging
import socket
import ssl

from gear.errors import RetryIOError
from gear.protocol import DEFAULT_MAX_PACKET_SIZE, InputBuffer, Packet

_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)


class ServerAdminRequest(object):
    """One admin text command received by the server.

    ``command`` is the line without its ``\\n`` (and ``\\r``);
    ``connection`` the connection it came from.
    """

    command = None
    response = None

    def __init__(self, connection):
        self.connection = connection
        self.arguments = ()

    @classmethod
    def _fromLine(cls, connection, line):
        self = cls.__new__(cls)
        self.connection = connection
        self.arguments = ()
        self.command = line
        return self

    def isComplete(self, data):
        """Take one line from ``data``; return (complete, remainder)."""
        end = data.find(b'\n')
        if end < 0:
            return (False, None)
        line = data[:end]
        if line.endswith(b'\r'):
            line = line[:-1]
        self.command = bytes(line)
        return (True, data[end + 1:])

    def setComplete(self):
        pass

    def __repr__(self):
        return '<gear.ServerAdminRequest 0x%x command: %r>' % (
            id(self), self.command)


class ServerConnection(object):
    """A client, worker or admin connection accepted by the server.

    It keeps the attributes gear's server connection had (``host``,
    ``port``, ``conn``, ``functions``, ``related_jobs``, ``client_id``,
    ``ssl_subject``, ``state``, ``send_queue``...) but none of a client
    connection's members: it never connects, and its send queue is one
    bytearray.

    :arg addr: the peer address (``addr[0]`` is the host, ``addr[1]`` the
        port; gear's tests pass a plain string).
    :arg conn: the socket (None for a connection that only the server
        core sees, as in its tests).
    :arg bool use_ssl: whether ``conn`` is a TLS socket.
    :arg client_id: a name for logs and ``__repr__``.
    """

    def __init__(self, addr, conn, use_ssl, client_id, _tls_pending=False,
                 max_packet_size=DEFAULT_MAX_PACKET_SIZE):
        self.host = addr[0]
        self.port = addr[1]
        self.conn = conn
        self.use_ssl = use_ssl
        self.name = client_id
        self.client_id = None
        self.functions = set()
        self.related_jobs = {}
        self.ssl_subject = None
        self.state = 'INIT'
        self.state_time = None
        self.send_queue = bytearray()
        self.admin_requests = []
        self._max_packet_size = max_packet_size
        self.input_buffer = InputBuffer(max_packet_size)
        self.need_bytes = False
        self.options = set()
        self.exceptions = False
        self.connected = True
        self.closed = False
        self.fd = None
        # Server bookkeeping: the FunctionQueues of ``functions`` in
        # round-robin order (a dict used as an ordered set, so adding,
        # removing and rotating one is O(1)), CAN_DO_TIMEOUT values (ms)
        # by function, the poll mask in force, whether reading is paused,
        # and TLS state.
        self._fqs = {}
        self._timeouts = None
        self._events = 0
        self._paused = False  # reading stopped until replies are read
        # A plain (not TLS) socket: the loop may read it directly.
        self._plain = not use_ssl
        # The start of a message the last read cut short (the server
        # loop's, see gear.protocol.MessageScanner).
        self._tail = None
        # The set object ``functions`` the server last matched against
        # ``_fqs``: a hook that replaces or edits it is noticed.
        self._synced = self.functions
        self._handshaking = _tls_pending
        self._handshake_timer = None
        # Called with this connection when output is queued outside the
        # server's own fast path (sendRaw/sendPacket from user code).
        self._notify = None
        self.log = logging.getLogger('gear.ServerConnection.%s' % (
            client_id.decode('utf8', 'replace')
            if isinstance(client_id, bytes) else client_id,))
        if conn is None:
            # No socket: the server core's own tests drive it.
            return
        conn.setblocking(0)
        if use_ssl and not _tls_pending:
            self.ssl_subject = subject_from_cert(conn.getpeercert())

    def __repr__(self):
        return '<gear.ServerConnection 0x%x name: %s host: %s port: %s>' % (
            id(self), self.name, self.host, self.port)

    def changeState(self, state):
        self.state = state

    # -- reading (gear-compatible, one message per call) -----------------

    def _getAdminRequest(self):
        return ServerAdminRequest(self)

    def _putAdminRequest(self, req):
        pass

    def _readRawBytes(self, bytes_to_read):
        try:
            return self.conn.recv(bytes_to_read)
        except ssl.SSLWantReadError:
            raise RetryIOError()
        except ssl.SSLWantWriteError:
            raise RetryIOError()
        except socket.error as e:
            if e.errno in _WOULD_BLOCK:
                raise RetryIOError()
            raise

    def nextMessage(self):
        """Return the next complete buffered message, or None.

        A message is a :class:`Packet` or a :class:`ServerAdminRequest`.
        Raises :class:`gear.errors.ProtocolError` on corrupt input.
        """
        buf = self.input_buffer
        binary = buf.nextIsBinary()
        if binary is None:
            return None
        if binary:
            parsed = buf.readPacket()
            if parsed is None:
                return None
            code, ptype, payload = parsed
            return Packet._trusted(code, ptype, payload, self)
        line = buf.readLine()
        if line is None:
            return None
        return ServerAdminRequest._fromLine(self, line)

    def readPacket(self):
        """Return one Packet or ServerAdminRequest; None at EOF.

        Messages already buffered are returned before the socket is read
        again.  Raises :class:`RetryIOError` when the socket would block,
        keeping any partial input.
        """
        while True:
            message = self.nextMessage()
            if message is not None:
                return message
            data = self._readRawBytes(65536)
            if not data:
                return None
            self.input_buffer.feed(data)

    def hasPendingData(self):
        return bool(self.input_buffer)

    # -- writing -----------------------------------------------------------

    def sendRaw(self, data):
        """Queue bytes for the peer; the server flushes them."""
        self.send_queue += data
        notify = self._notify
        if notify is not None:
            notify(self)
        else:
            self.sendQueuedData()

    def sendPacket(self, packet):
        self.sendRaw(packet.toBinary())

    def sendQueuedData(self):
        """Send as much queued output as the socket takes.

        Returns True when everything was sent.
        """
        out = self.send_queue
        if not out:
            return True
        try:
            sent = self.conn.send(out)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except socket.error as e:
            if e.errno in _WOULD_BLOCK:
                return False
            raise
        del out[:sent]
        return not out

    def disconnect(self):
        """Close the socket (the server does its own bookkeeping)."""
        self.connected = False
        try:
            self.conn.close()
        except Exception:
            pass


def subject_from_cert(cert):
    """The commonName of a peer certificate dict, or None."""
    if not cert:
        return None
    for rdn in cert.get('subject', ()):
        for key, value in rdn:
            if key == 'commonName':
                return value
    return None
