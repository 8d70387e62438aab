"""Exceptions of the python-gearman 2.x API.

They form their own hierarchy (rooted at this module's GearmanError), as
python-gearman's did, so ``except gearman.errors.X`` clauses keep their
meaning.  gear's own exceptions never escape the facade unwrapped.
"""


class GearmanError(Exception):
    """Base class of every error raised by gear.gearman."""


class ConnectionError(GearmanError):  # noqa: A001 - python-gearman name
    """A server connection could not be used."""


class ServerUnavailable(GearmanError):
    """None of the configured servers could be reached."""


class ProtocolError(GearmanError):
    """A server sent something the protocol does not allow."""


class UnknownCommandError(GearmanError):
    """A command the protocol does not define."""


class ExceededConnectionAttempts(GearmanError):
    """A request lost its connection more often than max_retries allows."""


class InvalidClientState(GearmanError):
    """A client call does not fit the state of the request."""


class InvalidWorkerState(GearmanError):
    """A worker call does not fit the state of the worker or job."""


class InvalidAdminClientState(GearmanError):
    """An admin reply timed out or did not match the command."""


class ServerError(GearmanError):
    """A server refused a request: an ERROR packet or an ``ERR`` line.

    ``code`` is the server's error code (e.g. ``'QUEUE_ERROR'``) and
    ``text`` its explanation.
    """

    def __init__(self, code, text=''):
        self.code = code
        self.text = text
        super().__init__('%s: %s' % (code, text) if text else code)


class AdminHostListError(GearmanError, ValueError):
    """GearmanAdminClient was given more than one server.

    It is a ValueError, as python-gearman raised, and a GearmanError, as
    its py3 forks raised.
    """
