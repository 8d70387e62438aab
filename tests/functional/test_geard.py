"""geard as operators run it: a real subprocess, real signals, real files.

Every wait is bounded: process waits have timeouts, and conditions are
polled against a deadline.  A geard left running by a failed test is
killed (by its own pid) at cleanup.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import fixtures
import testtools

import gear
from gear import tlsutil
from tests.util import child_env, free_port, serve_jobs, waiter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
WAIT = 15.0
HOST = '127.0.0.1'


def skip_without_server(test):
    if getattr(gear, 'Server', None) is None:
        test.skipTest('gear.Server is not available yet')


wait_for = waiter(WAIT, 0.02)


def accepts(port):
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def admin(port, command, timeout=WAIT):
    """Send one admin command; return the reply text (list or line)."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.sendall(command.encode('ascii') + b'\n')
        data = b''
        deadline = time.monotonic() + timeout
        while True:
            text = data.decode('utf-8', 'replace')
            if text.endswith('.\n') or (text.endswith('\n') and (
                    text.startswith('OK') or text.startswith('ERR'))):
                return text
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return text
            data += chunk
    finally:
        sock.close()


class Geard(fixtures.Fixture):
    """A geard subprocess; stderr is collected line by line."""

    def __init__(self, *extra, foreground=True, port=None, cwd=None,
                 env=None):
        super(Geard, self).__init__()
        self.env = env or {}
        self.extra = list(extra)
        self.foreground = foreground
        self.port = free_port() if port is None else port
        self.cwd = cwd
        self.lines = []
        self._cond = threading.Condition()

    def _setUp(self):
        argv = [sys.executable, '-m', 'gear.cmd.geard']
        if self.foreground:
            argv.append('-d')
        argv += ['-p', str(self.port), '--listen-address', HOST]
        argv += self.extra
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=dict(child_env(), **self.env),
            cwd=self.cwd or REPO)
        self.addCleanup(self._stop)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode('utf-8', 'replace'))
                self._cond.notify_all()

    def _stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        self._reader.join(WAIT)
        self.proc.stderr.close()

    def stderr(self):
        with self._cond:
            return ''.join(self.lines)

    def wait_line(self, pattern, timeout=WAIT):
        """Return the first match of ``pattern`` in stderr (bounded)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError('no %r in geard stderr: %r'
                                         % (pattern, self.lines))
                self._cond.wait(min(remaining, 0.5))

    def wait_ready(self, timeout=WAIT):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError('geard exited with %s: %s'
                                     % (self.proc.returncode, self.stderr()))
            return accepts(self.port)
        wait_for(ready, timeout, 'geard to accept connections')

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait_exit(self, timeout=WAIT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError('geard did not exit within %ss: %s'
                                 % (timeout, self.stderr()))


class GeardTestCase(testtools.TestCase):

    def setUp(self):
        super(GeardTestCase, self).setUp()
        skip_without_server(self)
        self.useFixture(fixtures.Timeout(90, gentle=True))
        self.dir = self.useFixture(fixtures.TempDir()).path

    def start(self, *extra, **kw):
        geard = self.useFixture(Geard(*extra, **kw))
        geard.wait_ready()
        return geard

    def client(self, port):
        client = gear.Client('geard-test-client')
        self.addCleanup(client.shutdown)
        client.addServer(HOST, port)
        client.waitForServer(WAIT)
        return client

    def worker(self, port, *functions):
        worker = gear.Worker('geard-test-worker')
        self.addCleanup(worker.shutdown)
        worker.addServer(HOST, port)
        for name in functions:
            worker.registerFunction(name)
        worker.waitForServer(WAIT)
        return worker

    def serve(self, worker, handler):
        """Run ``handler(job)`` for each job in a thread until cleanup."""
        serve_jobs(self, worker, handler, WAIT)


class TestGeardServes(GeardTestCase):

    def test_job_round_trip_and_status(self):
        geard = self.start()
        worker = self.worker(geard.port, 'reverse')
        self.serve(worker, lambda job: job.sendWorkComplete(
            job.arguments[::-1]))
        client = self.client(geard.port)
        job = gear.Job(b'reverse', b'geard')
        client.submitJob(job, timeout=WAIT)
        wait_for(lambda: job.complete, WAIT, 'the job to complete')
        self.assertEqual([b'draeg'], job.data)
        self.assertFalse(job.failure)
        status = admin(geard.port, 'status')
        self.assertTrue(status.endswith('.\n'), status)
        rows = [line.split('\t') for line in status.splitlines()[:-1]]
        self.assertIn(['reverse', '0', '0', '1'], rows)

    def test_port_zero_is_reported(self):
        # -p is an int: with 0 the real port is picked and logged.
        geard = self.useFixture(Geard(port=0))
        match = geard.wait_line(r'listening on 127\.0\.0\.1 port (\d+)')
        port = int(match.group(1))
        self.assertNotEqual(0, port)
        wait_for(lambda: accepts(port), WAIT, 'the reported port')
        self.assertTrue(admin(port, 'version').startswith('OK '))


class TestGeardOptions(GeardTestCase):

    def test_store_keeps_background_jobs_across_restart(self):
        store = os.path.join(self.dir, 'jobs.db')
        port = free_port()
        first = self.start('--store', store, port=port)
        client = self.client(first.port)
        job = gear.Job(b'later', b'kept', unique=b'u-1')
        client.submitJob(job, background=True, timeout=WAIT)
        client.shutdown()
        first.signal(signal.SIGTERM)
        self.assertEqual(0, first.wait_exit())

        second = self.start('--store', store, port=port)
        worker = self.worker(second.port, 'later')
        replayed = worker.getJob(timeout=WAIT)
        self.assertEqual((b'kept', b'u-1'),
                         (replayed.arguments, replayed.unique))
        replayed.sendWorkComplete()

    def test_statsd_from_environment(self):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind((HOST, 0))
        receiver.settimeout(WAIT)
        geard = self.start(env={
            'STATSD_HOST': HOST,
            'STATSD_PORT': str(receiver.getsockname()[1]),
            'STATSD_PREFIX': 'geardtest'})
        self.assertTrue(admin(geard.port, 'version').startswith('OK'))
        client = self.client(geard.port)
        client.submitJob(gear.Job(b'counted', b''), background=True,
                         timeout=WAIT)
        keys = set()
        deadline = time.monotonic() + WAIT
        while 'geardtest.packet.SUBMIT_JOB_BG' not in keys:
            receiver.settimeout(max(0.01, deadline - time.monotonic()))
            data, _ = receiver.recvfrom(65536)
            for line in data.decode().splitlines():
                keys.add(line.split(':', 1)[0])
        self.assertIn('geardtest.queue.total', keys)


class TestGeardSignals(GeardTestCase):

    def test_sigterm_exits_zero(self):
        geard = self.start()
        geard.signal(signal.SIGTERM)
        self.assertEqual(0, geard.wait_exit())
        self.assertFalse(accepts(geard.port))

    def test_sigint_exits_zero(self):
        geard = self.start()
        geard.signal(signal.SIGINT)
        self.assertEqual(0, geard.wait_exit())

    def test_sigusr1_drains_running_job(self):
        geard = self.start()
        worker = self.worker(geard.port, 'slow')
        client = self.client(geard.port)
        job = gear.Job(b'slow', b'payload')
        client.submitJob(job, timeout=WAIT)
        running = worker.getJob(timeout=WAIT)

        geard.signal(signal.SIGUSR1)
        # Draining: the listener closes, the process stays for the job.
        wait_for(lambda: not accepts(geard.port), WAIT,
                 'the listener to close')
        self.assertIsNone(geard.proc.poll())
        self.assertFalse(job.complete)

        running.sendWorkComplete(b'result')
        wait_for(lambda: job.complete, WAIT, 'the result to be delivered')
        self.assertEqual([b'result'], job.data)
        self.assertFalse(job.failure)
        self.assertEqual(0, geard.wait_exit())

    def test_sigusr1_without_jobs_exits(self):
        geard = self.start()
        geard.signal(signal.SIGUSR1)
        self.assertEqual(0, geard.wait_exit())

    def test_sigterm_during_drain_stops_at_once(self):
        geard = self.start()
        worker = self.worker(geard.port, 'stuck')
        client = self.client(geard.port)
        client.submitJob(gear.Job(b'stuck', b''), timeout=WAIT)
        worker.getJob(timeout=WAIT)
        geard.signal(signal.SIGUSR1)
        wait_for(lambda: not accepts(geard.port), WAIT,
                 'the listener to close')
        geard.signal(signal.SIGTERM)
        self.assertEqual(0, geard.wait_exit())

    def test_sighup_reopens_log_file(self):
        log_path = os.path.join(self.dir, 'geard.log')
        config = os.path.join(self.dir, 'logging.conf')
        with open(config, 'w') as f:
            f.write(LOG_CONFIG % {'path': repr(log_path)})
        geard = self.start('--log-config', config)
        wait_for(lambda: 'listening' in read(log_path), WAIT,
                 'the start-up line in the log')

        rotated = log_path + '.1'
        os.rename(log_path, rotated)
        geard.signal(signal.SIGHUP)
        wait_for(lambda: 'SIGHUP' in read(log_path), WAIT,
                 'a new log file at the original path')
        self.assertNotIn('SIGHUP', read(rotated))
        self.assertIn('listening', read(rotated))

        # The server keeps serving and logging to the new file.
        self.assertTrue(admin(geard.port, 'version').startswith('OK '))
        geard.signal(signal.SIGTERM)
        self.assertEqual(0, geard.wait_exit())
        self.assertIn('stopping', read(log_path))
        self.assertNotIn('stopping', read(rotated))


LOG_CONFIG = """\
[loggers]
keys=root

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=file

[handler_file]
class=FileHandler
args=(%(path)s, 'a')
formatter=plain

[formatter_plain]
format=%%(levelname)s %%(message)s
"""


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ''


class TestGeardStartupErrors(GeardTestCase):
    """Operator mistakes: one line naming the culprit, non-zero exit."""

    def run_geard(self, *extra, port=None):
        geard = self.useFixture(Geard(*extra, port=port))
        code = geard.wait_exit()
        geard._reader.join(WAIT)
        lines = [line for line in geard.stderr().splitlines() if line]
        return code, lines

    def assertOneLine(self, lines, *needles):
        self.assertEqual(1, len(lines), lines)
        self.assertTrue(lines[0].startswith('geard: error: '), lines)
        for needle in needles:
            self.assertIn(needle, lines[0])

    def test_missing_certificate(self):
        ca, server = tlsutil.make_server_files(self.dir)
        missing = os.path.join(self.dir, 'no-such-cert.pem')
        code, lines = self.run_geard('--ssl-ca', ca.ca_path,
                                     '--ssl-cert', missing,
                                     '--ssl-key', server.key)
        self.assertNotEqual(0, code)
        self.assertOneLine(lines, missing, 'No such file')

    def test_certificate_not_pem(self):
        ca, server = tlsutil.make_server_files(self.dir)
        junk = os.path.join(self.dir, 'junk.pem')
        with open(junk, 'w') as f:
            f.write('not a certificate\n')
        code, lines = self.run_geard('--ssl-ca', junk,
                                     '--ssl-cert', server.cert,
                                     '--ssl-key', server.key)
        self.assertNotEqual(0, code)
        self.assertOneLine(lines, junk)

    def test_port_in_use(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, lines = self.run_geard(port=port)
        self.assertNotEqual(0, code)
        self.assertOneLine(lines, str(port), 'in use')

    def test_bad_acl_file(self):
        acl = os.path.join(self.dir, 'acl.ini')
        with open(acl, 'w') as f:
            f.write('[someone]\ninvoke = (broken\n')
        code, lines = self.run_geard('--acl', acl)
        self.assertNotEqual(0, code)
        self.assertOneLine(lines, acl)


class TestGeardDaemon(GeardTestCase):
    """Without -d geard detaches, writes its pidfile and logs to a file."""

    def setUp(self):
        super(TestGeardDaemon, self).setUp()
        try:
            import daemon  # noqa: F401
        except ImportError:
            self.skipTest('python-daemon is not installed')

    def _kill_daemon(self, pidfile):
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    def test_daemon_pidfile_and_sigterm(self):
        pidfile = os.path.join(self.dir, 'geard.pid')
        log_path = os.path.join(self.dir, 'geard.log')
        config = os.path.join(self.dir, 'logging.conf')
        with open(config, 'w') as f:
            f.write(LOG_CONFIG % {'path': repr(log_path)})
        geard = self.useFixture(Geard('--pidfile', pidfile,
                                      '--log-config', config,
                                      foreground=False))
        self.addCleanup(self._kill_daemon, pidfile)
        # The launching process returns once the daemon has detached.
        self.assertEqual(0, geard.wait_exit())
        wait_for(lambda: read(pidfile).strip(), WAIT, 'the pidfile')
        pid = int(read(pidfile))
        self.assertNotEqual(geard.proc.pid, pid)
        wait_for(lambda: accepts(geard.port), WAIT, 'the daemon to listen')
        self.assertEqual('OK %d\n' % pid, admin(geard.port, 'getpid'))

        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(pidfile), WAIT,
                 'the pidfile to be removed')
        wait_for(lambda: not accepts(geard.port), WAIT, 'the port to close')
        self.assertIn('stopping', read(log_path))
