"""Exceptions raised by gear.

The names follow OpenStack gear so that ``except gear.X`` keeps working;
three of them shadow builtins on purpose (``ConnectionError``,
``InterruptedError``, ``TimeoutError``).

gear 0.16 derived every one of them from ``Exception`` alone.  Here
``ConnectionError``, ``TimeoutError``, ``NoConnectedServersError`` and
``AdminError`` are also :class:`GearmanError` subclasses, so that one
``except gear.GearmanError`` covers what a Gearman call may raise while
each old ``except`` clause still catches what it caught.
"""


class GearmanError(Exception):
    """A Gearman operation failed."""


class ConnectionError(GearmanError):  # noqa: A001 - gear-compatible name
    """A connection to a server could not be made or was lost."""


class InvalidDataError(Exception):
    """Data that does not fit the protocol (bad magic, type, size...)."""


class ConfigurationError(Exception):
    """An argument or setting is not valid."""


class NoConnectedServersError(GearmanError):
    """No server is connected; raised by submitJob and getConnection."""


class UnknownJobError(Exception):
    """A packet named a job handle this side does not know."""


class InterruptedError(Exception):  # noqa: A001 - gear-compatible name
    """A blocking wait was interrupted (stopWaitingForJobs, shutdown)."""


class TimeoutError(GearmanError):  # noqa: A001 - gear-compatible name
    """A bounded wait ran out of time."""


class DisconnectError(Exception):
    """The peer closed the connection."""


class RetryIOError(Exception):
    """A non-blocking read or write would block; try again later."""


class ProtocolError(InvalidDataError):
    """The byte stream from a peer is corrupt; the connection must close."""


class AdminError(GearmanError):
    """A server answered an admin command with an ``ERR`` line."""

    def __init__(self, code, message=''):
        self.code = code
        self.message = message
        super().__init__('%s %s' % (code, message) if message else code)
