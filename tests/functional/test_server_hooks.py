"""gear 0.16's server hooks: a subclass overriding them sees the same
traffic, and its peers get the same bytes, as with a plain Server.

The differential test runs one protocol scenario against a plain
``gear.Server`` and against a subclass that overrides the hooks (each
override calls the base method, and records that it ran), then compares
every packet each client and worker received.
"""

import gear
from gear import constants as c
from gear.protocol import pack

from tests.functional.test_server_base import ServerTestCase

MASS_DO = 101
# Registrations the scenario sends in one write.
RUN = 200


class CountingServer(gear.Server):
    """Counts the calls of its overrides (in ``calls``)."""

    def __init__(self, *args, **kwargs):
        self.calls = {}
        self.packet_types = []
        super(CountingServer, self).__init__(*args, **kwargs)

    def _called(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1


class HookedServer(CountingServer):
    """Overrides gear's hooks without changing what they do."""

    def handlePacket(self, packet):
        self._called('handlePacket')
        self.packet_types.append(packet.ptype)
        return super(HookedServer, self).handlePacket(packet)

    def getJobForConnection(self, connection, peek=False):
        self._called('getJobForConnection')
        return super(HookedServer, self).getJobForConnection(
            connection, peek)

    def handleCanDo(self, packet):
        self._called('handleCanDo')
        return super(HookedServer, self).handleCanDo(packet)

    def handleSubmitJob(self, packet):
        self._called('handleSubmitJob')
        return super(HookedServer, self).handleSubmitJob(packet)

    def handleWorkComplete(self, packet):
        self._called('handleWorkComplete')
        return super(HookedServer, self).handleWorkComplete(packet)

    def sendJobAssignUniq(self, connection, job):
        self._called('sendJobAssignUniq')
        return super(HookedServer, self).sendJobAssignUniq(connection, job)

    def wakeConnections(self, job=None):
        self._called('wakeConnections')
        return super(HookedServer, self).wakeConnections(job)


class StepHookedServer(CountingServer):
    """Overrides gear's steps shared by several hooks, and the private
    seams gear callers use, without changing what they do."""

    def _handleSubmitJob(self, packet, precedence, background=False):
        self._called('_handleSubmitJob')
        return super(StepHookedServer, self)._handleSubmitJob(
            packet, precedence, background)

    def handlePassthrough(self, packet, finished=False):
        self._called('handlePassthrough')
        return super(StepHookedServer, self).handlePassthrough(
            packet, finished)

    def sendJobAssign(self, connection, job):
        self._called('sendJobAssign')
        return super(StepHookedServer, self).sendJobAssign(connection, job)

    def _unregisterConnection(self, conn):
        self._called('_unregisterConnection')
        return super(StepHookedServer, self)._unregisterConnection(conn)


class MassDoServer(gear.Server):
    """Zuul's pattern: a private packet type registers many functions by
    replacing the connection's set of names."""

    def handlePacket(self, packet):
        if packet.ptype != MASS_DO:
            return super(MassDoServer, self).handlePacket(packet)
        packet.connection.functions = set()
        for name in packet.data.split(b'\x00'):
            packet.connection.functions.add(name)
            self.functions.add(name)


class Transcript(object):
    """The packets one peer received, read up to an ECHO barrier."""

    def __init__(self, peer):
        self.peer = peer
        self.packets = []

    def collect(self):
        self.peer.send(c.ECHO_REQ, b'barrier')
        while True:
            magic, ptype, data = self.peer.read()
            if ptype == c.ECHO_RES and data == b'barrier':
                return
            self.packets.append((magic, ptype, data))


def scenario(test, server):
    """Drive one server; return {peer name: packets received}."""
    names = ('client', 'other', 'w1', 'w2')
    peers = {n: Transcript(test.connect(server)) for n in names}

    def step(name, ptype, *args, **kw):
        peers[name].peer.send(ptype, *args, **kw)
        for n in names:
            peers[n].collect()

    def raw(name, data):
        peers[name].peer.sendRaw(data)
        for n in names:
            peers[n].collect()

    step('w1', c.CAN_DO, b'fn')
    # A run of registrations in one write (the plain server takes it
    # at once), a CANT_DO in the middle.
    raw('w2', b''.join(pack(c.REQ, c.CAN_DO, b'r%d' % i)
                       for i in range(RUN)) +
        pack(c.REQ, c.CANT_DO, b'r7') + pack(c.REQ, c.CAN_DO, b'r8') +
        pack(c.REQ, c.CAN_DO, b'r7'))
    step('w1', c.PRE_SLEEP)
    step('client', c.SUBMIT_JOB, b'fn', b'u1', b'one')       # wakes w1
    step('other', c.SUBMIT_JOB, b'fn', b'u1', b'one')        # coalesced
    step('client', c.SUBMIT_JOB_BG, b'fn', b'', b'bg')
    step('client', c.SUBMIT_JOB_HIGH, b'fn', b'', b'high')
    step('client', c.OPTION_REQ, b'exceptions')
    step('w1', c.GRAB_JOB_UNIQ)                               # high
    step('w1', c.WORK_STATUS, b'H:test:3', b'1', b'2')
    step('w1', c.WORK_EXCEPTION, b'H:test:3', b'boom')
    step('w1', c.GRAB_JOB_UNIQ)                               # u1
    step('w1', c.WORK_DATA, b'H:test:1', b'part')
    step('w1', c.WORK_WARNING, b'H:test:1', b'hm')
    step('client', c.GET_STATUS, b'H:test:1')
    step('w1', c.WORK_COMPLETE, b'H:test:1', b'done')
    step('w2', c.CAN_DO_TIMEOUT, b'fn', b'60')
    step('w2', c.GRAB_JOB_ALL)                                # bg
    step('w2', c.CANT_DO, b'fn')                              # requeued
    step('w1', c.GRAB_JOB)
    step('w1', c.WORK_FAIL, b'H:test:2')
    step('w1', c.WORK_COMPLETE, b'H:test:2', b'late')         # ERROR
    step('w1', c.GRAB_JOB_UNIQ)                               # NO_JOB
    step('client', c.SUBMIT_JOB_LOW, b'fn', b'', b'low')
    step('w1', c.GRAB_JOB_UNIQ)
    step('w1', c.RESET_ABILITIES)                             # requeued
    step('w2', c.CAN_DO, b'fn')
    step('w2', c.GRAB_JOB_UNIQ)
    step('w2', c.WORK_COMPLETE, b'H:test:4', b'')
    step('client', c.SUBMIT_JOB, b'fn', b'', b'lost')
    step('w2', c.GRAB_JOB_UNIQ)
    peers['w2'].peer.close()                                  # requeued
    peers.pop('w2')
    names = ('client', 'other', 'w1')
    step('w1', c.CAN_DO, b'fn')
    step('w1', c.GRAB_JOB_UNIQ)
    step('w1', c.WORK_COMPLETE, b'H:test:5', b'ok')
    step('client', c.SET_CLIENT_ID, b'me')
    step('client', c.GET_STATUS_UNIQUE, b'u1')
    step('client', c.SUBMIT_JOB, b'fn', b'', b'x', magic=c.RES)  # ERROR
    out = {n: peers[n].packets for n in names}
    out['status'] = peers['client'].peer.adminList(b'status')
    return out


class TestHooksDifferential(ServerTestCase):

    def assertSameTranscripts(self, server_class, hooks):
        """The scenario gives every peer of a ``server_class`` server the
        bytes it gives them on a plain Server, and each of ``hooks`` ran;
        returns (plain transcripts, that server)."""
        plain = scenario(self, self.server)
        server = server_class(0, host='127.0.0.1', job_handle_prefix='H:test')
        self.addCleanup(server.shutdown)
        other = scenario(self, server)
        for name in sorted(plain):
            self.assertEqual(plain[name], other[name], name)
        for name in hooks:
            self.assertGreater(server.calls.get(name, 0), 0, name)
        return plain, server

    def test_same_bytes_with_and_without_overrides(self):
        # No override was bypassed.
        plain, hooked_server = self.assertSameTranscripts(HookedServer, (
            'handlePacket', 'getJobForConnection', 'handleCanDo',
            'handleSubmitJob', 'handleWorkComplete', 'sendJobAssignUniq',
            'wakeConnections'))
        # The transcripts are not empty: the scenario did happen.
        self.assertIn((c.RES, c.WORK_COMPLETE, b'H:test:1\x00done'),
                      plain['other'])
        self.assertIn((c.RES, c.WORK_EXCEPTION, b'H:test:3\x00boom'),
                      plain['client'])
        # The registrations sent in one write reached the hook one by
        # one: the scenario's CAN_DOs but those of the run, and the run's.
        self.assertEqual(3 + RUN + 2, hooked_server.calls['handleCanDo'])
        self.assertIn(b'r199\t0\t0\t0\n', plain['status'])
        # handlePacket saw every request packet, ECHO barriers included.
        self.assertIn(c.ECHO_REQ, hooked_server.packet_types)
        self.assertIn(c.RESET_ABILITIES, hooked_server.packet_types)

    def test_same_bytes_with_shared_steps_overridden(self):
        # w1 got the lost job (H:test:5) only after w2's connection was
        # dropped through _unregisterConnection.
        self.assertSameTranscripts(StepHookedServer, (
            '_handleSubmitJob', 'handlePassthrough', '_unregisterConnection'))


class TestUnknownPacketTypes(ServerTestCase):

    def test_plain_server_closes_on_unknown_type(self):
        peer = self.connect()
        peer.sendRaw(pack(c.REQ, MASS_DO, b'fn'))
        peer.assertClosed()

    def test_handle_packet_sees_private_types(self):
        # gearmand's semantics, so that dropping a function requeues.
        server = MassDoServer(0, host='127.0.0.1',
                              job_handle_prefix='H:test',
                              semantics='gearmand')
        self.addCleanup(server.shutdown)
        client = self.connect(server)
        worker = self.connect(server)
        handle = client.submit(b'b', b'data', b'u', c.SUBMIT_JOB_BG)
        worker.sendRaw(pack(c.REQ, MASS_DO, b'a\x00b\x00c'))
        self.assertEqual([handle, b'b', b'u', b'data'], worker.grab())
        self.assertEqual(b'b\t1\t1\t1\na\t0\t0\t1\nc\t0\t0\t1\n.\n',
                         client.adminList(b'status'))
        # A second MASS_DO replaces the set: 'a' and 'c' are gone, and
        # the running job of 'b' (no longer held) is requeued.
        worker.sendRaw(pack(c.REQ, MASS_DO, b'd'))
        worker.sync()
        self.assertEqual(b'b\t1\t0\t0\na\t0\t0\t0\nc\t0\t0\t0\n'
                         b'd\t0\t0\t1\n.\n', client.adminList(b'status'))
        # Types nobody handles still close the connection.
        worker.sendRaw(pack(c.REQ, 102, b''))
        worker.assertClosed()
