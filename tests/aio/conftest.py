"""Servers for the gear.aio tests: geard in-process, and the C gearmand.

"geard" is a gear.Server with geard's (gearmand's) job semantics.

``server`` is parametrized over both, so every test that takes it runs
against each; the gearmand run is skipped, with the reason, when the
binary is not installed.
"""

import asyncio
import time

import pytest

import gear
from gear.testing import GearServerFixture
from tests.gearmand import GearmandFixture, gearmand_path

HOST = '127.0.0.1'
#: A generous bound for anything a test waits for on a loaded machine.
WAIT = 30.0


class Target(object):
    """Where a test's server listens, and how to restart it."""

    def __init__(self, kind, fixture):
        self.kind = kind
        self.fixture = fixture

    @property
    def port(self):
        return self.fixture.port

    def restart(self):
        """Stop the server and start a new one on the same port."""
        if self.kind == 'gearmand':
            self.fixture.restart()
        else:
            self.fixture.server.shutdown()
            self.fixture.server = gear.Server(self.port, host=HOST,
                                              semantics='gearmand')


def _gearmand():
    if gearmand_path() is None:
        pytest.skip('gearmand is not installed (set GEARMAND to its path)')
    return GearmandFixture()


@pytest.fixture(params=['geard', pytest.param(
    'gearmand', marks=pytest.mark.interop)])
def server(request):
    """A running server of each kind: ``.kind``, ``.port``."""
    if request.param == 'gearmand':
        fixture = _gearmand()
    else:
        fixture = GearServerFixture(semantics='gearmand')
    fixture.setUp()
    request.addfinalizer(fixture.cleanUp)
    return Target(request.param, fixture)


@pytest.fixture
def geard():
    """An in-process geard only."""
    fixture = GearServerFixture(semantics='gearmand')
    fixture.setUp()
    yield fixture
    fixture.cleanUp()


async def wait_until(predicate, timeout=WAIT, message=None):
    """Poll ``predicate`` (a plain callable) until true; fail at the
    deadline.  Each poll yields to the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or 'timed out waiting for %r'
                                 % (predicate,))
        await asyncio.sleep(0.01)
