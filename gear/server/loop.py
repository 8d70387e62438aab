"""The job server's I/O loop: one thread, sockets and timers only.

:class:`EventLoop` waits on epoll (or any ``selectors`` backend), accepts
on the non-blocking listening socket, finishes TLS handshakes, reads each
readable socket with one large ``recv`` and hands the bytes to
:class:`gear.protocol.MessageScanner`, which calls the request table of
the server core (:mod:`gear.server.core`) once per complete message.
The replies the core appends to connections' output buffers are written
once per turn, after the core's store commit (``Core.commitStore``), and
a peer that leaves its replies unread stops being read (backpressure).
A read that fills the whole buffer marks a peer that floods the server
(a CI worker registering tens of thousands of functions, say): the
peers that sent little are answered first, and the floods get a time
slice per turn, so a job keeps moving while they are handled.
Timers (CAN_DO_TIMEOUT per job, epoch jobs, TLS handshake deadlines,
store probes) live in one heap; the poll timeout is the time to the next
one.

It knows nothing of jobs.  The server core reaches it through
:meth:`EventLoop.addTimer`, :meth:`EventLoop.cancelTimer`,
:meth:`EventLoop.flushNow`, :meth:`EventLoop.closeLater`,
:meth:`EventLoop.onLoopThread` and :meth:`EventLoop.connections`.
"""

import collections
import errno
import heapq
import itertools
import os
import select
import socket
import ssl
import threading
import time

from gear.errors import ProtocolError
from gear.protocol import PacketTooLarge
from gear.server import accepting
from gear.server import metrics as metrics_mod
from gear.server.connection import ServerConnection, subject_from_cert
from gear.server.poller import (
    _EV_READ, _EV_WRITE, _HAS_EPOLL, _READ_MASK, Poller)
from gear.server.util import _CloseConnection

# recv() allocates this much before shrinking to what arrived; above
# glibc's initial mmap threshold (128 KiB) every read could cost an
# mmap/mremap/munmap round trip.
RECV_SIZE = 64 * 1024
# The longest single poll wait; far timers are simply re-checked.
MAX_POLL_WAIT = 3600.0

_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)


class EventLoop(object):
    """The I/O half of :class:`gear.Server`.

    A subclass sets the listening options (``host``, ``port``,
    ``backlog``, ``keepalive``, TLS files, ``max_connections``,
    ``max_output_buffer``, ``output_high_water``/``output_low_water``,
    ``tls_handshake_timeout``, ``exceptions``, ``max_packet_size``),
    ``metrics``, ``core`` (the :class:`gear.server.core.Core` it feeds)
    and ``_scanner`` (the :class:`gear.protocol.MessageScanner` over the
    core's request table), implements ``_unregisterConnection(conn)``
    (a connection is gone), then calls ``_initLoop()``,
    ``_openLoop()`` and ``_startLoop()``.
    """

    # How long (seconds) a turn handles the input of flooding peers (reads
    # that filled RECV_SIZE); the rest waits for the next turn, after the
    # peers that sent little.  So a job's next step waits one short turn,
    # however many peers flood the server with requests.
    turn_time = 0.002

    if _HAS_EPOLL:
        edge_bitmask = select.EPOLLET
        error_bitmask = select.EPOLLERR | select.EPOLLHUP | edge_bitmask
        read_bitmask = select.EPOLLIN | error_bitmask
        readwrite_bitmask = select.EPOLLOUT | read_bitmask

    def _initLoop(self):
        """The loop's state, before anything may add a timer."""
        self.lock = threading.RLock()
        self.connection_map = {}
        self._closing = []
        # Connection -> input read but not handled yet: a full read
        # that its turn had no time left for.  Handled before anything
        # more is read from that socket.
        self._carry = collections.OrderedDict()
        self._timers = []
        self._timer_seq = itertools.count()
        self.running = True
        self._stopped = threading.Event()
        self._shutdown_called = False
        self._listener_closed = False
        self._loop_ident = None
        self._ssl_context = self._makeSSLContext() if self.use_ssl else None

    def _openLoop(self):
        """Listen, and set up the poller and the wake pipe."""
        self.socket = self._listen()
        self.port = self.socket.getsockname()[1]
        self.poll = Poller(_HAS_EPOLL)
        self._listen_fd = self.socket.fileno()
        self.poll.register(self._listen_fd, _EV_READ)
        self._accept_throttle = accepting.AcceptThrottle(self)
        self.connect_wake_read, self.connect_wake_write = os.pipe()
        os.set_blocking(self.connect_wake_read, False)
        os.set_blocking(self.connect_wake_write, False)
        self.wake_read = self.connect_wake_read
        self.wake_write = self.connect_wake_write
        self.poll.register(self.connect_wake_read, _EV_READ)

    def _startLoop(self):
        self.poll_thread = threading.Thread(
            name='Gearman server poll', target=self._doPollLoop)
        self.poll_thread.daemon = True
        self.poll_thread.start()

    def connections(self):
        """Every open connection (a new list)."""
        return list(self.connection_map.values())

    def flushNow(self, conn):
        """Write a connection's output now rather than at the end of the
        turn (the store commit still comes first)."""
        self._flushConnection(conn)

    def _makeSSLContext(self):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ssl_cert, self.ssl_key)
        context.load_verify_locations(self.ssl_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _listen(self):
        if self.host is None and socket.has_ipv6:
            try:
                return self._bind(socket.AF_INET6, ('::', self.port), True)
            except OSError:
                pass
        if self.host is None:
            return self._bind(socket.AF_INET, ('0.0.0.0', self.port))
        last = None
        for family, _, _, _, addr in socket.getaddrinfo(
                self.host, self.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                0, socket.AI_PASSIVE):
            try:
                return self._bind(family, addr)
            except OSError as e:
                last = e
        raise last or OSError("cannot bind %s:%s" % (self.host, self.port))

    def _bind(self, family, addr, dual=False):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if self.keepalive:
                self._setKeepalive(sock)
            sock.bind(addr)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except Exception:
            sock.close()
            raise
        return sock

    def _setKeepalive(self, sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (('TCP_KEEPIDLE', self.tcp_keepidle),
                            ('TCP_KEEPINTVL', self.tcp_keepintvl),
                            ('TCP_KEEPCNT', self.tcp_keepcnt)):
            opt = getattr(socket, name, None)
            if opt is not None:
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)

    def onLoopThread(self):
        """Whether the caller runs on the loop's thread (other threads
        must take ``lock`` and wake the loop)."""
        return threading.get_ident() == self._loop_ident

    def _kick(self):
        """Wake the loop (from another thread) so that it flushes output."""
        try:
            os.write(self.connect_wake_write, b'x')
        except OSError:
            pass

    def _notifyOutput(self, conn):
        # Output queued by user code through ServerConnection.sendRaw.
        if conn not in self.core.dirty:
            self.core.dirty.append(conn)
        if not self.onLoopThread():
            self._kick()

    def _doPollLoop(self):
        self._loop_ident = threading.get_ident()
        try:
            self._pollLoop()
        except Exception:
            self.log.exception("Server loop crashed")
        finally:
            self._cleanup()
            self._stopped.set()

    def _pollLoop(self):
        while self.running:
            try:
                self._pollTurns()
            except Exception:
                # Never let one bad event stop the server.
                self.log.exception("Error in the server loop")

    def _pollTurns(self):
        poll = self.poll.poll
        fdmap = self.connection_map
        listen_fd = self._listen_fd
        wake_fd = self.connect_wake_read
        timers = self._timers
        core = self.core
        dirty = core.dirty
        lock = self.lock
        process = self._processPollEvent
        handle_input = self._processData
        flush = self._flushDirty
        # A readable plain socket is read right here, without the two
        # calls of the general path: in a sequential exchange every turn
        # is one such read, and the calls cost more than their work when
        # the turn starts with cold caches.  Overrides of either method
        # keep the general path.
        cls = type(self)
        inline = (cls._processPollEvent is EventLoop._processPollEvent and
                  cls.readFromConnection is EventLoop.readFromConnection)
        plain_read = _EV_READ
        recv_size = RECV_SIZE
        metrics = self.metrics
        queue = core.queue
        monotonic = time.monotonic
        carry = self._carry
        while self.running:
            timeout = -1
            if carry:
                timeout = 0
            elif timers:
                timeout = min(MAX_POLL_WAIT,
                              max(0.0, timers[0][0] - time.monotonic()))
            if metrics is not None and metrics.ended and not (
                    0 <= timeout <= metrics_mod.IDLE_FLUSH):
                # Completed jobs are counted soon, idle or not (the
                # dashboard's rates read the counters).
                timeout = metrics_mod.IDLE_FLUSH
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            with lock:
                if metrics is not None:
                    metrics.beginTurn(monotonic())
                    if metrics.capture_request is not None:
                        metrics.serveCapture(self)
                # A read that fills RECV_SIZE likely leaves more behind:
                # that peer floods, and its input waits until the others
                # have been served (see _handleHeavy).
                heavy = None
                for fd, ev in events:
                    conn = fdmap.get(fd)
                    if conn is None:
                        if fd == listen_fd:
                            self.connectLoop()
                        elif fd == wake_fd:
                            self._drainWakePipe()
                        continue
                    if carry and conn in carry:
                        # Its earlier input first, in the second half.
                        continue
                    if ev == plain_read and inline and conn._plain:
                        try:
                            data = conn.conn.recv(recv_size)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except (OSError, ValueError) as e:
                            self._readFailed(conn, e)
                        else:
                            if len(data) >= recv_size:
                                if heavy is None:
                                    heavy = [conn, data]
                                else:
                                    heavy += (conn, data)
                                continue
                            if data:
                                handle_input(conn, data)
                            else:
                                self._lostConnection(conn)
                    else:
                        process(conn, ev)
                    if self._closing:
                        self._closeDeferred()
                if heavy is not None or carry:
                    self._handleHeavy(heavy)
                if timers and timers[0][0] <= time.monotonic():
                    self._runTimers()
                if core.store_acked:
                    core.commitStore()
                if dirty:
                    flush(dirty)
                if core.draining and not queue.running:
                    self.running = False

    def _handleHeavy(self, heavy):
        """The second half of a turn: write the replies of the peers that
        sent little (after the store commit, as at the end of every
        turn), then handle the floods' reads, oldest first, for at most
        ``turn_time`` (``heavy`` is None or a flat list of connection,
        bytes read this turn).  What is left is kept in ``_carry`` and
        handled first next turn, before more is read from its socket."""
        core = self.core
        if core.store_acked:
            core.commitStore()
        if core.dirty:
            self._flushDirty(core.dirty)
        carry = self._carry
        if heavy is not None:
            for i in range(0, len(heavy), 2):
                carry[heavy[i]] = heavy[i + 1]
        handle_input = self._processData
        monotonic = time.monotonic
        deadline = monotonic() + self.turn_time
        while carry:
            conn, data = carry.popitem(last=False)
            if conn.closed:
                continue
            handle_input(conn, data)
            if self._closing:
                self._closeDeferred()
            if monotonic() >= deadline:
                break

    def _processPollEvent(self, conn, event):
        """Handle one poll event of a connection."""
        if conn._handshaking:
            self._continueHandshake(conn)
            return
        if event & _READ_MASK:
            self.readFromConnection(conn)
        if event & _EV_WRITE and not conn.closed:
            self.writeToConnection(conn)

    def _drainWakePipe(self):
        try:
            while os.read(self.connect_wake_read, 4096):
                pass
        except OSError:
            pass

    def connectLoop(self):
        """Accept every pending connection (the listening socket is
        non-blocking and lives in the poll loop)."""
        for _ in range(256):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _WOULD_BLOCK:
                    return
                self._accept_throttle.acceptFailed(e)
                return
            if len(self.connection_map) >= self.max_connections:
                sock.close()
                self._accept_throttle.overLimit()
                continue
            try:
                self._registerConnection(sock, addr)
            except Exception:
                self.log.exception("Cannot set up connection from %s", addr)
                try:
                    sock.close()
                except OSError:
                    pass

    def _registerConnection(self, sock, addr=None):
        if addr is None:
            addr = sock.getpeername()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        if self.keepalive:
            try:
                self._setKeepalive(sock)
            except OSError:
                pass
        sock.setblocking(False)
        fd = sock.fileno()
        if self.use_ssl:
            sock = self._ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False)
        conn = ServerConnection(addr, sock, self.use_ssl, 'server',
                                _tls_pending=self.use_ssl,
                                max_packet_size=self.max_packet_size)
        conn.fd = fd
        conn.exceptions = self.exceptions
        conn._notify = self._notifyOutput
        self.connection_map[fd] = conn
        conn._events = _EV_READ
        self.poll.register(fd, _EV_READ)
        if self._debug:
            self.log.debug("Accepted %s", conn)
        if self.use_ssl:
            conn._handshake_timer = self.addTimer(
                self.tls_handshake_timeout, self._handshakeExpired, conn)
            self._continueHandshake(conn)
        return conn

    def _continueHandshake(self, conn):
        try:
            conn.conn.do_handshake()
        except ssl.SSLWantReadError:
            self._setEvents(conn, _EV_READ)
            return
        except ssl.SSLWantWriteError:
            self._setEvents(conn, _EV_READ | _EV_WRITE)
            return
        except (ssl.SSLError, OSError, ValueError) as e:
            self.log.info("TLS handshake with %s failed: %s", conn.host, e)
            self._lostConnection(conn)
            return
        conn._handshaking = False
        self.cancelTimer(conn._handshake_timer)
        conn._handshake_timer = None
        try:
            conn.ssl_subject = subject_from_cert(conn.conn.getpeercert())
        except (ValueError, OSError):
            conn.ssl_subject = None
        self._setEvents(conn, _EV_READ)
        if conn.conn.pending():
            self.readFromConnection(conn)

    def _handshakeExpired(self, conn):
        if conn._handshaking and not conn.closed:
            self.log.info("TLS handshake with %s timed out", conn.host)
            self._lostConnection(conn)

    def _setEvents(self, conn, events):
        if conn._events != events and not conn.closed:
            conn._events = events
            self.poll.modify(conn.fd, events)

    def readFromConnection(self, conn):
        """Read what the socket has and process every complete message."""
        sock = conn.conn
        try:
            data = sock.recv(RECV_SIZE)
            if conn.use_ssl:
                while sock.pending():
                    data += sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError,
                ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ValueError) as e:
            self._readFailed(conn, e)
            return
        if not data:
            self._lostConnection(conn)
            return
        self._processData(conn, data)

    def _readFailed(self, conn, error):
        if getattr(error, 'errno', None) in _WOULD_BLOCK:
            return
        if self._debug:
            self.log.debug("Read from %s failed: %s", conn, error)
        self._lostConnection(conn)

    def _processData(self, conn, data):
        """Handle every complete message of ``data`` (after what an
        earlier read left over), then stop reading from a peer that
        leaves its replies unread; bad input closes the connection."""
        try:
            conn._tail = self._scanner.scan(conn, data, conn._tail)
            metrics = self.metrics
            if metrics is not None:
                metrics.bytes_in += len(data)
            pending = len(conn.send_queue)
            if pending > self.output_high_water and not conn.closed:
                if pending > self.max_output_buffer:
                    self.log.warning("%s is not reading its replies; "
                                     "disconnecting it", conn)
                    self.closeLater(conn)
                else:
                    # Backpressure: read no more requests until it has
                    # read most of its replies.
                    conn._paused = True
                    self._setEvents(conn, _EV_WRITE)
        except PacketTooLarge as e:
            self.core.sendError(conn, b'ARGUMENT_TOO_LARGE',
                                b'Packet exceeds the maximum size')
            self._flushConnection(conn)
            self._protocolError(conn, e)
        except ProtocolError as e:
            # A bad magic or an unknown type just closes, as gearmand.
            self._protocolError(conn, e)
        except _CloseConnection as e:
            self.log.info("Closing %s: %s", conn, e)
            self._lostConnection(conn)
        except Exception:
            self.log.exception("Error handling input from %s; closing it",
                               conn)
            self._lostConnection(conn)

    def _protocolError(self, conn, error):
        self.log.info("Closing %s: %s", conn, error)
        self._lostConnection(conn)

    def writeToConnection(self, conn):
        """Send pending output; stop watching for writability when done."""
        if conn.closed:
            return
        self._flushConnection(conn)

    def _flushConnection(self, conn):
        if self.core.store_acked:
            # Output can leave mid-turn (a writable backlog, a flush before
            # a close); a JOB_CREATED in it must not precede its commit.
            self.core.commitStore()
            if conn.closed:
                return
        out = conn.send_queue
        if not out:
            if conn._events != _EV_READ:
                conn._paused = False
                self._setEvents(conn, _EV_READ)
            return
        try:
            sent = conn.conn.send(out)
        except (BlockingIOError, InterruptedError,
                ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except (OSError, ValueError) as e:
            if getattr(e, 'errno', None) in _WOULD_BLOCK:
                sent = 0
            else:
                if self._debug:
                    self.log.debug("Write to %s failed: %s", conn, e)
                out.clear()
                self._lostConnection(conn)
                return
        if self.metrics is not None:
            self.metrics.bytes_out += sent
        if sent >= len(out):
            out.clear()
            if conn._events != _EV_READ:
                conn._paused = False
                self._setEvents(conn, _EV_READ)
        else:
            del out[:sent]
            if len(out) > self.max_output_buffer:
                self.log.warning("%s is not reading its replies; "
                                 "disconnecting it", conn)
                out.clear()
                self._lostConnection(conn)
                return
            if conn._paused and len(out) <= self.output_low_water:
                conn._paused = False
            self._setEvents(conn, _EV_WRITE if conn._paused
                            else _EV_READ | _EV_WRITE)

    def _flushDirty(self, dirty):
        """The end of a loop turn: write what the turn queued.  Usually
        that is one connection's output, which needs no copy of the
        list."""
        if len(dirty) == 1:
            conn = dirty.pop()
            if not conn.closed:
                self._flushConnection(conn)
            if self._closing:
                self._closeDeferred()
            if not dirty:
                return
        self._flushAllConnections()

    def _flushAllConnections(self):
        # The list object is shared with the submit handlers: empty it in
        # place.
        while self.core.dirty:
            dirty = self.core.dirty[:]
            del self.core.dirty[:]
            for conn in dirty:
                if not conn.closed:
                    self._flushConnection(conn)
            if self._closing:
                self._closeDeferred()

    def addTimer(self, delay, callback, arg):
        """Call ``callback(arg)`` on the loop in ``delay`` seconds; the
        entry returned is a list, to which callers may append their own
        fields (the epoch timer notes its due time)."""
        entry = [time.monotonic() + delay, next(self._timer_seq),
                 callback, arg]
        heapq.heappush(self._timers, entry)
        if not self.onLoopThread():
            self._kick()
        return entry

    @staticmethod
    def cancelTimer(entry):
        """Cancel a timer (the heap entry stays until it is due)."""
        if entry is not None:
            entry[2] = None
            entry[3] = None

    def _runTimers(self):
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            callback = entry[2]
            if callback is None:
                continue
            try:
                callback(entry[3])
            except Exception:
                self.log.exception("Timer callback failed")
        # Drop cancelled entries from the top so the poll timeout is real.
        while timers and timers[0][2] is None:
            heapq.heappop(timers)

    def closeLater(self, conn):
        """Close a connection once the current step is over (the core
        may be in the middle of iterating over connections)."""
        if conn not in self._closing:
            self._closing.append(conn)

    def _closeDeferred(self):
        closing = self._closing
        self._closing = []
        for conn in closing:
            self._lostConnection(conn)

    def _lostConnection(self, conn):
        """Forget a connection: requeue its running jobs, detach it from
        the jobs it submitted, and close the socket."""
        if conn.closed:
            return
        conn.closed = True
        conn.connected = False
        if self._debug:
            self.log.debug("Lost %s", conn)
        if self.connection_map.get(conn.fd) is conn:
            del self.connection_map[conn.fd]
            try:
                self.poll.unregister(conn.fd)
            except (OSError, ValueError, KeyError):
                pass
        self.cancelTimer(conn._handshake_timer)
        try:
            conn.conn.close()
        except Exception:
            pass
        conn.send_queue.clear()
        self._unregisterConnection(conn)

    def shutdown(self, graceful=False):
        """Stop the server.

        Immediate by default.  With ``graceful`` the listening socket is
        closed at once, running jobs are allowed to finish (no new job is
        handed out), and then everything stops.  Idempotent.  Blocks until
        the loop has stopped unless called from the loop itself.
        """
        with self.lock:
            if not self.running:
                self.log.warning("Server is already shut down")
            elif graceful:
                if self.core.draining:
                    self.log.warning("Server is already draining")
                self.core.draining = True
                self._closeListener()
            else:
                if self._shutdown_called and not self.core.draining:
                    self.log.warning("Server is already shutting down")
                self.running = False
            self._shutdown_called = True
        self._kick()
        self._waitStopped()

    def _waitStopped(self):
        if self.onLoopThread():
            return
        self._stopped.wait()
        self.poll_thread.join()

    def _closeListener(self):
        if not self._listener_closed:
            self._listener_closed = True
            try:
                self.poll.unregister(self._listen_fd)
            except (OSError, ValueError, KeyError):
                pass
            try:
                self.socket.close()
            except OSError:
                pass

    def _shutdown(self):
        self.shutdown()

    def _cleanup(self):
        with self.lock:
            self.running = False
            if self.core.store_acked:
                # A turn cut short: commit before its replies go out.
                self.core.commitStore()
            self._carry.clear()
            for conn in list(self.connection_map.values()):
                if conn.send_queue:
                    try:
                        conn.conn.send(conn.send_queue)
                    except Exception:
                        pass
                conn.closed = True
                try:
                    conn.conn.close()
                except Exception:
                    pass
            self.connection_map.clear()
            self._closeListener()
            try:
                self.poll.close()
            except Exception:
                pass
            for fd in (self.connect_wake_read, self.connect_wake_write):
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                self.store.close()
            except Exception:
                self.log.exception("Job store did not close cleanly")

    @property
    def active_connections(self):
        return list(self.connection_map.values())
