"""The server's record of one job.

A job lives from SUBMIT until its terminal WORK_* (or a cancel, an
abandon, a retry-limit drop).  A million may sit in queues at once, so a
queued background job holds only what it needs while it waits: its
handle, payload, unique, function queue and one integer of state -- six
slots, 80 bytes on a 64-bit CPython.  Its ties to connections (the
foreground clients waiting on it, the worker running it) and the fields
few jobs ever set (epoch time, reducer, retries, progress ...) live in a
:class:`JobLinks` record that a job gets on first need.

:class:`CompactServerJob` is that record as :class:`gear.Server` stores
it.  :class:`ServerJob` adds a per-job ``__dict__`` so that code written
against gear can set attributes of its own on jobs (scheduling overrides
in test fakes do); a subclass of the Server uses it unless it says
otherwise (``Server.job_class``).
"""

from gear import constants

# Lifecycle states: the low three bits of ServerJob._state.  ``running``
# is kept as a separate gear-compatible attribute because scheduling
# overrides set it freely.
NEW = 0          # built, not yet queued
QUEUED = 1       # in a (function, precedence) FIFO
EPOCH = 2        # waiting for its epoch time in the function's heap
DETACHED = 3     # taken out of its FIFO by a view, not yet assigned
RUNNING = 4      # assigned to a worker connection
DONE = 5         # finished, cancelled or dropped; never revived
STATE = 7

# Above the state: the precedence (0-2) and a bit for background jobs.
# One integer instead of three slots keeps the job small.
PRECEDENCE_SHIFT = 3
PRECEDENCE_BITS = 3 << PRECEDENCE_SHIFT
BACKGROUND = 1 << 5
FLAGS = PRECEDENCE_BITS | BACKGROUND


def flags(precedence, background):
    """The non-state bits of ``_state`` for a new job."""
    return (precedence << PRECEDENCE_SHIFT) | (BACKGROUND if background
                                               else 0)


class JobLinks(object):
    """What only some jobs need: attached clients, the worker running the
    job, rarely set fields (``extra``, a dict or None) and, when the
    server records metrics, the loop turn time the job was last handed
    to a worker (``started``; unset before, so that a server without
    metrics does not pay for it)."""

    __slots__ = ('clients', 'worker', 'extra', 'started')

    def __init__(self, clients=None, worker=None):
        self.clients = clients
        self.worker = worker
        self.extra = None

    def __repr__(self):
        return '<JobLinks clients=%r worker=%r extra=%r>' % (
            self.clients, self.worker, self.extra)


def _rare(name, default=None):
    """A property kept in ``JobLinks.extra``; ``default`` when unset."""

    def get(self):
        links = self._links
        if links is None or links.extra is None:
            return default
        return links.extra.get(name, default)

    def set(self, value):
        self._extras()[name] = value

    def delete(self):
        links = self._links
        if links is not None and links.extra:
            links.extra.pop(name, None)

    return property(get, set, delete)


class _JobClass(type):
    """Makes ``isinstance(job, ServerJob)`` true for compact jobs too: to
    code written against gear, every job of the server is a ServerJob."""

    def __instancecheck__(cls, instance):
        if cls is ServerJob:
            return isinstance(instance, CompactServerJob)
        return type.__instancecheck__(cls, instance)


class CompactServerJob(object, metaclass=_JobClass):
    """A job as the server tracks it, without a per-job ``__dict__``.

    gear-compatible attributes: ``handle``, ``name`` (bytes),
    ``arguments``, ``unique`` (bytes or None), ``client_connection``,
    ``worker_connection``, ``running`` and the client-side Job fields
    (``data``, ``exception``, ``numerator`` ...), which the server itself
    does not use.  Server state: ``precedence``, ``background``,
    ``clients`` (one entry per attached foreground submission),
    ``retries``, ``when`` (epoch seconds, 0 for none), ``reducer``,
    ``ignore`` (cancelled or abandoned while running).
    """

    __slots__ = ('handle', 'arguments', 'unique', '_fq', '_state', '_links')

    when = _rare('when', 0)
    reducer = _rare('reducer')
    retries = _rare('retries', 0)
    ignore = _rare('ignore', False)
    numerator = _rare('numerator')
    denominator = _rare('denominator')
    exception = _rare('exception')
    warning = _rare('warning', False)
    complete = _rare('complete', False)
    failure = _rare('failure', False)
    known = _rare('known')
    fraction_complete = _rare('fraction_complete')
    _timer = _rare('_timer')
    _order = _rare('_order')
    _name = _rare('_name')

    def __init__(self, handle, name, arguments, client_connection=None,
                 unique=None):
        self.handle = handle
        self._fq = None
        self._links = None
        self.name = _as_bytes(name)
        self.arguments = _as_bytes(arguments)
        self.unique = _as_bytes(unique) if unique else None
        if client_connection:
            self.clients = [client_connection]
        self._state = flags(constants.PRECEDENCE_NORMAL,
                            client_connection is None)

    @classmethod
    def _new(cls, handle, name, arguments, unique, clients, precedence,
             background, fq=None):
        """Constructor for trusted fields (replay, tests)."""
        self = cls.__new__(cls)
        self.handle = handle
        self._fq = fq
        self._links = JobLinks(clients) if clients else None
        if fq is None:
            self._name = name
        self.arguments = arguments
        self.unique = unique
        self._state = flags(precedence, background)
        return self

    def _linked(self):
        links = self._links
        if links is None:
            links = self._links = JobLinks()
        return links

    def _extras(self):
        """The dict of rarely set fields, created on first need."""
        links = self._linked()
        if links.extra is None:
            links.extra = {}
        return links.extra

    @property
    def clients(self):
        """The attached foreground clients (a list), or None."""
        links = self._links
        return None if links is None else links.clients

    @clients.setter
    def clients(self, value):
        links = self._links
        if links is not None:
            links.clients = value
        elif value is not None:
            self._links = JobLinks(value)

    @property
    def worker_connection(self):
        """The worker connection running the job, or None."""
        links = self._links
        return None if links is None else links.worker

    @worker_connection.setter
    def worker_connection(self, connection):
        links = self._links
        if links is not None:
            links.worker = connection
        elif connection is not None:
            self._links = JobLinks(None, connection)

    @property
    def precedence(self):
        """PRECEDENCE_NORMAL, PRECEDENCE_LOW or PRECEDENCE_HIGH."""
        return (self._state & PRECEDENCE_BITS) >> PRECEDENCE_SHIFT

    @precedence.setter
    def precedence(self, value):
        self._state = (self._state & ~PRECEDENCE_BITS) | (
            value << PRECEDENCE_SHIFT)

    @property
    def background(self):
        """True for a job submitted with a SUBMIT_JOB*_BG packet."""
        return bool(self._state & BACKGROUND)

    @background.setter
    def background(self, value):
        self._state = (self._state & ~BACKGROUND) | (BACKGROUND if value
                                                     else 0)

    # The name lives in the job's FunctionQueue (one bytes object per
    # function instead of one per job); a job not queued yet keeps its own.
    @property
    def name(self):
        fq = self._fq
        if fq is not None:
            return fq.name
        return self._name

    @name.setter
    def name(self, value):
        self._name = value

    @property
    def running(self):
        """True while a worker holds the job."""
        return self._state & STATE == RUNNING

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
        return self._extras().setdefault('data', [])

    @data.setter
    def data(self, value):
        self._extras()['data'] = value

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
        return _STATE_NAMES[self._state & STATE]

    def __repr__(self):
        return '<gear.ServerJob 0x%x handle: %s name: %s unique: %s>' % (
            id(self), self.handle, self.name, self.unique)


class ServerJob(CompactServerJob):
    """A :class:`CompactServerJob` that also takes attributes of any name,
    as gear's server jobs do."""

    __slots__ = ('__dict__',)


_STATE_NAMES = {NEW: 'NEW', QUEUED: 'QUEUED', EPOCH: 'EPOCH',
                DETACHED: 'DETACHED', RUNNING: 'RUNNING', DONE: 'DONE'}


def _as_bytes(value):
    if isinstance(value, str):
        return value.encode('utf8')
    return value
