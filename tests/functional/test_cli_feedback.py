"""What the tools tell their user: gear-worker's start and stop lines and
a failing command's stderr, gear-submit's --lines markers, summary and
missing-worker warning, gear-admin --watch through a server outage, and
geard's usage error for a bad port.  Real programs, real servers."""

import os
import re
import signal
import subprocess
import sys
import threading

import fixtures
import testtools

import gear
from gear.testing import GearServerFixture
from tests.functional.test_cli_admin import (
    CLI_TIMEOUT, REPO, WAIT, GeardMixin, cli_command, cli_env, run_cli)
from tests.util import child_env, wait_for


def read(path):
    with open(path, 'rb') as f:
        return f.read().decode('utf-8', 'replace')


class TestWorkerFeedback(GeardMixin, testtools.TestCase):

    def worker(self, functions, command, *options):
        args = ['-p', self.port]
        for name in functions:
            args += ['-f', name]
        process = self.start_cli('worker', *(args + list(options) + ['--'] +
                                             list(command)))
        for name in functions:
            self.wait_workers(name)
        return process

    def test_start_and_stop_lines(self):
        worker = self.worker(['fb_one', 'fb_two'], ['cat'],
                             '--client-id', 'fb-worker')
        result = run_cli('submit', '-p', self.port, '-f', 'fb_one', 'x')
        self.assertEqual((0, b'x'), (result.returncode, result.stdout),
                         result.stderr)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=CLI_TIMEOUT)
        self.assertEqual(0, worker.returncode, err)
        self.assertEqual(
            ['gear-worker: serving fb_one, fb_two on 127.0.0.1:%d as '
             'fb-worker with: cat' % self.port,
             'gear-worker: stopped on SIGTERM: ran 1 job'],
            err.decode().splitlines())

    def test_failing_command_stderr_shown_without_verbose(self):
        worker = self.worker(
            ['fb_fail'],
            ['sh', '-c', 'echo first >&2; echo second >&2; exit 2'],
            '--count', '1')
        result = run_cli('submit', '-p', self.port, '-f', 'fb_fail', 'x')
        self.assertEqual(1, result.returncode)
        _, err = worker.communicate(timeout=CLI_TIMEOUT)
        self.assertEqual(0, worker.returncode, err)
        lines = err.decode().splitlines()
        self.assertRegex(lines[1], r'^gear-worker: job \S+: sh exited with '
                                   r'status 2:$')
        self.assertEqual(['    first', '    second',
                          'gear-worker: stopped after --count 1: ran 1 job '
                          '(1 failed)'], lines[2:])


class TestSubmitFeedback(GeardMixin, testtools.TestCase):

    def test_no_worker_warns_and_submits_nothing(self):
        result = run_cli('submit', '-p', self.port, '-f', 'fb_nobody', 'x')
        self.assertEqual(1, result.returncode)
        self.assertEqual(b'', result.stdout)
        self.assertEqual(
            'gear-submit: no worker has registered fb_nobody on '
            '127.0.0.1:%d; nothing submitted (use --wait-for-worker to '
            'queue and wait)\n' % self.port, result.stderr.decode())
        self.assertNotIn('fb_nobody', self.status())

    def test_background_jobs_need_no_worker(self):
        result = run_cli('submit', '-p', self.port, '-f', 'fb_later', '-b',
                         'x')
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual((1, 0, 0), self.status()['fb_later'])

    def test_background_lines_summary(self):
        result = run_cli('submit', '-p', self.port, '-f', 'fb_bg', '-b',
                         '--lines', input=b'a\nb\n')
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual(2, len(result.stdout.split()), result.stdout)
        self.assertEqual(b'gear-submit: 2 submitted, 0 refused\n',
                         result.stderr)

    def test_lines_marks_failures_and_prints_a_summary(self):
        self.start_cli(
            'worker', '-p', self.port, '-f', 'fb_odd', '--', 'sh', '-c',
            'read x; case $x in *1) exit 1;; esac; printf "<%s>" "$x"')
        self.wait_workers('fb_odd')
        result = run_cli('submit', '-p', self.port, '-f', 'fb_odd',
                         '--lines', input=b'a0\na1\na2\n')
        self.assertEqual(1, result.returncode)
        self.assertEqual(b'<a0>\n[failed]\n<a2>\n', result.stdout)
        lines = result.stderr.decode().splitlines()
        self.assertRegex(lines[0], r'^gear-submit: job 2 \(\S+\) failed$')
        self.assertEqual('gear-submit: 2 done, 1 failed, 0 lost', lines[-1])

    def test_lines_all_done(self):
        self.start_cli('worker', '-p', self.port, '-f', 'fb_up', '--', 'tr',
                       'a-z', 'A-Z')
        self.wait_workers('fb_up')
        result = run_cli('submit', '-p', self.port, '-f', 'fb_up', '--lines',
                         input=b'a\n\nb\n')
        self.assertEqual((0, b'A\n\nB\n'), (result.returncode,
                                            result.stdout), result.stderr)
        self.assertEqual(b'gear-submit: 3 done, 0 failed, 0 lost\n',
                         result.stderr)


class TestLostJobs(testtools.TestCase):

    def test_lost_job_is_marked_and_counted(self):
        fixture = self.useFixture(GearServerFixture())
        worker = gear.Worker('fb-holder')
        self.addCleanup(worker.shutdown)
        worker.registerFunction('fb_hold')
        worker.addServer('127.0.0.1', fixture.port)
        worker.waitForServer(timeout=WAIT)
        holding = threading.Event()

        def serve():
            while True:
                try:
                    job = worker.getJob()
                except gear.InterruptedError:
                    return
                if job.arguments == b'a':
                    job.sendWorkComplete(b'A')
                else:
                    holding.set()  # and never answer
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.addCleanup(thread.join, WAIT)
        self.addCleanup(worker.stopWaitingForJobs)

        tmp = self.useFixture(fixtures.TempDir()).path
        source = os.path.join(tmp, 'in')
        with open(source, 'wb') as f:
            f.write(b'a\nb\n')
        with open(source, 'rb') as stdin:
            process = subprocess.Popen(
                cli_command('submit', '-p', fixture.port, '-f', 'fb_hold',
                            '--wait-for-worker', '--lines'),
                cwd=REPO, env=cli_env(), stdin=stdin,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.assertTrue(holding.wait(CLI_TIMEOUT), 'job b never arrived')
        fixture.server.shutdown()
        out, err = process.communicate(timeout=CLI_TIMEOUT)
        self.assertEqual(3, process.returncode, err)
        self.assertEqual(b'A\n[lost]\n', out)
        text = err.decode()
        self.assertRegex(text, r'(?m)^gear-submit: job 2 \(\S+\) did not '
                               r'finish: lost the connection to '
                               r'127\.0\.0\.1:\d+$')
        self.assertTrue(text.endswith(
            'gear-submit: 1 done, 0 failed, 1 lost\n'), text)


class TestAdminWatchOutage(testtools.TestCase):

    def test_watch_survives_the_server_going_away(self):
        server = gear.Server(0, host='127.0.0.1')
        self.addCleanup(lambda: server.shutdown())
        port = server.port
        tmp = self.useFixture(fixtures.TempDir()).path
        out_path = os.path.join(tmp, 'out')
        err_path = os.path.join(tmp, 'err')
        with open(out_path, 'wb') as out, open(err_path, 'wb') as err:
            process = subprocess.Popen(
                cli_command('admin', '-p', port, '--watch', '0.1',
                            '--timeout', '5', 'status'),
                cwd=REPO, env=cli_env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=err)
        self.addCleanup(lambda: process.poll() is None and process.kill())

        def seen(path, text):
            return lambda: text in read(path) or process.poll() is not None

        wait_for(seen(out_path, 'FUNCTION'), timeout=CLI_TIMEOUT)
        server.shutdown()
        wait_for(seen(err_path, 'the server is down'), timeout=CLI_TIMEOUT)
        self.assertIsNone(process.poll(), read(err_path))
        self.assertNotIn('TLS', read(err_path))
        wait_for(seen(out_path, 'server down since'), timeout=CLI_TIMEOUT)

        again = gear.Server(port, host='127.0.0.1')
        self.addCleanup(again.shutdown)
        wait_for(seen(err_path, 'answers again'), timeout=CLI_TIMEOUT)
        self.assertIsNone(process.poll(), read(err_path))
        process.terminate()
        process.wait(timeout=CLI_TIMEOUT)
        lines = read(err_path).splitlines()
        self.assertRegex(lines[0], r"^gear-admin: .*127\.0\.0\.1:%d.*; the "
                                   r"server is down, retrying every 0\.1s$"
                         % port)
        self.assertEqual('gear-admin: the server 127.0.0.1:%d answers again'
                         % port, lines[1])
        # Refreshes went on after the outage.
        self.assertTrue(re.search(r'server down since .*\n(.|\n)*FUNCTION',
                                  read(out_path)), read(out_path))

    def test_first_refresh_must_work(self):
        result = run_cli('admin', '-p', 1, '--watch', '0.1', 'status')
        self.assertEqual(3, result.returncode)
        self.assertIn(b'cannot connect to 127.0.0.1:1', result.stderr)


class TestGeardUsage(testtools.TestCase):

    def test_port_out_of_range(self):
        result = subprocess.run(
            [sys.executable, '-m', 'gear.cmd.geard', '-d', '-p', '99999'],
            capture_output=True, cwd=REPO, env=child_env(),
            timeout=CLI_TIMEOUT)
        self.assertEqual(2, result.returncode)
        self.assertEqual(b'', result.stdout)
        self.assertTrue(result.stderr.decode().endswith(
            'geard: error: argument -p/--port: port 99999 is out of range '
            '0-65535\n'), result.stderr)
