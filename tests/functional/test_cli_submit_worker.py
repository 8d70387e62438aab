"""gear-submit and gear-worker run as programs, together and with
libgearman's ``gearman`` tool, against geard and gearmand."""

import os
import signal
import subprocess
import threading
import time

import fixtures
import pytest
import testtools

import gear
from gear.testing import GearServerFixture
from tests.functional.test_cli_admin import (
    CLI_TIMEOUT, REPO, WAIT, GeardMixin, GearmandMixin, cli_command, cli_env,
    run_cli)
from tests.gearmand import free_port, skip_without, tool_path


class SubmitWorkerChecks(object):

    def submit(self, *args, **kwargs):
        return run_cli('submit', '-p', self.port, *args, **kwargs)

    def worker(self, functions, command, *options):
        """Start gear-worker and wait until the server lists it (without
        a worker, gear-submit refuses to wait)."""
        args = ['-p', self.port]
        for name in functions:
            args += ['-f', name]
        process = self.start_cli('worker', *(args + list(options) + ['--'] +
                                             list(command)))
        for name in functions:
            self.wait_workers(name)
        return process

    def finished(self, process):
        out, err = process.communicate(timeout=CLI_TIMEOUT)
        return process.returncode, out, err

    def test_submit_and_worker_round_trip(self):
        worker = self.worker(['cli_up'], ['tr', 'a-z', 'A-Z'],
                             '--count', '2')
        result = self.submit('-f', 'cli_up', 'hello', 'world')
        self.assertEqual((0, b'HELLOWORLD'),
                         (result.returncode, result.stdout), result.stderr)
        self.assertEqual(0, self.finished(worker)[0])

    def test_stdin_is_one_binary_safe_job(self):
        worker = self.worker(['cli_cat'], ['cat'], '--count', '1')
        data = bytes(range(256)) * 64 + b'\r\n\x00end'
        result = self.submit('-f', 'cli_cat', input=data)
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual(data, result.stdout)
        self.assertEqual(0, self.finished(worker)[0])

    @pytest.mark.slow
    def test_lines_with_progress(self):
        count = 300
        worker = self.worker(['cli_lines'], ['tr', 'a-z', 'A-Z'],
                             '--count', count)
        lines = ['line-%d' % i for i in range(count)]
        result = self.submit('-f', 'cli_lines', '--lines', '--progress',
                             '--window', '32',
                             input=('\n'.join(lines) + '\n').encode())
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual([line.upper() for line in lines],
                         result.stdout.decode().splitlines())
        self.assertIn(b'] 300/300 100% ', result.stderr)
        self.assertTrue(result.stderr.endswith(b'\n'))
        self.assertEqual(0, self.finished(worker)[0])

    def test_streamed_output(self):
        worker = self.worker(['cli_stream'],
                             ['sh', '-c', 'echo first; cat; echo last'],
                             '--count', '1', '--stream')
        result = self.submit('-f', 'cli_stream', 'middle\n')
        self.assertEqual((0, b'first\nmiddle\nlast\n'),
                         (result.returncode, result.stdout), result.stderr)
        self.assertEqual(0, self.finished(worker)[0])

    def test_background_jobs_show_in_admin_status(self):
        result = self.submit('-f', 'cli_bg', '--background', 'a', 'b')
        self.assertEqual(0, result.returncode, result.stderr)
        handles = result.stdout.decode().split()
        self.assertEqual(2, len(set(handles)), handles)
        status = self.admin_json('status')
        self.assertIn({'function': 'cli_bg', 'total': 2, 'running': 0,
                       'workers': 0}, status)
        jobs = {j['handle'] for j in self.admin_json('jobs')}
        self.assertTrue(set(handles) <= jobs, (handles, jobs))

    @pytest.mark.slow
    def test_background_options(self):
        result = self.submit('-f', 'cli_same', '-b', '-u', 'one-id', 'a',
                             'b')
        handles = result.stdout.decode().split()
        self.assertEqual(2, len(handles))
        self.assertEqual(1, len(set(handles)), handles)
        self.assertIn({'unique': 'one-id'}, self.admin_json('unique-jobs'))
        result = self.submit('-f', 'cli_high', '-b', '--priority', 'high',
                             'x')
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn({'function': 'cli_high', 'high': 1, 'normal': 0,
                       'low': 0, 'workers': 0},
                      self.admin_json('priority-status'))
        later = str(int(time.time()) + 3600)
        result = self.submit('-f', 'cli_later', '--when', later, 'x')
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertTrue(result.stdout.strip())
        self.assertEqual((1, 0, 0), self.status()['cli_later'])

    def test_failing_command(self):
        worker = self.worker(['cli_bad'],
                             ['sh', '-c', 'echo broken >&2; exit 3'],
                             '--count', '1')
        result = self.submit('-f', 'cli_bad', 'x')
        self.assertEqual(1, result.returncode)
        self.assertEqual(b'', result.stdout)
        self.assertRegex(result.stderr.decode(),
                         r'^gear-submit: the job \(\S+\) failed\n$')
        code, _, err = self.finished(worker)
        self.assertEqual(0, code)
        self.assertIn(b'sh exited with status 3: broken', err)

    def test_worker_exception_is_reported(self):
        worker = gear.Worker('cli-exception-worker')
        self.addCleanup(worker.shutdown)
        worker.registerFunction('cli_exc')
        worker.addServer('127.0.0.1', self.port)
        worker.waitForServer(timeout=WAIT)

        def serve():
            try:
                job = worker.getJob(timeout=WAIT)
            except (gear.TimeoutError, gear.InterruptedError):
                return
            job.sendWorkException(b'boom happened')
        thread = threading.Thread(target=serve)
        thread.daemon = True
        thread.start()
        self.addCleanup(thread.join, WAIT)
        self.wait_workers('cli_exc')
        result = self.submit('-f', 'cli_exc', 'x')
        self.assertEqual(1, result.returncode)
        self.assertRegex(result.stderr.decode(),
                         r'^gear-submit: the job \(\S+\) failed with an '
                         r'exception: boom happened\n$')

    def test_refused_job(self):
        # gearmand ignores maxqueue for a function it does not know yet.
        self.assertEqual({'ok': True},
                         self.admin_json('create-function', 'cli_full'))
        self.assertEqual({'ok': True},
                         self.admin_json('maxqueue', 'cli_full', '1'))
        result = self.submit('-f', 'cli_full', '-b', 'a', 'b')
        self.assertEqual(1, result.returncode)
        self.assertEqual(1, len(result.stdout.split()), result.stdout)
        self.assertEqual(b'gear-submit: job 2 was not submitted: the server '
                         b'refused it: QUEUE_ERROR Job queue is full\n',
                         result.stderr)

    def test_timeout(self):
        result = self.submit('-f', 'cli_nobody', '--wait-for-worker',
                             '--timeout', '0.3', 'x')
        self.assertEqual(1, result.returncode)
        self.assertRegex(result.stderr.decode(),
                         r'^gear-submit: no worker has registered cli_nobody '
                         r'on 127\.0\.0\.1:\d+ yet; waiting for one\n'
                         r'gear-submit: the job \(\S+\) did not finish '
                         r'within 0\.3 s\n$')

    def test_worker_client_id_and_clean_stop(self):
        worker = self.worker(['cli_term', 'cli_term2'], ['cat'],
                             '--client-id', 'cli-term-worker',
                             '--timeout-ms', '5000')
        self.wait_workers('cli_term2')
        rows = [r for r in self.admin_json('workers')
                if r['client_id'] == 'cli-term-worker']
        self.assertEqual(1, len(rows))
        self.assertEqual(['cli_term', 'cli_term2'],
                         sorted(rows[0]['functions']))
        result = self.submit('-f', 'cli_term', 'still served')
        self.assertEqual(b'still served', result.stdout, result.stderr)
        worker.send_signal(signal.SIGTERM)
        code, _, err = self.finished(worker)
        self.assertEqual(0, code, err)
        self.wait_workers('cli_term', 0)

    def test_worker_kills_a_command_that_overruns_its_timeout(self):
        pidfile = os.path.join(self.useFixture(
            fixtures.TempDir()).path, 'pid')
        worker = self.worker(
            ['cli_slow'], ['sh', '-c', 'echo $$ > %s; exec sleep 600'
                           % pidfile],
            '--timeout-ms', '1000', '--count', '1')
        result = self.submit('-f', 'cli_slow', '--background', 'x')
        self.assertEqual(0, result.returncode, result.stderr)
        code, _, err = self.finished(worker)
        self.assertEqual(0, code, err)
        self.assertIn(b'command still running after --timeout-ms 1000; '
                      b'killed it', err)
        with open(pidfile) as f:
            pid = int(f.read())
        self.assertFalse(os.path.exists('/proc/%d' % pid),
                         'the command outlived its worker')

    @pytest.mark.interop
    def test_gearman_client_against_gear_worker(self):
        skip_without(self, 'gearman')
        tool = tool_path('gearman')
        worker = self.worker(['cli_gm_up'], ['tr', 'a-z', 'A-Z'],
                             '--count', '1')
        result = subprocess.run(
            [tool, '-h', '127.0.0.1', '-p', str(self.port), '-f',
             'cli_gm_up', 'from libgearman'],
            capture_output=True, timeout=CLI_TIMEOUT)
        self.assertEqual((0, b'FROM LIBGEARMAN'),
                         (result.returncode, result.stdout.strip()),
                         result.stderr)
        self.assertEqual(0, self.finished(worker)[0])

    @pytest.mark.interop
    def test_gear_submit_against_gearman_worker(self):
        skip_without(self, 'gearman')
        tool = tool_path('gearman')
        worker = subprocess.Popen(
            [tool, '-h', '127.0.0.1', '-p', str(self.port), '-w', '-f',
             'cli_gm_rev', '-c', '1', '--', 'rev'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)

        def stop():
            if worker.poll() is None:
                worker.kill()
            worker.communicate(timeout=CLI_TIMEOUT)
        self.addCleanup(stop)
        self.wait_workers('cli_gm_rev')
        result = self.submit('-f', 'cli_gm_rev', 'abc\n')
        self.assertEqual((0, b'cba\n'), (result.returncode, result.stdout),
                         result.stderr)
        self.assertEqual(0, worker.wait(timeout=CLI_TIMEOUT))


class TestSubmitWorkerGeard(GeardMixin, SubmitWorkerChecks,
                            testtools.TestCase):
    pass


@pytest.mark.interop
class TestSubmitWorkerGearmand(GearmandMixin, SubmitWorkerChecks,
                               testtools.TestCase):
    pass


class TestNoServer(testtools.TestCase):

    def test_submit_connection_refused(self):
        port = free_port()
        result = run_cli('submit', '-p', port, '-f', 'fn', 'x')
        self.assertEqual(3, result.returncode)
        self.assertEqual(('gear-submit: cannot connect to 127.0.0.1:%d: '
                          'Connection refused\n' % port).encode(),
                         result.stderr)

    def test_worker_connection_refused(self):
        port = free_port()
        result = run_cli('worker', '-p', port, '-f', 'fn', '--', 'cat')
        self.assertEqual(3, result.returncode)
        self.assertEqual(('gear-worker: cannot connect to 127.0.0.1:%d: '
                          'Connection refused\n' % port).encode(),
                         result.stderr)

    def test_worker_usage(self):
        result = run_cli('worker', '-f', 'fn')
        self.assertEqual(2, result.returncode)
        self.assertIn(b'give the command to run after --', result.stderr)
        result = run_cli('worker', '-f', 'fn', '--',
                         'no-such-command-anywhere')
        self.assertEqual(2, result.returncode)
        self.assertIn(b'command not found: no-such-command-anywhere',
                      result.stderr)
        result = run_cli('submit', 'x')
        self.assertEqual(2, result.returncode)


class TestSubmitWorkerTLS(testtools.TestCase):

    def test_round_trip_over_mutual_tls(self):
        fixture = self.useFixture(GearServerFixture(ssl=True))

        def tls(cn):
            key, cert, ca = fixture.client_cert(cn)
            return ['-p', fixture.port, '--ssl-key', key, '--ssl-cert', cert,
                    '--ssl-ca', ca]

        worker = subprocess.Popen(
            cli_command('worker', *(tls('worker') + [
                '-f', 'cli_tls', '--count', '1', '--', 'tr', 'a-z', 'A-Z'])),
            cwd=REPO, env=cli_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: worker.poll() is None and worker.kill())
        # The worker may still be connecting: queue the job for it.
        result = run_cli('submit', *(tls('client') + [
            '-f', 'cli_tls', '--wait-for-worker', 'secret']))
        self.assertEqual((0, b'SECRET'), (result.returncode, result.stdout),
                         result.stderr)
        _, err = worker.communicate(timeout=CLI_TIMEOUT)
        self.assertEqual(0, worker.returncode, err)
