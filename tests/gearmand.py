"""A fixture that runs the C gearmand on a free loopback port.

Tests that use it are skipped, with a message saying why, when the
binary is not installed.
"""

import os
import shutil
import socket
import subprocess
import time

import fixtures
import testtools

from tests.util import free_port, wait_for  # noqa: F401 (re-exported)

GEARMAND = os.environ.get('GEARMAND', '/usr/sbin/gearmand')
START_TIMEOUT = 15.0


def gearmand_path():
    """The gearmand binary, or None if it is not installed."""
    if os.path.isfile(GEARMAND) and os.access(GEARMAND, os.X_OK):
        return GEARMAND
    return shutil.which('gearmand')


def skip_without_gearmand(test):
    if gearmand_path() is None:
        test.skipTest("gearmand is not installed (looked for %s and on"
                      " PATH); set GEARMAND to its path" % GEARMAND)


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

    def _setUp(self):
        self.binary = gearmand_path()
        if self.binary is None:
            raise testtools.TestCase.skipException(
                "gearmand is not installed")
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
