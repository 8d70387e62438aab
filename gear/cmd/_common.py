"""What gear-admin, gear-submit and gear-worker share.

The three tools take the same server options, turn the same failures
into the same one-line messages, and agree on exit codes, so that shell
scripts can tell "the server said no" from "there was no server".
Everything here is about the command line: the protocol work is done by
:class:`gear.Connection`, :class:`gear.Client` and :class:`gear.Worker`.
"""

import argparse
import logging
import os
import re
import ssl
import sys
import unicodedata

from gear.connection import Connection
from gear.errors import ConnectionError, TimeoutError

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 4730
DEFAULT_CONNECT_TIMEOUT = 10.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3

EXIT_STATUS_HELP = """\
exit status:
  0  success
  1  the server refused a command, a job failed or timed out,
     or no worker serves the function
  2  bad usage: unknown option, missing argument, unreadable
     TLS file
  3  no server: cannot connect, TLS handshake failed, no reply
     in time, or the connection was lost
"""


class CliError(Exception):
    """A failure to report as ``prog: message`` and exit with ``status``.
    """

    def __init__(self, message, status=EXIT_FAILED):
        super(CliError, self).__init__(message)
        self.message = message
        self.status = status


# Argument types

def port_number(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not a port number' % text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError('port %d is out of range 1-65535'
                                         % value)
    return value


def positive_number(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not a number' % text)
    if not value > 0 or value != value or value == float('inf'):
        raise argparse.ArgumentTypeError('%r must be above zero' % text)
    return value


def non_negative_number(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not a number' % text)
    if not value >= 0 or value == float('inf'):
        raise argparse.ArgumentTypeError('%r must be zero or more' % text)
    return value


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not an integer' % text)
    if value < 1:
        raise argparse.ArgumentTypeError('%d must be 1 or more' % value)
    return value


def add_server_arguments(parser, suppress=False):
    """Add -H/-p and the TLS options to ``parser``.

    With ``suppress`` the options default to "not given", so that a
    subcommand parser can accept them too without overriding what was
    given before the subcommand.
    """
    def default(value):
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group('server')
    group.add_argument('-H', '--host', default=default(DEFAULT_HOST),
                       help='job server host (default %s)' % DEFAULT_HOST)
    group.add_argument('-p', '--port', type=port_number,
                       default=default(DEFAULT_PORT),
                       help='job server port (default %d)' % DEFAULT_PORT)
    group.add_argument('--ssl-key', metavar='PATH',
                       default=default(None),
                       help='client private key (TLS needs all three '
                            'files)')
    group.add_argument('--ssl-cert', metavar='PATH',
                       default=default(None),
                       help='client certificate')
    group.add_argument('--ssl-ca', metavar='PATH', default=default(None),
                       help='CA that signed the server certificate')
    return group


def add_connect_timeout_argument(parser):
    parser.add_argument('--connect-timeout', type=positive_number,
                        default=DEFAULT_CONNECT_TIMEOUT, metavar='SECONDS',
                        help='limit for connecting (default %(default)g)')


def add_verbose_argument(parser):
    parser.add_argument('-v', '--verbose', action='count', default=0,
                        help='log more (repeat for debug output)')


def add_version_argument(parser):
    """``--version``: the gear release this tool belongs to."""
    from gear.version import __version__
    parser.add_argument('--version', action='version',
                        version='%(prog)s ' + __version__)


def setup_logging(prog, verbosity=0):
    """Log to stderr: the tool's own warnings, the library's errors.

    The library logs recoverable trouble (a refused job, a dropped
    connection) as warnings; the tools report those themselves, so only
    ``-v`` shows the library's view.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(prog + ': %(message)s'))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 2 else
                  logging.INFO if verbosity == 1 else logging.WARNING)
    logging.getLogger('gear').setLevel(
        logging.DEBUG if verbosity >= 2 else
        logging.WARNING if verbosity == 1 else logging.ERROR)


def say(prog, text):
    """Tell the user something on stderr, whatever the log level."""
    sys.stderr.write('%s: %s\n' % (prog, text))
    sys.stderr.flush()


# Addresses and error messages

def format_address(host, port):
    """``host:port``, with IPv6 literals in brackets."""
    if ':' in str(host):
        return '[%s]:%s' % (host, port)
    return '%s:%s' % (host, port)


_ERRNO_PREFIX = re.compile(r'^\[Errno -?\d+\]\s*')
_SSL_LOCATION = re.compile(r'\s*\(_ssl\.c:\d+\)')
_SSL_TAG = re.compile(r'^\[SSL(?:: [A-Z0-9_]+)?\]\s*')


def clean_reason(text):
    """Strip errno numbers and OpenSSL source locations from a reason."""
    text = _ERRNO_PREFIX.sub('', str(text).strip())
    text = _SSL_LOCATION.sub('', text)
    return _SSL_TAG.sub('', text).strip() or str(text)


def exception_reason(exc):
    """A short human reason for an OSError or SSLError."""
    if isinstance(exc, ssl.SSLError):
        if exc.reason and exc.reason not in ('PEM_LIB',):
            return exc.reason.replace('_', ' ').lower()
        return clean_reason(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return clean_reason(exc)


def tls_hint(text, files):
    """Explain a TLS failure in terms of the files the user gave."""
    key, cert, ca = files
    lowered = text.lower()
    if 'certificate verify failed' in lowered or \
            'certificate_verify_failed' in lowered:
        return "the server's certificate is not signed by the CA in %s" % ca
    if 'wrong version number' in lowered or 'unknown protocol' in lowered \
            or 'record layer failure' in lowered \
            or 'packet length too long' in lowered:
        return 'the server does not speak TLS on this port'
    if 'alert' in lowered or 'certificate required' in lowered:
        return 'the server refused the client certificate %s' % cert
    if 'eof' in lowered or 'reset' in lowered or 'broken pipe' in lowered:
        return ('the server closed the connection during the handshake; '
                'does it use TLS?')
    return None


def describe_connect_failure(address, error_text, files=(None,) * 3):
    """Turn a :class:`gear.ConnectionError` text into one clear line."""
    match = re.match(r'Unable to open socket to .*? port \S+: (.*)$',
                     error_text, re.S)
    if match:
        reason = clean_reason(match.group(1))
        return 'cannot connect to %s: %s' % (address, reason)
    match = re.match(r'Unable to resolve \S+: (.*)$', error_text, re.S)
    if match:
        return 'cannot connect to %s: cannot resolve host: %s' % (
            address, clean_reason(match.group(1)))
    match = re.match(r'TLS handshake with .*? failed: (.*)$', error_text,
                     re.S)
    if match:
        reason = clean_reason(match.group(1))
        hint = tls_hint(reason, files)
        return 'TLS handshake with %s failed: %s%s' % (
            address, reason, ' (%s)' % hint if hint else '')
    return 'cannot connect to %s: %s' % (address, clean_reason(error_text))


def describe_lost_connection(address, error, files=(None,) * 3,
                             waiting_for=None, answered=False):
    """One line for a connection that broke after it was made.

    A server that has ``answered`` before has shown that it speaks the
    protocol on this port: its going away says nothing about TLS.
    """
    what = ' before it answered %s' % waiting_for if waiting_for else ''
    tls_hint_text = None
    if not files[0] and not answered and (error is None or isinstance(
            error, (ConnectionResetError, BrokenPipeError))):
        # A TLS server drops a plain client that sends it text.
        tls_hint_text = ('does the server expect TLS? see --ssl-key, '
                         '--ssl-cert, --ssl-ca')
    if error is None:
        text = 'the connection to %s was closed by the server%s' % (
            address, what)
    else:
        reason = exception_reason(error) if isinstance(error, OSError) \
            else clean_reason(error)
        if files[0] and not answered:
            tls_hint_text = tls_hint(reason, files)
        text = 'the connection to %s failed%s: %s' % (address, what, reason)
    if tls_hint_text:
        text += ' (%s)' % tls_hint_text
    return text


# TLS files

def _read_head(role, path):
    try:
        with open(path, 'rb') as f:
            return f.read(1 << 20)
    except OSError as e:
        raise CliError('cannot read TLS %s file %s: %s'
                       % (role, path, exception_reason(e)), EXIT_USAGE)


def check_tls_files(key, cert, ca):
    """Load the three TLS files once, to report a bad one by name.

    Returns the triple unchanged, or three Nones when TLS is not used.
    """
    given = [x for x in (key, cert, ca) if x]
    if not given:
        return (None, None, None)
    if len(given) != 3:
        missing = [opt for opt, value in (('--ssl-key', key),
                                          ('--ssl-cert', cert),
                                          ('--ssl-ca', ca)) if not value]
        raise CliError('TLS needs --ssl-key, --ssl-cert and --ssl-ca '
                       'together; missing %s' % ', '.join(missing),
                       EXIT_USAGE)
    ca_data = _read_head('CA', ca)
    cert_data = _read_head('certificate', cert)
    key_data = _read_head('key', key)
    if b'-----BEGIN CERTIFICATE-----' not in ca_data:
        raise CliError('TLS CA file %s holds no PEM certificate' % ca,
                       EXIT_USAGE)
    if b'-----BEGIN CERTIFICATE-----' not in cert_data:
        raise CliError('TLS certificate file %s holds no PEM certificate'
                       % cert, EXIT_USAGE)
    if b'PRIVATE KEY-----' not in key_data:
        raise CliError('TLS key file %s holds no PEM private key' % key,
                       EXIT_USAGE)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as e:
        raise CliError('cannot load TLS CA file %s: %s'
                       % (ca, exception_reason(e)), EXIT_USAGE)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        if 'KEY_VALUES_MISMATCH' in str(e):
            reason = 'the key does not belong to the certificate'
        else:
            reason = exception_reason(e)
        raise CliError('cannot load TLS certificate %s with key %s: %s'
                       % (cert, key, reason), EXIT_USAGE)
    except OSError as e:
        raise CliError('cannot load TLS certificate %s with key %s: %s'
                       % (cert, key, exception_reason(e)), EXIT_USAGE)
    return (key, cert, ca)


class ServerTarget(object):
    """Where to connect and with which TLS files, from parsed options."""

    def __init__(self, args, connect_timeout=DEFAULT_CONNECT_TIMEOUT):
        self.host = args.host
        self.port = args.port
        self.files = check_tls_files(args.ssl_key, args.ssl_cert,
                                     args.ssl_ca)
        self.connect_timeout = connect_timeout
        self.address = format_address(self.host, self.port)

    def connect(self, client_id='gear-cli'):
        """Return a connected :class:`gear.Connection` or raise CliError.
        """
        key, cert, ca = self.files
        conn = Connection(self.host, self.port, key, cert, ca,
                          client_id=client_id)
        conn.connect_timeout = self.connect_timeout
        try:
            conn.connect()
        except ConnectionError as e:
            raise CliError(describe_connect_failure(self.address, str(e),
                                                    self.files),
                           EXIT_CONNECTION)
        return conn

    def attach(self, base_client, client_id='gear-cli'):
        """Connect, then hand the connection to a Client or Worker.

        Connecting here first (instead of ``addServer``, whose connect
        thread retries silently) lets the tool report why it failed.
        """
        conn = self.connect(client_id)
        with base_client.connections_condition:
            base_client.inactive_connections.append(conn)
            base_client.connections_condition.notify_all()
        try:
            base_client.waitForServer(self.connect_timeout)
        except TimeoutError:
            raise CliError('connected to %s, but the session was not set '
                           'up within %g s' % (self.address,
                                               self.connect_timeout),
                           EXIT_CONNECTION)
        return conn


# Output

def write_bytes(data, stream=None):
    """Write bytes to stdout (or ``stream``'s buffer) and flush."""
    stream = stream or sys.stdout
    out = getattr(stream, 'buffer', None)
    if out is None:
        stream.write(data.decode('utf-8', 'replace'))
    else:
        out.write(data)
    stream.flush()


def write_text(text, stream=None):
    """Write text whose names may hold undecodable (escaped) bytes."""
    write_bytes(text.encode('utf-8', 'surrogateescape'), stream)


def display_width(text):
    """Columns ``text`` takes on a terminal (wide CJK counts 2)."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        if unicodedata.east_asian_width(char) in ('W', 'F'):
            width += 2
        else:
            width += 1
    return width


def format_table(headers, rows, right_aligned=()):
    """Lay ``rows`` out under ``headers`` in columns two spaces apart.

    Cells are converted with str(); columns whose index is in
    ``right_aligned`` are right-aligned (numbers), the others left.  No
    line has trailing spaces.  Returns the text, ending in a newline.
    """
    table = [[str(cell) for cell in headers]]
    table.extend([str(cell) for cell in row] for row in rows)
    count = len(headers)
    widths = [max(display_width(line[i]) for line in table)
              for i in range(count)]
    lines = []
    for line in table:
        cells = []
        for i, cell in enumerate(line):
            pad = ' ' * (widths[i] - display_width(cell))
            if i in right_aligned:
                cells.append(pad + cell)
            elif i == count - 1:
                cells.append(cell)
            else:
                cells.append(cell + pad)
        lines.append('  '.join(cells).rstrip())
    return '\n'.join(lines) + '\n'


def run_main(prog, function):
    """Call ``function()`` and turn failures into messages and statuses.
    """
    try:
        return function()
    except CliError as e:
        try:
            sys.stdout.flush()
        except Exception:
            pass
        sys.stderr.write('%s: %s\n' % (prog, e.message))
        sys.stderr.flush()
        return e.status
    except KeyboardInterrupt:
        sys.stderr.write('%s: interrupted\n' % prog)
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except Exception:
            pass
        return EXIT_FAILED
