"""statsd reporting for the job server.

The server reports two things: how long each packet took to handle
(``packet.<NAME>``, a timer in milliseconds plus a counter) and the job
counts after each state change (``queue.total``/``running``/``waiting``
gauges).  The ``statsd`` package is an optional dependency, so when it is
missing a small built-in UDP sender speaking the same line protocol is used
instead: operators get their metrics either way, and the server never
refuses to start because of monitoring.
"""

import logging
import socket

from gear import constants

try:
    import statsd as _statsd
except ImportError:  # pragma: no cover - depends on the environment
    _statsd = None

log = logging.getLogger('gear.Server.stats')

DEFAULT_PORT = 8125


class UDPStatsClient(object):
    """A fire-and-forget statsd sender with no third-party dependency.

    It offers the three calls the reporter needs, with the same names as
    ``statsd.StatsClient``.  Sending never raises: a metrics outage must not
    disturb job handling.
    """

    def __init__(self, host, port=DEFAULT_PORT, prefix=None):
        self.prefix = prefix
        info = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
        family, _, _, _, address = info[0]
        self._address = address
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def _send(self, stat, value, kind):
        if self.prefix:
            stat = '%s.%s' % (self.prefix, stat)
        line = '%s:%s|%s' % (stat, value, kind)
        try:
            self._sock.sendto(line.encode('utf-8'), self._address)
        except OSError:
            # UDP to a dead collector, or a full buffer: drop the sample.
            pass

    def timing(self, stat, delta):
        self._send(stat, '%0.6f' % delta, 'ms')

    def incr(self, stat, count=1):
        self._send(stat, count, 'c')

    def gauge(self, stat, value):
        self._send(stat, value, 'g')

    def close(self):
        self._sock.close()


class StatsReporter(object):
    """Turns server events into the statsd keys the server publishes."""

    def __init__(self, client):
        self.client = client

    def packet(self, ptype, duration):
        """Record one handled packet; ``duration`` is in seconds."""
        name = constants.types.get(ptype) or 'UNKNOWN'
        key = 'packet.%s' % name
        self.client.timing(key, duration * 1000.0)
        self.client.incr(key)

    def queue(self, total, running, waiting):
        """Publish the job counts after a job changes state."""
        self.client.gauge('queue.total', total)
        self.client.gauge('queue.running', running)
        self.client.gauge('queue.waiting', waiting)

    def close(self):
        close = getattr(self.client, 'close', None)
        if close is not None:
            close()


def make_client(host, port=DEFAULT_PORT, prefix=None):
    """The statsd package's client if installed, else the built-in one."""
    port = int(port) if port is not None else DEFAULT_PORT
    if _statsd is not None:
        return _statsd.StatsClient(host, port, prefix=prefix)
    return UDPStatsClient(host, port, prefix=prefix)


def make_reporter(host, port=DEFAULT_PORT, prefix=None):
    """A StatsReporter for ``host:port``, or None when host is None.

    Callers keep the None and test for it, so a server without statsd pays
    nothing per packet.
    """
    if not host:
        return None
    return StatsReporter(make_client(host, port, prefix))
