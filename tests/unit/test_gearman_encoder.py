"""Data encoders of the python-gearman facade."""

import pickle

import testtools

import gear.gearman as gearman
from gear.gearman import connection_manager


class TestEncoders(testtools.TestCase):

    def test_base_is_abstract(self):
        self.assertRaises(NotImplementedError, gearman.DataEncoder.encode,
                          b'x')
        self.assertRaises(NotImplementedError, gearman.DataEncoder.decode,
                          b'x')

    def test_noop_encode(self):
        enc = gearman.NoopEncoder
        self.assertEqual(b'abc', enc.encode(b'abc'))
        self.assertEqual(b'abc', enc.encode(bytearray(b'abc')))
        self.assertEqual('é'.encode('utf-8'), enc.encode('é'))
        for bad in (None, 1, 1.5, object(), ['x']):
            self.assertRaises(TypeError, enc.encode, bad)

    def test_noop_decode(self):
        enc = gearman.NoopEncoder
        self.assertEqual(b'\x00\xff', enc.decode(b'\x00\xff'))
        self.assertIsInstance(enc.decode(bytearray(b'a')), bytes)
        self.assertRaises(TypeError, enc.decode, 'text')

    def test_subclass_round_trip(self):
        class PickleDataEncoder(gearman.DataEncoder):
            @classmethod
            def encode(cls, encodable_object):
                return pickle.dumps(encodable_object)

            @classmethod
            def decode(cls, decodable_string):
                return pickle.loads(decodable_string)

        obj = {'hello': 'there'}
        self.assertEqual(obj, PickleDataEncoder.decode(
            PickleDataEncoder.encode(obj)))

    def test_python_gearman_module_path(self):
        self.assertIs(gearman.NoopEncoder, connection_manager.NoopEncoder)
        self.assertIs(gearman.DataEncoder, connection_manager.DataEncoder)
        self.assertIs(gearman.NoopEncoder, gearman.GearmanClient.data_encoder)
        self.assertIs(gearman.NoopEncoder, gearman.GearmanWorker.data_encoder)
