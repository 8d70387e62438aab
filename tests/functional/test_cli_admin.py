"""gear-admin run as a program against geard (in-process) and gearmand.

The helpers at the top are shared with test_cli_submit_worker.
"""

import json
import os
import re
import subprocess
import sys

import fixtures
import pytest
import testtools

import gear
from gear import tlsutil
from gear.testing import GearServerFixture
from tests.gearmand import GearmandFixture, free_port, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Bound for one run of a tool; they normally take well under a second.
CLI_TIMEOUT = 30
WAIT = 10


def cli_env():
    env = dict(os.environ)
    path = env.get('PYTHONPATH')
    env['PYTHONPATH'] = REPO + (os.pathsep + path if path else '')
    env.pop('PYTHONWARNINGS', None)
    return env


def cli_command(tool, *args):
    return [sys.executable, '-m', 'gear.cmd.%s' % tool] + [
        str(a) for a in args]


def run_cli(tool, *args, **kwargs):
    """Run gear-<tool> to completion; return the CompletedProcess."""
    kwargs.setdefault('timeout', CLI_TIMEOUT)
    return subprocess.run(cli_command(tool, *args), capture_output=True,
                          cwd=REPO, env=cli_env(), **kwargs)


class CliServerMixin(object):
    """Start a server (subclasses pick which) and talk to it."""

    server_kind = None

    def startServer(self):
        raise NotImplementedError()

    def setUp(self):
        super(CliServerMixin, self).setUp()
        self.startServer()

    def start_cli(self, tool, *args, **kwargs):
        """Start gear-<tool> in the background; killed at cleanup."""
        process = subprocess.Popen(
            cli_command(tool, *args), cwd=REPO, env=cli_env(),
            stdin=kwargs.pop('stdin', subprocess.DEVNULL),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

        def stop():
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=CLI_TIMEOUT)
        self.addCleanup(stop)
        return process

    def admin(self, *args, **kwargs):
        return run_cli('admin', '-p', self.port, *args, **kwargs)

    def admin_json(self, *args):
        result = self.admin('--json', *args)
        self.assertEqual(0, result.returncode, result.stderr)
        return json.loads(result.stdout)

    def client(self):
        client = gear.Client('cli-test')
        self.addCleanup(client.shutdown)
        client.addServer('127.0.0.1', self.port)
        client.waitForServer(timeout=WAIT)
        return client

    def status(self):
        """{function: (total, running, workers)} read in-process."""
        client = getattr(self, '_status_client', None)
        if client is None:
            client = self._status_client = self.client()
        request = gear.StatusAdminRequest()
        client.getConnection().sendAdminRequest(request, timeout=WAIT)
        return {row[0]: row[1:] for row in request.parse()}

    def wait_workers(self, function, count=1):
        wait_for(lambda: self.status().get(function, (0, 0, 0))[2] == count,
                 timeout=WAIT,
                 message='%d workers for %s never showed' % (count,
                                                             function))


class GeardMixin(CliServerMixin):
    server_kind = 'geard'

    def startServer(self):
        fixture = self.useFixture(GearServerFixture())
        self.port = fixture.port
        self.server_pid = os.getpid()


class GearmandMixin(CliServerMixin):
    server_kind = 'gearmand'

    def startServer(self):
        fixture = self.useFixture(GearmandFixture())
        self.port = fixture.port
        self.server_pid = fixture.process.pid


class AdminChecks(object):
    """gear-admin subcommands; run against each server below."""

    def test_status_table_and_json(self):
        client = self.client()
        job = gear.Job('cli_status', b'x')
        client.submitJob(job, background=True)
        result = self.admin('status')
        self.assertEqual(0, result.returncode, result.stderr)
        lines = result.stdout.decode().splitlines()
        self.assertEqual(['FUNCTION', 'TOTAL', 'RUNNING', 'WORKERS'],
                         lines[0].split())
        row = [line for line in lines if line.startswith('cli_status ')]
        self.assertEqual([['cli_status', '1', '0', '0']],
                         [r.split() for r in row])
        rows = self.admin_json('status')
        self.assertIn({'function': 'cli_status', 'total': 1, 'running': 0,
                       'workers': 0}, rows)

    def test_priority_status(self):
        client = self.client()
        client.submitJob(gear.Job('cli_prio', b'x'), background=True,
                         precedence=gear.PRECEDENCE_HIGH)
        client.submitJob(gear.Job('cli_prio', b'y'), background=True,
                         precedence=gear.PRECEDENCE_LOW)
        rows = self.admin_json('priority-status')
        self.assertIn({'function': 'cli_prio', 'high': 1, 'normal': 0,
                       'low': 1, 'workers': 0}, rows)

    def test_workers(self):
        worker = gear.Worker('cli-worker-id')
        self.addCleanup(worker.shutdown)
        worker.registerFunction('cli_w1')
        worker.registerFunction('cli_w2')
        worker.addServer('127.0.0.1', self.port)
        worker.waitForServer(timeout=WAIT)
        self.wait_workers('cli_w2')
        rows = self.admin_json('workers')
        mine = [r for r in rows if r['client_id'] == 'cli-worker-id']
        self.assertEqual(1, len(mine), rows)
        self.assertEqual(['cli_w1', 'cli_w2'], sorted(mine[0]['functions']))
        self.assertEqual('127.0.0.1', mine[0]['ip'])
        self.assertIsInstance(mine[0]['fd'], int)
        text = self.admin('workers').stdout.decode()
        self.assertRegex(text, r'(?m)^\s*\d+\s+127\.0\.0\.1\s+cli-worker-id'
                               r'\s+cli_w[12] cli_w[12]$')

    @pytest.mark.slow
    def test_jobs_unique_jobs_and_cancel(self):
        client = self.client()
        job = gear.Job('cli_jobs', b'x', unique='cli-unique-1')
        client.submitJob(job, background=True)
        handle = job.handle.decode()
        jobs = self.admin_json('jobs')
        self.assertIn({'handle': handle, 'retries': 0, 'ignore_job': False,
                       'job_queued': True}, jobs)
        self.assertIn({'unique': 'cli-unique-1'},
                      self.admin_json('unique-jobs'))
        result = self.admin('cancel', handle)
        self.assertEqual((0, b'OK\n'), (result.returncode, result.stdout),
                         result.stderr)
        # Dropped at once, or (gearmand) kept and marked ignored.
        left = [j for j in self.admin_json('jobs') if j['handle'] == handle]
        self.assertTrue(all(j['ignore_job'] for j in left), left)
        result = self.admin('cancel', 'H:nowhere:999')
        self.assertEqual(1, result.returncode)
        self.assertEqual(b'gear-admin: cancel job H:nowhere:999: the server '
                         b'answered ERR UNKNOWN_JOB (no job has this '
                         b'handle)\n', result.stderr)

    def test_maxqueue(self):
        self.assertEqual({'ok': True},
                         self.admin_json('maxqueue', 'cli_mq', '5'))
        self.assertEqual({'ok': True},
                         self.admin_json('maxqueue', 'cli_mq', 3, 2, 1))
        result = self.admin('maxqueue', 'cli_mq')
        self.assertEqual((0, b'OK\n'), (result.returncode, result.stdout))
        result = self.admin('maxqueue', 'cli_mq', 1, 2)
        self.assertEqual(2, result.returncode)
        self.assertIn(b'HIGH NORMAL LOW', result.stderr)

    def test_create_and_drop_function(self):
        result = self.admin('create-function', 'cli_made')
        self.assertEqual((0, b'OK\n'), (result.returncode, result.stdout),
                         result.stderr)
        self.assertIn('cli_made', self.status())
        self.assertEqual({'ok': True},
                         self.admin_json('drop-function', 'cli_made'))
        self.assertNotIn('cli_made', self.status())
        result = self.admin('drop-function', 'cli_never')
        self.assertEqual(1, result.returncode)
        self.assertTrue(result.stderr.startswith(
            b'gear-admin: drop function cli_never: the server answered ERR'),
            result.stderr)

    @pytest.mark.slow
    def test_version_pid_verbose(self):
        version = self.admin_json('version')['version']
        self.assertTrue(version)
        self.assertEqual({'pid': self.server_pid}, self.admin_json('pid'))
        result = self.admin('pid')
        self.assertEqual(b'%d\n' % self.server_pid, result.stdout)
        level = self.admin_json('verbose')['level']
        self.assertRegex(level, r'^[A-Z]+$')

    def test_ping(self):
        shaped = self.admin_json('ping')
        self.assertEqual('127.0.0.1', shaped['host'])
        self.assertEqual(self.port, shaped['port'])
        self.assertGreaterEqual(shaped['rtt_ms'], 0)
        result = self.admin('ping')
        self.assertRegex(result.stdout.decode(),
                         r'^echo from 127\.0\.0\.1:%d: time=\d+\.\d{3} ms\n$'
                         % self.port)

    def test_watch_refreshes_count_times(self):
        result = self.admin('--watch', '0.1', '--count', '2', 'status')
        self.assertEqual(0, result.returncode, result.stderr)
        text = result.stdout.decode()
        self.assertEqual(2, len(re.findall(
            r'(?m)^Every 0\.1s: status on 127\.0\.0\.1:%d ' % self.port,
            text)), text)
        self.assertEqual(2, text.count('FUNCTION  TOTAL'))
        result = self.admin('status', '--json', '--watch', '0.1',
                            '--count', '2')
        lines = result.stdout.decode().splitlines()
        self.assertEqual(2, len(lines), lines)
        for line in lines:
            self.assertIsInstance(json.loads(line), list)

    def test_options_after_the_command(self):
        result = run_cli('admin', 'version', '-p', self.port, '--json')
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn('version', json.loads(result.stdout))


class TestAdminGeard(GeardMixin, AdminChecks, testtools.TestCase):

    def test_acl_without_an_acl(self):
        result = self.admin('acl', 'list')
        self.assertEqual(1, result.returncode)
        self.assertEqual(b'gear-admin: acl list: the server answered ERR '
                         b'ACL_DISABLED (the server runs without an ACL)\n',
                         result.stderr)


@pytest.mark.interop
class TestAdminGearmand(GearmandMixin, AdminChecks, testtools.TestCase):

    def test_acl_is_unknown_to_gearmand(self):
        result = self.admin('acl', 'list')
        self.assertEqual(1, result.returncode)
        self.assertEqual(b'gear-admin: acl list: the server answered ERR '
                         b'UNKNOWN_COMMAND: unknown server command "acl" '
                         b'(this server has no ACL commands)\n',
                         result.stderr)


class TestAdminConnectionErrors(testtools.TestCase):

    def test_connection_refused(self):
        port = free_port()
        result = run_cli('admin', '-p', port, 'status')
        self.assertEqual(3, result.returncode)
        self.assertEqual(b'', result.stdout)
        self.assertEqual(('gear-admin: cannot connect to 127.0.0.1:%d: '
                          'Connection refused\n' % port).encode(),
                         result.stderr)

    def test_usage_errors_exit_2(self):
        result = run_cli('admin')
        self.assertEqual(2, result.returncode)
        result = run_cli('admin', '--ssl-key', 'k.pem', 'status')
        self.assertEqual(2, result.returncode)
        self.assertIn(b'missing --ssl-cert, --ssl-ca', result.stderr)

    def test_help_documents_exit_codes(self):
        result = run_cli('admin', '--help')
        self.assertEqual(0, result.returncode)
        self.assertIn(b'3  no server: cannot connect', result.stdout)


class TestAdminTLS(testtools.TestCase):
    """ACL commands and TLS failures against geard with mutual TLS."""

    def setUp(self):
        super(TestAdminTLS, self).setUp()
        acl = gear.ACL()
        acl.add(gear.ACLEntry('admin', grant=True))
        self.fixture = self.useFixture(GearServerFixture(ssl=True, acl=acl))
        self.port = self.fixture.port
        key, cert, ca = self.fixture.client_cert('admin')
        self.tls = ['--ssl-key', key, '--ssl-cert', cert, '--ssl-ca', ca]

    def admin(self, *args):
        return run_cli('admin', '-p', self.port, *(self.tls + list(args)))

    @pytest.mark.slow
    def test_acl_grant_list_revoke(self):
        result = self.admin('acl', 'grant', 'invoke', 'bob', '^cli_.*')
        self.assertEqual((0, b'OK\n'), (result.returncode, result.stdout),
                         result.stderr)
        result = self.admin('acl', 'grant', 'register', 'bob', 'w.*')
        self.assertEqual(0, result.returncode, result.stderr)
        result = self.admin('acl', 'grant', 'admin', 'bob')
        self.assertEqual(0, result.returncode, result.stderr)
        rows = json.loads(self.admin('--json', 'acl', 'list').stdout)
        self.assertEqual([
            {'subject': 'admin', 'register': None, 'invoke': None,
             'grant': True, 'admin': False},
            {'subject': 'bob', 'register': 'w.*', 'invoke': '^cli_.*',
             'grant': False, 'admin': True}], rows)
        text = self.admin('acl', 'list').stdout.decode()
        self.assertEqual('SUBJECT  REGISTER  INVOKE   GRANT  ADMIN\n'
                         'admin    -         -        yes    no\n'
                         'bob      w.*       ^cli_.*  no     yes\n', text)
        result = self.admin('acl', 'revoke', 'invoke', 'bob')
        self.assertEqual(0, result.returncode, result.stderr)
        rows = json.loads(self.admin('--json', 'acl', 'list').stdout)
        self.assertEqual(None, rows[1]['invoke'])
        result = self.admin('acl', 'self-revoke', 'grant')
        self.assertEqual(0, result.returncode, result.stderr)
        result = self.admin('acl', 'grant', 'grant', 'carol')
        self.assertEqual(1, result.returncode)
        self.assertIn(b'ERR PERMISSION_DENIED', result.stderr)

    def test_other_commands_over_tls(self):
        result = self.admin('--json', 'status')
        self.assertEqual((0, []), (result.returncode,
                                   json.loads(result.stdout)))
        self.assertEqual(0, self.admin('ping').returncode)

    def test_missing_tls_file_is_named(self):
        missing = os.path.join(self.fixture.tls_dir, 'missing-ca.pem')
        result = run_cli('admin', '-p', self.port, '--ssl-key', self.tls[1],
                         '--ssl-cert', self.tls[3], '--ssl-ca', missing,
                         'status')
        self.assertEqual(2, result.returncode)
        self.assertEqual(('gear-admin: cannot read TLS CA file %s: No such '
                          'file or directory\n' % missing).encode(),
                         result.stderr)

    def test_key_of_another_certificate(self):
        other_key = self.fixture.client_cert('other')[0]
        result = run_cli('admin', '-p', self.port, '--ssl-key', other_key,
                         '--ssl-cert', self.tls[3], '--ssl-ca', self.tls[5],
                         'status')
        self.assertEqual(2, result.returncode)
        self.assertIn(b'the key does not belong to the certificate',
                      result.stderr)
        self.assertIn(other_key.encode(), result.stderr)

    def test_untrusted_server_certificate(self):
        foreign_dir = self.useFixture(fixtures.TempDir()).path
        foreign = tlsutil.CertificateAuthority(foreign_dir, cn='foreign CA')
        identity = foreign.issue('admin')
        result = run_cli('admin', '-p', self.port, '--ssl-key', identity.key,
                         '--ssl-cert', identity.cert, '--ssl-ca',
                         identity.ca, 'status')
        self.assertEqual(3, result.returncode)
        message = result.stderr.decode()
        self.assertTrue(message.startswith(
            'gear-admin: TLS handshake with 127.0.0.1:%d failed: '
            % self.port), message)
        self.assertIn("the server's certificate is not signed by the CA in "
                      "%s" % identity.ca, message)

    def test_plain_client_against_tls_server(self):
        result = run_cli('admin', '-p', self.port, '--timeout', '5',
                         'status')
        self.assertEqual(3, result.returncode)
        self.assertIn(b'does the server expect TLS?', result.stderr)
