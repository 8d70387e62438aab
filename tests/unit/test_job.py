"""Job classes: attribute semantics, text variants and worker-side sends."""

import fixtures
import testtools

import gear
from gear import constants


class RecordingConnection(object):
    def __init__(self):
        self.sent = []

    def sendPacket(self, packet):
        self.sent.append(packet)


class TestJob(testtools.TestCase):

    def test_names_and_bytes(self):
        job = gear.Job(b'test', b'testdata')
        self.assertEqual('test', job.name)
        self.assertEqual(b'test', job.binary_name)
        self.assertEqual(b'testdata', job.arguments)
        self.assertIsNone(job.unique)
        job = gear.Job('test', b'testdata', 'u1')
        self.assertEqual(b'u1', job.unique)
        self.assertEqual(b'u1', job.binary_unique)

    def test_arguments_must_be_bytes(self):
        self.assertRaises(TypeError, gear.Job, 'f', 'text')
        self.assertRaises(TypeError, gear.Job, 'f', None)
        gear.Job('f', bytearray(b'ok'))

    def test_initial_attributes(self):
        job = gear.Job('f', b'')
        self.assertEqual([], job.data)
        self.assertIsNone(job.exception)
        self.assertFalse(job.warning)
        self.assertFalse(job.complete)
        self.assertFalse(job.failure)
        self.assertIsNone(job.numerator)
        self.assertIsNone(job.denominator)
        self.assertIsNone(job.fraction_complete)
        self.assertIsNone(job.known)
        self.assertIsNone(job.running)
        self.assertIsNone(job.handle)
        self.assertIsNone(job.connection)
        self.assertFalse(job.disconnected)

    def test_data_setter_checks_type(self):
        job = gear.Job('f', b'')
        job.data = [b'a']
        self.assertEqual([b'a'], job.data)
        self.assertRaises(ValueError, setattr, job, 'data', (b'a',))
        text = gear.TextJob('f', '')
        self.assertRaises(ValueError, setattr, text, 'data', [])
        text.data = gear.TextList()

    def test_binary_data(self):
        job = gear.TextJob('f', 'x')
        job.data.append(b'one')
        job.data.append('two')
        self.assertEqual([b'one', b'two'], list(job.binary_data))

    def test_ad_hoc_attributes_allowed(self):
        job = gear.Job('f', b'')
        job.build = 'anything'
        self.assertEqual('anything', job.build)

    def test_repr(self):
        job = gear.Job('f', b'', b'u')
        job.handle = b'H:1'
        self.assertTrue(repr(job).startswith('<gear.Job 0x'))
        self.assertIn("handle: b'H:1' name: f unique: b'u'>", repr(job))

    def test_binary_job_keeps_name_bytes(self):
        job = gear.BinaryJob(b'f', b'')
        self.assertEqual(b'f', job.name)
        job = gear.BinaryJob('f', b'')
        self.assertEqual(b'f', job.name)


class TestTextJob(testtools.TestCase):

    def test_text_fields(self):
        job = gear.TextJob('f', 'arguments', 'unique')
        self.assertEqual('arguments', job.arguments)
        self.assertEqual(b'arguments', job.binary_arguments)
        self.assertEqual('unique', job.unique)
        self.assertEqual(b'unique', job.binary_unique)
        job.arguments = 'other'
        self.assertEqual(b'other', job.binary_arguments)

    def test_exception_is_text(self):
        job = gear.TextJob('f', '')
        job.exception = b'boom'
        self.assertEqual('boom', job.exception)

    def test_text_list(self):
        items = gear.TextList()
        items.append(b'a')
        items.insert(0, b'b')
        items.extend([b'c', 'd'])
        self.assertEqual(['b', 'a', 'c', 'd'], items)


class TestWorkerJob(testtools.TestCase):

    def setUp(self):
        super(TestWorkerJob, self).setUp()
        self.conn = RecordingConnection()

    def make(self, cls=gear.WorkerJob, unique=None):
        job = cls(b'H:1', b'fn', b'args', unique)
        job.connection = self.conn
        return job

    def test_attributes(self):
        job = self.make(unique=b'u')
        self.assertEqual(b'H:1', job.handle)
        self.assertEqual('fn', job.name)
        self.assertEqual(b'args', job.arguments)
        self.assertEqual(b'u', job.unique)
        self.assertIsNone(self.make().unique)

    def test_packets(self):
        job = self.make()
        job.sendWorkData(b'd')
        job.sendWorkWarning(b'w')
        job.sendWorkStatus(1, 4)
        job.sendWorkComplete(b'done')
        job.sendWorkFail()
        job.sendWorkException(b'exc')
        expected = [
            (constants.WORK_DATA, b'H:1\x00d'),
            (constants.WORK_WARNING, b'H:1\x00w'),
            (constants.WORK_STATUS, b'H:1\x001\x004'),
            (constants.WORK_COMPLETE, b'H:1\x00done'),
            (constants.WORK_FAIL, b'H:1'),
            (constants.WORK_EXCEPTION, b'H:1\x00exc'),
        ]
        self.assertEqual(expected,
                         [(p.ptype, p.data) for p in self.conn.sent])
        for packet in self.conn.sent:
            self.assertEqual(constants.REQ, packet.code)

    def test_default_empty_data(self):
        self.make().sendWorkComplete()
        self.assertEqual(b'H:1\x00', self.conn.sent[0].data)

    def test_text_worker_job(self):
        job = self.make(gear.TextWorkerJob, unique=b'u')
        self.assertEqual('args', job.arguments)
        self.assertEqual('u', job.unique)
        job.sendWorkData('dätä')
        job.sendWorkComplete('ok')
        self.assertEqual('H:1\x00dätä'.encode('utf-8'),
                         self.conn.sent[0].data)
        self.assertEqual(b'H:1\x00ok', self.conn.sent[1].data)

    def test_binary_worker_job(self):
        self.assertEqual(b'fn', self.make(gear.BinaryWorkerJob).name)

    def test_sends_report_whether_they_were_sent(self):
        job = self.make()
        self.assertTrue(job.sendWorkData(b'd'))
        self.assertTrue(job.sendWorkStatus(1, 2))
        self.assertTrue(job.sendWorkComplete(b'r'))

    def test_lost_connection_drops_without_raising(self):
        job = self.make()
        self.conn.connected = False
        logger = self.useFixture(fixtures.FakeLogger('gear.WorkerJob'))
        self.assertFalse(job.sendWorkData(b'd'))
        self.assertFalse(job.sendWorkException(b'e'))
        self.assertEqual([], self.conn.sent)
        self.assertIn('connection to', logger.output)

    def test_a_reconnected_connection_is_not_the_jobs(self):
        # The Worker notes the connection generation the job came on.
        self.conn._generation = 1
        job = self.make()
        job._generation = 1
        self.assertTrue(job.sendWorkStatus(1, 2))
        self.conn._generation = 2
        self.assertFalse(job.sendWorkComplete(b'stale'))
        self.assertEqual(1, len(self.conn.sent))

    def test_connection_error_is_not_raised(self):
        job = self.make()

        def refuse(packet):
            raise gear.ConnectionError('Not connected')
        self.conn.sendPacket = refuse
        self.assertFalse(job.sendWorkWarning(b'w'))


class TestFunctionRecord(testtools.TestCase):

    def test_record(self):
        record = gear.FunctionRecord('fn', 1000)
        self.assertEqual(b'fn', record.name)
        self.assertEqual(1000, record.timeout)
        self.assertTrue(repr(record).startswith('<gear.FunctionRecord 0x'))
        self.assertIn("name: b'fn' timeout: 1000>", repr(record))
