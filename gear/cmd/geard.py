"""geard: run a gear job server from the command line.

The program only turns flags, environment and signals into a configured
``gear.Server``: the server does the work.  Mistakes an operator can make
(a port in use, an unreadable certificate, a bad ACL file) are reported as
one line naming the file or port and the reason, and a non-zero exit,
before the process detaches, so they are never lost to a closed stderr.

Signals (as gearmand): SIGTERM and SIGINT stop at once, SIGUSR1 stops
accepting and exits once the running jobs have finished, SIGHUP reopens
the log files (for log rotation).
"""

import argparse
import gc
import logging
import logging.config
import os
import signal
import socket
import ssl
import sys
import threading

DEFAULT_PORT = 4730
DEFAULT_PIDFILE = '/var/run/geard/geard.pid'
DEFAULT_LOG_FILE = '/var/log/geard/geard.log'
PIDFILE_TIMEOUT = 10
# How long an immediate shutdown may take before geard gives up on it.
STOP_TIMEOUT = 30
LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
# Collector thresholds for a job server (see tune_gc).
GC_THRESHOLDS = (100000, 50, 100)

log = logging.getLogger('gear.geard')


class StartupError(Exception):
    """A configuration problem to report as one line, then exit 1."""


def _version():
    try:
        from gear import version
        return version.__version__
    except Exception:  # pragma: no cover - never fail --version
        return 'unknown'


def _int_at_least(minimum):
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError('%r is not an integer' % text)
        if value < minimum:
            raise argparse.ArgumentTypeError(
                '%d is below the minimum of %d' % (value, minimum))
        return value
    convert.__name__ = 'integer'
    return convert


def _port(text):
    value = _int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(
            'port %d is out of range 0-65535' % value)
    return value


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def build_parser():
    """The geard argument parser (kept separate so tests can inspect it)."""
    from gear.server import exposition
    parser = argparse.ArgumentParser(
        prog='geard',
        description='Run a Gearman job server.',
        epilog='statsd: set STATSD_HOST (and optionally STATSD_PORT, '
               'STATSD_PREFIX) in the environment.  Signals: SIGTERM/SIGINT '
               'stop, SIGUSR1 drains running jobs then stops, SIGHUP '
               'reopens log files.')
    parser.add_argument('-d', dest='nodaemon', action='store_true',
                        help='do not detach: run in the foreground')
    parser.add_argument('--debug', action='store_true',
                        help='with -d and no --log-config, log DEBUG '
                             'messages to stderr')
    parser.add_argument('-p', '--port', dest='port', type=_port,
                        default=DEFAULT_PORT,
                        help='port to listen on (default %(default)s; '
                             '0 picks a free one)')
    parser.add_argument('--listen-address', dest='listen_address',
                        default=None, metavar='ADDR',
                        help='address to listen on (default: all)')
    parser.add_argument('--log-config', dest='log_config', metavar='PATH',
                        help='logging configuration file '
                             '(logging.config.fileConfig format)')
    parser.add_argument('--pidfile', dest='pidfile', metavar='PATH',
                        default=DEFAULT_PIDFILE,
                        help='PID lock file in daemon mode '
                             '(default %(default)s)')
    parser.add_argument('--ssl-ca', dest='ssl_ca', metavar='PATH',
                        help='CA certificate that client certificates '
                             'must chain to')
    parser.add_argument('--ssl-cert', dest='ssl_cert', metavar='PATH',
                        help='server certificate')
    parser.add_argument('--ssl-key', dest='ssl_key', metavar='PATH',
                        help='server private key')
    parser.add_argument('--acl', dest='acl', metavar='PATH',
                        help='ACL file (INI); needs TLS, the subject is '
                             'the client certificate CN')
    parser.add_argument('--keepalive', dest='keepalive', action='store_true',
                        help='enable TCP keepalive')
    parser.add_argument('--keepalive-idle', dest='tcp_keepidle',
                        type=_positive, default=7200, metavar='SECONDS',
                        help='idle time before keepalive probes '
                             '(default %(default)s)')
    parser.add_argument('--keepalive-interval', dest='tcp_keepintvl',
                        type=_positive, default=75, metavar='SECONDS',
                        help='interval between keepalive probes '
                             '(default %(default)s)')
    parser.add_argument('--keepalive-count', dest='tcp_keepcnt',
                        type=_positive, default=9, metavar='N',
                        help='unanswered probes before the connection '
                             'is dropped (default %(default)s)')
    parser.add_argument('--job-retries', dest='job_retries',
                        type=_non_negative, default=None, metavar='N',
                        help='requeues allowed when a worker is lost, '
                             'then the job fails (default: unlimited)')
    parser.add_argument('--store', dest='store', metavar='PATH|URL',
                        help='where background jobs survive restarts: a '
                             'SQLite file (checked completely at start and '
                             'locked as PATH.lock while geard runs), or a '
                             'postgresql:// URL (shared by several '
                             'servers)')
    parser.add_argument('--server-id', dest='server_id', metavar='ID',
                        help='with a PostgreSQL store: the id this '
                             "server's jobs are stored under (default: "
                             'the job handle prefix)')
    parser.add_argument('--adopt', dest='adopt', action='append',
                        metavar='ID', default=[],
                        help='with a PostgreSQL store: at start, take over '
                             'the stored jobs of the stopped server ID '
                             '(may be repeated)')
    parser.add_argument('--store-sync', dest='store_sync',
                        choices=('normal', 'full'), default='normal',
                        help='normal: a stored job survives the server '
                             'being killed; full: it also survives a '
                             'power loss or a disk error, at one fsync '
                             'per loop turn (default %(default)s)')
    parser.add_argument('--exceptions', dest='exceptions',
                        action='store_true',
                        help='forward WORK_EXCEPTION to every client by '
                             'default')
    parser.add_argument('--job-handle-prefix', dest='job_handle_prefix',
                        metavar='PREFIX',
                        help='job handles are PREFIX:<n> '
                             '(default H:<hostname>)')
    parser.add_argument('--backlog', dest='backlog', type=_positive,
                        default=None, metavar='N', help='listen backlog')
    parser.add_argument('--worker-wakeup', dest='worker_wakeup',
                        type=_non_negative, default=None, metavar='N',
                        help='sleeping workers woken per queued job '
                             '(default 0: all)')
    parser.add_argument('--max-packet-size', dest='max_packet_size',
                        type=_positive, default=None, metavar='BYTES',
                        help='larger packets are refused')
    parser.add_argument('--max-output-buffer', dest='max_output_buffer',
                        type=_positive, default=None, metavar='BYTES',
                        help='a peer that leaves more than this unread is '
                             'disconnected')
    parser.add_argument('--max-connections', dest='max_connections',
                        type=_positive, default=None, metavar='N',
                        help='connections beyond this are refused')
    parser.add_argument('--allow-admin-shutdown',
                        dest='allow_admin_shutdown', action='store_true',
                        help='let the "shutdown" admin command stop the '
                             'server')
    parser.add_argument('--http-port', dest='http_port', type=_port,
                        default=None, metavar='PORT',
                        help='serve Prometheus /metrics, a dashboard at / '
                             'and /api/status.json on this port (off by '
                             'default; needs gear[metrics])')
    parser.add_argument('--http-address', dest='http_address',
                        default='127.0.0.1', metavar='ADDR',
                        help='address the HTTP port listens on (default '
                             '%(default)s)')
    parser.add_argument('--metrics-histogram-functions',
                        dest='histogram_functions', type=_non_negative,
                        default=exposition.HISTOGRAM_FUNCTIONS,
                        metavar='N',
                        help='how many functions get wait and run '
                             'histograms of their own in /metrics; the '
                             'others share function="(other)" (default '
                             '%(default)s)')
    parser.add_argument('--semantics', dest='semantics',
                        choices=('gearmand', 'gear'), default='gearmand',
                        help="gearmand: gearmand's job semantics; gear: "
                             "gear 0.16's, as gear.Server keeps by "
                             "default (default %(default)s)")
    parser.add_argument('--version', action='version',
                        version='Gear version: %s' % _version())
    return parser


def _statsd_from_env(environ, parser):
    host = environ.get('STATSD_HOST') or None
    port_text = environ.get('STATSD_PORT') or '8125'
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError()
    except ValueError:
        parser.error('STATSD_PORT must be a port number, not %r'
                     % port_text)
    return host, port, environ.get('STATSD_PREFIX') or None


_PATH_OPTIONS = ('log_config', 'pidfile', 'ssl_ca', 'ssl_cert', 'ssl_key',
                 'acl', 'store')


def is_store_url(store):
    """True for a ``--store`` that names a PostgreSQL database."""
    from gear.server.store import POSTGRESQL_SCHEMES
    return bool(store) and store.startswith(POSTGRESQL_SCHEMES)


def store_label(store):
    """``--store`` for messages: a URL without its password."""
    if not is_store_url(store):
        return store
    from urllib.parse import urlsplit
    parts = urlsplit(store)
    if parts.password is None:
        return store
    netloc = parts.netloc.replace(':' + parts.password + '@', ':***@', 1)
    return parts._replace(netloc=netloc).geturl()


def parse_args(argv=None, environ=None):
    """Parse flags and the statsd environment into one namespace.

    Paths are made absolute, because a daemon changes to ``/``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if environ is None:
        environ = os.environ
    (args.statsd_host, args.statsd_port,
     args.statsd_prefix) = _statsd_from_env(environ, parser)
    for name in _PATH_OPTIONS:
        value = getattr(args, name)
        if value and not (name == 'store' and is_store_url(value)):
            setattr(args, name, os.path.abspath(value))
    if is_store_url(args.store):
        if args.store_sync != 'normal':
            parser.error('--store-sync is for SQLite stores; set '
                         "PostgreSQL's synchronous_commit instead")
    elif args.server_id or args.adopt:
        parser.error('--server-id and --adopt need a postgresql:// --store')
    tls = (args.ssl_ca, args.ssl_cert, args.ssl_key)
    if any(tls) and not all(tls):
        parser.error('--ssl-ca, --ssl-cert and --ssl-key must be given '
                     'together')
    return args


def server_kwargs(args, acl=None):
    """Keyword arguments for gear.Server from parsed arguments.

    Options left at None are not passed, so the Server's own defaults
    apply.
    """
    kwargs = dict(
        port=args.port, host=args.listen_address,
        ssl_key=args.ssl_key, ssl_cert=args.ssl_cert, ssl_ca=args.ssl_ca,
        statsd_host=args.statsd_host, statsd_port=args.statsd_port,
        statsd_prefix=args.statsd_prefix, acl=acl,
        keepalive=args.keepalive, tcp_keepidle=args.tcp_keepidle,
        tcp_keepintvl=args.tcp_keepintvl, tcp_keepcnt=args.tcp_keepcnt,
        exceptions=args.exceptions,
        allow_admin_shutdown=args.allow_admin_shutdown,
        semantics=args.semantics)
    if args.http_port is not None:
        kwargs['metrics'] = True
    for name in ('job_retries', 'store', 'job_handle_prefix', 'backlog',
                 'worker_wakeup', 'max_packet_size', 'max_connections',
                 'max_output_buffer'):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if is_store_url(args.store) and (args.server_id or args.adopt):
        from gear.server.pg_store import PgStore
        from gear.server.server import _default_prefix
        server_id = args.server_id or args.job_handle_prefix or \
            _default_prefix()
        kwargs['store'] = PgStore(args.store, server_id, adopt=args.adopt)
    elif args.store and args.store_sync != 'normal':
        from gear.server.sqlite_store import SqliteStore
        kwargs['store'] = SqliteStore(args.store, synchronous=args.store_sync,
                                      group_commit=True)
    return kwargs


# -- checks made before the server starts (and before detaching) --------------

def load_acl(path):
    if not path:
        return None
    from gear import acl as acl_module
    try:
        return acl_module.ACL.fromFile(path)
    except acl_module.ACLError as e:
        message = str(e)
        if path not in message:
            message = 'ACL file %s: %s' % (path, message)
        raise StartupError(message)


_SSL_REASONS = {
    'KEY_VALUES_MISMATCH': 'the key does not match the certificate',
    'NO_CERTIFICATE_OR_CRL_FOUND': 'no PEM certificate found',
}


def _ssl_reason(e):
    reason = getattr(e, 'reason', None)
    return _SSL_REASONS.get(reason) or reason or str(e)


def _check_pem(label, path, data):
    """Name the file that is not PEM, where the ssl module cannot."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover - cryptography comes with TLS
        return
    try:
        if label == 'key':
            serialization.load_pem_private_key(data, password=None)
        else:
            x509.load_pem_x509_certificate(data)
    except TypeError:
        raise StartupError('cannot load TLS key %s: it is encrypted; '
                           'geard needs an unencrypted key' % path)
    except ValueError:
        what = 'private key' if label == 'key' else 'certificate'
        raise StartupError('cannot load TLS %s %s: not a PEM %s'
                           % (label, path, what))


def check_tls_files(args):
    """Load the TLS files once, to name the bad one if there is one."""
    if not args.ssl_cert:
        return
    for label, path in (('CA certificate', args.ssl_ca),
                        ('certificate', args.ssl_cert),
                        ('key', args.ssl_key)):
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except OSError as e:
            raise StartupError('cannot read TLS %s %s: %s'
                               % (label, path, e.strerror or e))
        _check_pem(label, path, data)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(args.ssl_cert, args.ssl_key)
    except ssl.SSLError as e:
        raise StartupError(
            'cannot load TLS certificate %s with key %s: %s'
            % (args.ssl_cert, args.ssl_key, _ssl_reason(e)))
    try:
        context.load_verify_locations(args.ssl_ca)
    except ssl.SSLError as e:
        raise StartupError('cannot load TLS CA certificate %s: %s'
                           % (args.ssl_ca, _ssl_reason(e)))


def check_http(args):
    """--http-port needs prometheus_client: say so before starting."""
    if args.http_port is None:
        return
    from gear.server import exposition
    missing = exposition.available()
    if missing is not None:
        raise StartupError('--http-port: %s' % missing)


def _listen_label(args):
    host = args.listen_address or '*'
    if ':' in host:
        host = '[%s]' % host
    return '%s:%d' % (host, args.port)


def check_port(args):
    """Fail early if the port cannot be bound (daemon mode only).

    Once detached there is no terminal to report to, so a busy port is
    found out here.  Port 0 always binds.
    """
    if not args.port:
        return
    host = args.listen_address
    try:
        infos = socket.getaddrinfo(host, args.port, socket.AF_UNSPEC,
                                   socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartupError('cannot listen on %s: %s'
                           % (_listen_label(args), e.strerror or e))
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise StartupError('cannot listen on %s: %s'
                           % (_listen_label(args), e.strerror or e))
    finally:
        sock.close()


def check_store(args):
    """Open and check the job store once before detaching, so that a
    damaged store or one in use by another server is reported on the
    terminal; the daemon opens it again (and holds it) once detached."""
    if not args.store:
        return
    from gear.errors import ConfigurationError
    from gear.server.sqlite_store import SqliteStore
    try:
        SqliteStore(args.store).close()
    except ConfigurationError as e:
        raise StartupError(str(e))


def describe_server_error(args, e):
    """One line for an exception raised while constructing the Server."""
    from gear.errors import ConfigurationError
    if isinstance(e, ssl.SSLError):
        return 'TLS set-up failed (%s, %s, %s): %s' % (
            args.ssl_cert, args.ssl_key, args.ssl_ca, _ssl_reason(e))
    if isinstance(e, ConfigurationError):
        if args.store and 'store' in str(e).lower():
            if args.store in str(e):
                return str(e)
            return 'cannot use job store %s: %s' % (store_label(args.store),
                                                    e)
        return 'bad configuration: %s' % (e,)
    if isinstance(e, OSError) and not getattr(e, 'filename', None):
        return 'cannot listen on %s: %s' % (_listen_label(args),
                                            e.strerror or e)
    if isinstance(e, OSError):
        return 'cannot open %s: %s' % (e.filename, e.strerror or e)
    if args.store and type(e).__module__.startswith('sqlite3'):
        return 'cannot open job store %s: %s' % (args.store, e)
    if args.store and isinstance(e, TypeError):
        return 'this server does not accept --store %s: %s' % (args.store,
                                                               e)
    return 'cannot start the server: %s: %s' % (type(e).__name__, e)


# -- logging ------------------------------------------------------------------

def setup_logging(args):
    """Configure logging for the chosen mode; raise StartupError if the
    configuration or the log file cannot be used."""
    if args.log_config:
        if not os.path.isfile(args.log_config):
            raise StartupError('cannot read log config %s: no such file'
                               % args.log_config)
        try:
            logging.config.fileConfig(args.log_config,
                                      disable_existing_loggers=False)
        except Exception as e:
            raise StartupError('bad log config %s: %s: %s'
                               % (args.log_config, type(e).__name__, e))
        return
    root = logging.getLogger()
    if args.nodaemon:
        handler = logging.StreamHandler(sys.stderr)
        level = logging.DEBUG if args.debug else logging.INFO
    else:
        try:
            handler = logging.FileHandler(DEFAULT_LOG_FILE)
        except OSError as e:
            raise StartupError(
                'cannot open log file %s: %s (use --log-config, or -d to '
                'log to stderr)' % (DEFAULT_LOG_FILE, e.strerror or e))
        level = logging.DEBUG if args.debug else logging.INFO
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


def _all_handlers():
    loggers = [logging.getLogger()]
    for item in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(item, logging.Logger):
            loggers.append(item)
    seen = []
    for logger in loggers:
        for handler in logger.handlers:
            if handler not in seen:
                seen.append(handler)
    return seen


def reopen_log_files():
    """Reopen every file handler at its configured path.

    After a log rotation renamed the file, new records go to a fresh file
    at the original path.  Returns the number of files reopened.
    """
    count = 0
    for handler in _all_handlers():
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            if handler.stream is None:
                # Opened lazily (delay=True): it will open the right path.
                continue
            # Never truncate on reopen, whatever the configured mode.
            mode = 'a' if 'w' in handler.mode else handler.mode
            try:
                stream = open(handler.baseFilename, mode,
                              encoding=handler.encoding,
                              errors=getattr(handler, 'errors', None))
            except OSError as e:
                sys.stderr.write('geard: cannot reopen log file %s: %s\n'
                                 % (handler.baseFilename, e))
                continue
            old = handler.setStream(stream)
            if old is not None:
                old.close()
            count += 1
        finally:
            handler.release()
    return count


def _log_streams():
    """File descriptors the daemon must keep open: the log files."""
    keep = []
    for handler in _all_handlers():
        stream = getattr(handler, 'stream', None)
        try:
            keep.append(stream.fileno())
        except Exception:
            pass
    sock = getattr(logging.getLogger(), 'socket', None)
    if sock is not None:  # pragma: no cover - syslog handlers and the like
        keep.append(sock)
    return keep


# -- daemon mode --------------------------------------------------------------

def _check_pidfile(path):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise StartupError('cannot write pidfile %s: directory %s does '
                           'not exist' % (path, directory))
    if not os.access(directory, os.W_OK):
        raise StartupError('cannot write pidfile %s: directory %s is '
                           'not writable' % (path, directory))
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return
    if pid <= 0:
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        # A stale file from a crashed run: take it over.
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    except PermissionError:
        pass
    raise StartupError('pidfile %s is held by running process %d'
                       % (path, pid))


def daemon_context(args):
    """A python-daemon context with a lock-file pidfile."""
    try:
        import daemon
        import daemon.pidfile
    except ImportError:
        raise StartupError('daemon mode needs the python-daemon package '
                           '(pip install python-daemon), or run with -d')
    _check_pidfile(args.pidfile)
    pidfile = daemon.pidfile.TimeoutPIDLockFile(args.pidfile,
                                                PIDFILE_TIMEOUT)
    return daemon.DaemonContext(pidfile=pidfile, umask=0o022,
                                files_preserve=_log_streams(),
                                signal_map={})


# -- running ------------------------------------------------------------------

def tune_gc():
    """Keep the cyclic garbage collector off the job server's hot path.

    Every queued job is an object the collector tracks.  With the default
    thresholds a queue growing to a million jobs triggers full
    collections that walk all of them again and again, and enqueueing
    slows down as the queue deepens.  Jobs are freed by reference
    counting, so collections are made rarer, and the objects that exist
    once the server is up (modules, classes, the server itself) are moved
    out of the collector's sight for good.  Only geard does this: it owns
    its process, a library user of gear.Server owns theirs.

    Interpreters whose collector works differently (PyPy has neither
    ``gc.freeze`` nor generation thresholds) are left as they are.
    """
    freeze = getattr(gc, 'freeze', None)
    set_threshold = getattr(gc, 'set_threshold', None)
    if freeze is None or set_threshold is None:
        return
    gc.collect()
    freeze()
    set_threshold(*GC_THRESHOLDS)


class Geard(object):
    """Owns the server and turns signals into actions on it.

    Signal handlers only write the signal number into a pipe; the main
    thread reads the pipe and acts, so no lock is ever taken inside a
    handler.
    """

    STOPPED = 0  # written by the watcher when the server has stopped

    def __init__(self, args):
        self.args = args
        self.server = None
        self.http = None
        self._drain_thread = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)

    def _notify(self, code):
        try:
            os.write(self._write_fd, bytes((code,)))
        except OSError:
            pass

    @staticmethod
    def _on_signal(signum, frame):
        """Nothing to do: the wake-up fd already carries the signal."""

    def install_signal_handlers(self):
        # The kernel may deliver a signal to any thread, and a Python
        # handler only runs once the main thread executes bytecode again,
        # which it does not while blocked reading the pipe.  The wake-up
        # fd is written by the C-level handler at once, whichever thread
        # took the signal, so run() sees it without delay.
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                       signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def start(self, acl):
        import gear
        server_class = getattr(gear, 'Server', None)
        if server_class is None:
            raise StartupError('this installation has no job server '
                               '(gear.Server is missing)')
        try:
            self.server = server_class(**server_kwargs(self.args, acl))
        except StartupError:
            raise
        except Exception as e:
            raise StartupError(describe_server_error(self.args, e))
        if self.args.http_port is not None:
            self._startHTTP()
        watcher = threading.Thread(target=self._watch, name='geard watcher',
                                   daemon=True)
        watcher.start()
        log.info('geard %s listening on %s port %s%s', _version(),
                 self.args.listen_address or 'all addresses',
                 self.server.port, ' (TLS)' if self.args.ssl_cert else '')
        if self.http is not None:
            log.info('Metrics at %smetrics, dashboard at %s',
                     self.http.url, self.http.url)

    def _startHTTP(self):
        from gear.server.http import HTTPServer
        try:
            self.http = HTTPServer(
                self.server, self.args.http_address, self.args.http_port,
                histogram_functions=self.args.histogram_functions).start()
        except Exception as e:
            self.server.shutdown()
            raise StartupError('cannot serve HTTP on %s port %s: %s' % (
                self.args.http_address, self.args.http_port,
                getattr(e, 'strerror', None) or e))

    def _watch(self):
        thread = getattr(self.server, 'poll_thread', None)
        if thread is not None:
            thread.join()
            self._notify(self.STOPPED)

    def _drain(self):
        try:
            self.server.shutdown(graceful=True)
        except TypeError:
            # A server without graceful shutdown: stop it outright.
            log.warning('This server cannot drain; stopping immediately')
            self.server.shutdown()
        except Exception:
            log.exception('Graceful shutdown failed')
        self._notify(self.STOPPED)

    def _stop_now(self):
        stopper = threading.Thread(target=self.server.shutdown,
                                   name='geard stop', daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT)
        if stopper.is_alive():
            log.error('The server did not stop within %d seconds; exiting '
                      'anyway', STOP_TIMEOUT)
            return 1
        return 0

    def run(self):
        """Serve until a signal (or the server itself) ends it; the exit
        code is returned."""
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            for code in data:
                if code == self.STOPPED:
                    log.info('Server stopped')
                    return 0
                if code in (signal.SIGTERM, signal.SIGINT):
                    log.info('Received %s: stopping',
                             signal.Signals(code).name)
                    status = self._stop_now()
                    log.info('Server stopped')
                    return status
                if code == signal.SIGUSR1:
                    if self._drain_thread is None:
                        log.info('Received SIGUSR1: no longer accepting '
                                 'connections; stopping once the running '
                                 'jobs have finished')
                        self._drain_thread = threading.Thread(
                            target=self._drain, name='geard drain',
                            daemon=True)
                        self._drain_thread.start()
                elif code == signal.SIGHUP:
                    count = reopen_log_files()
                    log.info('Received SIGHUP: reopened %d log file(s)',
                             count)


def _logs_to_stderr():
    for handler in _all_handlers():
        if getattr(handler, 'stream', None) in (sys.stderr, sys.__stderr__):
            return True
    return False


def _fail(message):
    """Report a start-up error: one line on stderr, and in the log file
    when there is one (a daemon's stderr goes nowhere)."""
    sys.stderr.write('geard: error: %s\n' % message)
    if _all_handlers() and not _logs_to_stderr():
        log.error('%s', message)
    return 1


def main(argv=None):
    args = parse_args(argv)
    try:
        setup_logging(args)
        acl = load_acl(args.acl)
        if acl is not None and not args.ssl_cert:
            log.warning('--acl without TLS: no connection has a subject, '
                        'so every ACL-controlled request will be denied')
        check_tls_files(args)
        check_http(args)
        context = None
        if not args.nodaemon:
            check_port(args)
            check_store(args)
            context = daemon_context(args)
    except StartupError as e:
        return _fail(str(e))

    if context is not None:
        try:
            context.open()
        except Exception as e:
            return _fail('cannot daemonize (pidfile %s): %s'
                         % (args.pidfile, e))
    try:
        geard = Geard(args)
        geard.install_signal_handlers()
        try:
            geard.start(acl)
        except StartupError as e:
            return _fail(str(e))
        tune_gc()
        return geard.run()
    finally:
        if context is not None:
            context.close()


if __name__ == '__main__':
    sys.exit(main())
