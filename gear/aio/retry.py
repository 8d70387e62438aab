"""How long to wait before reconnecting to a server that went away.

A :class:`Retry` pairs a backoff policy with a limit on attempts; the
connection loop of :mod:`gear.aio` asks it for the next delay and
sleeps in exactly one place.  Pass your own to ``AsyncClient`` or
``AsyncWorker`` to change the policy.
"""

import abc
import random
from typing import Optional

__all__ = ['Backoff', 'ConstantBackoff', 'ExponentialBackoff', 'NoBackoff',
           'Retry']


class Backoff(abc.ABC):
    """A policy mapping the number of failures in a row to a delay."""

    @abc.abstractmethod
    def compute(self, failures: int) -> float:
        """Seconds to wait after ``failures`` (>= 1) failed attempts."""


class NoBackoff(Backoff):
    """Try again at once (tests, or a local server)."""

    def compute(self, failures: int) -> float:
        return 0.0


class ConstantBackoff(Backoff):
    """Always wait ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        if delay < 0:
            raise ValueError('delay must not be negative')
        self.delay = delay

    def compute(self, failures: int) -> float:
        return self.delay


class ExponentialBackoff(Backoff):
    """``base * 2 ** (failures - 1)`` seconds, at most ``cap``.

    With ``jitter`` the delay is drawn uniformly from [delay/2, delay],
    so that many clients of a restarted server do not all come back in
    the same instant.
    """

    def __init__(self, base: float = 0.1, cap: float = 10.0,
                 jitter: bool = True) -> None:
        if base < 0 or cap < 0:
            raise ValueError('base and cap must not be negative')
        self.base = base
        self.cap = cap
        self.jitter = jitter

    def compute(self, failures: int) -> float:
        exponent = min(max(failures - 1, 0), 62)
        delay = min(self.cap, self.base * float(2 ** exponent))
        if self.jitter:
            delay = random.uniform(delay / 2, delay)
        return delay


class Retry(object):
    """How many connection attempts in a row may fail, and the pause
    between them.

    :arg backoff: the delay policy (exponential with jitter by default).
    :arg retries: failed attempts allowed in a row before the server is
        given up; a negative number (the default) never gives up.
    """

    def __init__(self, backoff: Optional[Backoff] = None,
                 retries: int = -1) -> None:
        self.backoff = backoff if backoff is not None \
            else ExponentialBackoff()
        self.retries = retries

    def delay(self, failures: int) -> Optional[float]:
        """The pause after ``failures`` failures in a row, or None when
        no further attempt should be made."""
        if 0 <= self.retries < failures:
            return None
        return self.backoff.compute(failures)

    def __repr__(self) -> str:
        return '<gear.aio.Retry %r retries=%d>' % (
            self.backoff, self.retries)
