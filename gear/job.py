"""Jobs as clients submit them and as workers receive them.

On the wire every name, unique and payload is bytes.  The plain classes
keep bytes (except ``name``, which reads as str); the ``Text*`` variants
read and write str and encode it as UTF-8; the ``Binary*`` variants keep
the name as bytes too.
"""

import logging
import threading

from gear import constants
from gear.errors import ConnectionError
from gear.protocol import Packet
from gear.util import convert_to_bytes


def _as_bytes(value):
    """Payload data for the wire: bytes kept, str encoded, None empty."""
    if value is None:
        return b''
    if isinstance(value, str):
        return value.encode('utf-8')
    return bytes(value)


_log = logging.getLogger('gear.WorkerJob')

# Serialises the creation of a Job's wait event (only waiters take it).
_WAIT_EVENT_LOCK = threading.Lock()


def _decimal(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode('utf-8')


class BaseJob(object):
    """What every job has: a function name, arguments, unique and handle.

    :arg name: the function name (str or bytes).
    :arg bytes arguments: the job's input.
    :arg unique: the unique key (str or bytes), or None.
    :arg bytes handle: the server-assigned handle, once known.
    """

    # '__dict__' keeps ad-hoc attributes (common in applications) working.
    __slots__ = ('_name', '_arguments', '_unique', 'handle', 'connection',
                 '__dict__', '__weakref__')

    def __init__(self, name, arguments, unique=None, handle=None):
        self._name = convert_to_bytes(name)
        self._validate_arguments(arguments)
        self._arguments = convert_to_bytes(arguments)
        self._unique = convert_to_bytes(unique)
        self.handle = handle
        self.connection = None

    def _validate_arguments(self, arguments):
        if not isinstance(arguments, (bytes, bytearray)):
            raise TypeError("arguments must be of type bytes or bytearray")

    @property
    def arguments(self):
        return self._arguments

    @arguments.setter
    def arguments(self, value):
        self._arguments = value

    @property
    def unique(self):
        return self._unique

    @unique.setter
    def unique(self, value):
        self._unique = value

    @property
    def name(self):
        if isinstance(self._name, bytes):
            return self._name.decode('utf-8')
        return self._name

    @name.setter
    def name(self, value):
        self._name = convert_to_bytes(value)

    @property
    def binary_name(self):
        return self._name

    @property
    def binary_arguments(self):
        return self._arguments

    @property
    def binary_unique(self):
        return self._unique

    def __repr__(self):
        return '<gear.Job 0x%x handle: %s name: %s unique: %s>' % (
            id(self), self.handle, self.name, self.unique)


class Job(BaseJob):
    """A job submitted by a :class:`~gear.Client`.

    The client updates it as packets arrive: ``data`` collects the
    non-empty payloads of WORK_DATA, WORK_WARNING and WORK_COMPLETE;
    ``complete`` and ``failure`` tell how it ended; ``numerator``,
    ``denominator`` and ``fraction_complete`` track progress; ``known``
    and ``running`` come from a status query.  ``disconnected`` is set
    when the job was lost with its server connection.  :meth:`wait`
    blocks until it has ended.
    """

    data_type = list

    __slots__ = ('_data', '_exception', 'warning', 'complete', 'failure',
                 'numerator', 'denominator', 'fraction_complete', 'known',
                 'running', 'disconnected', '__ended')

    def __init__(self, name, arguments, unique=None):
        super(Job, self).__init__(name, arguments, unique)
        self._data = self.data_type()
        self._exception = None
        self.warning = False
        self.complete = False
        self.failure = False
        self.numerator = None
        self.denominator = None
        self.fraction_complete = None
        self.known = None
        self.running = None
        self.disconnected = False
        # A threading.Event, made by the first wait(): most jobs are
        # never waited on and should not pay for one.  Name-mangled, so
        # that subclasses (which often add an ``_ended`` of their own)
        # cannot clash with it.
        self.__ended = None

    def wait(self, timeout=None):
        """Block until the job has ended, at most ``timeout`` seconds
        (None: no limit).

        A foreground job ends with WORK_COMPLETE, WORK_FAIL or
        WORK_EXCEPTION, or when it is lost with its server connection
        (``disconnected``) or the client shuts down.  Then ``complete``
        is True; ``failure`` and ``exception`` say how it went.  A
        background job never ends as far as its client knows.

        :returns: True if the job has ended, False if ``timeout`` passed
            first.
        """
        if self.complete:
            return True
        with _WAIT_EVENT_LOCK:
            ended = self.__ended
            if ended is None:
                ended = self.__ended = threading.Event()
        # The client sets ``complete`` before it looks for the event, so
        # one of the two checks sees the other side's write.
        if self.complete:
            return True
        return ended.wait(timeout) or self.complete

    def _wakeWaiters(self):
        """Called by the client once ``complete`` is set."""
        ended = self.__ended
        if ended is not None:
            ended.set()

    @property
    def data(self):
        """What the worker sent back: a list with the payload of every
        non-empty WORK_DATA, WORK_WARNING and WORK_COMPLETE, in order."""
        return self._data

    @data.setter
    def data(self, value):
        if not isinstance(value, self.data_type):
            raise ValueError(
                "data attribute must be {}".format(self.data_type))
        self._data = value

    @property
    def binary_data(self):
        """The ``data`` items as bytes (a generator)."""
        for item in self._data:
            if isinstance(item, str):
                yield item.encode('utf-8')
            else:
                yield item

    @property
    def exception(self):
        """The payload of WORK_EXCEPTION, or None.  Servers forward it
        only to clients created with ``exceptions=True``."""
        return self._exception

    @exception.setter
    def exception(self, value):
        self._exception = value


class TextJobArguments(object):
    """Mixin: ``arguments`` reads as str and is stored as UTF-8 bytes."""

    __slots__ = ()

    def _validate_arguments(self, arguments):
        pass

    @property
    def arguments(self):
        args = self._arguments
        if isinstance(args, bytes):
            return args.decode('utf-8')
        return args

    @arguments.setter
    def arguments(self, value):
        self._arguments = convert_to_bytes(value)


class TextJobUnique(object):
    """Mixin: ``unique`` reads as str and is stored as UTF-8 bytes."""

    __slots__ = ()

    @property
    def unique(self):
        unique = self._unique
        if isinstance(unique, bytes):
            return unique.decode('utf-8')
        return unique

    @unique.setter
    def unique(self, value):
        self._unique = convert_to_bytes(value)


class TextList(list):
    """A list that stores bytes items as str (decoded as UTF-8)."""

    @staticmethod
    def _text(item):
        if isinstance(item, (bytes, bytearray)):
            return bytes(item).decode('utf-8')
        return item

    def append(self, item):
        super(TextList, self).append(self._text(item))

    def insert(self, index, item):
        super(TextList, self).insert(index, self._text(item))

    def extend(self, items):
        super(TextList, self).extend(self._text(item) for item in items)


class TextJob(TextJobArguments, TextJobUnique, Job):
    """A :class:`Job` whose arguments, unique, data and exception are str.
    """

    __slots__ = ()
    data_type = TextList

    @property
    def exception(self):
        exception = self._exception
        if isinstance(exception, bytes):
            return exception.decode('utf-8')
        return exception

    @exception.setter
    def exception(self, value):
        self._exception = value


class BaseBinaryJob(object):
    """Mixin: ``name`` stays bytes."""

    __slots__ = ()

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, value):
        self._name = convert_to_bytes(value)


class BinaryJob(BaseBinaryJob, Job):
    """A :class:`Job` whose name reads as bytes."""

    __slots__ = ()


class WorkerJob(BaseJob):
    """A job assigned to a :class:`~gear.Worker`; report on it with the
    ``send*`` methods, ending with exactly one of
    :meth:`sendWorkComplete`, :meth:`sendWorkFail` or
    :meth:`sendWorkException`.

    The ``send*`` methods return True when the packet was sent.  When
    the connection the job came on is gone (the server went away or the
    worker reconnected since), they log a warning, send nothing and
    return False instead of raising: the server queues such a job again
    for another worker (or has lost it with its own queue), so there is
    nobody to report to.  A long job may check the return value of
    :meth:`sendWorkStatus` or :meth:`sendWorkData` to give up early.
    """

    __slots__ = ('_generation',)

    def __init__(self, handle, name, arguments, unique=None):
        super(WorkerJob, self).__init__(name, arguments, unique, handle)
        # The Worker notes the connection's generation at assignment: a
        # reconnected Connection is a new session the job is not part of.
        self._generation = None

    def _linkLost(self):
        """True when the connection this job came on is gone."""
        conn = self.connection
        # getattr: tests often give a job a stand-in connection.
        if conn is None or not getattr(conn, 'connected', True):
            return True
        generation = self._generation
        return generation is not None and \
            generation != getattr(conn, '_generation', generation)

    def _send(self, ptype, data):
        payload = self.handle + b'\x00' + data if data is not None \
            else self.handle
        if not self._linkLost():
            try:
                self.connection.sendPacket(
                    Packet(constants.REQ, ptype, payload))
                return True
            except (ConnectionError, OSError) as e:
                reason = e
        else:
            reason = 'not connected'
        _log.warning("Dropped %s for job %s: its connection to %s is gone"
                     " (%s); the server hands the job out again",
                     constants.types.get(ptype, ptype), self.handle,
                     self.connection, reason)
        return False

    def sendWorkData(self, data=b''):
        """Send intermediate data to the client (WORK_DATA)."""
        return self._send(constants.WORK_DATA, _as_bytes(data))

    def sendWorkWarning(self, data=b''):
        """Send a warning to the client (WORK_WARNING)."""
        return self._send(constants.WORK_WARNING, _as_bytes(data))

    def sendWorkStatus(self, numerator, denominator):
        """Report progress (WORK_STATUS); sent as decimal text."""
        return self._send(constants.WORK_STATUS, _decimal(numerator) +
                          b'\x00' + _decimal(denominator))

    def sendWorkComplete(self, data=b''):
        """Finish the job successfully with ``data`` (WORK_COMPLETE)."""
        return self._send(constants.WORK_COMPLETE, _as_bytes(data))

    def sendWorkFail(self):
        """Finish the job as failed (WORK_FAIL)."""
        return self._send(constants.WORK_FAIL, None)

    def sendWorkException(self, data=b''):
        """Finish the job as failed with an exception (WORK_EXCEPTION)."""
        return self._send(constants.WORK_EXCEPTION, _as_bytes(data))


class TextWorkerJob(TextJobArguments, TextJobUnique, WorkerJob):
    """A :class:`WorkerJob` whose arguments and unique are str; the
    ``send*`` methods accept str."""

    __slots__ = ()


class BinaryWorkerJob(BaseBinaryJob, WorkerJob):
    """A :class:`WorkerJob` whose name reads as bytes."""

    __slots__ = ()


class FunctionRecord(object):
    """A function a worker can do.

    :arg name: the function name (str or bytes; kept as bytes).
    :arg timeout: the server-side run time limit in **milliseconds**
        (CAN_DO_TIMEOUT), or None for none.
    """

    __slots__ = ('name', 'timeout', '__dict__')

    def __init__(self, name, timeout=None):
        self.name = convert_to_bytes(name)
        self.timeout = timeout

    def __repr__(self):
        return '<gear.FunctionRecord 0x%x name: %s timeout: %s>' % (
            id(self), self.name, self.timeout)
