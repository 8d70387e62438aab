"""A JOB_CREATED for a persisted job never leaves the server before the
store has committed the job, even when a connection's output is backed
up and its replies are written in the middle of a loop turn."""

import os
import select
import socket

import fixtures
import testtools

from gear import constants as C
from gear.protocol import InputBuffer
from gear.server.server import Server
from gear.server.sqlite_store import SqliteStore
from tests.reliability import peers


class CommitTrackingStore(SqliteStore):
    """Knows which handles a commit has made durable."""

    def __init__(self, path):
        super(CommitTrackingStore, self).__init__(path, group_commit=True)
        self.pending = []
        self.committed = set()

    def add(self, job):
        super(CommitTrackingStore, self).add(job)
        self.pending.append(job.handle)

    def flush(self):
        super(CommitTrackingStore, self).flush()
        self.committed.update(self.pending)
        del self.pending[:]

    def discard(self):
        super(CommitTrackingStore, self).discard()
        del self.pending[:]


class SendAuditor(object):
    """Wraps a server-side socket and checks every JOB_CREATED it sends.
    """

    def __init__(self, sock, store, violations):
        self._sock = sock
        self._store = store
        self._violations = violations
        self._parsed = InputBuffer()

    def send(self, data):
        sent = self._sock.send(data)
        self._parsed.feed(bytes(data[:sent]))
        while True:
            packet = self._parsed.readPacket()
            if packet is None:
                break
            if packet[1] == C.JOB_CREATED and \
                    packet[2] not in self._store.committed:
                self._violations.append(packet[2])
        return sent

    def __getattr__(self, name):
        return getattr(self._sock, name)


class AuditedServer(Server):

    def __init__(self, *args, **kwargs):
        self.violations = []
        super(AuditedServer, self).__init__(*args, **kwargs)

    def _registerConnection(self, sock, addr=None):
        # A tiny send buffer (a slow network) makes the server queue its
        # replies and write them when the socket turns writable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn = super(AuditedServer, self)._registerConnection(sock, addr)
        conn.conn = SendAuditor(conn.conn, self.store, self.violations)
        return conn


class TestAckAfterCommit(testtools.TestCase):

    def _server(self, **kwargs):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'store.db')
        store = CommitTrackingStore(path)
        server = AuditedServer(0, host=peers.HOST, store=store, **kwargs)
        self.addCleanup(server.shutdown)
        return server, store

    def test_reply_flushed_before_a_close_waits_for_the_commit(self):
        # The server flushes what it owes a peer before closing it for an
        # oversized packet; a JOB_CREATED in that output is an ack too.
        server, store = self._server(max_packet_size=1024)
        with peers.RawPeer(server.port) as client:
            client.send(peers.req(C.SUBMIT_JOB_BG, 'audit', 'u1', 'x') +
                        b'\x00REQ' + (7).to_bytes(4, 'big') +
                        (10 ** 6).to_bytes(4, 'big'))
            handle = client.expect(C.JOB_CREATED)[0]
            self.assertEqual(C.ERROR, client.read_packet()[0])
        peers.wait_for(lambda: handle in store.committed, 10)
        self.assertEqual([], server.violations)

    def test_read_and_write_in_one_event_waits_for_the_commit(self):
        # A backed-up connection is watched for writability; when one poll
        # event reports it readable and writable, the replies to what was
        # just read must not be written before the commit.
        server, store = self._server()
        with peers.RawPeer(server.port) as client:
            peers.wait_for(lambda: server.connection_map, 10)
            with server.lock:
                conn, = server.connection_map.values()
                client.send(peers.req(C.SUBMIT_JOB_BG, 'audit', 'u1', 'x'))
                readable, _, _ = select.select([conn.conn], [], [], 10)
                self.assertTrue(readable)
                conn.send_queue += peers.req(C.NOOP)  # a backlog
                server._processPollEvent(conn, select.EPOLLIN |
                                         select.EPOLLOUT)
            self.assertEqual(C.NOOP, client.read_packet(skip=())[0])
            handle = client.expect(C.JOB_CREATED)[0]
        peers.wait_for(lambda: handle in store.committed, 10)
        self.assertEqual([], server.violations)

    def test_backed_up_replies_wait_for_the_commit(self):
        server, store = self._server()
        jobs = peers.scale(20000, 100000)
        batch = 200
        # A small receive window keeps the server's output for this
        # client backed up, so reads and writes share loop turns.
        with peers.RawPeer(server.port, rcvbuf=4096) as client:
            created = 0
            sent = 0
            while sent < jobs:
                client.send(b''.join(
                    peers.req(C.SUBMIT_JOB_BG, 'audit', 'u%d' % i, 'x')
                    for i in range(sent, sent + batch)))
                sent += batch
                # Read only part of what is due, keeping a backlog.
                while created < sent - 4 * batch:
                    client.expect(C.JOB_CREATED)
                    created += 1
            while created < sent:
                client.expect(C.JOB_CREATED)
                created += 1
        self.assertEqual(jobs, created)
        self.assertEqual(jobs, len(store.committed))
        self.assertEqual([], server.violations[:10],
                         '%d JOB_CREATED replies left before their job was '
                         'committed' % len(server.violations))
