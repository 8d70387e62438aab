"""The Gearman wire format, without any I/O.

Three things live here:

* :class:`Packet`, one binary message, and :func:`pack` to build one;
* :class:`InputBuffer`, which is fed raw bytes and hands back complete
  binary packets or admin text, in arrival order (the client side);
* :class:`MessageScanner`, the job server's framing: it slices complete
  messages straight out of each chunk read and passes them to handlers,
  keeping only a message cut by the end of a read.

Nothing here touches sockets, threads or clocks, so every framing rule
can be tested byte by byte.
"""

import datetime
import struct

from gear import constants
from gear.errors import ConfigurationError, InvalidDataError, ProtocolError

_HEADER = struct.Struct('!4sII')
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack

# A default ceiling on one packet's payload; large enough for real jobs,
# small enough that a hostile length header cannot exhaust memory.
DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024

# The longest admin line we will buffer while waiting for its newline.
MAX_ADMIN_LINE = 64 * 1024

_MAGICS = (constants.REQ, constants.RES)
_REQ_MAGIC = int.from_bytes(constants.REQ, 'big')
_RES_MAGIC = int.from_bytes(constants.RES, 'big')
_unpack_ints = struct.Struct('!III').unpack_from


class PacketTooLarge(ProtocolError):
    """A packet header announces more than the allowed payload."""

    def __init__(self, size, limit):
        super(PacketTooLarge, self).__init__(
            "Packet of %d bytes exceeds the maximum of %d" % (size, limit))
        self.size = size
        self.limit = limit


def pack(code, ptype, payload=b''):
    """Return the bytes of one packet: header followed by ``payload``."""
    return _pack_header(code, ptype, len(payload)) + payload


def join_arguments(*arguments):
    """Join packet arguments with the single NUL separator of the wire."""
    return b'\x00'.join(arguments)


class Packet(object):
    """A binary Gearman packet.

    :arg bytes code: ``constants.REQ`` or ``constants.RES``.
    :arg int ptype: the packet type, e.g. ``constants.SUBMIT_JOB``.
    :arg bytes data: the payload (all arguments, NUL-separated).
    :arg Connection connection: where it came from or is going.
    """

    # '__dict__' keeps per-instance overrides (``packet.getJob = ...``)
    # possible, while the common attributes stay in slots.
    __slots__ = ('code', 'ptype', 'data', 'connection', '_args',
                 '__dict__')

    def __init__(self, code, ptype, data, connection=None):
        if not isinstance(code, (bytes, bytearray)):
            raise TypeError("code must be of type bytes")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("data must be of type bytes")
        if code[:1] != b'\x00':
            raise InvalidDataError("First byte of packet must be 0")
        self.code = code
        self.ptype = ptype
        self.data = data
        self.connection = connection
        self._args = None

    @classmethod
    def _trusted(cls, code, ptype, data, connection=None):
        """Build a packet from fields the parser already validated."""
        self = cls.__new__(cls)
        self.code = code
        self.ptype = ptype
        self.data = data
        self.connection = connection
        self._args = None
        return self

    def __repr__(self):
        ptype = constants.types.get(self.ptype, 'UNKNOWN')
        try:
            extra = self._formatExtraData()
        except Exception:
            extra = ''
        return '<gear.Packet 0x%x type: %s%s>' % (id(self), ptype, extra)

    def __eq__(self, other):
        if not isinstance(other, Packet):
            return False
        return (self.code == other.code and self.ptype == other.ptype and
                self.data == other.data)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = None

    def _formatExtraData(self):
        t = self.ptype
        if t in (constants.JOB_ASSIGN, constants.JOB_ASSIGN_UNIQ,
                 constants.JOB_ASSIGN_ALL):
            return ' handle: %s function: %s' % (
                self.getArgument(0), self.getArgument(1))
        if t in constants.SUBMIT_TYPES or t in (
                constants.SUBMIT_JOB_EPOCH, constants.SUBMIT_REDUCE_JOB,
                constants.SUBMIT_REDUCE_JOB_BACKGROUND):
            return ' function: %s unique: %s' % (
                self.getArgument(0), self.getArgument(1))
        if t in (constants.CAN_DO, constants.CANT_DO,
                 constants.CAN_DO_TIMEOUT):
            return ' function: %s' % (self.getArgument(0),)
        if t in (constants.JOB_CREATED, constants.WORK_STATUS,
                 constants.WORK_COMPLETE, constants.WORK_FAIL,
                 constants.WORK_EXCEPTION, constants.WORK_DATA,
                 constants.WORK_WARNING, constants.GET_STATUS,
                 constants.STATUS_RES):
            return ' handle: %s' % (self.getArgument(0),)
        if t == constants.ERROR:
            return ' code: %s message: %s' % (
                self.getArgument(0), self.getArgument(1))
        return ''

    def toBinary(self):
        """Return the packet as bytes, header included."""
        return _pack_header(self.code, self.ptype, len(self.data)) + \
            bytes(self.data)

    @property
    def arguments(self):
        """The payload split into its fields (computed once)."""
        args = self._args
        if args is None:
            count = constants.ARGUMENT_COUNTS.get(self.ptype)
            data = bytes(self.data)
            if count is None:
                args = data.split(b'\x00')
            elif count == 0:
                args = [data] if data else []
            else:
                args = data.split(b'\x00', count - 1)
            self._args = args
        return args

    def getArgument(self, index, last=False):
        """Return the ``index``-th NUL-separated field of the payload.

        :arg bool last: return everything from that field to the end,
            NUL bytes included.
        """
        args = self.arguments
        if last:
            if index == len(args) - 1:
                return args[index]
            return b'\x00'.join(args[index:])
        return args[index]

    def getJob(self):
        """Return the Job this packet refers to, by its handle."""
        from gear.errors import UnknownJobError
        handle = self.getArgument(0)
        job = self.connection.related_jobs.get(handle)
        if not job:
            raise UnknownJobError()
        return job


class InputBuffer(object):
    """Accumulates bytes from a stream and splits them into messages.

    Each message is either a binary packet (it starts with a NUL byte) or
    admin text (anything else).  Consumed bytes are discarded lazily so
    that parsing stays linear in the amount of input.
    """

    __slots__ = ('_buf', '_pos', 'max_packet_size')

    def __init__(self, max_packet_size=DEFAULT_MAX_PACKET_SIZE):
        self._buf = bytearray()
        self._pos = 0
        self.max_packet_size = max_packet_size

    def __len__(self):
        return len(self._buf) - self._pos

    def __bool__(self):
        return len(self._buf) > self._pos

    def feed(self, data):
        """Append bytes read from the peer."""
        if self._pos and self._pos >= len(self._buf):
            # Everything was consumed: start over without copying.
            self._buf = bytearray(data)
            self._pos = 0
            return
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def clear(self):
        self._buf = bytearray()
        self._pos = 0

    def unread(self):
        """Return the unconsumed bytes (a copy)."""
        return bytes(self._buf[self._pos:])

    def consume(self, count):
        self._pos += count

    def nextIsBinary(self):
        """True if the next message is binary, False if text, None if empty.
        """
        if self._pos >= len(self._buf):
            return None
        return self._buf[self._pos] == 0

    def needed(self):
        """How many more bytes the next binary packet needs (0 if none)."""
        avail = len(self._buf) - self._pos
        if avail < constants.HEADER_SIZE:
            return constants.HEADER_SIZE - avail
        size = _unpack_header(self._buf, self._pos)[2]
        return max(0, constants.HEADER_SIZE + size - avail)

    def readPacket(self):
        """Return ``(code, ptype, payload)`` for one complete packet.

        Returns None when more bytes are needed.  Raises
        :class:`ProtocolError` on a bad magic, a type outside 1-42 or a
        payload larger than ``max_packet_size`` -- as soon as the header
        is seen, before the payload is buffered.
        """
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if end - pos < 12:
            if end > pos and buf[pos] != 0:
                raise ProtocolError("Not a binary packet")
            return None
        code, ptype, size = _unpack_header(buf, pos)
        if code not in _MAGICS:
            raise ProtocolError("Invalid magic code %r" % (code,))
        if ptype < 1 or ptype > constants.MAX_TYPE:
            raise ProtocolError("Invalid packet type %d" % (ptype,))
        if size > self.max_packet_size:
            raise ProtocolError(
                "Packet of %d bytes exceeds the maximum of %d" %
                (size, self.max_packet_size))
        stop = pos + 12 + size
        if stop > end:
            return None
        payload = bytes(buf[pos + 12:stop])
        self._pos = stop
        return code, ptype, payload

    def readLine(self):
        """Return one admin line without its ``\\n`` (and ``\\r``).

        Returns None when the newline has not arrived yet; raises
        :class:`ProtocolError` when a line grows past MAX_ADMIN_LINE.
        """
        buf = self._buf
        idx = buf.find(b'\n', self._pos)
        if idx < 0:
            if len(buf) - self._pos > MAX_ADMIN_LINE:
                raise ProtocolError("Admin line too long")
            return None
        line = bytes(buf[self._pos:idx])
        self._pos = idx + 1
        if line.endswith(b'\r'):
            line = line[:-1]
        return line

    def readText(self, is_complete):
        """Return a complete admin reply, or None if it is not complete.

        ``is_complete(data)`` is an :meth:`AdminRequest.isComplete`: it
        returns ``(True, remainder)`` once ``data`` holds a whole reply.
        Only the text up to the next binary packet is offered.
        """
        buf = self._buf
        end = buf.find(b'\x00', self._pos)
        if end < 0:
            end = len(buf)
        data = bytes(buf[self._pos:end])
        complete, rest = is_complete(data)
        if not complete:
            if len(data) > self.max_packet_size:
                raise ProtocolError("Admin reply too long")
            return None
        used = len(data) - (len(rest) if rest else 0)
        self._pos += used
        return data[:used]


class MessageScanner(object):
    """Splits a byte stream into messages and dispatches each one.

    The server's one framing path.  :meth:`scan` is given each chunk a
    socket read returned, together with the partial message the
    previous chunk ended with.  It slices every complete message out of
    the chunk without copying the rest, and calls:

    * ``handlers[ptype](context, payload)`` for a request packet whose
      type indexes ``handlers``;
    * ``on_other(context, is_request, ptype, payload)`` for any other
      well-framed packet (response magic, or a type beyond the table);
    * ``on_line(context, line)`` for an admin text line (without its
      ``\\n`` or ``\\r\\n``).

    A request type listed in ``runs`` (type -> ``f(context, payloads)``)
    is dispatched a run at a time instead: the complete requests of that
    type that follow each other in the chunk reach ``f`` as one list, in
    order (its ``handlers`` entry is not called).  A worker announcing
    its functions sends thousands of CAN_DO in a row, and one call for
    all of them saves the dispatch of each; ``f`` must stop early if
    ``context`` is closed on the way.  Both tables are read when the
    scanner is made.

    The packet type is not limited here: the framing is magic, type and
    length, and what a type means is the handlers' business.  A bad
    magic or an unterminated admin line longer than
    ``MAX_ADMIN_LINE`` raises :class:`ProtocolError`, a header
    announcing more than ``max_packet_size`` raises
    :class:`PacketTooLarge` -- as soon as the header is seen.  Scanning
    stops early once ``context.closed`` is true.  ``messages`` counts the
    messages dispatched so far (for the server's metrics).
    """

    __slots__ = ('handlers', 'runs', 'on_other', 'on_line',
                 'max_packet_size', 'messages', '_table')

    def __init__(self, handlers, on_other, on_line,
                 max_packet_size=DEFAULT_MAX_PACKET_SIZE, runs=None):
        self.handlers = handlers
        self.runs = dict(runs or ())
        # What scan() indexes: the handlers, None where runs are taken
        # (so a plain request pays no extra test).
        self._table = [None if ptype in self.runs else handler
                       for ptype, handler in enumerate(handlers)]
        self.on_other = on_other
        self.on_line = on_line
        self.max_packet_size = max_packet_size
        self.messages = 0

    def scan(self, context, data, tail=None):
        """Dispatch the messages of ``tail`` + ``data``.

        ``tail`` is what the previous call returned.  Returns the start
        of a message still incomplete (a bytearray to pass back with the
        next chunk), or None.  One loop on purpose: it runs for every
        message the server receives.
        """
        if tail is not None:
            searched = len(tail)
            tail += data
            if self._incomplete(tail, searched):
                return tail
            data = bytes(tail)
        pos = 0
        end = len(data)
        table = self._table
        known = len(table)
        maxsize = self.max_packet_size
        unpack = _unpack_ints
        req_magic = _REQ_MAGIC
        count = 0
        while pos < end:
            if context.closed:
                self.messages += count
                return None
            if data[pos] == 0:
                body = pos + 12
                if body > end:
                    break
                magic, ptype, size = unpack(data, pos)
                stop = body + size
                if magic == req_magic and size <= maxsize and \
                        stop <= end and ptype < known:
                    # A request of the table: the common case first.
                    count += 1
                    handler = table[ptype]
                    if handler is not None:
                        handler(context, data[body:stop])
                        pos = stop
                        continue
                    pos = self._run(context, data, pos, ptype)
                    continue
                if magic != req_magic and magic != _RES_MAGIC:
                    raise ProtocolError("Invalid magic code %r" % (
                        data[pos:pos + 4],))
                if size > maxsize:
                    raise PacketTooLarge(size, maxsize)
                if stop > end:
                    break
                payload = data[body:stop]
                pos = stop
                count += 1
                self.on_other(context, magic == req_magic, ptype, payload)
            else:
                nl = data.find(b'\n', pos)
                if nl < 0:
                    if end - pos > MAX_ADMIN_LINE:
                        raise ProtocolError("Admin line too long")
                    break
                line = data[pos:nl]
                pos = nl + 1
                count += 1
                if line.endswith(b'\r'):
                    line = line[:-1]
                self.on_line(context, line)
        self.messages += count
        if pos < end and not context.closed:
            rest = bytearray(data[pos:])
            self._incomplete(rest, 0)  # validates a header already seen
            return rest
        return None

    def _run(self, context, data, pos, ptype):
        """Hand the run handler of ``ptype`` the payloads of the requests
        of that type that follow each other from ``pos`` on (the first
        one is known to be complete); return where the run ends.  Counts
        every message but the first in :attr:`messages`."""
        end = len(data)
        unpack = _unpack_ints
        maxsize = self.max_packet_size
        req_magic = _REQ_MAGIC
        payloads = []
        add = payloads.append
        while pos + 12 <= end:
            magic, kind, size = unpack(data, pos)
            body = pos + 12
            stop = body + size
            if kind != ptype or magic != req_magic or size > maxsize or \
                    stop > end:
                break
            add(data[body:stop])
            pos = stop
        self.messages += len(payloads) - 1
        self.runs[ptype](context, payloads)
        return pos

    def _incomplete(self, buf, searched):
        """True while the message at the start of ``buf`` is cut short;
        raises for a bad header.  ``searched``: bytes known to hold no
        newline."""
        if buf[0] == 0:
            if len(buf) < 12:
                return True
            magic, ptype, size = _unpack_ints(buf, 0)
            if magic != _REQ_MAGIC and magic != _RES_MAGIC:
                raise ProtocolError("Invalid magic code %r" % (
                    bytes(buf[:4]),))
            if size > self.max_packet_size:
                raise PacketTooLarge(size, self.max_packet_size)
            return len(buf) < 12 + size
        if buf.find(b'\n', searched) >= 0:
            return False
        if len(buf) > MAX_ADMIN_LINE:
            raise ProtocolError("Admin line too long")
        return True


# Requests built the same way by the thread and the asyncio clients.

PRECEDENCES = (constants.PRECEDENCE_NORMAL, constants.PRECEDENCE_LOW,
               constants.PRECEDENCE_HIGH)


def epoch_seconds(when):
    """Return ``when`` (epoch seconds or an aware datetime) as an int."""
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ConfigurationError("when must be an aware datetime")
        return int(when.timestamp())
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise ConfigurationError(
            "when must be epoch seconds or an aware datetime")
    return int(when)


def submit_request(name, unique, data, background=False,
                   precedence=constants.PRECEDENCE_NORMAL, when=None):
    """Return ``(ptype, payload)`` of the SUBMIT_JOB* packet for a job.

    ``name``, ``unique`` (None for none) and ``data`` are bytes.
    ``when`` (epoch seconds or an aware datetime) makes it a
    SUBMIT_JOB_EPOCH, which needs ``background`` and normal precedence.

    :raises ConfigurationError: a bad precedence or ``when``.
    """
    if precedence not in PRECEDENCES:
        raise ConfigurationError("Invalid precedence value")
    fields = [name, unique or b'']
    if when is not None:
        if not background or precedence != constants.PRECEDENCE_NORMAL:
            raise ConfigurationError(
                "when= needs background=True and normal precedence")
        ptype = constants.SUBMIT_JOB_EPOCH
        fields.append(str(epoch_seconds(when)).encode('ascii'))
    else:
        ptype = constants.SUBMIT_TYPE_FOR[(precedence, bool(background))]
    fields.append(bytes(data))
    return ptype, b'\x00'.join(fields)


def work_handle(handle):
    """The job handle of a WORK_* packet's first field.

    gearmand's WORK_FAIL made from a WORK_EXCEPTION carries a stray
    trailing NUL after the handle; tolerate it.
    """
    if handle.endswith(b'\x00'):
        return handle.rstrip(b'\x00')
    return handle


def status_fields(arguments):
    """``(known, running, numerator, denominator)`` of a STATUS_RES.

    ``arguments`` are the packet's fields; missing numbers read as None.
    """
    return (arguments[1] == b'1', arguments[2] == b'1',
            arguments[3] if len(arguments) > 3 else None,
            arguments[4] if len(arguments) > 4 else None)


def fraction(numerator, denominator):
    """``numerator / denominator`` as a float, or None if not numbers."""
    try:
        return float(numerator) / float(denominator)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
