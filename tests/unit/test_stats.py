"""The statsd reporter, checked against a real UDP socket on loopback."""

import socket

import testtools

from gear import constants
from gear.server import stats

RECV_TIMEOUT = 5


class StatsReceiverMixin(object):
    """A UDP socket on 127.0.0.1 standing in for a statsd collector."""

    def make_receiver(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(('127.0.0.1', 0))
        sock.settimeout(RECV_TIMEOUT)
        return sock, sock.getsockname()[1]

    def receive_lines(self, sock, count):
        """Read datagrams until ``count`` metric lines arrived (bounded)."""
        lines = []
        while len(lines) < count:
            data, _ = sock.recvfrom(65536)
            lines.extend(data.decode('utf-8').splitlines())
        return lines

    @staticmethod
    def parse(line):
        key, rest = line.split(':', 1)
        value, kind = rest.split('|', 1)
        return key, value, kind


class _ReporterTests(StatsReceiverMixin):
    """Shared checks, run once per client implementation."""

    def make_reporter(self, port, prefix=None):
        raise NotImplementedError

    def test_packet_sends_timer_and_counter(self):
        sock, port = self.make_receiver()
        reporter = self.make_reporter(port)
        self.addCleanup(reporter.close)
        reporter.packet(constants.SUBMIT_JOB, 0.25)
        parsed = [self.parse(line) for line in self.receive_lines(sock, 2)]
        kinds = {kind: (key, value) for key, value, kind in parsed}
        self.assertEqual(['c', 'ms'], sorted(kinds))
        self.assertEqual('packet.SUBMIT_JOB', kinds['ms'][0])
        self.assertAlmostEqual(250.0, float(kinds['ms'][1]), places=3)
        self.assertEqual(('packet.SUBMIT_JOB', '1'), kinds['c'])

    def test_unknown_packet_type(self):
        sock, port = self.make_receiver()
        reporter = self.make_reporter(port)
        self.addCleanup(reporter.close)
        reporter.packet(99, 0.001)
        keys = {self.parse(line)[0] for line in self.receive_lines(sock, 2)}
        self.assertEqual({'packet.UNKNOWN'}, keys)

    def test_queue_gauges(self):
        sock, port = self.make_receiver()
        reporter = self.make_reporter(port)
        self.addCleanup(reporter.close)
        reporter.queue(5, 2, 3)
        parsed = [self.parse(line) for line in self.receive_lines(sock, 3)]
        self.assertEqual(
            [('queue.running', '2', 'g'), ('queue.total', '5', 'g'),
             ('queue.waiting', '3', 'g')],
            sorted(parsed))

    def test_prefix(self):
        sock, port = self.make_receiver()
        reporter = self.make_reporter(port, prefix='geard.test')
        self.addCleanup(reporter.close)
        reporter.queue(1, 0, 1)
        reporter.packet(constants.CAN_DO, 0.0)
        keys = {self.parse(line)[0] for line in self.receive_lines(sock, 5)}
        self.assertEqual(
            {'geard.test.queue.total', 'geard.test.queue.running',
             'geard.test.queue.waiting', 'geard.test.packet.CAN_DO'},
            keys)


class TestBuiltinSender(_ReporterTests, testtools.TestCase):

    def make_reporter(self, port, prefix=None):
        return stats.StatsReporter(
            stats.UDPStatsClient('127.0.0.1', port, prefix=prefix))

    def test_send_to_closed_port_does_not_raise(self):
        sock, port = self.make_receiver()
        sock.close()
        reporter = self.make_reporter(port)
        self.addCleanup(reporter.close)
        for _ in range(3):
            reporter.packet(constants.NOOP, 0.0)
        self.assertIsInstance(reporter.client, stats.UDPStatsClient)


class TestDefaultClient(_ReporterTests, testtools.TestCase):
    """Whatever make_reporter picks (the statsd package when installed)."""

    def make_reporter(self, port, prefix=None):
        return stats.make_reporter('127.0.0.1', port, prefix)


class TestMakeReporter(testtools.TestCase):

    def test_none_host_gives_none(self):
        self.assertIsNone(stats.make_reporter(None))
        self.assertIsNone(stats.make_reporter(None, 9999, 'p'))

    def test_port_as_string(self):
        # The environment hands over STATSD_PORT as text.
        reporter = stats.make_reporter('127.0.0.1', '8125')
        self.addCleanup(reporter.close)
        self.assertIsInstance(reporter, stats.StatsReporter)

    def test_fallback_without_statsd_package(self):
        self.patch(stats, '_statsd', None)
        reporter = stats.make_reporter('127.0.0.1', 8125)
        self.addCleanup(reporter.close)
        self.assertIsInstance(reporter.client, stats.UDPStatsClient)
