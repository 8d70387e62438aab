"""Throw-away TLS material for tests and local experiments.

gear's server speaks mutual TLS and uses the client certificate's CN as
the ACL subject, so every TLS test needs a CA plus a few certificates with
chosen CNs.  This module makes them in a directory in milliseconds (EC
P-256 keys), with the extensions strict verifiers ask for, so tests never
depend on files checked into the tree that would one day expire.

Not for production: keys are unencrypted and certificates short-lived.
"""

import collections
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Paths of one identity: its private key, its certificate, and the CA
#: certificate that signed it (what a peer needs to verify it).
Identity = collections.namedtuple('Identity', ['key', 'cert', 'ca'])

DEFAULT_HOSTS = ('localhost', '127.0.0.1', '::1')
VALID_DAYS = 30


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, data, private=False):
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, 'wb') as f:
        f.write(data)


def _write_key(path, key):
    _write(path, key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), private=True)


def _write_cert(path, cert):
    _write(path, cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts):
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _safe_filename(cn):
    keep = '-_.'
    return ''.join(c if c.isalnum() or c in keep else '_' for c in cn)


class CertificateAuthority(object):
    """A self-signed CA written to ``directory`` that can issue certificates.

    ``ca_path`` (the CA certificate) is what a peer loads to verify the
    certificates this CA issues.
    """

    def __init__(self, directory, cn='gear throw-away CA', name='ca'):
        self.directory = directory
        self.cn = cn
        self._key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        ski = x509.SubjectKeyIdentifier.from_public_key(
            self._key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False))
        self._cert = builder.sign(self._key, hashes.SHA256())
        self._ski = ski
        self.ca_path = os.path.join(directory, '%s.pem' % name)
        self.key_path = os.path.join(directory, '%s.key' % name)
        _write_cert(self.ca_path, self._cert)
        _write_key(self.key_path, self._key)

    def issue(self, cn, name=None, hosts=DEFAULT_HOSTS, server=True,
              client=True):
        """Write a key and certificate for ``cn``; return an Identity.

        By default the certificate is good for both TLS roles and names the
        loopback addresses, so one helper serves servers and clients.
        Files are ``<name>.key`` and ``<name>.pem`` (name defaults to a
        filesystem-safe form of the CN).
        """
        name = name or _safe_filename(cn)
        key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    self._ski), critical=False))
        if usages:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(usages), critical=False)
        if hosts:
            builder = builder.add_extension(_san(hosts), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        key_path = os.path.join(self.directory, '%s.key' % name)
        cert_path = os.path.join(self.directory, '%s.pem' % name)
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
        return Identity(key_path, cert_path, self.ca_path)


def make_server_files(directory, server_cn='localhost', ca_cn=None):
    """Create a CA and a server identity in ``directory``.

    Returns ``(ca, identity)``: keep ``ca`` to issue client certificates
    later with ``ca.issue(cn)``.
    """
    kwargs = {'cn': ca_cn} if ca_cn else {}
    ca = CertificateAuthority(directory, **kwargs)
    return ca, ca.issue(server_cn, name='server')
