"""The server's record of one job.

A ServerJob lives from SUBMIT until its terminal WORK_* (or a cancel, an
abandon, a retry-limit drop).  Many thousands may sit in queues at once,
so the common fields are slots and the rare ones (epoch time, reducer,
retries, progress, anything a subclass or test fake adds) are class
defaults that only cost memory on the jobs that set them.
"""

from gear import constants

# Lifecycle states (ServerJob._state).  ``running`` is kept as a separate
# gear-compatible attribute because scheduling overrides set it freely.
NEW = 0          # built, not yet queued
QUEUED = 1       # in a (function, precedence) FIFO
EPOCH = 2        # waiting for its epoch time in the function's heap
DETACHED = 3     # taken out of its FIFO by a view, not yet assigned
RUNNING = 4      # assigned to a worker connection
DONE = 5         # finished, cancelled or dropped; never revived

# ServerJob._flags: the precedence (0-2) plus this bit for background jobs.
# One slot instead of two keeps a job within a smaller allocation size.
BACKGROUND = 4


class ServerJob(object):
    """A job as the server tracks it.

    gear-compatible attributes: ``handle``, ``name`` (bytes),
    ``arguments``, ``unique`` (bytes or None), ``client_connection``,
    ``worker_connection``, ``running`` and the client-side Job fields
    (``data``, ``exception``, ``numerator`` ...), which the server itself
    does not use.  Server state: ``precedence``, ``background``,
    ``clients`` (one entry per attached foreground submission),
    ``retries``, ``when`` (epoch seconds, 0 for none), ``reducer``,
    ``ignore`` (cancelled or abandoned while running).
    """

    __slots__ = ('handle', 'arguments', 'unique', 'clients',
                 'worker_connection', '_flags', '_state', '_fq', '__dict__')

    # Rarely set; a write lands in the instance __dict__ only for the few
    # jobs that need it.
    when = 0
    reducer = None
    retries = 0
    ignore = False
    numerator = None
    denominator = None
    exception = None
    warning = False
    complete = False
    failure = False
    known = None
    fraction_complete = None
    _timer = None
    _order = None

    def __init__(self, handle, name, arguments, client_connection=None,
                 unique=None):
        self.handle = handle
        self._fq = None
        self.name = _as_bytes(name)
        self.arguments = _as_bytes(arguments)
        self.unique = _as_bytes(unique) if unique else None
        self.clients = [client_connection] if client_connection else None
        self.worker_connection = None
        self._flags = constants.PRECEDENCE_NORMAL | (
            BACKGROUND if client_connection is None else 0)
        self._state = NEW

    @classmethod
    def _new(cls, handle, name, arguments, unique, clients, precedence,
             background, fq=None):
        """Constructor for trusted fields (replay, tests)."""
        self = cls.__new__(cls)
        self.handle = handle
        self._fq = fq
        if fq is None:
            self.__dict__['_name'] = name
        self.arguments = arguments
        self.unique = unique
        self.clients = clients
        self.worker_connection = None
        self._flags = precedence | (BACKGROUND if background else 0)
        self._state = NEW
        return self

    @property
    def precedence(self):
        """PRECEDENCE_NORMAL, PRECEDENCE_LOW or PRECEDENCE_HIGH."""
        return self._flags & 3

    @precedence.setter
    def precedence(self, value):
        self._flags = (self._flags & BACKGROUND) | value

    @property
    def background(self):
        """True for a job submitted with a SUBMIT_JOB*_BG packet."""
        return self._flags >= BACKGROUND

    @background.setter
    def background(self, value):
        self._flags = (self._flags & 3) | (BACKGROUND if value else 0)

    # The name lives in the job's FunctionQueue (one bytes object per
    # function instead of one per job); a job not queued yet keeps its own.
    @property
    def name(self):
        fq = self._fq
        if fq is not None:
            return fq.name
        return self.__dict__.get('_name')

    @name.setter
    def name(self, value):
        self.__dict__['_name'] = value

    @property
    def running(self):
        """True while a worker holds the job."""
        return self._state == RUNNING

    @running.setter
    def running(self, value):
        # Scheduling overrides written for gear set this flag themselves
        # (sometimes on a mere peek); the server's own state decides.
        pass

    @property
    def client_connection(self):
        """The first attached client (gear compatibility); None if none."""
        clients = self.clients
        return clients[0] if clients else None

    @client_connection.setter
    def client_connection(self, connection):
        if connection is None:
            self.clients = None
        elif self.clients:
            self.clients[0] = connection
        else:
            self.clients = [connection]

    # Client-side Job fields the server never fills; present so that code
    # written against gear's Job keeps working on ServerJob.
    @property
    def data(self):
        return self.__dict__.setdefault('data', [])

    @data.setter
    def data(self, value):
        self.__dict__['data'] = value

    @property
    def binary_name(self):
        return self.name

    @property
    def binary_arguments(self):
        return self.arguments

    @property
    def binary_unique(self):
        return self.unique

    @property
    def binary_data(self):
        for item in self.data:
            yield item

    @property
    def state(self):
        return _STATE_NAMES[self._state]

    def __repr__(self):
        return '<gear.ServerJob 0x%x handle: %s name: %s unique: %s>' % (
            id(self), self.handle, self.name, self.unique)


_STATE_NAMES = {NEW: 'NEW', QUEUED: 'QUEUED', EPOCH: 'EPOCH',
                DETACHED: 'DETACHED', RUNNING: 'RUNNING', DONE: 'DONE'}


def _as_bytes(value):
    if isinstance(value, str):
        return value.encode('utf8')
    return value
