"""Peers that misbehave on purpose: they drop connections mid-packet,
half-close, dribble one byte at a time, or never read their replies.

The server runs in its own process so its memory is its own.  Through
every attack a control client and worker keep completing jobs, other
clients' jobs are untouched, and the server's RSS stays bounded.
"""

import socket
import struct
import threading

import testtools
from testtools.content import text_content

from gear import constants as C
from tests.reliability import peers, servers

MAX_PACKET = 64 * 1024
MAX_OUTPUT = 128 * 1024
# Allowed RSS growth of the server during an attack.
RSS_SLACK = 48 * 1024 * 1024


class HostileTestCase(testtools.TestCase):

    def setUp(self):
        super(HostileTestCase, self).setUp()
        self.server = servers.Serve(
            max_packet_size=MAX_PACKET, max_output_buffer=MAX_OUTPUT,
            # Long handles: more reply bytes per request.
            job_handle_prefix='H:' + 'h' * 38)
        self.addCleanup(self.server.close)
        self.server.start()
        self.port = self.server.port
        self.client = self.peer()
        self.worker = self.peer()
        self.worker.send_packet(C.CAN_DO, 'ctl')
        self.control_count = 0
        self.rss_peak = 0
        self.control()  # warm up before the memory baseline
        self.rss_base = self.rss_peak = self.server.rss()

    def peer(self, **kwargs):
        p = peers.RawPeer(self.port, **kwargs)
        self.addCleanup(p.close)
        return p

    def control(self):
        """One control job must complete now (bounded wait)."""
        data = 'ctl%d' % self.control_count
        self.assertEqual(data[::-1].encode(), peers.control_round_trip(
            self.client, self.worker, 'ctl', data, timeout=10))
        self.control_count += 1
        self.rss_peak = max(self.rss_peak, self.server.rss())

    def assertServerHealthy(self):
        self.control()
        self.addDetail('server-rss', text_content(
            'baseline %d, peak %d bytes; %d control jobs' % (
                self.rss_base, self.rss_peak, self.control_count)))
        self.assertTrue(self.server.alive())
        self.assertLess(self.rss_peak - self.rss_base, RSS_SLACK,
                        'server RSS grew from %d to %d bytes' % (
                            self.rss_base, self.rss_peak))

    def total(self, fn):
        return peers.status(self.port).get(fn, (0, 0, 0))[0]


class TestDroppedConnections(HostileTestCase):

    def test_clients_vanish_mid_packet(self):
        # A background job was acknowledged; the foreground job's client
        # goes away (its job goes too); the last packet is cut anywhere.
        packet = peers.req(C.SUBMIT_JOB, 'half', 'u', 'x' * 50)
        rounds = peers.scale(200, 2000)
        for i in range(rounds):
            sock = socket.create_connection((peers.HOST, self.port), 10)
            sock.sendall(peers.req(C.SUBMIT_JOB_BG, 'kept', 'k%d' % i, 'x') +
                         peers.req(C.SUBMIT_JOB, 'half', 'f%d' % i, 'x'))
            cut = 1 + i % (len(packet) - 1)
            sock.sendall(packet[:cut])
            if i % 2:
                # RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack('ii', 1, 0))
            sock.close()
            if i % 20 == 0:
                self.control()
        peers.wait_for(lambda: self.total('half') == 0, 20,
                       'abandoned foreground jobs to go')
        self.assertEqual(rounds, self.total('kept'))
        self.assertServerHealthy()

    def test_worker_vanishes_mid_result(self):
        client = self.peer()
        client.send_packet(C.SUBMIT_JOB, 'res', 'one', 'payload')
        handle = client.expect(C.JOB_CREATED)[0]
        for cut in (1, 11, 12, 20):
            w = self.peer()
            w.send_packet(C.CAN_DO, 'res')
            w.send_packet(C.GRAB_JOB_UNIQ)
            self.assertEqual(handle, w.expect(C.JOB_ASSIGN_UNIQ)[0])
            w.send(peers.req(C.WORK_COMPLETE, handle, 'partial')[:cut])
            w.close()
            self.control()
        w = self.peer()
        w.send_packet(C.CAN_DO, 'res')
        w.send_packet(C.GRAB_JOB_UNIQ)
        self.assertEqual(handle, w.expect(C.JOB_ASSIGN_UNIQ)[0])
        w.send_packet(C.WORK_COMPLETE, handle, 'whole')
        self.assertEqual([handle, b'whole'], client.expect(C.WORK_COMPLETE))
        self.assertServerHealthy()


class TestHalfOpen(HostileTestCase):

    def test_worker_half_closes_while_holding_a_job(self):
        client = self.peer()
        client.send_packet(C.SUBMIT_JOB, 'ho', 'one', 'payload')
        handle = client.expect(C.JOB_CREATED)[0]
        w = self.peer()
        w.send_packet(C.CAN_DO, 'ho')
        w.send_packet(C.GRAB_JOB_UNIQ)
        self.assertEqual(handle, w.expect(C.JOB_ASSIGN_UNIQ)[0])
        # No more requests will come: the job must go back to the queue.
        w.shutdown(socket.SHUT_WR)
        self.assertRaises(peers.PeerClosed, w.read_packet, 10)
        w2 = self.peer()
        w2.send_packet(C.CAN_DO, 'ho')
        w2.send_packet(C.GRAB_JOB_UNIQ)
        self.assertEqual(handle, w2.expect(C.JOB_ASSIGN_UNIQ)[0])
        w2.send_packet(C.WORK_COMPLETE, handle, 'done')
        self.assertEqual([handle, b'done'], client.expect(C.WORK_COMPLETE))
        self.assertServerHealthy()

    def test_silent_and_half_closed_peers_do_not_block_others(self):
        silent = [self.peer() for _ in range(peers.scale(100, 1000))]
        deaf = []
        for i in range(50):
            p = self.peer()
            p.shutdown(socket.SHUT_RD)  # sends, never reads
            p.send_packet(C.SUBMIT_JOB_BG, 'deaf', 'd%d' % i, 'x')
            p.send(b'status\n')
            deaf.append(p)
        self.control()
        peers.wait_for(lambda: self.total('deaf') == 50, 10)
        self.assertServerHealthy()
        # The server keeps every one of them (plus client and worker).
        self.assertGreaterEqual(
            len(self.client.admin('workers').splitlines()) - 1,
            len(silent) + len(deaf) + 2)


class TestSlowloris(HostileTestCase):

    def test_byte_at_a_time_peers(self):
        # Each dribbling peer's request arrives one byte per round; a
        # control job completes between rounds.
        count = 20
        messages = []
        dribblers = []
        for i in range(count):
            p = self.peer()
            p.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if i % 2:
                messages.append(peers.req(C.SUBMIT_JOB_BG, 'slow',
                                          's%d' % i, 'x' * 20))
            else:
                messages.append(b'status\r\n')
            dribblers.append(p)
        longest = max(len(m) for m in messages)
        for offset in range(longest):
            for p, m in zip(dribblers, messages):
                if offset < len(m):
                    p.send(m[offset:offset + 1])
            self.control()
        for i, p in enumerate(dribblers):
            if i % 2:
                p.expect(C.JOB_CREATED)
            else:
                self.assertTrue(p.admin_reply_ready(10))
        self.assertEqual(count // 2, self.total('slow'))
        self.assertServerHealthy()


class TestNeverReads(HostileTestCase):

    def test_flooding_reader_is_cut_off_and_nobody_else_suffers(self):
        bystander = self.peer()
        bystander.send_packet(C.SUBMIT_JOB, 'keep', 'b1', 'mine')
        handle = bystander.expect(C.JOB_CREATED)[0]
        flood = self.peer(rcvbuf=4096)
        requests = 10000
        batch = b''.join(peers.req(C.SUBMIT_JOB, 'flood', '', 'x' * 8)
                         for _ in range(100))
        outcome = {}

        def send_flood():
            try:
                for _ in range(requests // 100):
                    flood.send(batch)
                outcome['sent'] = True
            except OSError as e:
                outcome['error'] = e
        sender = threading.Thread(target=send_flood, daemon=True)
        sender.start()
        # The server disconnects the flooder once its unread replies pass
        # max_output_buffer; its foreground jobs are dropped with it.

        def cut_off():
            self.rss_peak = max(self.rss_peak, self.server.rss())
            return not sender.is_alive() and self.total('flood') == 0
        peers.wait_for(cut_off, 30, 'the flooding client to be cut off')
        flood.sock.settimeout(10)
        drained = 0
        try:
            while True:
                data = flood.sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except ConnectionResetError:
            pass
        # Far fewer replies came back than were asked for.
        self.addDetail('flood', text_content(
            '%d of %d bytes of replies delivered before the cut' % (
                drained, requests * (12 + 50))))
        self.assertLess(drained, requests * 50)
        w = self.peer()
        w.send_packet(C.CAN_DO, 'keep')
        w.send_packet(C.GRAB_JOB_UNIQ)
        self.assertEqual(handle, w.expect(C.JOB_ASSIGN_UNIQ)[0])
        w.send_packet(C.WORK_COMPLETE, handle, 'yours')
        self.assertEqual([handle, b'yours'],
                         bystander.expect(C.WORK_COMPLETE))
        self.assertServerHealthy()
