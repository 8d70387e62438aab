"""Start and stop the job servers under test.

Every server runs as a child process on a free loopback port, so its PID
is known and its CPU time and memory can be read from /proc.  Startup
waits are bounded, and every server still alive when the interpreter
exits is killed, so an aborted benchmark never leaves a server behind.
"""

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HOST = '127.0.0.1'
GEARMAND = '/usr/sbin/gearmand'
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Names accepted by --servers.
KNOWN_SERVERS = ('geard', 'geard-pypy', 'geard-base', 'gearmand',
                 'gearmand-tuned', 'gearmand-mt', 'gear016',
                 'geard-http')
PYPY = 'pypy3'

# gearmand's job hash tables default to 991 buckets; a queue of 10^5..10^6
# jobs makes its lookups linear chains.  The tuned variant sizes them for
# such queues, so a comparison is not won by a default meant for small
# deployments.
TUNED_BUCKETS = 1000003

# Job stores accepted by --store: a server given one persists every
# background job (geard --store; gearmand -q libsqlite3 or -q Postgres).
STORES = ('none', 'sqlite', 'postgresql')

_CLOCK_TICKS = os.sysconf('SC_CLK_TCK')

# A logging setup that keeps the Python servers quiet: their -d mode
# would otherwise log every packet at DEBUG, and we would be measuring
# the logging instead of the server.
QUIET_LOGGING = """\
[loggers]
keys=root

[handlers]
keys=stderr

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=stderr

[handler_stderr]
class=StreamHandler
args=(sys.stderr,)
formatter=plain

[formatter_plain]
format=%(asctime)s %(levelname)s %(name)s: %(message)s
"""


class ServerUnavailable(Exception):
    """The requested server cannot be run here; the message says why."""


def free_port(host=HOST):
    """A TCP port on ``host`` that nothing listens on right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def cpu_seconds(pid):
    """User plus system CPU time of a process (all its threads)."""
    with open('/proc/%d/stat' % pid, 'rb') as f:
        stat = f.read()
    # The command name may contain spaces and parentheses: split after
    # the last ')'.  utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(b')') + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_bytes(pid):
    """``(VmRSS, VmHWM)`` of a process in bytes."""
    rss = hwm = 0
    with open('/proc/%d/status' % pid, 'rb') as f:
        for line in f:
            if line.startswith(b'VmRSS:'):
                rss = int(line.split()[1]) * 1024
            elif line.startswith(b'VmHWM:'):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


def wait_ready(host, port, timeout, proc=None):
    """Wait until the server answers an admin ``status`` command.

    A server that accepts connections may still be setting up, so a
    complete admin reply is the readiness signal.  Raises
    ServerUnavailable if ``proc`` exits or ``timeout`` passes first.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerUnavailable('exited with status %s during startup'
                                    % proc.returncode)
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.settimeout(max(0.1, min(2.0,
                                          deadline - time.monotonic())))
                s.sendall(b'status\n')
                reply = b''
                while not (reply == b'.\n' or reply.endswith(b'\n.\n')):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError('connection closed')
                    reply += chunk
                return
        except OSError as e:
            last_error = e
            time.sleep(0.02)
    raise ServerUnavailable('not ready on %s:%d after %.0f s (%s)'
                            % (host, port, timeout, last_error))


class ExternalServer(object):
    """A server someone else runs; its PID is optional."""

    managed = False

    def __init__(self, name, host, port, pid=None):
        self.name = name
        self.host = host
        self.port = port
        self.pid = pid

    def start(self):
        wait_ready(self.host, self.port, START_TIMEOUT)
        return self

    def stop(self):
        pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


#: CPUs every managed server is confined to (``--pin``), or None.
SERVER_CPUS = None


def pin():
    """Give managed servers the last CPU and this process (and the load
    processes it forks) the others, so that server and load never share
    a core's time or caches.  Returns (server CPUs, load CPUs), or None
    on a machine with one CPU."""
    global SERVER_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    SERVER_CPUS = {cpus[-1]}
    os.sched_setaffinity(0, cpus[:-1])
    return sorted(SERVER_CPUS), cpus[:-1]


def _confine():
    if SERVER_CPUS is not None:
        os.sched_setaffinity(0, SERVER_CPUS)


class ManagedServer(object):
    """One server child process on a fresh loopback port."""

    managed = True
    # The port of the server's HTTP side, for servers that have one.
    http_port = None

    def __init__(self, name, argv_for_port, cwd=None, env=None,
                 host=HOST, tmpdir=None):
        self.name = name
        self._argv_for_port = argv_for_port
        self._cwd = cwd
        self._env = env
        self._tmpdir = tmpdir
        self.host = host
        self.port = None
        self.proc = None
        self._stderr = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, timeout=START_TIMEOUT):
        self.port = free_port(self.host)
        argv = self._argv_for_port(self.port)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv, cwd=self._cwd, env=self._env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self._stderr,
            start_new_session=True,
            preexec_fn=_confine if SERVER_CPUS is not None else None)
        _LIVE.add(self)
        try:
            wait_ready(self.host, self.port, timeout, self.proc)
        except ServerUnavailable as e:
            tail = self.stderr_tail()
            self.stop()
            raise ServerUnavailable('%s: %s%s' % (
                self.name, e, ('\n' + tail) if tail else ''))
        return self

    def stderr_tail(self, limit=1000):
        if self._stderr is None:
            return ''
        try:
            self._stderr.seek(0)
            data = self._stderr.read()
        except (OSError, ValueError):
            return ''
        return data[-limit:].decode('utf-8', 'replace').strip()

    def stop(self):
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
            except OSError:
                pass
        _LIVE.discard(self)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


_LIVE = set()


@atexit.register
def _kill_leftovers():
    for server in list(_LIVE):
        server.stop()


def _python_server(name, python):
    """argv builder for a gear-style geard run by ``python``."""
    tmpdir = tempfile.mkdtemp(prefix='bench-%s-' % name)
    log_config = os.path.join(tmpdir, 'logging.conf')
    with open(log_config, 'w') as f:
        f.write(QUIET_LOGGING)
    pidfile = os.path.join(tmpdir, 'geard.pid')
    # Run main() explicitly: ``-m gear.cmd.geard`` needs a __main__ guard
    # that older releases may lack.
    code = ('import sys; sys.argv[0] = "geard"; '
            'from gear.cmd.geard import main; sys.exit(main())')

    def argv(port):
        return [python, '-c', code, '-d', '-p', str(port),
                '--listen-address', HOST, '--log-config', log_config,
                '--pidfile', pidfile]
    return argv, tmpdir


def _clean_env(extra_path=None):
    env = dict(os.environ)
    for key in ('STATSD_HOST', 'STATSD_PORT', 'STATSD_PREFIX'):
        env.pop(key, None)
    if extra_path is None:
        env.pop('PYTHONPATH', None)
    else:
        env['PYTHONPATH'] = extra_path
    return env


def _pypy_path(pypy, tmpdir):
    """PYTHONPATH for a PyPy geard: this checkout, plus pbr (gear's one
    runtime dependency, pure Python) borrowed from this interpreter when
    PyPy has none of its own."""
    probe = subprocess.run([pypy, '-c', 'import pbr.version'],
                           cwd=tmpdir, env=_clean_env(),
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
    if probe.returncode == 0:
        return REPO_ROOT
    try:
        import pbr
    except ImportError:
        return REPO_ROOT
    extra = os.path.join(tmpdir, 'site')
    os.mkdir(extra)
    os.symlink(os.path.dirname(pbr.__file__), os.path.join(extra, 'pbr'))
    return REPO_ROOT + os.pathsep + extra


def check_geard():
    """Raise ServerUnavailable unless this repository's geard can run."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    try:
        import gear
        if getattr(gear, 'Server', None) is None:
            raise ServerUnavailable('geard: gear.Server does not exist yet')
        if importlib.util.find_spec('gear.cmd.geard') is None:
            raise ServerUnavailable('geard: gear/cmd/geard.py is missing')
    except ServerUnavailable:
        raise
    except Exception as e:
        raise ServerUnavailable('geard: importing gear failed: %s: %s'
                                % (type(e).__name__, e))


_POSTGRESQL = []


def _postgresql():
    """The benchmarks' own PostgreSQL (fsync on), started on first use
    and removed at exit."""
    if not _POSTGRESQL:
        from bench import pgcluster
        reason = pgcluster.missing()
        if reason:
            raise ServerUnavailable('postgresql: %s' % reason)
        cluster = pgcluster.Cluster(durable=True)
        atexit.register(cluster.destroy)
        _POSTGRESQL.append(cluster)
    return _POSTGRESQL[0]


def _gearmand_has(option):
    if not os.access(GEARMAND, os.X_OK):
        return False
    out = subprocess.run([GEARMAND, '--help'], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=30).stdout
    return option.encode() in out


def add_store(server, store):
    """Give a built server a fresh, empty job store of kind ``store``;
    its name becomes ``<name>+<store>``."""
    if store in (None, 'none'):
        return server
    name = server.name
    if name not in ('geard', 'gearmand', 'gearmand-mt'):
        raise ServerUnavailable('%s: no %s store' % (name, store))
    gearmand = name != 'geard'
    if server._tmpdir is None:
        server._tmpdir = tempfile.mkdtemp(prefix='bench-store-')
    if store == 'sqlite':
        path = os.path.join(server._tmpdir, 'store.db')
        if gearmand and not _gearmand_has('--libsqlite3-db'):
            raise ServerUnavailable('%s: no libsqlite3 queue' % name)
        extra = (['--queue-type=libsqlite3', '--libsqlite3-db=%s' % path]
                 if gearmand else ['--store', path])
    elif store == 'postgresql':
        if gearmand and not _gearmand_has('--libpq-conninfo'):
            raise ServerUnavailable('%s: no Postgres queue' % name)
        cluster = _postgresql()
        database = 'bench_%s' % os.path.basename(server._tmpdir).replace(
            '-', '_').lower()
        cluster.create_database(database)
        extra = (['--queue-type=Postgres',
                  '--libpq-conninfo=%s' % cluster.conninfo(database)]
                 if gearmand else ['--store', cluster.url(database)])
    else:
        raise ServerUnavailable('unknown store %r (known: %s)'
                                % (store, ', '.join(STORES)))
    argv_for_port = server._argv_for_port
    server._argv_for_port = lambda port: argv_for_port(port) + extra
    server.name = '%s+%s' % (name, store)
    return server


def _geard_http(name):
    """geard with its metrics and dashboard port open (--http-port)."""
    check_geard()
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ServerUnavailable('%s: prometheus_client is not installed'
                                % name)
    plain, tmpdir = _python_server(name, sys.executable)

    def argv(port):
        server.http_port = free_port()
        return plain(port) + ['--http-port', str(server.http_port)]
    server = ManagedServer(name, argv, cwd=REPO_ROOT,
                           env=_clean_env(REPO_ROOT), tmpdir=tmpdir)
    return server


def make_server(name, gear016_python=None, base_root=None):
    """Build (but do not start) the named server.

    ``base_root`` is another checkout of this repository (say, of the
    commit a change starts from) whose geard runs as ``geard-base``, so
    that both are measured in one run on the same machine load.  Raises
    ServerUnavailable with a readable reason when it cannot run.
    """
    if name == 'geard-base':
        if not base_root or not os.path.isfile(
                os.path.join(base_root, 'gear', 'cmd', 'geard.py')):
            raise ServerUnavailable(
                'geard-base: pass --base-root DIR (a checkout with '
                'gear/cmd/geard.py)')
        root = os.path.abspath(base_root)
        argv, tmpdir = _python_server(name, sys.executable)
        return ManagedServer(name, argv, cwd=root, env=_clean_env(root),
                             tmpdir=tmpdir)
    if name in ('gearmand', 'gearmand-tuned', 'gearmand-mt'):
        if not os.access(GEARMAND, os.X_OK):
            raise ServerUnavailable('%s: %s is not installed'
                                    % (name, GEARMAND))
        threads = [] if name == 'gearmand-mt' else ['--threads=1']
        if name == 'gearmand-tuned':
            threads.append('--hashtable-buckets=%d' % TUNED_BUCKETS)

        def argv(port):
            return [GEARMAND, '--listen=%s' % HOST, '--port=%d' % port,
                    '--log-file=none'] + threads
        return ManagedServer(name, argv)
    if name == 'geard':
        check_geard()
        argv, tmpdir = _python_server(name, sys.executable)
        return ManagedServer(name, argv, cwd=REPO_ROOT,
                             env=_clean_env(REPO_ROOT), tmpdir=tmpdir)
    if name == 'geard-http':
        return _geard_http(name)
    if name == 'geard-pypy':
        check_geard()
        pypy = shutil.which(PYPY)
        if pypy is None:
            raise ServerUnavailable('geard-pypy: %s is not installed' % PYPY)
        argv, tmpdir = _python_server(name, pypy)
        return ManagedServer(name, argv, cwd=REPO_ROOT,
                             env=_clean_env(_pypy_path(pypy, tmpdir)),
                             tmpdir=tmpdir)
    if name == 'gear016':
        if not gear016_python:
            raise ServerUnavailable(
                'gear016: pass --gear016-python PATH (a Python whose '
                'environment has gear 0.16 installed)')
        if not os.access(gear016_python, os.X_OK):
            raise ServerUnavailable('gear016: %s is not executable'
                                    % gear016_python)
        probe = subprocess.run(
            [gear016_python, '-c',
             'import importlib.metadata as m; print(m.version("gear"))'],
            cwd=tempfile.gettempdir(), env=_clean_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        version = probe.stdout.decode().strip()
        if probe.returncode != 0 or not version.startswith('0.16'):
            raise ServerUnavailable(
                'gear016: %s has no gear 0.16 distribution (%s)'
                % (gear016_python, version or probe.stderr.decode()[-200:]))
        argv, tmpdir = _python_server(name, gear016_python)
        # Run outside the repository so this checkout's gear is not the
        # one imported.
        return ManagedServer(name, argv, cwd=tmpdir, env=_clean_env(),
                             tmpdir=tmpdir)
    raise ServerUnavailable('unknown server %r (known: %s)'
                            % (name, ', '.join(KNOWN_SERVERS)))
