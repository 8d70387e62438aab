"""The server's handle index: numbered handles in chunks, others in a dict.
"""

import testtools

from gear.server.handles import CHUNK, HandleIndex


class Job(object):
    def __init__(self, handle):
        self.handle = handle


class TestHandleIndex(testtools.TestCase):

    def setUp(self):
        super(TestHandleIndex, self).setUp()
        self.index = HandleIndex(b'H:test:')

    def add(self, handle):
        job = Job(handle)
        self.index[handle] = job
        return job

    def test_numbered_handles_use_chunks(self):
        job = self.add(b'H:test:5')
        self.assertIs(job, self.index[b'H:test:5'])
        self.assertEqual(1, len(self.index.chunks))
        self.assertEqual(1, len(self.index))
        self.assertIn(b'H:test:5', self.index)

    def test_put_by_number_matches_the_handle(self):
        job = Job(b'H:test:77')
        self.index.put(77, job)
        self.assertIs(job, self.index.get(b'H:test:77'))

    def test_other_spellings_are_other_handles(self):
        five = self.add(b'H:test:5')
        zero_five = self.add(b'H:test:05')
        spaced = self.add(b'H:test: 5')
        foreign = self.add(b'H:elsewhere:5')
        self.assertIs(five, self.index[b'H:test:5'])
        self.assertIs(zero_five, self.index[b'H:test:05'])
        self.assertIs(spaced, self.index[b'H:test: 5'])
        self.assertIs(foreign, self.index[b'H:elsewhere:5'])
        self.assertEqual(4, len(self.index))
        self.assertIsNone(self.index.get(b'H:test:6'))
        self.assertIsNone(self.index.get('H:test:5'))

    def test_empty_chunk_is_freed(self):
        jobs = [self.add(b"H:test:%d" % n)
                for n in range(CHUNK - 2, CHUNK + 2)]
        self.assertEqual(2, len(self.index.chunks))
        for job in jobs[:2]:
            del self.index[job.handle]
        self.assertEqual(1, len(self.index.chunks))
        self.assertEqual(2, len(self.index))

    def test_delete_missing_raises_key_error(self):
        self.assertRaises(KeyError, self.index.__delitem__, b'H:test:1')
        self.assertRaises(KeyError, self.index.__delitem__, b'H:x:1')
        self.assertRaises(KeyError, self.index.__getitem__, b'H:test:1')

    def test_discard_only_removes_the_same_job(self):
        job = self.add(b'H:test:1')
        self.index.discard(b'H:test:1', Job(b'H:test:1'))
        self.assertIs(job, self.index[b'H:test:1'])
        self.index.discard(b'H:test:1', job)
        self.assertEqual(0, len(self.index))

    def test_discard_of_other_spellings_leaves_the_numbered_job(self):
        # discard() reads the number without checking the spelling: a
        # handle that parses to a taken slot must not empty it.
        five = self.add(b'H:test:5')
        others = [self.add(h) for h in (
            b'H:test:05', b'H:test: 5', b'H:test:+5', b'H:test:5 ',
            b'H:test:0_5', b'H:elsewhere:5', b'X:tset:5', b'H:test:-5',
            b'H:test:' + b'9' * 5000, b'H:test:x')]
        for job in others:
            self.index.discard(job.handle, job)
            self.assertIs(five, self.index[b'H:test:5'])
            self.assertIsNone(self.index.get(job.handle))
        self.assertEqual(1, len(self.index))
        self.index.discard(b'H:test:5', five)
        self.assertEqual(0, len(self.index))
        self.assertEqual({}, self.index.chunks)

    def test_iteration_is_in_handle_order_then_others(self):
        for handle in (b'H:other:1', b'H:test:%d' % (CHUNK + 3),
                       b'H:test:2', b'H:test:10'):
            self.add(handle)
        expected = [b'H:test:2', b'H:test:10', b'H:test:%d' % (CHUNK + 3),
                    b'H:other:1']
        self.assertEqual(expected, list(self.index))
        self.assertEqual(expected, [j.handle for j in self.index.values()])
        self.assertEqual(expected, [h for h, _ in self.index.items()])

    def test_dict_methods(self):
        job = self.add(b'H:test:1')
        self.assertIs(job, self.index.pop(b'H:test:1'))
        self.assertIsNone(self.index.pop(b'H:test:1', None))
        self.add(b'H:test:2')
        self.add(b'H:x:2')
        self.index.clear()
        self.assertEqual(0, len(self.index))
        self.assertEqual({}, dict(self.index))

    def test_without_prefix_every_handle_goes_to_the_dict(self):
        index = HandleIndex()
        job = Job(b'1')
        index[b'1'] = job
        self.assertIs(job, index[b'1'])
        self.assertEqual({}, index.chunks)
