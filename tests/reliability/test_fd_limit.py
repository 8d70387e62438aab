"""The server at its file-descriptor limit, flooded with connections.

At the limit, accept() fails with EMFILE while the listening socket stays
readable: a server that retries at once spins and logs every failure.
Here the server runs in its own process with a lowered RLIMIT_NOFILE;
while peers hold every descriptor it has, its log must stay a few lines
long and its CPU time well below the wall time, and once they leave it
must serve a job again.
"""

import socket
import time

import pytest
import testtools
from testtools.content import text_content

from tests.reliability import peers, servers

FLOOD = 400
# Log lines allowed during a flood: the clamp warning at start, the
# first refusal, a summary per 10 s interval, and some slack.
MAX_LOG_LINES = 8
# The server's CPU time while it sits at the limit, as a share of the
# wall time of the window; a server retrying accept() uses all it gets.
MAX_CPU_SHARE = 0.3
# The measuring window (a duration to measure over, not a wait).
WINDOW = 3.0


def flood(port, count):
    """``count`` non-blocking connection attempts, kept open."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((peers.HOST, port))
        socks.append(sock)
    return socks


def log_lines(server):
    """Every line the server has logged (server.log() keeps the tail)."""
    with open(server.log_path, 'rb') as f:
        return f.read().decode('utf8', 'replace').splitlines()


@pytest.mark.slow
class TestFdLimit(testtools.TestCase):

    def start(self, server):
        self.addCleanup(server.close)
        server.start()
        self.server = server
        self.addCleanup(lambda: self.addDetail(
            'server-log', text_content(server.log())))
        return server

    def hold_flood(self, at_limit):
        """Flood the server, wait until ``at_limit()`` holds, then measure
        its CPU time and log over WINDOW seconds; return (cpu, wall,
        new log lines)."""
        socks = flood(self.server.port, FLOOD)
        self.addCleanup(lambda: [s.close() for s in socks])
        peers.wait_for(at_limit, 60, 'the server to reach its fd limit')
        lines_before = len(log_lines(self.server))
        cpu_before = servers.cpu_seconds(self.server.pid)
        started = time.monotonic()
        time.sleep(WINDOW)
        wall = time.monotonic() - started
        cpu = servers.cpu_seconds(self.server.pid) - cpu_before
        self.addDetail('window', text_content(
            'cpu %.3f s over %.3f s wall, %d fds' % (
                cpu, wall, self.server.fds())))
        for sock in socks:
            sock.close()
        return cpu, wall, log_lines(self.server)[lines_before:]

    def assertServes(self):
        """A control job completes once the flood has gone (bounded)."""
        def round_trip():
            client = peers.RawPeer(self.server.port, timeout=10)
            worker = peers.RawPeer(self.server.port, timeout=10)
            try:
                worker.send_packet(peers.C.CAN_DO, 'ctl')
                return peers.control_round_trip(client, worker, 'ctl',
                                                'abc', timeout=10)
            except (OSError, peers.PeerClosed):
                return None
            finally:
                client.close()
                worker.close()
        self.assertEqual(b'cba', peers.wait_for(
            round_trip, 60, 'a job after the flood'))

    def test_accept_at_fd_limit_backs_off(self):
        # The limit is lowered after start, so max_connections is not
        # clamped and accept() itself runs into EMFILE.
        limit = 100
        self.start(servers.Serve(nofile_after_start=limit))
        cpu, wall, lines = self.hold_flood(
            lambda: self.server.fds() >= limit - 2)
        self.assertLess(len(lines), MAX_LOG_LINES, '\n'.join(lines[:20]))
        self.assertTrue(any('Too many open files' in line
                            for line in log_lines(self.server)))
        self.assertLess(cpu, MAX_CPU_SHARE * wall)
        self.assertServes()

    def test_max_connections_clamped_to_fd_limit(self):
        limit = 160
        geard = servers.Geard()
        geard.nofile = limit
        self.start(geard)
        self.assertIn('max_connections 10000 is above what the file '
                      'descriptor limit (%d, ulimit -n) allows; using %d'
                      % (limit, limit - 64), geard.log())
        cpu, wall, lines = self.hold_flood(
            lambda: self.server.fds() >= limit - 64)
        self.assertLess(len(lines), MAX_LOG_LINES, '\n'.join(lines[:20]))
        self.assertTrue(any('max_connections (96) reached' in line
                            for line in log_lines(self.server)))
        self.assertLess(cpu, MAX_CPU_SHARE * wall)
        self.assertServes()
