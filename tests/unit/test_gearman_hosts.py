"""host_list parsing of the python-gearman facade (no sockets)."""

import testtools

from gear.gearman import errors
from gear.gearman.hosts import ServerAddress, parse_host_list


class TestHostList(testtools.TestCase):

    def test_none_and_empty(self):
        self.assertEqual([], parse_host_list(None))
        self.assertEqual([], parse_host_list([]))

    def test_host_only_uses_default_port(self):
        self.assertEqual([ServerAddress('localhost', 4730)],
                         parse_host_list(['localhost']))

    def test_host_and_port(self):
        self.assertEqual([ServerAddress('127.0.0.1', 4731)],
                         parse_host_list(['127.0.0.1:4731']))

    def test_bracketed_ipv6_with_and_without_port(self):
        self.assertEqual([ServerAddress('::1', 4740),
                          ServerAddress('fe80::1', 4730)],
                         parse_host_list(['[::1]:4740', '[fe80::1]']))

    def test_bare_ipv6_is_a_host(self):
        self.assertEqual([ServerAddress('::1', 4730)],
                         parse_host_list(['::1']))

    def test_tuples_and_lists_are_accepted(self):
        self.assertEqual([ServerAddress('127.0.0.1', 4732),
                          ServerAddress('::1', 4733),
                          ServerAddress('example', 4730)],
                         parse_host_list([('127.0.0.1', 4732),
                                          ['[::1]', '4733'], ('example',)]))

    def test_tls_dict(self):
        entry = dict(host='127.0.0.1', port=4730, keyfile='k.pem',
                     certfile='c.pem', ca_certs='ca.pem')
        [address] = parse_host_list([entry])
        self.assertEqual(('127.0.0.1', 4730, 'k.pem', 'c.pem', 'ca.pem'),
                         tuple(address))
        self.assertTrue(address.use_ssl)
        self.assertFalse(ServerAddress('h', 1).use_ssl)

    def test_tls_dict_needs_every_key(self):
        entry = dict(host='127.0.0.1', port=4730, keyfile='k.pem',
                     certfile='c.pem')
        e = self.assertRaises(errors.GearmanError, parse_host_list, [entry])
        self.assertIn('ca_certs', str(e))

    def test_single_string_is_one_entry(self):
        self.assertEqual([ServerAddress('h', 1)], parse_host_list('h:1'))

    def test_duplicates_are_dropped_in_order(self):
        self.assertEqual([ServerAddress('b', 1), ServerAddress('a', 1)],
                         parse_host_list(['b:1', 'a:1', ('b', 1)]))

    def test_bytes_host(self):
        self.assertEqual([ServerAddress('h', 2)], parse_host_list([b'h:2']))

    def test_bad_entries_raise(self):
        for bad in (['h:notaport'], ['h:0'], ['h:70000'], [':1'], [''],
                    ['[::1'], ['[::1]x'], [42], [('h', 1, 2)], [('h', True)]):
            self.assertRaises(errors.GearmanError, parse_host_list, bad)
