"""Rendezvous hashing of uniques over servers, and the clients' use of it.
"""

import collections
import subprocess
import sys

import testtools

import gear
from gear import constants, hashing
from gear.gearman import GearmanClient
from tests.unit.test_client import ClientTestCase, RecordingConnection, res
from tests.util import child_env

SERVERS = [('10.0.0.1', 4730), ('10.0.0.2', 4730), ('10.0.0.3', 4731)]


def order(unique, servers=SERVERS):
    return hashing.rendezvous_order(unique, servers,
                                    lambda s: hashing.server_key(*s))


class TestRendezvousOrder(testtools.TestCase):

    def test_every_server_once_owner_first(self):
        for unique in (b'a', b'job-1', 'text-unique'):
            ranked = order(unique)
            self.assertEqual(sorted(SERVERS), sorted(ranked))

    def test_same_order_in_another_process(self):
        # Python's hash() changes with PYTHONHASHSEED; the order must not.
        code = ('from gear import hashing; print([hashing.rendezvous_order('
                'b"u%%d" %% i, %r, lambda s: hashing.server_key(*s))[0] '
                'for i in range(50)])' % (SERVERS,))
        env = child_env()
        env['PYTHONHASHSEED'] = '12345'
        out = subprocess.run([sys.executable, '-c', code], env=env,
                             check=True, capture_output=True, text=True)
        here = [order(b'u%d' % i)[0] for i in range(50)]
        self.assertEqual(repr(here), out.stdout.strip())

    def test_keys_spread_over_servers(self):
        owners = collections.Counter(order(b'key-%d' % i)[0]
                                     for i in range(3000))
        for server in SERVERS:
            # An even share is 1000; allow wide statistical slack.
            self.assertGreater(owners[server], 800, owners)

    def test_removing_a_server_moves_only_its_keys(self):
        gone = SERVERS[1]
        rest = [s for s in SERVERS if s != gone]
        for i in range(500):
            unique = b'key-%d' % i
            full = order(unique)
            # The survivors keep their relative order: a key owned by a
            # survivor stays put, one owned by the lost server moves to
            # its second choice.
            self.assertEqual([s for s in full if s != gone],
                             order(unique, rest))

    def test_server_key_spelling(self):
        self.assertEqual(b'h:4730', hashing.server_key('h', 4730))
        self.assertEqual(b'h:4730', hashing.server_key(b'h', '4730'))


class TestClientHashing(ClientTestCase):

    def setUp(self):
        super(TestClientHashing, self).setUp()
        self.conns = []
        for name in ('a', 'b', 'c'):
            conn = self.add(RecordingConnection(name))
            conn.on_send = self.answer_created(
                [b'H:%s:%d' % (name.encode(), i) for i in range(100)])
            self.conns.append(conn)

    def owner_order(self, unique):
        return hashing.rendezvous_order(
            unique, self.conns, lambda c: hashing.server_key(c.host, c.port))

    def submit(self, unique, **kw):
        job = gear.Job('fn', b'x', unique)
        self.client.submitJob(job, **kw)
        return job.connection

    def test_same_unique_same_server(self):
        for i in range(20):
            unique = b'u-%d' % i
            expected = self.owner_order(unique)[0]
            self.assertIs(expected, self.submit(unique))
            self.assertIs(expected, self.submit(unique, background=True))

    def test_owner_down_goes_to_next_in_key_order(self):
        unique = b'some-key'
        first, second, _ = self.owner_order(unique)
        with self.client.connections_condition:
            self.client.active_connections.remove(first)
            self.client.inactive_connections.append(first)
        self.assertIs(second, self.submit(unique))

    def test_refusal_moves_on_in_key_order(self):
        unique = b'refused-key'
        first, second, _ = self.owner_order(unique)

        def refuse(conn, packet):
            self.client.handlePacket(res(
                constants.ERROR, b'QUEUE_ERROR\x00full', conn))
        first.on_send = refuse
        self.assertIs(second, self.submit(unique))

    def test_no_unique_takes_turns(self):
        used = collections.Counter(self.submit(None) for _ in range(6))
        self.assertEqual([2, 2, 2], sorted(used.values()))
        # A background job gets a generated unique, still in turn.
        used = collections.Counter(self.submit(None, background=True)
                                   for _ in range(6))
        self.assertEqual([2, 2, 2], sorted(used.values()))

    def test_dash_unique_hashes_the_arguments(self):
        for i in range(10):
            arguments = b'payload-%d' % i
            expected = self.owner_order(arguments)[0]
            job = gear.Job('fn', arguments, b'-')
            self.client.submitJob(job)
            self.assertIs(expected, job.connection)

    def test_switched_off_takes_turns(self):
        self.client.hash_uniques = False
        used = collections.Counter(self.submit(b'same') for _ in range(6))
        self.assertEqual([2, 2, 2], sorted(used.values()))

    def test_status_unique_asks_the_owner_first(self):
        unique = b'status-key'
        first = self.owner_order(unique)[0]

        def known(conn, packet):
            if packet.ptype == constants.GET_STATUS_UNIQUE:
                self.client.handlePacket(res(
                    constants.STATUS_RES_UNIQUE,
                    b'%s\x001\x000\x000\x000\x001' % unique, conn))
        first.on_send = known
        result = self.client.getStatusUnique(unique, timeout=5)
        self.assertTrue(result[0])
        for conn in self.conns:
            if conn is not first:
                self.assertEqual([], conn.sent)

    def test_status_unique_falls_back_to_the_others(self):
        unique = b'elsewhere'
        first, second, third = self.owner_order(unique)

        def answer(is_known):
            def on_send(conn, packet):
                self.client.handlePacket(res(
                    constants.STATUS_RES_UNIQUE,
                    b'%s\x00%d\x000\x000\x000\x000' % (unique, is_known),
                    conn))
            return on_send
        first.on_send = answer(0)
        second.on_send = answer(1)
        third.on_send = answer(0)
        result = self.client.getStatusUnique(unique, timeout=5)
        self.assertTrue(result[0])
        self.assertEqual(1, len(first.sent))
        self.assertEqual([], third.sent)


class TestFacadeHashing(testtools.TestCase):

    def setUp(self):
        super(TestFacadeHashing, self).setUp()
        self.client = GearmanClient(['h1:4730', 'h2:4730', 'h3:4731'])
        self.addCleanup(self.client.shutdown)

    def request(self, unique):
        return self.client._create_request_from_dictionary(
            dict(task='fn', data='x', unique=unique))

    def test_given_unique_is_hashed(self):
        servers = self.client.host_list
        for i in range(10):
            unique = 'u-%d' % i
            expected = hashing.rendezvous_order(
                unique.encode(), servers,
                lambda a: hashing.server_key(a.host, a.port))
            self.assertEqual(expected,
                             self.client._server_order(self.request(unique)))

    def test_same_owner_as_gear_client(self):
        # A facade and a gear.Client configured alike pick one server.
        servers = self.client.host_list
        conns = [RecordingConnection() for _ in servers]
        for conn, address in zip(conns, servers):
            conn.host, conn.port = address.host, address.port
        for i in range(10):
            unique = 'same-%d' % i
            facade = self.client._server_order(self.request(unique))[0]
            index = conns.index(hashing.rendezvous_order(
                unique.encode(), conns,
                lambda c: hashing.server_key(c.host, c.port))[0])
            self.assertEqual(servers[index], facade)

    def test_dash_unique_hashes_the_payload(self):
        servers = self.client.host_list
        request = self.client._create_request_from_dictionary(
            dict(task='fn', data='the payload', unique='-'))
        self.assertEqual(
            hashing.rendezvous_order(
                b'the payload', servers,
                lambda a: hashing.server_key(a.host, a.port)),
            self.client._server_order(request))

    def test_generated_unique_and_switched_off_are_shuffled(self):
        seen = set()
        for _ in range(60):
            seen.add(self.client._server_order(self.request(None))[0])
        self.assertEqual(3, len(seen))
        self.client.hash_uniques = False
        seen = set()
        for _ in range(60):
            seen.add(self.client._server_order(self.request('fixed'))[0])
        self.assertEqual(3, len(seen))


class TestRoutingKey(testtools.TestCase):

    def test_unique_arguments_or_nothing(self):
        self.assertEqual(b'u', hashing.routing_key(b'u', b'args'))
        # The server uses the arguments as the unique of a '-' job.
        self.assertEqual(b'args', hashing.routing_key(b'-', b'args'))
        self.assertIsNone(hashing.routing_key(b'', b'args'))
        self.assertIsNone(hashing.routing_key(None, b'args'))
