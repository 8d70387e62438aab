"""Accepting connections at the process's limits.

At the file-descriptor limit ``accept()`` fails with EMFILE while the
listening socket stays readable, so a level-triggered loop would retry
(and log) at full speed.  :class:`AcceptThrottle` stops polling the
listener for a moment after such a failure and turns refusals into one
log line per interval with a count.  :func:`clamp_max_connections` keeps
``max_connections`` below the limit in the first place.
"""

import errno

from gear.server.poller import _EV_READ

try:
    import resource
except ImportError:  # not on every platform
    resource = None

#: Descriptors kept for everything that is not a client connection: the
#: listener, the wake pipe, the poller, the store and its journal, logs.
FD_RESERVE = 64
#: Seconds the listener is left out of the poll after a resource error.
ACCEPT_PAUSE = 0.25
#: Seconds between two log lines about refused connections.
REPORT_INTERVAL = 10.0

# accept() errors that mean "no resources now"; others are a peer's.
_RESOURCE_ERRORS = frozenset(
    getattr(errno, name) for name in ('EMFILE', 'ENFILE', 'ENOBUFS',
                                      'ENOMEM')
    if hasattr(errno, name))


def fd_limit():
    """The soft RLIMIT_NOFILE, or None when unlimited or unknown."""
    if resource is None:
        return None
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    return soft


def clamp_max_connections(requested, log):
    """``requested`` capped so that connections cannot use up the
    descriptors the server needs itself; logs a warning when capped."""
    limit = fd_limit()
    if limit is None:
        return requested
    allowed = max(1, limit - FD_RESERVE)
    if requested <= allowed:
        return requested
    log.warning("max_connections %d is above what the file descriptor "
                "limit (%d, ulimit -n) allows; using %d", requested,
                limit, allowed)
    return allowed


class AcceptThrottle(object):
    """Pauses the listener after resource errors and rate-limits the
    log lines about refused connections.  Runs on the loop thread."""

    def __init__(self, server):
        self.server = server
        self.paused = False
        self.refused = 0
        self.reason = None
        self._reporting = False

    def acceptFailed(self, error):
        """``accept()`` raised ``error`` (not a would-block)."""
        if error.errno in _RESOURCE_ERRORS:
            self._pause()
        self._count('accept() failed: %s' % (error,))

    def overLimit(self):
        """A connection was accepted and closed: max_connections reached.
        """
        self._count('max_connections (%d) reached'
                    % self.server.max_connections)

    def _pause(self):
        server = self.server
        if self.paused or server._listener_closed:
            return
        try:
            server.poll.unregister(server._listen_fd)
        except (OSError, ValueError, KeyError):
            return
        self.paused = True
        server.addTimer(ACCEPT_PAUSE, self._resume, None)

    def _resume(self, _):
        server = self.server
        if not self.paused:
            return
        self.paused = False
        if not server._listener_closed:
            server.poll.register(server._listen_fd, _EV_READ)

    def _count(self, reason):
        self.refused += 1
        self.reason = reason
        if self._reporting:
            return
        # The first refusal of a period is logged at once; the rest are
        # counted and summed up once per interval while they go on.
        self.server.log.warning(
            "Refusing connections: %s (further refusals are counted and "
            "logged every %d s)", reason, REPORT_INTERVAL)
        self.refused = 0
        self._reporting = True
        self.server.addTimer(REPORT_INTERVAL, self._report, None)

    def _report(self, _):
        if not self.refused:
            self._reporting = False
            return
        self.server.log.warning(
            "Refused %d connection(s) in the last %d s; last reason: %s",
            self.refused, REPORT_INTERVAL, self.reason)
        self.refused = 0
        self.server.addTimer(REPORT_INTERVAL, self._report, None)
