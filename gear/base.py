"""The event loop shared by clients and workers.

:class:`BaseClientServer` owns two daemon threads: one polls every active
connection and dispatches what arrives to ``handle<PacketName>`` methods;
the other (re)connects inactive connections with a jittered, capped
backoff.  :class:`BaseClient` adds server management (``addServer``,
``waitForServer``, round-robin ``getConnection``) and the matching of
replies to the requests that await them.
"""

import logging
import os
import random
import selectors
import threading
import time

from gear import constants
from gear.connection import Connection, UntrackedRequest, reply_key
from gear.errors import (
    ConfigurationError, ConnectionError, NoConnectedServersError,
    TimeoutError, UnknownJobError)
from gear.protocol import Packet
from gear.util import convert_to_bytes, to_text

# packet type -> name of the method that handles it
PACKET_HANDLERS = {
    constants.CAN_DO: 'handleCanDo',
    constants.CANT_DO: 'handleCantDo',
    constants.RESET_ABILITIES: 'handleResetAbilities',
    constants.PRE_SLEEP: 'handlePreSleep',
    constants.NOOP: 'handleNoop',
    constants.SUBMIT_JOB: 'handleSubmitJob',
    constants.JOB_CREATED: 'handleJobCreated',
    constants.GRAB_JOB: 'handleGrabJob',
    constants.NO_JOB: 'handleNoJob',
    constants.JOB_ASSIGN: 'handleJobAssign',
    constants.WORK_STATUS: 'handleWorkStatus',
    constants.WORK_COMPLETE: 'handleWorkComplete',
    constants.WORK_FAIL: 'handleWorkFail',
    constants.GET_STATUS: 'handleGetStatus',
    constants.ECHO_REQ: 'handleEchoReq',
    constants.ECHO_RES: 'handleEchoRes',
    constants.SUBMIT_JOB_BG: 'handleSubmitJobBg',
    constants.ERROR: 'handleError',
    constants.STATUS_RES: 'handleStatusRes',
    constants.SUBMIT_JOB_HIGH: 'handleSubmitJobHigh',
    constants.SET_CLIENT_ID: 'handleSetClientID',
    constants.CAN_DO_TIMEOUT: 'handleCanDoTimeout',
    constants.ALL_YOURS: 'handleAllYours',
    constants.WORK_EXCEPTION: 'handleWorkException',
    constants.OPTION_REQ: 'handleOptionReq',
    constants.OPTION_RES: 'handleOptionRes',
    constants.WORK_DATA: 'handleWorkData',
    constants.WORK_WARNING: 'handleWorkWarning',
    constants.GRAB_JOB_UNIQ: 'handleGrabJobUniq',
    constants.JOB_ASSIGN_UNIQ: 'handleJobAssignUnique',
    constants.SUBMIT_JOB_HIGH_BG: 'handleSubmitJobHighBg',
    constants.SUBMIT_JOB_LOW: 'handleSubmitJobLow',
    constants.SUBMIT_JOB_LOW_BG: 'handleSubmitJobLowBg',
    constants.SUBMIT_JOB_SCHED: 'handleSubmitJobSched',
    constants.SUBMIT_JOB_EPOCH: 'handleSubmitJobEpoch',
    constants.SUBMIT_REDUCE_JOB: 'handleSubmitReduceJob',
    constants.SUBMIT_REDUCE_JOB_BACKGROUND:
        'handleSubmitReduceJobBackground',
    constants.GRAB_JOB_ALL: 'handleGrabJobAll',
    constants.JOB_ASSIGN_ALL: 'handleJobAssignAll',
    constants.GET_STATUS_UNIQUE: 'handleGetStatusUnique',
    constants.STATUS_RES_UNIQUE: 'handleStatusResUnique',
}


def _default_hook(name):
    def hook(self, packet):
        return self._defaultPacketHandler(packet)
    hook.__name__ = name
    hook.__doc__ = "Handle a packet of this type (default: log it)."
    return hook


class Backoff(object):
    """Jittered exponential delays between reconnection attempts."""

    __slots__ = ('initial', 'maximum', 'failures')

    def __init__(self, initial=0.1, maximum=3.0):
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next(self):
        delay = min(self.maximum, self.initial * (2 ** self.failures))
        self.failures = min(self.failures + 1, 30)
        # "Equal jitter": never less than half, so retries keep a rhythm,
        # but spread enough that many clients do not reconnect in step.
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self):
        self.failures = 0


class BaseClientServer(object):
    """Poll and connect threads, and dispatch of packets to hooks."""

    #: Upper bound, in seconds, of the reconnection backoff.
    reconnect_max_delay = 3.0
    #: Seconds shutdown() waits for each thread to finish.
    shutdown_join_timeout = 15.0
    # False when the class keeps the default no-op reportTimingStats:
    # unless an instance sets its own, handlePacket then skips reading
    # the clock twice per packet.
    _timed = True

    def __init__(self, client_id=None):
        if client_id:
            self.client_id = convert_to_bytes(client_id)
            self.log = logging.getLogger(
                "gear.BaseClientServer.%s" % (to_text(self.client_id),))
        else:
            self.client_id = None
            self.log = logging.getLogger("gear.BaseClientServer")
        self.running = True
        self.active_connections = []
        self.inactive_connections = []
        self.connection_index = -1
        # Guards the two lists above; notified whenever they change.
        self.connections_condition = threading.Condition()
        # Held while a new connection is set up and made active, so that
        # role-wide changes (functions, options) reach it exactly once.
        self._activation_lock = threading.RLock()
        self._shutdown_lock = threading.Lock()
        self._backoffs = {}
        # conn -> the reason its last connection attempt failed.
        self._connect_errors = {}
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self._packet_handlers = self._buildPacketHandlers()
        self._timed = (type(self).reportTimingStats is not
                       BaseClientServer.reportTimingStats)
        self.poll_thread = threading.Thread(name="Gearman client poll",
                                            target=self._doPollLoop)
        self.poll_thread.daemon = True
        self.poll_thread.start()
        self.connect_thread = threading.Thread(
            name="Gearman client connect", target=self._doConnectLoop)
        self.connect_thread.daemon = True
        self.connect_thread.start()

    def _buildPacketHandlers(self):
        return {ptype: getattr(self, name)
                for ptype, name in PACKET_HANDLERS.items()}

    def _wake(self):
        try:
            os.write(self.wake_write, b'1')
        except (BlockingIOError, OSError):
            # A full pipe already guarantees a wake-up; a closed one
            # means we are shutting down.
            pass

    # Connecting

    def _doConnectLoop(self):
        while self.running:
            try:
                delay = self._connectLoop()
            except Exception:
                self.log.exception("Exception in connect loop:")
                delay = self.reconnect_max_delay
            with self.connections_condition:
                if not self.running:
                    break
                if delay is None and not self.inactive_connections:
                    self.connections_condition.wait()
                elif delay:
                    self.connections_condition.wait(delay)

    def _connectLoop(self):
        """Try every inactive connection that is due.

        Returns how long to sleep before the next due attempt (None when
        nothing is waiting to be connected).
        """
        now = time.monotonic()
        with self.connections_condition:
            inactive = self.inactive_connections[:]
        next_due = None
        for conn in inactive:
            if not self.running:
                return None
            due = self._backoffs.get(conn, (0, None))[0]
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            if self._connectOne(conn):
                self._backoffs.pop(conn, None)
                continue
            backoff = self._backoffs.get(conn, (0, None))[1]
            if backoff is None:
                backoff = Backoff(maximum=self.reconnect_max_delay)
            due = time.monotonic() + backoff.next()
            self._backoffs[conn] = (due, backoff)
            next_due = due if next_due is None else min(next_due, due)
        if next_due is None:
            return None
        return max(0.0, next_due - time.monotonic())

    def _connectOne(self, conn):
        if not conn.connected:
            try:
                conn.connect()
            except ConnectionError as e:
                self.log.debug("Unable to connect to %s: %s", conn, e)
                self._connect_errors[conn] = e
                return False
            except Exception as e:
                self.log.exception("Exception while connecting to %s", conn)
                self._connect_errors[conn] = e
                return False
            self._connect_errors.pop(conn, None)
        with self._activation_lock:
            try:
                self._onConnect(conn)
            except (ConnectionError, OSError) as e:
                # The server went away again at once (say, it is shutting
                # down): an ordinary failed attempt, retried as one.
                self.log.debug("Lost %s during on-connect tasks: %s",
                               conn, e)
                self._connect_errors[conn] = e
                conn.disconnect()
                return False
            except Exception:
                self.log.exception("Exception while performing on-connect"
                                   " tasks for %s", conn)
                conn.disconnect()
                return False
            with self.connections_condition:
                if not self.running or conn not in self.inactive_connections:
                    # Shut down, or removed meanwhile.
                    conn.disconnect()
                    return True
                self.inactive_connections.remove(conn)
                self.active_connections.append(conn)
                self.connections_condition.notify_all()
        self._wake()
        try:
            self._onActiveConnection(conn)
        except Exception:
            self.log.exception("Exception while performing active connection"
                               " tasks for %s", conn)
        return True

    def _onConnect(self, conn):
        """Called right after a (re)connection, before it becomes active.

        Raising keeps the connection inactive (it is retried later).
        """
        pass

    def _onActiveConnection(self, conn):
        """Called once a new connection is in ``active_connections``."""
        pass

    def _lostConnection(self, conn):
        """Mark ``conn`` inactive, close it and report its jobs lost."""
        self.log.debug("Marking %s as disconnected", conn)
        with self.connections_condition:
            jobs = self._relatedJobs(conn)
            if conn in self.active_connections:
                self.active_connections.remove(conn)
            if conn not in self.inactive_connections:
                self.inactive_connections.append(conn)
            conn.disconnect()
            self.connections_condition.notify_all()
        self._wake()
        for job in jobs:
            try:
                self.handleDisconnect(job)
            except Exception:
                self.log.exception("Exception in handleDisconnect for %s",
                                   job)

    @staticmethod
    def _relatedJobs(conn):
        jobs = []
        seen = set()
        for handle, job in list(conn.related_jobs.items()):
            group = conn.coalesced_jobs.get(handle)
            for member in (group if group else (job,)):
                if id(member) not in seen:
                    seen.add(id(member))
                    jobs.append(member)
        return jobs

    # Polling

    def _doPollLoop(self):
        while self.running:
            try:
                self._pollLoop()
            except Exception:
                self.log.exception("Exception in poll loop:")
                # Do not spin if the failure repeats.
                with self.connections_condition:
                    if self.running:
                        self.connections_condition.wait(0.1)

    def _pollLoop(self):
        selector = selectors.DefaultSelector()
        selector.register(self.wake_read, selectors.EVENT_READ, None)
        watched = {}   # fd -> (connection, socket)
        # Whoever changes active_connections wakes this thread through
        # the pipe afterwards, so the list is read again only after such
        # a wake-up (the pipe is drained before the list is read, so no
        # change can be missed), not after every packet.
        sync = True
        try:
            while self.running:
                if sync:
                    self._syncWatched(selector, watched)
                    sync = False
                for key, _ in selector.select():
                    if key.data is None:
                        self._drainWake()
                        sync = True
                        continue
                    conn, sock = key.data
                    if conn.conn is not sock:
                        # Closed or replaced behind our back.
                        sync = True
                        continue
                    self._readConnection(conn)
        finally:
            selector.close()

    def _syncWatched(self, selector, watched):
        with self.connections_condition:
            wanted = {}
            for conn in self.active_connections:
                sock = conn.conn
                if sock is None:
                    continue
                try:
                    fd = sock.fileno()
                except Exception:
                    continue
                if fd >= 0:
                    wanted[fd] = (conn, sock)
        for fd, entry in list(watched.items()):
            current = wanted.get(fd)
            if current is None or current[1] is not entry[1]:
                try:
                    selector.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
                del watched[fd]
        for fd, entry in wanted.items():
            if fd not in watched:
                try:
                    selector.register(fd, selectors.EVENT_READ, entry)
                except (KeyError, ValueError, OSError):
                    self.log.exception("Unable to poll %s", entry[0])
                    continue
                watched[fd] = entry

    def _drainWake(self):
        try:
            while os.read(self.wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _readConnection(self, conn):
        """Read and dispatch what ``conn`` has; drop it if the link broke.
        """
        sock = conn.conn
        try:
            messages = conn._readAvailable()
        except Exception as e:
            if conn.conn is sock:
                # (Otherwise another thread already dropped it.)
                self.log.warning("Error reading from %s: %s", conn, e)
                self._lostConnection(conn)
            return
        if messages is None:
            self.log.debug("Connection %s closed by the server", conn)
            self._lostConnection(conn)
            return
        for message in messages:
            if conn.conn is not sock:
                # A handler dropped the connection; the rest is moot.
                break
            try:
                if isinstance(message, Packet):
                    self.handlePacket(message)
                else:
                    self.handleAdminRequest(message)
            except UnknownJobError:
                # A reply or update about a job this side does not
                # follow (handlers raise it as gear always did).
                self.log.debug("%s from %s names an unknown job", message,
                               conn)
            except Exception:
                # A handler bug or bad data in one message: keep going.
                self.log.exception("Exception while handling %s from %s",
                                   message, conn)

    # Dispatch

    def handlePacket(self, packet):
        """Dispatch ``packet`` to the ``handle*`` method for its type."""
        handler = self._packet_handlers.get(packet.ptype)
        if handler is None:
            handler = self._defaultPacketHandler
        if not self._timed and 'reportTimingStats' not in self.__dict__:
            handler(packet)
            return
        start = time.monotonic()
        try:
            handler(packet)
        finally:
            self.reportTimingStats(packet.ptype, time.monotonic() - start)

    def handleAdminRequest(self, request):
        """An admin reply arrived: wake whoever waits for it."""
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("Received admin data %s", request)
        request.setComplete()

    def handleDisconnect(self, job):
        """Called for each job of a lost connection; returns the job."""
        return job

    def reportTimingStats(self, ptype, duration):
        """Called after each packet with its handling time in seconds."""
        pass

    def _defaultPacketHandler(self, packet):
        self.log.error("Received unhandled packet: %s", packet)

    # Shutting down

    def shutdown(self):
        """Stop the threads and close every connection (idempotent)."""
        with self._shutdown_lock:
            if not self.running:
                self.log.warning("Shutdown called when not currently"
                                 " running. Ignoring.")
                return
            self.log.debug("Beginning shutdown")
            self._shutdown()
            self.log.debug("Beginning cleanup")
            self._cleanup()
            self.log.debug("Finished shutdown")

    def _shutdown(self):
        """Tell the threads to exit."""
        self.running = False
        with self.connections_condition:
            self.connections_condition.notify_all()
        self._wake()

    def _cleanup(self):
        """Wait for the threads, then close connections and the pipe."""
        current = threading.current_thread()
        for thread in (self.poll_thread, self.connect_thread):
            if thread is not current:
                thread.join(self.shutdown_join_timeout)
        with self.connections_condition:
            connections = self.active_connections + self.inactive_connections
            self.active_connections = []
            self.inactive_connections = []
        for conn in connections:
            try:
                conn.disconnect()
            except Exception:
                self.log.exception("Error disconnecting %s", conn)
        if not self.poll_thread.is_alive() or \
                self.poll_thread is current:
            for fd in (self.wake_read, self.wake_write):
                try:
                    os.close(fd)
                except OSError:
                    pass


for _ptype, _name in PACKET_HANDLERS.items():
    setattr(BaseClientServer, _name, _default_hook(_name))
del _ptype, _name


class BaseClient(BaseClientServer):
    """Server list management and reply matching for clients and workers.
    """

    def __init__(self, client_id='unknown'):
        super(BaseClient, self).__init__(client_id)
        self.log = logging.getLogger(
            "gear.BaseClient.%s" % (to_text(self.client_id),))
        self.broadcast_lock = self._activation_lock

    def addServer(self, host, port=constants.DEFAULT_PORT, ssl_key=None,
                  ssl_cert=None, ssl_ca=None, keepalive=False,
                  tcp_keepidle=7200, tcp_keepintvl=75, tcp_keepcnt=9):
        """Add a server; the connect thread connects to it in the background.

        :raises ConfigurationError: the host and port are already added.
        """
        self.log.debug("Adding server %s port %s", host, port)
        with self.connections_condition:
            for conn in self.active_connections + self.inactive_connections:
                if conn.host == host and conn.port == port:
                    raise ConfigurationError("Host/port already specified")
            conn = Connection(host, port, ssl_key, ssl_cert, ssl_ca,
                              self.client_id, keepalive, tcp_keepidle,
                              tcp_keepintvl, tcp_keepcnt)
            self.inactive_connections.append(conn)
            self.connections_condition.notify_all()

    def waitForServer(self, timeout=None):
        """Wait until at least one server is connected.

        :raises TimeoutError: none connected within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.connections_condition:
            while self.running and not self.active_connections:
                if deadline is None:
                    self.connections_condition.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(self._noServerMessage(timeout))
                self.connections_condition.wait(remaining)

    def _noServerMessage(self, timeout):
        """What waitForServer's TimeoutError says: the servers tried and
        why each failed, as far as known."""
        servers = []
        for conn in self.inactive_connections:
            where = '%s:%s' % (conn.host, conn.port)
            error = self._connect_errors.get(conn)
            servers.append('%s (%s)' % (where, error) if error else where)
        return 'no Gearman server connected within %gs (tried: %s)' % (
            timeout, ', '.join(servers) or 'no server was added')

    def getConnection(self):
        """Return the next active connection, round-robin.

        :raises NoConnectedServersError: no server is connected.
        """
        with self.connections_condition:
            count = len(self.active_connections)
            if not count:
                raise NoConnectedServersError("No connected Gearman servers")
            self.connection_index = (self.connection_index + 1) % count
            return self.active_connections[self.connection_index]

    def _connectionsInTurn(self):
        """Every active connection, starting with the next in turn."""
        with self.connections_condition:
            conns = self.active_connections[:]
            if not conns:
                return conns
            self.connection_index = (self.connection_index + 1) % len(conns)
            start = self.connection_index
        return conns[start:] + conns[:start]

    def broadcast(self, packet):
        """Send ``packet`` to every active server; failures drop that one."""
        with self.broadcast_lock:
            with self.connections_condition:
                conns = self.active_connections[:]
            for conn in conns:
                try:
                    conn.sendPacket(packet)
                except Exception:
                    self.log.exception("Error sending to %s, disconnecting",
                                       conn)
                    self._lostConnection(conn)

    def sendPacket(self, packet, connection):
        """Send on ``connection``; on failure drop it and re-raise."""
        try:
            connection.sendPacket(packet)
        except Exception:
            self.log.exception("Error sending to %s, disconnecting",
                               connection)
            self._lostConnection(connection)
            raise

    def _takeReply(self, packet):
        """The task ``packet`` answers on its connection, or None.

        None also when the request it answers was sent without a task
        (a plain ``Connection.sendPacket``): only the ``handle*`` method
        sees such a reply.
        """
        conn = packet.connection
        if conn is None:
            return None
        task = conn._takeReplyTask(packet.ptype, reply_key(packet))
        if isinstance(task, UntrackedRequest):
            return None
        return task

    def handleEchoRes(self, packet):
        self._takeReply(packet)
        data = packet.getArgument(0, True)
        if not packet.connection.handleEchoRes(data):
            self.log.debug("Echo response with no waiter: %r", data)
        return data

    # ERROR codes sent only about packets that have no reply of their own.
    _UNSOLICITED_ERRORS = frozenset((b'JOB_NOT_FOUND',))

    def handleError(self, packet):
        """Fail the request this ERROR answers, or log it.

        Servers answer a connection's requests in order and an ERROR
        takes the place of the reply, so it answers the oldest request
        still awaiting one, whether sent with a task or not (then it is
        only logged).  ``JOB_NOT_FOUND`` is sent only about WORK_*
        packets, which have no reply: it answers no request.

        Never drops the connection: an ERROR can also refer to a packet
        that has no reply of its own (e.g. a late WORK_COMPLETE).
        """
        code = packet.getArgument(0)
        text = packet.getArgument(1, True) if len(packet.arguments) > 1 \
            else b''
        if code in self._UNSOLICITED_ERRORS:
            # Only answers a WORK_* packet, never an awaited request.
            task = None
        else:
            task = self._takeReply(packet)
        if task is None:
            self.log.warning("Received ERROR %s %r from %s", to_text(code),
                             text, packet.connection)
            return None
        self.log.warning("Received ERROR %s %r from %s for %s",
                         to_text(code), text, packet.connection, task)
        task.fail((code, text))
        return task
