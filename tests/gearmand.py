"""The C Gearman tools for interop tests: where they are, and a fixture
that runs gearmand on a free loopback port.

Tests that need a tool skip, with a message naming it, when it is not
installed.  ``GEAR_TEST_HIDE_TOOLS`` pretends tools are missing: a
comma-separated list of names, or ``all``; the suite's own check that
interop tests skip cleanly runs with it set.
"""

import os
import shutil
import socket
import subprocess
import time

import fixtures
import testtools

from tests.util import free_port, wait_for  # noqa: F401 (re-exported)

START_TIMEOUT = 15.0
HIDE_VARIABLE = 'GEAR_TEST_HIDE_TOOLS'

# Tool name -> (the variable that may give its path, where Debian puts it,
# the Debian package that ships it).
TOOLS = {
    'gearmand': ('GEARMAND', '/usr/sbin/gearmand', 'gearman-job-server'),
    'gearman': ('GEARMAN', '/usr/bin/gearman', 'gearman-tools'),
    'gearadmin': ('GEARADMIN', '/usr/bin/gearadmin', 'gearman-tools'),
    # Perl's Gearman::Server; Debian installs it as /usr/bin/gearmand.
    'gearmand-perl': ('GEARMAND_PERL', '/usr/bin/gearmand',
                      'gearman-server'),
}
GEARMAND = os.environ.get('GEARMAND', TOOLS['gearmand'][1])


def _hidden(name):
    hidden = os.environ.get(HIDE_VARIABLE, '')
    names = {part.strip() for part in hidden.split(',')}
    return 'all' in names or name in names


def _is_perl_script(path):
    try:
        with open(path, 'rb') as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b'#!') and b'perl' in first


def _usable(name, path):
    if not path or not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return False
    # Both gearmand servers share a name: tell them apart.
    if name == 'gearmand':
        return not _is_perl_script(path)
    if name == 'gearmand-perl':
        return _is_perl_script(path)
    return True


def tool_path(name):
    """The path of the tool ``name`` (a key of TOOLS), or None when it
    is not installed or hidden by GEAR_TEST_HIDE_TOOLS."""
    if _hidden(name):
        return None
    variable, default, _package = TOOLS[name]
    for path in (os.environ.get(variable, default),
                 shutil.which(os.path.basename(default))):
        if _usable(name, path):
            return path
    return None


def missing_reason(name):
    """Why a test needing ``name`` skips, or None when it is there."""
    if tool_path(name) is not None:
        return None
    variable, default, package = TOOLS[name]
    if _hidden(name):
        return '%s is hidden by %s' % (name, HIDE_VARIABLE)
    return ('%s is not installed (looked for %s and on PATH; Debian package'
            ' %s; or set %s to its path)' % (name, default, package,
                                             variable))


def skip_without(test, *names):
    """Skip ``test`` (a TestCase) unless every tool in ``names`` exists."""
    for name in names:
        reason = missing_reason(name)
        if reason:
            test.skipTest(reason)


def gearmand_path():
    """The gearmand binary, or None if it is not installed."""
    return tool_path('gearmand')


def skip_without_gearmand(test):
    skip_without(test, 'gearmand')


class GearmandFixture(fixtures.Fixture):
    """Run gearmand on 127.0.0.1; ``port`` is where it listens.

    :arg extra_args: more command-line arguments for gearmand.
    :arg port: a fixed port (by default a free one is picked).
    """

    def __init__(self, extra_args=(), port=None, log=False):
        super(GearmandFixture, self).__init__()
        self.extra_args = list(extra_args)
        self.port = port
        self.log = log
        self.process = None

    tool = 'gearmand'

    def setUp(self):
        # Checked before Fixture.setUp: a skip raised inside _setUp would
        # reach the test wrapped as a SetupError, and fail it.
        reason = missing_reason(self.tool)
        if reason:
            raise testtools.TestCase.skipException(reason)
        super(GearmandFixture, self).setUp()

    def _setUp(self):
        self.binary = tool_path(self.tool)
        if self.port is None:
            self.port = free_port()
        self.start()
        self.addCleanup(self.stop)

    def _command(self):
        return [self.binary, '--listen=127.0.0.1', '--port=%d' % self.port,
                '--threads=1',
                '--log-file=%s' % ('stderr' if self.log else 'none')
                ] + self.extra_args

    def start(self):
        """Start gearmand (again) and wait until it accepts connections."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if self.log else subprocess.DEVNULL)
            if self._waitUntilListening(deadline):
                return
            # Most likely the port was still held (e.g. TIME_WAIT of a
            # previous instance): try again until the deadline.
            self.stop()
            if time.monotonic() >= deadline:
                raise RuntimeError("gearmand did not start on port %d" %
                                   self.port)
            time.sleep(0.1)

    def _waitUntilListening(self, deadline):
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                sock = socket.create_connection(('127.0.0.1', self.port),
                                                timeout=1)
            except OSError:
                time.sleep(0.02)
                continue
            sock.close()
            return True
        return False

    def stop(self):
        """Kill gearmand and wait for it to exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def restart(self):
        """Kill gearmand and start a new one on the same port."""
        self.stop()
        self.start()


class PerlGearmandFixture(GearmandFixture):
    """Run Perl's Gearman::Server (Debian: gearman-server) instead."""

    tool = 'gearmand-perl'

    def _command(self):
        return [self.binary, '--listen=127.0.0.1',
                '--port=%d' % self.port] + self.extra_args
