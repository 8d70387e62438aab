"""How server replies change a GearmanJobRequest.

The gear Client delivers replies in its poll thread; the caller of a
GearmanClient method waits in its own thread.  :class:`RequestTracker`
applies each reply to its request under one condition variable and wakes
the waiters, so that every state change is atomic with respect to the
predicates the wait loops test.  It knows nothing about sockets, which
keeps the state machine testable on its own.
"""

import logging
import threading
import time

from gear.gearman.constants import (
    JOB_COMPLETE, JOB_CREATED, JOB_FAILED, JOB_PENDING, JOB_UNKNOWN)

log = logging.getLogger('gear.gearman.client')

FINISHED_STATES = (JOB_COMPLETE, JOB_FAILED)


def status_number(value):
    """A WORK_STATUS / STATUS_RES number as an int; empty or bad is 0."""
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class WireText(str):
    """A handle or unique read from the wire: a str that also has
    ``decode()``.

    python-gearman (Python 2) gave these as byte strings, which compared
    equal to text; its Python 3 forks give bytes, so code written for
    them calls ``handle.decode()``.  A str keeps comparisons with admin
    listings and ``cancel_job(handle)`` working; ``decode`` keeps the
    forks' code working and returns what ``bytes.decode`` would.
    """

    __slots__ = ()

    def decode(self, encoding='utf-8', errors='strict'):
        raw = self.encode('utf-8', 'surrogateescape')
        return raw.decode(encoding, errors)


def name_text(value):
    """A handle or unique from the wire as str (None stays None)."""
    if isinstance(value, (bytes, bytearray)):
        return WireText(bytes(value).decode('utf-8', 'surrogateescape'))
    return value


class RequestTracker(object):
    """Applies replies to requests and lets callers wait for changes."""

    def __init__(self, data_encoder):
        self.data_encoder = data_encoder
        self.condition = threading.Condition()

    # Waiting

    def wait_for(self, predicate, deadline):
        """Block until ``predicate()`` holds or ``deadline`` passes.

        Returns whether the predicate held.  It is evaluated with the
        condition held, so replies cannot change requests half-way.
        """
        with self.condition:
            while True:
                if predicate():
                    return True
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    return False
                self.condition.wait(remaining)

    def _changed(self):
        self.condition.notify_all()

    def _decode(self, request, what, payload):
        try:
            return self.data_encoder.decode(bytes(payload))
        except Exception:
            # The poll thread must survive bad payloads; keep the raw
            # bytes so that the caller can still see what arrived.
            log.exception('Unable to decode %s of %r; keeping raw bytes',
                          what, request)
            return bytes(payload)

    # Submission

    def submitting(self, request):
        with self.condition:
            request.state = JOB_PENDING
            request.timed_out = False
            request.error = None
            self._changed()

    def created(self, request, handle, connection):
        with self.condition:
            job = request.job
            job.handle = name_text(handle)
            job.connection = connection
            if request.state == JOB_PENDING:
                request.state = JOB_CREATED
            self._changed()

    def refused(self, request, code, text):
        """An ERROR answered the submission (e.g. QUEUE_ERROR)."""
        with self.condition:
            request.error = (name_text(code), name_text(text))
            request.state = JOB_FAILED
            self._changed()

    def abandoned(self, request, timed_out):
        """The submission got no handle: lost link or no reply in time."""
        with self.condition:
            if request.state == JOB_PENDING:
                request.state = JOB_UNKNOWN
            request.timed_out = timed_out
            self._changed()

    def lost(self, request):
        """The request's connection went away before it finished."""
        with self.condition:
            finished = request.state in FINISHED_STATES or (
                request.background and request.state == JOB_CREATED)
            if not finished:
                request.state = JOB_UNKNOWN
            self._changed()

    # Work updates

    def work_data(self, request, payload):
        value = self._decode(request, 'WORK_DATA', payload)
        with self.condition:
            request.data_updates.append(value)
            self._changed()

    def work_warning(self, request, payload):
        value = self._decode(request, 'WORK_WARNING', payload)
        with self.condition:
            request.warning_updates.append(value)
            self._changed()

    def work_status(self, request, numerator, denominator):
        with self.condition:
            request.status.update(
                handle=request.job.handle, known=True, running=True,
                numerator=status_number(numerator),
                denominator=status_number(denominator),
                time_received=time.time())
            self._changed()

    def work_complete(self, request, payload):
        value = self._decode(request, 'WORK_COMPLETE', payload)
        with self.condition:
            if request.state in FINISHED_STATES:
                return
            request.result = value
            request.state = JOB_COMPLETE
            self._changed()

    def work_fail(self, request):
        with self.condition:
            # WORK_EXCEPTION already ended the request: a WORK_FAIL that
            # follows it is the same failure told twice.
            if request.state in FINISHED_STATES:
                return
            request.state = JOB_FAILED
            self._changed()

    def work_exception(self, request, payload):
        value = self._decode(request, 'WORK_EXCEPTION', payload)
        with self.condition:
            if request.state in FINISHED_STATES:
                return
            request.exception = value
            request.state = JOB_FAILED
            self._changed()

    def status_res(self, request, handle, known, running, numerator,
                   denominator):
        with self.condition:
            status = dict(request.status)
            status.update(
                handle=name_text(handle), known=bool(known),
                running=bool(running),
                numerator=status_number(numerator),
                denominator=status_number(denominator),
                time_received=time.time())
            request.status = status
            self._changed()

    def status_failed(self, request):
        with self.condition:
            request.timed_out = True
            self._changed()


class Deadline(object):
    """One overall time limit shared by several waits; None is forever."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.expires = None if timeout is None \
            else time.monotonic() + max(0.0, float(timeout))

    def remaining(self):
        if self.expires is None:
            return None
        return max(0.0, self.expires - time.monotonic())

    def expired(self):
        return self.expires is not None and time.monotonic() >= self.expires
