"""Unit tests for gear.protocol: Packet, pack and InputBuffer framing."""

import re
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
import testtools

from gear import constants
from gear.errors import InvalidDataError, ProtocolError, UnknownJobError
from gear import protocol
from gear.protocol import InputBuffer, Packet


def header(code, ptype, size):
    return struct.pack('!4sII', code, ptype, size)


def packets_bytes(packets):
    return b''.join(p.toBinary() for p in packets)


def drain(buf):
    """Read every complete message: Packets for binary, bytes for lines."""
    out = []
    while True:
        kind = buf.nextIsBinary()
        if kind is None:
            return out
        if kind:
            item = buf.readPacket()
            if item is None:
                return out
            out.append(Packet(*item))
        else:
            line = buf.readLine()
            if line is None:
                return out
            out.append(line)


def parse_in_chunks(chunks, **kw):
    buf = InputBuffer(**kw)
    out = []
    for chunk in chunks:
        buf.feed(chunk)
        out.extend(drain(buf))
    return out, buf


def one_line_reply(data):
    """An is_complete for a reply that is one line (``version``)."""
    idx = data.find(b'\n')
    if idx < 0:
        return False, None
    return True, data[idx + 1:]


def multi_line_reply(data):
    """An is_complete for a reply that ends with a lone ``.`` line."""
    if data.startswith(b'.\n'):
        return True, data[2:]
    idx = data.find(b'\n.\n')
    if idx < 0:
        return False, None
    return True, data[idx + 3:]


def sample_packets():
    """A varied stream: every kind of argument layout, empty payloads,
    NULs in the tail, both magics."""
    R, S = constants.REQ, constants.RES
    return [
        Packet(R, constants.CAN_DO, b'reverse'),
        Packet(R, constants.CAN_DO_TIMEOUT, b'slow\x0030000'),
        Packet(R, constants.PRE_SLEEP, b''),
        Packet(S, constants.NOOP, b''),
        Packet(R, constants.GRAB_JOB_UNIQ, b''),
        Packet(S, constants.JOB_ASSIGN_UNIQ,
               b'H:lap:1\x00reverse\x00u-1\x00da\x00ta\x00'),
        Packet(R, constants.SUBMIT_JOB, b'reverse\x00\x00hello'),
        Packet(S, constants.JOB_CREATED, b'H:lap:2'),
        Packet(R, constants.WORK_STATUS, b'H:lap:1\x001\x0010'),
        Packet(R, constants.WORK_DATA, b'H:lap:1\x00\x00\x00\x00'),
        Packet(R, constants.WORK_COMPLETE, b'H:lap:1\x00' + b'x' * 3000),
        Packet(S, constants.STATUS_RES, b'H:lap:1\x001\x001\x001\x0010'),
        Packet(S, constants.ERROR, b'ERR_CODE\x00something went wrong'),
        Packet(R, constants.ECHO_REQ, b'\x00\x00\x00'),
        Packet(R, constants.SUBMIT_JOB_SCHED,
               b'f\x00u\x001\x002\x003\x004\x005\x00payload'),
        Packet(S, constants.STATUS_RES_UNIQUE, b'u\x001\x000\x000\x000\x002'),
    ]


class TestPack(testtools.TestCase):

    def test_pack_builds_header_and_payload(self):
        data = protocol.pack(constants.RES, constants.JOB_CREATED, b'H:lap:1')
        self.assertEqual(
            b'\x00RES\x00\x00\x00\x08\x00\x00\x00\x07H:lap:1', data)

    def test_pack_empty_payload(self):
        self.assertEqual(header(constants.REQ, constants.NOOP, 0),
                         protocol.pack(constants.REQ, constants.NOOP))

    def test_pack_matches_packet_to_binary(self):
        for p in sample_packets():
            self.assertEqual(p.toBinary(),
                             protocol.pack(p.code, p.ptype, p.data))

    def test_join_arguments(self):
        self.assertEqual(b'a\x00b\x00c',
                         protocol.join_arguments(b'a', b'b', b'c'))
        self.assertEqual(b'only', protocol.join_arguments(b'only'))
        self.assertEqual(b'', protocol.join_arguments())
        self.assertEqual(b'\x00', protocol.join_arguments(b'', b''))


class TestPacketConstruction(testtools.TestCase):

    def test_attributes(self):
        conn = object()
        p = Packet(constants.REQ, constants.CAN_DO, b'fn', connection=conn)
        self.assertEqual(constants.REQ, p.code)
        self.assertEqual(constants.CAN_DO, p.ptype)
        self.assertEqual(b'fn', p.data)
        self.assertIs(conn, p.connection)

    def test_connection_defaults_to_none(self):
        self.assertIsNone(Packet(constants.REQ, constants.NOOP, b'')
                          .connection)

    def test_code_must_be_bytes(self):
        self.assertRaises(TypeError, Packet, '\x00REQ', constants.NOOP, b'')
        self.assertRaises(TypeError, Packet, None, constants.NOOP, b'')
        self.assertRaises(TypeError, Packet, 0, constants.NOOP, b'')

    def test_data_must_be_bytes(self):
        self.assertRaises(TypeError, Packet, constants.REQ,
                          constants.CAN_DO, 'fn')
        self.assertRaises(TypeError, Packet, constants.REQ,
                          constants.CAN_DO, None)
        self.assertRaises(TypeError, Packet, constants.REQ,
                          constants.CAN_DO, memoryview(b'fn'))

    def test_code_must_start_with_nul(self):
        self.assertRaises(InvalidDataError, Packet, b'REQ\x00',
                          constants.NOOP, b'')
        self.assertRaises(InvalidDataError, Packet, b'',
                          constants.NOOP, b'')

    def test_invalid_data_error_is_not_type_error(self):
        e = self.assertRaises(InvalidDataError, Packet, b'xREQ',
                              constants.NOOP, b'')
        self.assertNotIsInstance(e, TypeError)

    def test_bytearray_accepted(self):
        p = Packet(bytearray(constants.REQ), constants.CAN_DO,
                   bytearray(b'fn'))
        self.assertEqual(b'fn', p.getArgument(0))
        self.assertEqual(protocol.pack(constants.REQ, constants.CAN_DO,
                                       b'fn'), p.toBinary())

    def test_trusted_constructor_equals_checked_one(self):
        a = Packet._trusted(constants.RES, constants.JOB_CREATED, b'H:1')
        b = Packet(constants.RES, constants.JOB_CREATED, b'H:1')
        self.assertEqual(a, b)
        self.assertIsNone(a.connection)
        self.assertEqual(b'H:1', a.getArgument(0))


class TestPacketEquality(testtools.TestCase):

    def test_equal_fields_equal(self):
        a = Packet(constants.REQ, constants.SUBMIT_JOB, b'f\x00u\x00d')
        b = Packet(constants.REQ, constants.SUBMIT_JOB, b'f\x00u\x00d')
        self.assertTrue(a == b)
        self.assertFalse(a != b)

    def test_connection_is_ignored(self):
        a = Packet(constants.REQ, constants.NOOP, b'', connection=1)
        b = Packet(constants.REQ, constants.NOOP, b'', connection=2)
        self.assertEqual(a, b)

    def test_bytes_and_bytearray_compare_equal(self):
        a = Packet(constants.REQ, constants.CAN_DO, b'fn')
        b = Packet(bytearray(constants.REQ), constants.CAN_DO,
                   bytearray(b'fn'))
        self.assertEqual(a, b)

    def test_each_field_matters(self):
        base = Packet(constants.REQ, constants.CAN_DO, b'fn')
        for other in (Packet(constants.RES, constants.CAN_DO, b'fn'),
                      Packet(constants.REQ, constants.CANT_DO, b'fn'),
                      Packet(constants.REQ, constants.CAN_DO, b'fn2')):
            self.assertFalse(base == other)
            self.assertTrue(base != other)

    def test_other_types_are_not_equal(self):
        p = Packet(constants.REQ, constants.CAN_DO, b'fn')
        self.assertFalse(p == p.toBinary())
        self.assertTrue(p != p.toBinary())
        self.assertFalse(p == None)  # noqa: E711 - testing __eq__ itself
        self.assertTrue(p != (constants.REQ, constants.CAN_DO, b'fn'))

    def test_unhashable(self):
        # Equality depends on mutable fields, so packets are not hashable.
        p = Packet(constants.REQ, constants.CAN_DO, b'fn')
        self.assertRaises(TypeError, hash, p)


class TestPacketToBinary(testtools.TestCase):

    def test_exact_bytes(self):
        p = Packet(constants.REQ, constants.SUBMIT_JOB, b'f\x00\x00data')
        self.assertEqual(
            b'\x00REQ' + struct.pack('!II', 7, 7) + b'f\x00\x00data',
            p.toBinary())

    def test_empty_payload(self):
        p = Packet(constants.REQ, constants.GRAB_JOB_UNIQ, b'')
        self.assertEqual(b'\x00REQ\x00\x00\x00\x1e\x00\x00\x00\x00',
                         p.toBinary())

    def test_returns_bytes_for_bytearray_data(self):
        p = Packet(constants.REQ, constants.CAN_DO, bytearray(b'fn'))
        self.assertIsInstance(p.toBinary(), bytes)

    def test_round_trip_through_input_buffer(self):
        for p in sample_packets():
            buf = InputBuffer()
            buf.feed(p.toBinary())
            self.assertEqual(p, Packet(*buf.readPacket()))
            self.assertEqual(0, len(buf))


class TestPacketArguments(testtools.TestCase):

    def test_job_assign_uniq_fields(self):
        p = Packet(constants.RES, constants.JOB_ASSIGN_UNIQ,
                   b'H:lap:1\x00reverse\x00u-1\x00payload')
        self.assertEqual(b'H:lap:1', p.getArgument(0))
        self.assertEqual(b'reverse', p.getArgument(1))
        self.assertEqual(b'u-1', p.getArgument(2))
        self.assertEqual(b'payload', p.getArgument(3))

    def test_nuls_in_the_tail_belong_to_the_last_argument(self):
        p = Packet(constants.RES, constants.JOB_ASSIGN_UNIQ,
                   b'H:1\x00fn\x00\x00a\x00b\x00')
        self.assertEqual(b'', p.getArgument(2))
        self.assertEqual(b'a\x00b\x00', p.getArgument(3))
        self.assertEqual(b'a\x00b\x00', p.getArgument(3, last=True))
        self.assertEqual([b'H:1', b'fn', b'', b'a\x00b\x00'], p.arguments)

    def test_last_joins_from_index_to_end(self):
        data = b'H:1\x00fn\x00uniq\x00pay\x00load'
        p = Packet(constants.RES, constants.JOB_ASSIGN_UNIQ, data)
        self.assertEqual(data, p.getArgument(0, last=True))
        self.assertEqual(b'fn\x00uniq\x00pay\x00load',
                         p.getArgument(1, last=True))
        self.assertEqual(b'uniq\x00pay\x00load', p.getArgument(2, last=True))

    def test_last_past_the_end_is_empty(self):
        p = Packet(constants.RES, constants.JOB_CREATED, b'H:1')
        self.assertEqual(b'', p.getArgument(3, last=True))

    def test_index_past_the_end_raises_index_error(self):
        p = Packet(constants.RES, constants.WORK_COMPLETE, b'H:1')
        self.assertEqual(b'H:1', p.getArgument(0))
        self.assertRaises(IndexError, p.getArgument, 1)

    def test_work_complete_data_keeps_nuls(self):
        p = Packet(constants.RES, constants.WORK_COMPLETE,
                   b'H:1\x00\x00bin\x00ary\x00')
        self.assertEqual(b'H:1', p.getArgument(0))
        self.assertEqual(b'\x00bin\x00ary\x00', p.getArgument(1))
        self.assertEqual(b'\x00bin\x00ary\x00', p.getArgument(1, last=True))

    def test_status_res_splits_all_five_fields(self):
        p = Packet(constants.RES, constants.STATUS_RES,
                   b'H:1\x001\x000\x003\x0010')
        self.assertEqual([b'H:1', b'1', b'0', b'3', b'10'], p.arguments)

    def test_empty_argument_list_for_types_without_arguments(self):
        for ptype in (constants.NOOP, constants.PRE_SLEEP,
                      constants.GRAB_JOB_UNIQ, constants.RESET_ABILITIES):
            p = Packet(constants.REQ, ptype, b'')
            self.assertEqual([], p.arguments)
            self.assertEqual(b'', p.getArgument(0, last=True))
            self.assertRaises(IndexError, p.getArgument, 0)

    def test_stray_payload_on_type_without_arguments_is_kept(self):
        p = Packet(constants.RES, constants.NOOP, b'a\x00b')
        self.assertEqual(b'a\x00b', p.getArgument(0))

    def test_unknown_type_splits_every_nul(self):
        p = Packet(constants.REQ, 5, b'a\x00b\x00c')
        self.assertEqual([b'a', b'b', b'c'], p.arguments)
        self.assertEqual(b'b\x00c', p.getArgument(1, last=True))

    def test_split_is_computed_once(self):
        p = Packet(constants.RES, constants.JOB_ASSIGN_UNIQ,
                   b'H:1\x00fn\x00u\x00data')
        first = p.arguments
        self.assertIs(first, p.arguments)
        p.getArgument(3)
        p.getArgument(1, last=True)
        self.assertIs(first, p.arguments)

    def test_bytearray_data_gives_bytes_arguments(self):
        p = Packet(constants.RES, constants.WORK_DATA,
                   bytearray(b'H:1\x00data'))
        self.assertIsInstance(p.getArgument(0), bytes)
        self.assertIsInstance(p.getArgument(1), bytes)


class TestPacketGetJob(testtools.TestCase):

    class FakeConnection(object):
        def __init__(self):
            self.related_jobs = {}

    def test_finds_job_by_handle(self):
        conn = self.FakeConnection()
        job = object()
        conn.related_jobs[b'H:1'] = job
        p = Packet(constants.RES, constants.WORK_COMPLETE, b'H:1\x00done',
                   connection=conn)
        self.assertIs(job, p.getJob())

    def test_unknown_handle_raises(self):
        p = Packet(constants.RES, constants.WORK_COMPLETE, b'H:2\x00done',
                   connection=self.FakeConnection())
        self.assertRaises(UnknownJobError, p.getJob)

    def test_get_job_can_be_replaced_per_instance(self):
        job = object()
        p = Packet(constants.RES, constants.STATUS_RES,
                   b'H:1\x001\x000\x000\x000')
        p.getJob = lambda: job
        self.assertIs(job, p.getJob())
        other = Packet(constants.RES, constants.STATUS_RES, b'H:1')
        self.assertNotIn('getJob', vars(other))


class TestPacketRepr(testtools.TestCase):

    def assertRepr(self, pattern, packet):
        self.assertThat(
            repr(packet),
            testtools.matchers.MatchesRegex(
                r'<gear\.Packet 0x[0-9a-f]+ type: ' + pattern + '>$'))

    def test_job_assign(self):
        self.assertRepr(
            re.escape("JOB_ASSIGN handle: b'H:1' function: b'fn'"),
            Packet(constants.RES, constants.JOB_ASSIGN, b'H:1\x00fn\x00d'))

    def test_submit(self):
        self.assertRepr(
            re.escape("SUBMIT_JOB_LOW_BG function: b'fn' unique: b'u'"),
            Packet(constants.REQ, constants.SUBMIT_JOB_LOW_BG,
                   b'fn\x00u\x00data'))

    def test_can_do(self):
        self.assertRepr(re.escape("CAN_DO function: b'fn'"),
                        Packet(constants.REQ, constants.CAN_DO, b'fn'))

    def test_handle_packets(self):
        self.assertRepr(re.escape("WORK_COMPLETE handle: b'H:1'"),
                        Packet(constants.REQ, constants.WORK_COMPLETE,
                               b'H:1\x00result'))

    def test_error(self):
        self.assertRepr(
            re.escape("ERROR code: b'E' message: b'bad'"),
            Packet(constants.RES, constants.ERROR, b'E\x00bad'))

    def test_plain(self):
        self.assertRepr('NOOP', Packet(constants.RES, constants.NOOP, b''))

    def test_unknown_type(self):
        self.assertRepr('UNKNOWN', Packet(constants.REQ, 99, b'x'))

    def test_malformed_payload_does_not_break_repr(self):
        # An ERROR without its message field: repr must still work.
        self.assertRepr('ERROR',
                        Packet(constants.RES, constants.ERROR, b'E'))
        self.assertRepr('JOB_ASSIGN',
                        Packet(constants.RES, constants.JOB_ASSIGN, b''))


class TestInputBufferBasics(testtools.TestCase):

    def test_empty(self):
        buf = InputBuffer()
        self.assertEqual(0, len(buf))
        self.assertFalse(buf)
        self.assertIsNone(buf.nextIsBinary())
        self.assertIsNone(buf.readPacket())
        self.assertIsNone(buf.readLine())
        self.assertEqual(b'', buf.unread())
        self.assertEqual(protocol.DEFAULT_MAX_PACKET_SIZE,
                         buf.max_packet_size)

    def test_partial_header_waits(self):
        data = protocol.pack(constants.REQ, constants.CAN_DO, b'fn')
        buf = InputBuffer()
        for i in range(len(data) - 1):
            buf.feed(data[i:i + 1])
            self.assertIsNone(buf.readPacket())
            have = i + 1
            # Until the header is complete only the header is counted.
            want = 12 if have < 12 else len(data)
            self.assertEqual(want - have, buf.needed())
        buf.feed(data[-1:])
        self.assertEqual(0, buf.needed())
        self.assertEqual((constants.REQ, constants.CAN_DO, b'fn'),
                         buf.readPacket())
        self.assertEqual(0, len(buf))

    def test_payload_is_bytes(self):
        buf = InputBuffer()
        buf.feed(bytearray(protocol.pack(constants.REQ, constants.CAN_DO,
                                         b'fn')))
        code, ptype, payload = buf.readPacket()
        self.assertIs(bytes, type(payload))
        self.assertIs(int, type(ptype))

    def test_needed(self):
        buf = InputBuffer()
        self.assertEqual(12, buf.needed())
        buf.feed(header(constants.REQ, constants.CAN_DO, 100)[:5])
        self.assertEqual(7, buf.needed())
        buf.feed(header(constants.REQ, constants.CAN_DO, 100)[5:])
        self.assertEqual(100, buf.needed())
        buf.feed(b'x' * 40)
        self.assertEqual(60, buf.needed())

    def test_next_is_binary(self):
        buf = InputBuffer()
        buf.feed(b'status\n')
        self.assertFalse(buf.nextIsBinary())
        self.assertEqual(b'status', buf.readLine())
        self.assertIsNone(buf.nextIsBinary())
        buf.feed(b'\x00')
        self.assertTrue(buf.nextIsBinary())

    def test_unread_and_clear(self):
        buf = InputBuffer()
        buf.feed(b'a\nbc')
        self.assertEqual(b'a', buf.readLine())
        self.assertEqual(b'bc', buf.unread())
        self.assertEqual(2, len(buf))
        self.assertTrue(buf)
        buf.clear()
        self.assertEqual(0, len(buf))
        self.assertEqual(b'', buf.unread())
        self.assertIsNone(buf.nextIsBinary())

    def test_unread_is_a_copy(self):
        buf = InputBuffer()
        buf.feed(b'abc')
        data = buf.unread()
        buf.feed(b'def')
        self.assertEqual(b'abc', data)

    def test_consume(self):
        buf = InputBuffer()
        buf.feed(b'xyz\n')
        buf.consume(2)
        self.assertEqual(b'z', buf.readLine())

    def test_feed_after_everything_was_consumed(self):
        buf = InputBuffer()
        buf.feed(protocol.pack(constants.REQ, constants.CAN_DO, b'a'))
        self.assertIsNotNone(buf.readPacket())
        buf.feed(protocol.pack(constants.REQ, constants.CAN_DO, b'b'))
        self.assertEqual(b'b', buf.readPacket()[2])
        self.assertEqual(0, len(buf))


class TestInputBufferStreams(testtools.TestCase):

    def test_every_single_split_point(self):
        packets = sample_packets()
        stream = packets_bytes(packets)
        for cut in range(len(stream) + 1):
            out, buf = parse_in_chunks([stream[:cut], stream[cut:]])
            self.assertEqual(packets, out, 'split at %d' % cut)
            self.assertEqual(0, len(buf))

    def test_one_byte_at_a_time(self):
        packets = sample_packets()
        stream = packets_bytes(packets)
        out, buf = parse_in_chunks(
            [stream[i:i + 1] for i in range(len(stream))])
        self.assertEqual(packets, out)
        self.assertEqual(0, len(buf))

    def test_whole_stream_in_one_feed(self):
        packets = sample_packets() * 20
        out, buf = parse_in_chunks([packets_bytes(packets)])
        self.assertEqual(packets, out)

    def test_mtu_sized_reads(self):
        # A 2600-byte packet cut at 1448 with the next packet in the same
        # read, as a TCP stream delivers it.
        big = Packet(constants.RES, constants.WORK_DATA,
                     b'H:1\x00' + b'y' * (2600 - 16))
        small = Packet(constants.RES, constants.WORK_COMPLETE, b'H:1\x00ok')
        stream = big.toBinary() + small.toBinary()
        self.assertEqual(2600, len(big.toBinary()))
        out, buf = parse_in_chunks([stream[:1448], stream[1448:]])
        self.assertEqual([big, small], out)

    def test_interleaved_admin_lines_and_packets(self):
        p1 = Packet(constants.REQ, constants.SUBMIT_JOB, b'f\x00u\x00\n\n')
        p2 = Packet(constants.REQ, constants.ECHO_REQ, b'status\n')
        expected = [b'status', p1, b'workers', b'version', p2,
                    b'show jobs', p1]
        stream = (b'status\n' + p1.toBinary() + b'workers\r\nversion\n' +
                  p2.toBinary() + b'show jobs\n' + p1.toBinary())
        for cut in range(len(stream) + 1):
            out, buf = parse_in_chunks([stream[:cut], stream[cut:]])
            self.assertEqual(expected, out, 'split at %d' % cut)
        out, buf = parse_in_chunks(
            [stream[i:i + 1] for i in range(len(stream))])
        self.assertEqual(expected, out)


class TestInputBufferLines(testtools.TestCase):

    def test_crlf_and_lf(self):
        buf = InputBuffer()
        buf.feed(b'status\r\nworkers\nversion\r\n\n\r\n')
        self.assertEqual(b'status', buf.readLine())
        self.assertEqual(b'workers', buf.readLine())
        self.assertEqual(b'version', buf.readLine())
        self.assertEqual(b'', buf.readLine())
        self.assertEqual(b'', buf.readLine())
        self.assertIsNone(buf.readLine())

    def test_only_one_trailing_cr_is_removed(self):
        buf = InputBuffer()
        buf.feed(b'abc\r\r\n')
        self.assertEqual(b'abc\r', buf.readLine())

    def test_cr_split_from_lf(self):
        buf = InputBuffer()
        buf.feed(b'status\r')
        self.assertIsNone(buf.readLine())
        buf.feed(b'\n')
        self.assertEqual(b'status', buf.readLine())

    def test_line_too_long(self):
        buf = InputBuffer()
        buf.feed(b'x' * (protocol.MAX_ADMIN_LINE + 1))
        self.assertRaises(ProtocolError, buf.readLine)

    def test_line_at_the_limit_waits(self):
        buf = InputBuffer()
        buf.feed(b'x' * protocol.MAX_ADMIN_LINE)
        self.assertIsNone(buf.readLine())
        buf.feed(b'\n')
        self.assertEqual(protocol.MAX_ADMIN_LINE, len(buf.readLine()))

    def test_read_packet_refuses_text(self):
        buf = InputBuffer()
        buf.feed(b'stat')
        self.assertRaises(ProtocolError, buf.readPacket)


class TestInputBufferText(testtools.TestCase):

    def test_incomplete_reply_waits_and_keeps_input(self):
        buf = InputBuffer()
        buf.feed(b'fn\t1\t0\t1\n')
        self.assertIsNone(buf.readText(multi_line_reply))
        self.assertEqual(b'fn\t1\t0\t1\n', buf.unread())
        buf.feed(b'.\n')
        self.assertEqual(b'fn\t1\t0\t1\n.\n',
                         buf.readText(multi_line_reply))
        self.assertEqual(0, len(buf))

    def test_pipelined_replies_then_binary_packet(self):
        created = Packet(constants.RES, constants.JOB_CREATED, b'H:lap:9')
        stream = (b'OK 1.1.20\n' + b'fn\t0\t0\t1\n.\n' + b'OK 42\n' +
                  created.toBinary())
        readers = [one_line_reply, multi_line_reply, one_line_reply]
        expected = [b'OK 1.1.20\n', b'fn\t0\t0\t1\n.\n', b'OK 42\n',
                    created]
        for cut in range(len(stream) + 1):
            buf = InputBuffer()
            pending = list(readers)
            out = []
            for chunk in (stream[:cut], stream[cut:]):
                buf.feed(chunk)
                while buf:
                    if buf.nextIsBinary():
                        item = buf.readPacket()
                        if item is None:
                            break
                        out.append(Packet(*item))
                    else:
                        text = buf.readText(pending[0])
                        if text is None:
                            break
                        pending.pop(0)
                        out.append(text)
            self.assertEqual(expected, out, 'split at %d' % cut)
            self.assertEqual([], pending)

    def test_text_stops_at_binary_packet(self):
        # The completion check never sees bytes of the following packet.
        seen = []

        def never_complete(data):
            seen.append(data)
            return False, None

        buf = InputBuffer()
        buf.feed(b'OK partial' +
                 protocol.pack(constants.RES, constants.NOOP))
        self.assertIsNone(buf.readText(never_complete))
        self.assertEqual([b'OK partial'], seen)

    def test_remainder_none_consumes_everything_offered(self):
        buf = InputBuffer()
        buf.feed(b'OK\n')
        self.assertEqual(b'OK\n', buf.readText(lambda data: (True, None)))
        self.assertEqual(0, len(buf))

    def test_oversized_reply_raises(self):
        buf = InputBuffer(max_packet_size=100)
        buf.feed(b'x' * 101)
        self.assertRaises(ProtocolError, buf.readText, multi_line_reply)


class TestInputBufferErrors(testtools.TestCase):

    def assertRejectsHeader(self, data, **kw):
        """The header alone is enough to raise; no payload is needed."""
        buf = InputBuffer(**kw)
        buf.feed(data)
        self.assertEqual(12, len(buf))
        self.assertRaises(ProtocolError, buf.readPacket)

    def test_protocol_error_is_invalid_data_error(self):
        self.assertTrue(issubclass(ProtocolError, InvalidDataError))

    def test_bad_magic(self):
        self.assertRejectsHeader(header(b'\x00REX', constants.CAN_DO, 2))
        self.assertRejectsHeader(header(b'\x00req', constants.CAN_DO, 2))
        self.assertRejectsHeader(header(b'\x00\x00\x00\x00', 1, 0))

    def test_type_zero(self):
        self.assertRejectsHeader(header(constants.REQ, 0, 0))

    def test_type_43(self):
        self.assertRejectsHeader(header(constants.REQ, 43, 0))
        self.assertRejectsHeader(header(constants.RES, 0xFFFFFFFF, 0))

    def test_every_known_type_is_accepted(self):
        for ptype in range(1, constants.MAX_TYPE + 1):
            buf = InputBuffer()
            buf.feed(protocol.pack(constants.REQ, ptype, b'x'))
            self.assertEqual((constants.REQ, ptype, b'x'), buf.readPacket())

    def test_four_gib_header(self):
        self.assertRejectsHeader(
            header(constants.REQ, constants.SUBMIT_JOB, 0xFFFFFFFF))

    def test_just_over_the_configured_maximum(self):
        self.assertRejectsHeader(
            header(constants.REQ, constants.SUBMIT_JOB, 101),
            max_packet_size=100)

    def test_exactly_the_configured_maximum(self):
        buf = InputBuffer(max_packet_size=100)
        buf.feed(protocol.pack(constants.REQ, constants.ECHO_REQ,
                               b'z' * 100))
        self.assertEqual(b'z' * 100, buf.readPacket()[2])

    def test_oversize_detected_before_payload_arrives(self):
        buf = InputBuffer()
        buf.feed(header(constants.REQ, constants.SUBMIT_JOB, 0xFFFFFFFF))
        buf.feed(b'a few payload bytes')
        self.assertRaises(ProtocolError, buf.readPacket)

    def test_good_packets_before_bad_one_are_delivered(self):
        good = Packet(constants.REQ, constants.CAN_DO, b'fn')
        buf = InputBuffer()
        buf.feed(good.toBinary() + header(constants.REQ, 43, 0))
        self.assertEqual(good, Packet(*buf.readPacket()))
        self.assertRaises(ProtocolError, buf.readPacket)


class TestInputBufferGrowth(testtools.TestCase):
    """Structural checks that reading stays linear in the input."""

    def test_large_payload_in_many_small_chunks(self):
        size = 16 * 1024 * 1024
        payload = bytes(range(256)) * (size // 256)
        data = protocol.pack(constants.REQ, constants.ECHO_REQ, payload)
        chunks = 10000
        bounds = [len(data) * k // chunks for k in range(chunks + 1)]
        buf = InputBuffer()
        results = []
        fed = 0
        for start, stop in zip(bounds, bounds[1:]):
            buf.feed(data[start:stop])
            fed += 1
            item = buf.readPacket()
            if item is not None:
                results.append(item)
        self.assertEqual(chunks, fed)
        self.assertEqual(1, len(results))
        self.assertEqual(payload, results[0][2])
        self.assertEqual(0, len(buf))
        # The next feed starts a fresh buffer instead of appending to the
        # 16 MiB one that was fully consumed.
        buf.feed(protocol.pack(constants.REQ, constants.NOOP))
        self.assertEqual(12, len(buf._buf))
        self.assertEqual((constants.REQ, constants.NOOP, b''),
                         buf.readPacket())

    def test_consumed_bytes_are_discarded(self):
        # Many small packets, read as they arrive, with the stream cut so
        # that a partial packet is always left over: the buffer must not
        # keep every byte ever fed.
        packet = protocol.pack(constants.RES, constants.WORK_DATA,
                               b'H:1\x00' + b'd' * 1000)
        stream = packet * 2000
        step = 4093
        buf = InputBuffer()
        count = 0
        largest = 0
        for start in range(0, len(stream), step):
            buf.feed(stream[start:start + step])
            largest = max(largest, len(buf._buf))
            while True:
                item = buf.readPacket()
                if item is None:
                    break
                count += 1
        self.assertEqual(2000, count)
        self.assertEqual(0, len(buf))
        self.assertLess(largest, 4 * 65536)
        self.assertGreater(len(stream), 8 * largest)


# Strategies for the property tests.

_packet = st.builds(
    Packet,
    st.sampled_from([constants.REQ, constants.RES]),
    st.sampled_from(sorted(constants.types)),
    st.binary(max_size=64),
)

_admin_line = st.binary(min_size=1, max_size=30).filter(
    lambda b: b[:1] != b'\x00' and b'\n' not in b and b'\x00' not in b
    and not b.endswith(b'\r'))


def _split(data, cuts):
    points = sorted(set(c % (len(data) + 1) for c in cuts))
    chunks = []
    last = 0
    for point in points + [len(data)]:
        chunks.append(data[last:point])
        last = point
    return chunks


class TestInputBufferProperties(testtools.TestCase):

    @settings(max_examples=200)
    @given(st.lists(_packet, max_size=30),
           st.lists(st.integers(min_value=0), max_size=40))
    def test_any_split_gives_the_same_packets(self, packets, cuts):
        stream = packets_bytes(packets)
        out, buf = parse_in_chunks(_split(stream, cuts))
        self.assertEqual(packets, out)
        self.assertEqual(0, len(buf))

    @settings(max_examples=200)
    @given(st.lists(st.one_of(_packet, _admin_line), max_size=30),
           st.lists(st.integers(min_value=0), max_size=40),
           st.booleans())
    def test_mixed_stream_any_split(self, items, cuts, crlf):
        newline = b'\r\n' if crlf else b'\n'
        stream = b''.join(
            i.toBinary() if isinstance(i, Packet) else i + newline
            for i in items)
        out, buf = parse_in_chunks(_split(stream, cuts))
        self.assertEqual(items, out)
        self.assertEqual(0, len(buf))

    @given(st.lists(_packet, min_size=1, max_size=10))
    def test_split_equals_one_piece(self, packets):
        stream = packets_bytes(packets)
        whole, _ = parse_in_chunks([stream])
        bytewise, _ = parse_in_chunks(
            [stream[i:i + 1] for i in range(len(stream))])
        self.assertEqual(whole, bytewise)
        self.assertEqual(packets, whole)
