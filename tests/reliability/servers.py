"""Job servers run as child processes, so they can be killed with
SIGKILL and their memory and file descriptors read from /proc.

Every server listens on 127.0.0.1 and a free port.  Startup waits until
the server answers an admin ``status`` (a replaying server accepts TCP
connections before it serves them), and every wait is bounded.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile

from bench.servers import QUIET_LOGGING, ServerUnavailable, wait_ready
from tests.gearmand import free_port, gearmand_path
from tests.util import child_env
from tests.reliability import peers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def rss_bytes(pid):
    """Resident set size of a process, from /proc."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise ValueError('no VmRSS for %d' % pid)


def cpu_seconds(pid):
    """User plus system CPU time a process has used, from /proc."""
    with open('/proc/%d/stat' % pid) as f:
        # The command name may hold spaces; fields count from its ')'.
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _lower_nofile(limit):
    """A preexec_fn: the child starts with a soft fd limit of ``limit``."""
    def apply():
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return apply


def open_fds(pid):
    """How many file descriptors a process has open."""
    return len(os.listdir('/proc/%d/fd' % pid))


class ServerProcess(object):
    """Base: a server command run on a fresh free port at each start."""

    name = 'server'
    #: A soft RLIMIT_NOFILE for the process (None: inherited).
    nofile = None

    def __init__(self, workdir=None):
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix='gear-rel-')
        self.proc = None
        self.port = None
        self.starts = 0

    def command(self, port):
        raise NotImplementedError()

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=START_TIMEOUT):
        self.port = free_port()
        self.starts += 1
        self.log_path = os.path.join(
            self.workdir, '%s-%d.log' % (self.name, self.starts))
        with open(self.log_path, 'wb') as log:
            self.proc = subprocess.Popen(
                self.command(self.port), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log, env=child_env(),
                cwd=REPO, preexec_fn=None if self.nofile is None
                else _lower_nofile(self.nofile))
        try:
            wait_ready(peers.HOST, self.port, timeout, self.proc)
        except ServerUnavailable as e:
            self.kill()
            raise RuntimeError('%s did not start (%s): %s' % (
                self.name, e, self.log()))
        return self

    def log(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read()[-4000:].decode('utf8', 'replace')
        except OSError:
            return ''

    def kill(self):
        """SIGKILL: the crash under test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(STOP_TIMEOUT)

    def stop(self):
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss(self):
        return rss_bytes(self.pid)

    def fds(self):
        return open_fds(self.pid)

    def close(self):
        self.stop()
        if self._own_dir:
            import shutil
            shutil.rmtree(self.workdir, ignore_errors=True)


class Geard(ServerProcess):
    """gear's geard; ``store`` is a SQLite path kept across restarts."""

    name = 'geard'

    def __init__(self, store=None, extra=(), workdir=None):
        super(Geard, self).__init__(workdir)
        self.store = store
        self.extra = list(extra)
        self.log_config = os.path.join(self.workdir, 'logging.conf')
        with open(self.log_config, 'w') as f:
            f.write(QUIET_LOGGING)

    def command(self, port):
        argv = [sys.executable, '-m', 'gear.cmd.geard', '-d',
                '-p', str(port), '--listen-address', peers.HOST,
                '--log-config', self.log_config]
        if self.store:
            argv += ['--store', self.store]
        return argv + self.extra


class Serve(ServerProcess):
    """A gear.Server with any keyword arguments (see serve.py)."""

    name = 'serve'

    def __init__(self, workdir=None, **server_kwargs):
        super(Serve, self).__init__(workdir)
        self.server_kwargs = server_kwargs

    def command(self, port):
        return [sys.executable, '-m', 'tests.reliability.serve',
                str(port), json.dumps(self.server_kwargs)]


class Gearmand(ServerProcess):
    """The C gearmand with its libsqlite3 queue at ``db``."""

    name = 'gearmand'

    def __init__(self, db, extra=(), workdir=None):
        super(Gearmand, self).__init__(workdir)
        self.binary = gearmand_path()
        self.db = db
        self.extra = list(extra)

    @staticmethod
    def available():
        """None if gearmand with libsqlite3 can run here, else why not."""
        binary = gearmand_path()
        if binary is None:
            return 'gearmand is not installed'
        try:
            out = subprocess.run([binary, '--help'], capture_output=True,
                                 timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return 'gearmand --help failed: %s' % e
        if b'libsqlite3-db' not in out.stdout + out.stderr:
            return 'this gearmand has no libsqlite3 queue'
        return None

    def command(self, port):
        return [self.binary, '--listen=%s' % peers.HOST, '--port=%d' % port,
                '--log-file=stderr', '--verbose=ERROR',
                '--queue-type=libsqlite3', '--libsqlite3-db=%s' % self.db
                ] + self.extra
