"""The server's HTTP side: ``/metrics``, ``/api/status.json`` and ``/``.

One thread runs a small non-blocking HTTP/1.x server (``selectors``, GET
and HEAD only, one request per connection).  It never holds up the job
loop: it asks the loop for a copy of the server's state (taken at the
start of a turn) and waits for it a bounded time, at most once per
``max_age`` seconds however many scrapers ask, and serves the last good
snapshot when the loop does not answer in time.  Rendered
answers are cached with their snapshot, so a thousand concurrent scrapes
cost one snapshot and one rendering.

Bad input gets a short error answer and a close; a client that is too
slow to send its request or read the answer is dropped after
``client_timeout`` seconds; connections past ``max_clients`` are
closed at once.  Connections are accepted at most ``max_rate`` a second
(after a burst of as many): the thread shares the interpreter with the
job loop, and a client that scrapes in a tight loop must not take the
loop's processor time.  Past the rate, new connections wait in the
listen backlog.  The same thread samples the queue depth and completed
jobs once a second for the dashboard's charts.
"""

import collections
import errno
import functools
import json
import logging
import selectors
import socket
import threading
import time

from gear.server import dashboard
from gear.server import exposition
from gear.server import metrics as metrics_mod

log = logging.getLogger('gear.Server.http')

MAX_REQUEST = 8192
SAMPLE_INTERVAL = 1.0
# Per-function throughput is averaged over this many samples.
RATE_SAMPLES = 10
#: A snapshot is kept at least this many times as long as it took to
#: take and render.
COST_FACTOR = 10.0
# How often slow clients are looked for (their timeout is this coarse).
EXPIRY_CHECK = 0.5

_REASONS = {200: 'OK', 400: 'Bad Request', 404: 'Not Found',
            405: 'Method Not Allowed', 408: 'Request Timeout',
            414: 'URI Too Long', 431: 'Request Header Fields Too Large',
            500: 'Internal Server Error', 503: 'Service Unavailable'}


def _version():
    try:
        from gear import version
        return version.__version__
    except Exception:
        return 'unknown'


# The stages of a client connection.
_READING = 0    # reading the request head
_WRITING = 1    # sending the answer
_LINGERING = 2  # answer sent: discard input until the peer closes


class _Client(object):
    __slots__ = ('sock', 'inbuf', 'outbuf', 'deadline', 'stage')

    def __init__(self, sock, deadline):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = None
        self.deadline = deadline
        self.stage = _READING


class StatusSource(object):
    """Snapshots of one server, copied by its loop and cached.

    :arg server: a running :class:`gear.Server` with ``metrics`` on.
    :arg max_age: a snapshot younger than this is served as is.  On a
        server with thousands of functions a snapshot and its renderings
        take a while: a snapshot is then also kept for
        :data:`COST_FACTOR` times what the previous one cost, so that the
        HTTP side never takes more than a small share of the
        interpreter from the job loop.
    :arg wait: how long to wait for the loop's copy before serving the
        previous snapshot instead.
    """

    def __init__(self, server, max_age=1.0, wait=0.5):
        self.server = server
        self.max_age = max_age
        self.wait = wait
        self.history = metrics_mod.History()
        self._finished = collections.deque(maxlen=RATE_SAMPLES + 1)
        self.version = _version()
        self._snap = None
        self._taken = None
        self._cost = 0.0      # seconds spent on the current snapshot
        self._rendered = {}
        self._mutex = threading.Lock()

    def _capture(self):
        """Ask the loop for a copy of the server's state, and wait for it
        at most ``wait`` seconds.

        The loop takes the copy at the start of a turn, between packets,
        so the job traffic never waits for the server lock; a stopped
        loop's state is copied under the lock.
        """
        server = self.server
        recorder = server.metrics
        if not server.poll_thread.is_alive():
            if not server.lock.acquire(timeout=self.wait):
                return None
            try:
                return metrics_mod.capture(server, recorder)
            finally:
                server.lock.release()
        request = metrics_mod.CaptureRequest()
        recorder.capture_request = request
        server._kick()
        if not request.done.wait(self.wait):
            return None
        return request.raw

    def _take(self):
        server = self.server
        raw = self._capture()
        if raw is None:
            return None
        snap = metrics_mod.build(raw, self.version)
        snap['up'] = snap['up'] and server.poll_thread.is_alive()
        snap['history'] = {'interval': SAMPLE_INTERVAL,
                           'samples': self.history.list()}
        rates = self._rates()
        for f in snap['functions']:
            f['rate'] = rates.get(f['name'], 0.0)
        return snap

    def _rates(self):
        """Jobs finished per second by function, over the last
        RATE_SAMPLES samples."""
        if len(self._finished) < 2:
            return {}
        (t0, old), (t1, new) = self._finished[0], self._finished[-1]
        if t1 <= t0:
            return {}
        return {name: max(0, done - old.get(name, 0)) / (t1 - t0)
                for name, done in new.items()}

    def current(self):
        """The newest snapshot (maybe a stale one, marked ``stale``)."""
        with self._mutex:
            now = time.monotonic()
            if self._snap is None or now - self._taken >= max(
                    self.max_age, COST_FACTOR * self._cost):
                try:
                    snap = self._take()
                except Exception:
                    log.exception("Cannot take a server snapshot")
                    snap = None
                if snap is not None:
                    snap['stale'] = False
                    self._snap = snap
                    self._taken = now
                    self._cost = time.monotonic() - now
                    self._rendered = {}
                elif self._snap is not None:
                    self._snap['stale'] = True
            return self._snap

    def rendered(self, kind, render):
        """``render(snapshot)``, cached as long as the snapshot is."""
        snap = self.current()
        with self._mutex:
            if snap is not self._snap:
                return render(snap)
            body = self._rendered.get(kind)
            if body is None:
                start = time.monotonic()
                body = self._rendered[kind] = render(snap)
                self._cost += time.monotonic() - start
            return body

    def sample(self):
        recorder = self.server.metrics
        self.history.add((round(time.time(), 3),) + metrics_mod.totals(
            self.server, recorder))
        self._finished.append((time.monotonic(),
                               metrics_mod.finished_by_function(recorder)))


def _json(snap):
    if snap is None:
        return b'{"up": false}'
    return json.dumps(snap, separators=(',', ':')).encode('utf8')


class HTTPServer(object):
    """Serves one job server's metrics and dashboard from its own thread.

    :arg server: the :class:`gear.Server` (created with ``metrics=True``).
    :arg host: the address to listen on (default loopback only).
    :arg port: the port (0 picks a free one; ``self.port`` says which).
    :arg float max_age: seconds a snapshot of the server is served
        before a new one is taken.
    :arg float snapshot_wait: how long to wait for the loop's copy of
        the server's state before serving the previous snapshot.
    :arg float client_timeout: seconds a client has to send its request
        and read the answer.
    :arg int max_clients: connections served at once; more are closed.
    :arg float max_rate: connections accepted per second (after a burst
        of as many); more wait in the listen backlog.
    :arg int histogram_functions: how many functions get wait and run
        histograms of their own in ``/metrics`` (the first to have
        jobs); the others share ``function="(other)"``.
    """

    def __init__(self, server, host='127.0.0.1', port=0, max_age=1.0,
                 snapshot_wait=0.5, client_timeout=10.0, max_clients=2048,
                 backlog=1024, max_rate=50.0,
                 histogram_functions=exposition.HISTOGRAM_FUNCTIONS):
        if getattr(server, 'metrics', None) is None:
            raise ValueError('the server was created without metrics')
        self.source = StatusSource(server, max_age, snapshot_wait)
        self._render_metrics = functools.partial(
            exposition.render,
            budget=exposition.HistogramBudget(histogram_functions))
        self.client_timeout = client_timeout
        self.max_clients = max_clients
        self.max_rate = float(max_rate)
        # A token bucket of connections to accept.
        self._tokens = self.max_rate
        self._refilled = time.monotonic()
        self._listening = True
        self.socket = self._listen(host, port, backlog)
        self.host = host
        self.port = self.socket.getsockname()[1]
        self._clients = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._running = False
        self._routes = {
            '/metrics': self._metrics,
            '/api/status.json': self._status,
            '/': self._dashboard,
            '/index.html': self._dashboard,
        }
        self.thread = threading.Thread(target=self._run,
                                       name='Gearman server HTTP',
                                       daemon=True)

    @staticmethod
    def _listen(host, port, backlog):
        last = None
        for family, _, _, _, addr in socket.getaddrinfo(
                host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                socket.AI_PASSIVE):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(backlog)
                sock.setblocking(False)
                return sock
            except OSError as e:
                sock.close()
                last = e
        raise last or OSError('cannot listen on %s:%s' % (host, port))

    def start(self):
        self._running = True
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.thread.start()
        return self

    def stop(self):
        """Stop serving and close every socket; idempotent."""
        self._running = False
        try:
            self._wake_w.send(b'x')
        except OSError:
            pass
        if self.thread.is_alive() and \
                self.thread is not threading.current_thread():
            self.thread.join(10)

    @property
    def url(self):
        host = self.host
        if ':' in host:
            host = '[%s]' % host
        return 'http://%s:%d/' % (host, self.port)

    # -- the thread --------------------------------------------------------

    def _run(self):
        next_sample = next_expiry = time.monotonic()
        try:
            while self._running:
                now = time.monotonic()
                if now >= next_sample:
                    self._sample()
                    next_sample = now + SAMPLE_INTERVAL
                if now >= next_expiry:
                    self._expire(now)
                    next_expiry = now + EXPIRY_CHECK
                timeout = min(next_sample, next_expiry) - now
                if not self._listening:
                    timeout = min(timeout, self._resumeListening(now))
                for key, events in self._selector.select(max(0.0, timeout)):
                    sock = key.fileobj
                    if sock is self.socket:
                        self._accept()
                    elif sock is self._wake_r:
                        self._drainWake()
                    else:
                        self._serve(key.data, events)
        except Exception:
            log.exception("HTTP thread crashed")
        finally:
            self._close()

    def _sample(self):
        try:
            self.source.sample()
        except Exception:
            log.exception("Cannot sample the server's totals")

    def _drainWake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _refill(self, now):
        self._tokens = min(self.max_rate, self._tokens +
                           (now - self._refilled) * self.max_rate)
        self._refilled = now

    def _resumeListening(self, now):
        """Listen again once a token is back; else the seconds until
        then."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._selector.register(self.socket, selectors.EVENT_READ, None)
            self._listening = True
            return 0.0
        return (1.0 - self._tokens) / self.max_rate

    def _accept(self):
        self._refill(time.monotonic())
        for _ in range(256):
            if self._tokens < 1.0:
                # Over the rate: leave the rest in the listen backlog.
                self._selector.unregister(self.socket)
                self._listening = False
                return
            try:
                sock, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE,
                                   errno.ECONNABORTED):
                    log.warning("HTTP accept failed: %s", e)
                return
            self._tokens -= 1.0
            if len(self._clients) >= self.max_clients:
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, time.monotonic() + self.client_timeout)
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _serve(self, client, events):
        if client.stage == _WRITING:
            self._write(client)
            return
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._drop(client)
            return
        if client.stage == _LINGERING:
            return
        client.inbuf += data
        end = client.inbuf.find(b'\r\n\r\n')
        if end < 0:
            end = client.inbuf.find(b'\n\n')
        if end < 0:
            if len(client.inbuf) > MAX_REQUEST:
                self._respond(client, 431, b'Request too large\n', head=False)
            return
        self._handle(client, bytes(client.inbuf[:end]))

    def _handle(self, client, head):
        line = head.split(b'\n', 1)[0].rstrip(b'\r')
        parts = line.split(b' ')
        if len(parts) != 3 or not parts[2].startswith(b'HTTP/1.'):
            self._respond(client, 400, b'Bad request\n', head=False)
            return
        method, target, _ = parts
        if method not in (b'GET', b'HEAD'):
            self._respond(client, 405, b'Only GET and HEAD\n',
                          head=False, extra=b'Allow: GET, HEAD\r\n')
            return
        try:
            path = target.split(b'?', 1)[0].decode('ascii')
        except UnicodeDecodeError:
            self._respond(client, 400, b'Bad request\n', head=False)
            return
        route = self._routes.get(path)
        if route is None:
            self._respond(client, 404, b'Not found\n', head=method == b'HEAD')
            return
        try:
            ctype, body = route()
        except Exception:
            log.exception("Cannot answer %s", path)
            self._respond(client, 500, b'Internal error\n',
                          head=method == b'HEAD')
            return
        self._respond(client, 200, body, ctype, head=method == b'HEAD')

    def _metrics(self):
        return (exposition.content_type(),
                self.source.rendered('metrics', self._render_metrics))

    def _status(self):
        return ('application/json',
                self.source.rendered('json', _json))

    def _dashboard(self):
        return 'text/html; charset=utf-8', dashboard.PAGE

    def _respond(self, client, status, body, ctype='text/plain',
                 head=False, extra=b''):
        header = ('HTTP/1.1 %d %s\r\nContent-Type: %s\r\n'
                  'Content-Length: %d\r\nCache-Control: no-store\r\n'
                  'Connection: close\r\n' % (
                      status, _REASONS.get(status, 'Error'), ctype,
                      len(body))).encode('ascii')
        client.outbuf = memoryview(header + extra + b'\r\n' +
                                   (b'' if head else body))
        client.stage = _WRITING
        try:
            self._selector.modify(client.sock, selectors.EVENT_WRITE, client)
        except (KeyError, ValueError, OSError):
            self._drop(client)
            return
        self._write(client)

    def _write(self, client):
        try:
            sent = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.outbuf = client.outbuf[sent:]
        if not len(client.outbuf):
            # Closing with unread input would reset the connection and
            # could destroy the answer before the peer reads it: end our
            # side, then wait (up to the deadline) for the peer's close.
            client.stage = _LINGERING
            client.outbuf = None
            client.inbuf = None
            try:
                client.sock.shutdown(socket.SHUT_WR)
                self._selector.modify(client.sock, selectors.EVENT_READ,
                                      client)
            except (KeyError, ValueError, OSError):
                self._drop(client)

    def _expire(self, now):
        late = [c for c in self._clients.values() if c.deadline <= now]
        for client in late:
            self._drop(client)

    def _drop(self, client):
        sock = client.sock
        self._clients.pop(sock.fileno(), None)
        self._forget(sock)

    def _forget(self, sock):
        """Stop watching ``sock`` and close it, whatever state it is in."""
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _close(self):
        for client in list(self._clients.values()):
            self._drop(client)
        for sock in (self.socket, self._wake_r, self._wake_w):
            self._forget(sock)
        self._selector.close()
