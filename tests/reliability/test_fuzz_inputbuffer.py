"""Property tests of gear.protocol's two parsers: InputBuffer, which
every gear client and worker uses, and MessageScanner, the job server's
framing.

* A valid stream, cut into arbitrary chunks, yields exactly its messages
  in order.
* A stream damaged at some offset (bytes flipped, inserted, removed, or
  cut) raises nothing but ProtocolError, and every message that ended
  before the damage still comes out exactly once and in order.
"""

import pytest
import testtools
from hypothesis import given, settings, strategies as st

from gear import constants as C
from gear.errors import ProtocolError
from gear.protocol import InputBuffer, MessageScanner, pack
from tests.reliability import peers

EXAMPLES = peers.scale(300, 3000)

packets = st.builds(
    lambda code, ptype, payload: ('bin', (code, ptype, payload),
                                  pack(code, ptype, payload)),
    st.sampled_from([C.REQ, C.RES]),
    st.integers(1, C.MAX_TYPE),
    st.binary(max_size=300))


# Text lines: the first byte is not NUL and there is no newline inside.
def _line(first, rest, crlf):
    content = first + rest
    if crlf:
        return ('text', content, content + b'\r\n')
    # readLine strips one trailing \r from what precedes the \n.
    shown = content[:-1] if content.endswith(b'\r') else content
    return ('text', shown, content + b'\n')


lines = st.builds(
    _line,
    st.binary(min_size=1, max_size=1).filter(lambda b: b not in (b'\x00',
                                                                 b'\n')),
    st.binary(max_size=80).map(lambda b: b.replace(b'\n', b'')),
    st.booleans())

messages = st.lists(st.one_of(packets, packets, lines), max_size=40)

# Streams with runs of one type (a worker's CAN_DOs) among other traffic.
registrations = st.builds(
    lambda ptype, payload: ('bin', (C.REQ, ptype, payload),
                            pack(C.REQ, ptype, payload)),
    st.sampled_from([C.CAN_DO, C.CAN_DO, C.CAN_DO, C.CANT_DO]),
    st.binary(max_size=40))
runny = st.lists(st.one_of(registrations, registrations, registrations,
                           packets, lines), max_size=60)
RUN_TYPES = (C.CAN_DO, C.CANT_DO)


def drain(buf, out):
    """Read every complete message; None-safe; raises ProtocolError."""
    while True:
        binary = buf.nextIsBinary()
        if binary is None:
            return
        if binary:
            packet = buf.readPacket()
            if packet is None:
                return
            out.append(('bin', packet))
        else:
            line = buf.readLine()
            if line is None:
                return
            out.append(('text', line))


class Peer(object):
    """What MessageScanner dispatches to: records every message, and the
    length of each run handed over at once."""

    closed = False

    def __init__(self):
        self.out = []
        self.runs = []


def _record_packet(ptype):
    def handler(peer, payload):
        peer.out.append(('bin', (C.REQ, ptype, payload)))
    return handler


def _record_run(ptype):
    def run(peer, payloads):
        peer.runs.append(len(payloads))
        for payload in payloads:
            peer.out.append(('bin', (C.REQ, ptype, payload)))
    return run


def scanner(max_size=1 << 20, known=C.MAX_TYPE + 1, runs=()):
    """The server's shape: a table of request types, the rest aside;
    the types in ``runs`` are dispatched a run at a time."""
    def other(peer, request, ptype, payload):
        peer.out.append(('bin', (C.REQ if request else C.RES, ptype,
                                 payload)))

    def line(peer, text):
        peer.out.append(('text', text))
    return MessageScanner([_record_packet(t) for t in range(known)],
                          other, line, max_size,
                          {t: _record_run(t) for t in runs if t < known})


def scan_in_chunks(scan, stream, cuts, peer):
    start = 0
    tail = None
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [
            len(stream)]:
        if cut > start:
            tail = scan.scan(peer, stream[start:cut], tail)
        start = cut
    return tail


def normal(message):
    return message[:2]


def damage(msgs, where, how, junk, max_size):
    """Damage the stream of ``msgs`` at one place.

    Returns the damaged bytes, the messages that end at or before the
    damage (intact), and the packet size limit to parse with: a message
    larger than ``max_size`` among the intact ones raises the limit, since
    it would be an error, not damage.
    """
    stream = b''.join(m[2] for m in msgs)
    at = where % (len(stream) + 1)
    if how == 'flip' and at < len(stream):
        damaged = stream[:at] + bytes([stream[at] ^ (junk[0] or 1)]) + \
            stream[at + 1:]
    elif how == 'insert':
        damaged = stream[:at] + junk + stream[at:]
    elif how == 'delete':
        damaged = stream[:at] + stream[at + len(junk):]
    else:
        damaged = stream[:at]
    intact = []
    end = 0
    for m in msgs:
        end += len(m[2])
        if end > at:
            break
        intact.append(normal(m))
    limit = max_size
    for m in intact:
        if m[0] == 'bin' and len(m[1][2]) > limit:
            limit = 1 << 20
    return damaged, intact, limit


def feed_in_chunks(buf, stream, cuts, out):
    start = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [
            len(stream)]:
        buf.feed(stream[start:cut])
        start = cut
        drain(buf, out)


@pytest.mark.slow
class TestInputBufferProperties(testtools.TestCase):

    @settings(max_examples=EXAMPLES)
    @given(messages, st.lists(st.integers(0, 10 ** 6), max_size=20))
    def test_valid_stream_in_any_chunks(self, msgs, cuts):
        stream = b''.join(m[2] for m in msgs)
        buf = InputBuffer()
        out = []
        feed_in_chunks(buf, stream, cuts, out)
        self.assertEqual([normal(m) for m in msgs], out)
        self.assertEqual(0, len(buf))

    @settings(max_examples=EXAMPLES)
    @given(messages, st.integers(0, 10 ** 6),
           st.sampled_from(['flip', 'insert', 'delete', 'cut']),
           st.binary(min_size=1, max_size=16),
           st.lists(st.integers(0, 10 ** 6), max_size=20),
           st.sampled_from([64, 1024, 1 << 20]))
    def test_damaged_stream(self, msgs, where, how, junk, cuts, max_size):
        damaged, intact, limit = damage(msgs, where, how, junk, max_size)
        buf = InputBuffer(max_packet_size=limit)
        out = []
        try:
            feed_in_chunks(buf, damaged, cuts, out)
        except ProtocolError:
            pass
        self.assertEqual(intact, out[:len(intact)])

    @settings(max_examples=peers.scale(30, 300))
    @given(st.lists(st.integers(0, 70000), min_size=1, max_size=12),
           st.lists(st.integers(0, 10 ** 7), max_size=30))
    def test_large_packets_across_compaction(self, sizes, cuts):
        # Streams past 64 KiB exercise the buffer's lazy compaction.
        msgs = []
        for i, size in enumerate(sizes):
            payload = bytes([i % 251]) * size
            msgs.append(('bin', (C.REQ, C.SUBMIT_JOB, payload),
                         pack(C.REQ, C.SUBMIT_JOB, payload)))
        stream = b''.join(m[2] for m in msgs)
        buf = InputBuffer()
        out = []
        feed_in_chunks(buf, stream, cuts, out)
        self.assertEqual([normal(m) for m in msgs], out)


class TestMessageScannerProperties(testtools.TestCase):
    """The same properties for the server's framing, plus: every type
    is framed (what it means is the server's business), and a stream
    cut short keeps exactly its unfinished message as the tail."""

    @settings(max_examples=EXAMPLES)
    @given(messages, st.lists(st.integers(0, 10 ** 6), max_size=20),
           st.integers(1, C.MAX_TYPE + 1))
    def test_valid_stream_in_any_chunks(self, msgs, cuts, known):
        stream = b''.join(m[2] for m in msgs)
        peer = Peer()
        tail = scan_in_chunks(scanner(known=known), stream, cuts, peer)
        self.assertEqual([normal(m) for m in msgs], peer.out)
        self.assertIsNone(tail)

    @settings(max_examples=EXAMPLES)
    @given(runny, st.lists(st.integers(0, 10 ** 6), max_size=20),
           st.integers(1, C.MAX_TYPE + 1))
    def test_runs_in_any_chunks(self, msgs, cuts, known):
        # Runs change how messages are handed over, never which or in
        # what order, and each one is counted.
        stream = b''.join(m[2] for m in msgs)
        peer = Peer()
        scan = scanner(known=known, runs=RUN_TYPES)
        tail = scan_in_chunks(scan, stream, cuts, peer)
        self.assertEqual([normal(m) for m in msgs], peer.out)
        self.assertIsNone(tail)
        self.assertEqual(len(msgs), scan.messages)
        self.assertNotIn(0, peer.runs)

    def test_a_run_is_every_complete_request_in_a_row(self):
        names = [b'f%d' % i for i in range(500)]
        stream = b''.join(pack(C.REQ, C.CAN_DO, n) for n in names)
        other = pack(C.REQ, C.ECHO_REQ, b'x')
        peer = Peer()
        scan = scanner(runs=RUN_TYPES)
        # Cut inside the 301st: the first call has a run of 300; the
        # next one joins the cut message to the rest, a run of 200.
        cut = len(b''.join(pack(C.REQ, C.CAN_DO, n) for n in names[:300]))
        cut += 5
        tail = scan.scan(peer, stream[:cut])
        self.assertEqual([300], peer.runs)
        tail = scan.scan(peer, stream[cut:] + other + stream[:10], tail)
        self.assertEqual([300, 200], peer.runs)
        self.assertEqual(bytes(stream[:10]), bytes(tail))
        self.assertEqual([('bin', (C.REQ, C.CAN_DO, n)) for n in names] +
                         [('bin', (C.REQ, C.ECHO_REQ, b'x'))], peer.out)
        self.assertEqual(501, scan.messages)

    @settings(max_examples=EXAMPLES)
    @given(messages, st.integers(0, 10 ** 6),
           st.sampled_from(['flip', 'insert', 'delete', 'cut']),
           st.binary(min_size=1, max_size=16),
           st.lists(st.integers(0, 10 ** 6), max_size=20),
           st.sampled_from([64, 1024, 1 << 20]),
           st.sampled_from([(), RUN_TYPES]))
    def test_damaged_stream(self, msgs, where, how, junk, cuts, max_size,
                            runs):
        damaged, intact, limit = damage(msgs, where, how, junk, max_size)
        peer = Peer()
        try:
            scan_in_chunks(scanner(limit, runs=runs), damaged, cuts, peer)
        except ProtocolError:
            pass
        self.assertEqual(intact, peer.out[:len(intact)])

    @settings(max_examples=peers.scale(30, 300))
    @given(st.lists(st.integers(0, 70000), min_size=1, max_size=12),
           st.lists(st.integers(0, 10 ** 7), max_size=30))
    def test_large_packets_in_pieces(self, sizes, cuts):
        msgs = []
        for i, size in enumerate(sizes):
            payload = bytes([i % 251]) * size
            msgs.append(('bin', (C.REQ, C.SUBMIT_JOB, payload),
                         pack(C.REQ, C.SUBMIT_JOB, payload)))
        stream = b''.join(m[2] for m in msgs)
        peer = Peer()
        scan_in_chunks(scanner(), stream, cuts, peer)
        self.assertEqual([normal(m) for m in msgs], peer.out)

    @settings(max_examples=EXAMPLES)
    @given(messages, st.integers(1, 300))
    def test_cut_stream_keeps_the_unfinished_message(self, msgs, cut):
        stream = b''.join(m[2] for m in msgs)
        if not msgs:
            return
        last = msgs[-1][2]
        keep = len(last) - 1 - (cut % len(last))
        head = stream[:len(stream) - len(last) + keep]
        peer = Peer()
        tail = scan_in_chunks(scanner(), head, [], peer)
        self.assertEqual([normal(m) for m in msgs[:-1]], peer.out)
        self.assertEqual(last[:keep] or None,
                         None if tail is None else bytes(tail))
        tail = scanner().scan(peer, last[keep:], tail)
        self.assertIsNone(tail)
        self.assertEqual([normal(m) for m in msgs], peer.out)
