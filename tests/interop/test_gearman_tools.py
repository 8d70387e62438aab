"""gearmand's command-line tools against gear's server.

``gearman`` (client and worker) and ``gearadmin`` are what operators reach
for first; they must work unchanged against geard.  Each scenario runs
twice: against a server in this process (GearServerFixture) and against a
geard subprocess.  Skipped when the tools are not installed.
"""

import os
import signal
import subprocess

import fixtures
import pytest
import testtools

import gear
from gear.testing import GearServerFixture

from tests.functional.test_geard import Geard, wait_for
from tests.gearmand import skip_without, tool_path

pytestmark = pytest.mark.interop

HOST = '127.0.0.1'
WAIT = 15.0


class _ToolsTests(object):
    """The scenarios; subclasses say which server they run against."""

    def setUp(self):
        super(_ToolsTests, self).setUp()
        if getattr(gear, 'Server', None) is None:
            self.skipTest('gear.Server is not available yet')
        skip_without(self, 'gearman', 'gearadmin')
        self.useFixture(fixtures.Timeout(90, gentle=True))
        self.port, self.server_pid = self.startServer()

    def startServer(self):
        raise NotImplementedError

    def run_tool(self, argv, stdin=None):
        """Run a tool to completion (bounded); return (code, out, err)."""
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if stdin is not None
            else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(stdin, timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=WAIT)
            raise AssertionError('%s timed out; stdout=%r stderr=%r'
                                 % (' '.join(argv), out, err))
        return proc.returncode, out.decode(), err.decode()

    def gearman(self, *args, stdin=None):
        return self.run_tool([tool_path('gearman'), '-h', HOST,
                              '-p', str(self.port)] + list(args), stdin)

    def gearadmin(self, *args):
        code, out, err = self.run_tool(
            [tool_path('gearadmin'), '-h', HOST, '-p', str(self.port)]
            + list(args))
        self.assertEqual(0, code, err)
        return out, err

    def start_worker(self, function, *command, count=None):
        """A ``gearman -w`` worker piping each job through ``command``."""
        argv = [tool_path('gearman'), '-h', HOST, '-p', str(self.port), '-w',
                '-f', function]
        if count is not None:
            argv += ['-c', str(count)]
        proc = subprocess.Popen(argv + ['--'] + list(command),
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait(WAIT)
            proc.stderr.close()
        self.addCleanup(stop)
        return proc

    @staticmethod
    def rows(text):
        """A gearadmin list: tab-separated rows before the final '.'."""
        lines = text.splitlines()
        assert lines and lines[-1] == '.', text
        return [line.split('\t') for line in lines[:-1]]

    # -- gearman client and worker -------------------------------------

    def test_worker_and_client(self):
        worker = self.start_worker('upper', 'tr', 'a-z', 'A-Z', count=1)
        code, out, err = self.gearman('-f', 'upper', 'hello gear')
        self.assertEqual((0, 'HELLO GEAR'), (code, out), err)
        # -c 1: the worker exits once its result was accepted.
        self.assertEqual(0, worker.wait(WAIT))

    def test_one_job_per_line_from_stdin(self):
        self.start_worker('rev', 'rev')
        code, out, err = self.gearman('-f', 'rev', '-n',
                                      stdin=b'abc\nhello\n')
        self.assertEqual(0, code, err)
        self.assertEqual(['cba', 'olleh'], out.split())

    def test_background_job_shows_up_in_admin_output(self):
        code, out, err = self.gearman('-f', 'nobody', '-b', '-u',
                                      'unique-1', 'queued data')
        self.assertEqual(0, code, err)

        status = self.rows(self.gearadmin('--status')[0])
        self.assertIn(['nobody', '1', '0', '0'], status)

        prio = self.rows(self.gearadmin('--priority-status')[0])
        self.assertIn(['nobody', '0', '1', '0', '0'], prio)

        jobs = self.rows(self.gearadmin('--show-jobs')[0])
        self.assertEqual(1, len(jobs), jobs)
        handle, retries, ignore, queued = jobs[0]
        self.assertTrue(handle)
        self.assertEqual(['0', '0', '1'], [retries, ignore, queued])

        uniques = self.rows(self.gearadmin('--show-unique-jobs')[0])
        self.assertEqual([['unique-1']], uniques)

        out, err = self.gearadmin('--cancel-job', handle)
        self.assertNotIn('Error', out + err)
        self.assertEqual([], self.rows(self.gearadmin('--show-jobs')[0]))

    # -- gearadmin -------------------------------------------------------

    def test_workers(self):
        self.start_worker('upper', 'tr', 'a-z', 'A-Z')

        def worker_lines():
            lines = [row[0] for row in
                     self.rows(self.gearadmin('--workers')[0])]
            found = [line for line in lines if line.endswith(': upper')]
            return (lines, found) if found else None
        # The worker registers in the background: wait (bounded) for it.
        lines, found = wait_for(worker_lines, WAIT, 'the worker to register')
        self.assertEqual(1, len(found), lines)
        fd, ip, client_id, colon = found[0].split(' ')[:4]
        self.assertTrue(fd.isdigit())
        self.assertEqual(HOST, ip)
        self.assertEqual(':', colon)
        # The asking admin connection is listed too, with no functions.
        self.assertTrue(any(line.endswith(':') for line in lines), lines)

    def test_server_version(self):
        out, _ = self.gearadmin('--server-version')
        self.assertEqual(1, len(out.splitlines()), out)
        self.assertTrue(out.strip())
        self.assertFalse(out.startswith('ERR'), out)

    def test_getpid(self):
        out, _ = self.gearadmin('--getpid')
        self.assertEqual(str(self.server_pid), out.strip())

    def test_create_and_drop_function(self):
        out, _ = self.gearadmin('--create-function', 'made')
        self.assertEqual('OK', out.strip())
        self.assertIn(['made', '0', '0', '0'],
                      self.rows(self.gearadmin('--status')[0]))
        out, _ = self.gearadmin('--drop-function', 'made')
        self.assertEqual('OK', out.strip())
        self.assertNotIn('made', [row[0] for row in
                                  self.rows(self.gearadmin('--status')[0])])


class TestToolsInProcess(_ToolsTests, testtools.TestCase):

    def startServer(self):
        fixture = self.useFixture(GearServerFixture())
        return fixture.port, os.getpid()


class TestToolsGeard(_ToolsTests, testtools.TestCase):

    def startServer(self):
        geard = self.useFixture(Geard())
        geard.wait_ready()
        self.addCleanup(self._stop, geard)
        return geard.port, geard.proc.pid

    def _stop(self, geard):
        if geard.proc.poll() is None:
            geard.signal(signal.SIGTERM)
            self.assertEqual(0, geard.wait_exit())
