"""Test helpers for projects that use gear.

:class:`GearServerFixture` runs a real gear job server inside the test
process, on a free loopback port, so code that talks Gearman can be tested
against the real protocol instead of mocks::

    import fixtures
    import testtools

    import gear
    from gear.testing import GearServerFixture

    class TestMyWorker(testtools.TestCase):

        def test_round_trip(self):
            server = self.useFixture(GearServerFixture())
            client = gear.Client()
            self.addCleanup(client.shutdown)
            client.addServer(*server.connect_args())
            client.waitForServer(timeout=10)
            ...

With ``ssl=True`` the server speaks mutual TLS with throw-away
certificates; each client or worker identity gets its own certificate,
whose CN is the subject ACLs refer to::

    server = self.useFixture(GearServerFixture(ssl=True, acl=my_acl))
    worker.addServer(*server.connect_args(cn='builder'))

Any other keyword argument is passed to :class:`gear.Server` unchanged
(``job_retries=0``, ``exceptions=True``, ...).  Like ``gear.Server``,
the fixture keeps gear 0.16's job semantics unless told otherwise;
``semantics='gearmand'`` tests against geard's.  The server is shut down
and the certificates removed at cleanup.
"""

import fixtures

from gear import tlsutil


class GearServerFixture(fixtures.Fixture):
    """A gear.Server on 127.0.0.1 and an ephemeral port.

    Attributes after set-up: ``server``, ``host``, ``port``; with TLS also
    ``ssl_ca``, ``ssl_cert`` and ``ssl_key`` (the server's files) and
    ``tls_dir``.
    """

    def __init__(self, ssl=False, host='127.0.0.1', server_class=None,
                 **server_options):
        super(GearServerFixture, self).__init__()
        self.use_ssl = ssl
        self.host = host
        self.server_class = server_class
        self.server_options = server_options
        self.server = None
        self.port = None
        self.ssl_ca = self.ssl_cert = self.ssl_key = None
        self.tls_dir = None
        self._ca = None

    def _setUp(self):
        if self.use_ssl:
            self.tls_dir = self.useFixture(fixtures.TempDir()).path
            self._ca, identity = tlsutil.make_server_files(self.tls_dir)
            self.ssl_ca = identity.ca
            self.ssl_cert = identity.cert
            self.ssl_key = identity.key
        server_class = self.server_class
        if server_class is None:
            import gear
            server_class = gear.Server
        self.server = server_class(
            0, self.ssl_key, self.ssl_cert, self.ssl_ca,
            host=self.host, **self.server_options)
        # Registered after the TempDir, so it runs first at cleanup.
        self.addCleanup(self._stopServer)
        self.port = self.server.port

    def _stopServer(self):
        if self.server is not None:
            self.server.shutdown()

    def client_cert(self, cn='client'):
        """Issue a certificate for the identity ``cn``.

        Returns ``(key, cert, ca)`` paths, in the order ``addServer``
        takes them.
        """
        if self._ca is None:
            raise ValueError('client certificates need GearServerFixture('
                             'ssl=True)')
        identity = self._ca.issue(cn)
        return identity.key, identity.cert, identity.ca

    def connect_args(self, cn='client'):
        """``(host, port, key, cert, ca)`` for ``addServer(*args)``.

        Without TLS the three paths are None; with TLS a certificate for
        ``cn`` is issued.
        """
        if self._ca is None:
            return (self.host, self.port, None, None, None)
        key, cert, ca = self.client_cert(cn)
        return (self.host, self.port, key, cert, ca)
