"""Small helpers shared by the connection, client, worker and server layers.

They live here, rather than in ``gear/__init__.py``, so that every module
can import them without importing the whole package.
"""

import ssl

from gear.errors import ConnectionError


def convert_to_bytes(data):
    """Return ``data`` as bytes when it is a str (UTF-8); else unchanged.

    Names, uniques and handles travel as bytes on the wire, but callers
    naturally write them as str.
    """
    if isinstance(data, str):
        return data.encode('utf-8')
    return data


def to_text(data):
    """Decode bytes for logs and logger names; never raises."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data).decode('utf-8', 'replace')
    return data


def best_tls_version():
    """Return the most capable ``ssl.PROTOCOL_*`` constant available.

    ``PROTOCOL_TLS`` negotiates the highest version both ends support; the
    fixed-version constants are only a fallback for unusual builds.
    """
    for name in ('PROTOCOL_TLS', 'PROTOCOL_TLSv1_2'):
        value = getattr(ssl, name, None)
        if value is not None:
            return value
    raise ConnectionError('No supported TLS version is available')


def create_ssl_context(ssl_key=None, ssl_cert=None, ssl_ca=None,
                       server_side=False, check_hostname=False):
    """Build a TLS context for mutual authentication.

    TLS 1.2 is the floor; TLS 1.3 is allowed because readers drain
    ``SSLSocket.pending()`` after every read (buffered plaintext that a
    poll call cannot see was what made 1.3 look like it "hung").  The
    peer must present a certificate signed by ``ssl_ca``.  Hostname
    checking is off by default, as gear has always done, and can be
    turned on for clients.

    Build it once per endpoint and reuse it: loading the files on every
    connection is slow and a needless disk dependency.
    """
    if server_side:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = bool(check_hostname)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    if ssl_ca:
        context.load_verify_locations(ssl_ca)
    if ssl_cert:
        context.load_cert_chain(ssl_cert, ssl_key)
    return context
