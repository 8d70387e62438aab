"""Throw-away certificates: they load, chain to their CA, and do mutual TLS."""

import os
import socket
import ssl
import stat
import threading

import fixtures
import testtools
from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from gear import tlsutil

HANDSHAKE_TIMEOUT = 10


def _load(path):
    with open(path, 'rb') as f:
        return crypto.load_certificate(crypto.FILETYPE_PEM, f.read())


def _verifies(ca_path, cert_path):
    store = crypto.X509Store()
    store.add_cert(_load(ca_path))
    try:
        crypto.X509StoreContext(store, _load(cert_path)).verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True


def _server_context(identity):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(identity.cert, identity.key)
    ctx.load_verify_locations(identity.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_context(identity=None, ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca or identity.ca)
    if identity is not None:
        ctx.load_cert_chain(identity.cert, identity.key)
    return ctx


def _handshake(server_ctx, client_ctx, server_hostname='localhost'):
    """Run a real handshake over a socket pair.

    Returns (server peer certificate or exception, client exception).
    """
    a, b = socket.socketpair()
    a.settimeout(HANDSHAKE_TIMEOUT)
    b.settimeout(HANDSHAKE_TIMEOUT)
    result = {}

    def serve():
        try:
            conn = server_ctx.wrap_socket(a, server_side=True)
            result['peer'] = conn.getpeercert()
            # Let the client see the result of the full TLS 1.3 exchange.
            conn.sendall(b'x')
            conn.close()
        except (ssl.SSLError, OSError) as e:
            result['peer'] = e
            a.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_error = None
    conn = None
    try:
        conn = client_ctx.wrap_socket(b, server_hostname=server_hostname)
        conn.recv(1)
    except (ssl.SSLError, OSError) as e:
        client_error = e
    finally:
        (conn or b).close()
    thread.join(HANDSHAKE_TIMEOUT)
    return result.get('peer'), client_error


def _subject_cn(peercert):
    for rdn in peercert['subject']:
        for key, value in rdn:
            if key == 'commonName':
                return value
    return None


class TestTLSUtil(testtools.TestCase):

    def setUp(self):
        super(TestTLSUtil, self).setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.ca, self.server = tlsutil.make_server_files(self.dir)

    def test_files_exist_and_key_is_private(self):
        for path in (self.ca.ca_path, self.server.key, self.server.cert):
            self.assertTrue(os.path.isfile(path), path)
        mode = stat.S_IMODE(os.stat(self.server.key).st_mode)
        self.assertEqual(0o600, mode)
        self.assertEqual(self.ca.ca_path, self.server.ca)

    def test_load_into_ssl_context(self):
        ctx = _server_context(self.server)
        self.assertEqual(1, ctx.cert_store_stats()['x509_ca'])

    def test_client_cert_chains_to_ca(self):
        client = self.ca.issue('worker-1')
        self.assertTrue(_verifies(self.ca.ca_path, client.cert))
        with open(client.cert, 'rb') as f:
            cert = x509.load_pem_x509_certificate(f.read())
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(['worker-1'], [a.value for a in cns])

    def test_cert_from_other_ca_does_not_chain(self):
        other_dir = self.useFixture(fixtures.TempDir()).path
        other = tlsutil.CertificateAuthority(other_dir, cn='other CA')
        stranger = other.issue('stranger')
        self.assertFalse(_verifies(self.ca.ca_path, stranger.cert))

    def test_mutual_tls_handshake_gives_cn(self):
        client = self.ca.issue('client one')
        peer, error = _handshake(_server_context(self.server),
                                 _client_context(client))
        self.assertIsNone(error)
        self.assertEqual('client one', _subject_cn(peer))

    def test_loopback_ip_in_san(self):
        client = self.ca.issue('c')
        peer, error = _handshake(_server_context(self.server),
                                 _client_context(client),
                                 server_hostname='127.0.0.1')
        self.assertIsNone(error)
        self.assertEqual('c', _subject_cn(peer))

    def test_client_from_other_ca_refused(self):
        other_dir = self.useFixture(fixtures.TempDir()).path
        other = tlsutil.CertificateAuthority(other_dir, cn='other CA')
        stranger = other.issue('stranger')
        peer, error = _handshake(_server_context(self.server),
                                 _client_context(stranger,
                                                 ca=self.ca.ca_path))
        self.assertIsInstance(peer, (ssl.SSLError, OSError))

    def test_issue_names_files_safely(self):
        identity = self.ca.issue('a/b c')
        self.assertEqual(self.dir, os.path.dirname(identity.cert))
        self.assertEqual('a_b_c.pem', os.path.basename(identity.cert))
