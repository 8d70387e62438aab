"""Jobs and job requests of the python-gearman 2.x API.

A :class:`GearmanJob` is the unit of work as a worker sees it (and as a
client describes it).  A :class:`GearmanJobRequest` is a client's view of
one submission: its state, result, updates and status.  Both are plain
records; the client and worker fill them in.
"""

import collections

from gear.gearman.constants import (  # noqa: F401 - python-gearman names
    JOB_COMPLETE, JOB_CREATED, JOB_FAILED, JOB_PENDING, JOB_UNKNOWN,
    PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NONE)


class GearmanJob(object):
    """One job: where it lives (connection, handle) and what it is."""

    def __init__(self, connection, handle, task, unique, data):
        self.connection = connection
        self.handle = handle
        self.task = task
        self.unique = unique
        self.data = data

    def to_dict(self):
        return dict(task=self.task, job_handle=self.handle,
                    unique=self.unique, data=self.data)

    def __repr__(self):
        return ('<GearmanJob connection/handle=(%r, %r), task=%r, unique=%r,'
                ' data=%r>' % (self.connection, self.handle, self.task,
                               self.unique, self.data))


class GearmanJobRequest(object):
    """A client's record of one submitted job.

    ``state`` moves UNKNOWN -> PENDING -> CREATED -> COMPLETE or FAILED;
    a lost connection sends it back to UNKNOWN.  ``error`` holds the
    ``(code, text)`` of an ERROR reply that refused the submission.
    """

    def __init__(self, gearman_job, initial_priority=PRIORITY_NONE,
                 background=False, max_attempts=1):
        self.gearman_job = gearman_job
        self.priority = initial_priority
        self.background = background
        self.connection_attempts = 0
        self.max_connection_attempts = max_attempts
        self.initialize_request()

    def initialize_request(self):
        """Forget everything the server told us about this request."""
        self.result = None
        self.exception = None
        self.warning_updates = collections.deque()
        self.data_updates = collections.deque()
        self.status = {}
        self.state = JOB_UNKNOWN
        self.timed_out = False
        self.error = None

    def reset(self):
        """Return to the state of a request that was never submitted."""
        self.initialize_request()
        self.connection_attempts = 0
        self.gearman_job.connection = None
        self.gearman_job.handle = None

    @property
    def job(self):
        return self.gearman_job

    @property
    def unique(self):
        """The job's unique id (a shortcut for ``job.unique``)."""
        return self.gearman_job.unique

    @property
    def complete(self):
        """True once nothing more is expected for this request.

        A background request is done once the server created it; a
        foreground one once it completed or failed.  A request refused by
        an ERROR reply (state FAILED) is done in both cases.
        """
        if self.background:
            return self.state in (JOB_CREATED, JOB_FAILED)
        return self.state in (JOB_COMPLETE, JOB_FAILED)

    @property
    def status_updates(self):
        """Deprecated: the last status as a deque of one (num, den) pair."""
        updates = collections.deque()
        if self.status:
            updates.append((self.status.get('numerator', 0),
                            self.status.get('denominator', 0)))
        return updates

    @property
    def server_status(self):
        """Deprecated alias of ``status``."""
        return self.status

    def __repr__(self):
        return ('<GearmanJobRequest task=%r, unique=%r, priority=%r, '
                'background=%r, state=%r, timed_out=%r>'
                % (self.gearman_job.task, self.gearman_job.unique,
                   self.priority, self.background, self.state,
                   self.timed_out))
