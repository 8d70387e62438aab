"""A server that goes away during a client's on-connect tasks."""

import logging

import fixtures
import testtools

import gear
from gear.testing import GearServerFixture
from tests.util import wait_for


class TestOnConnectFailure(testtools.TestCase):

    def test_reset_during_on_connect_is_a_failed_attempt(self):
        # A server shutting down can accept a reconnect and reset it
        # before SET_CLIENT_ID is written: that is one more failed
        # attempt to retry, not an error with a traceback.
        server = self.useFixture(GearServerFixture())
        client = gear.Client('connect-test')
        self.addCleanup(client.shutdown)
        logs = self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))

        def reset(conn):
            raise ConnectionResetError(104, 'Connection reset by peer')
        client._onConnect = reset
        client.addServer('127.0.0.1', server.port)
        conn = client.inactive_connections[0]
        # The connect thread tries, fails and keeps the reason.
        wait_for(lambda: isinstance(client._connect_errors.get(conn),
                                    ConnectionResetError),
                 timeout=30, message='no failed on-connect attempt')
        self.assertFalse(client.active_connections)
        self.assertIn('during on-connect tasks', logs.output)
        self.assertNotIn('Traceback', logs.output)
