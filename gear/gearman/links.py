"""Telling "still connecting" apart from "unreachable".

gear's Client and Worker connect in a background thread and retry with a
backoff; python-gearman connected synchronously and raised
ServerUnavailable at once when a server refused.  :class:`LinkWatch`
counts the rounds of the connect thread, so that a caller can wait until
the link is up *or* an attempt made after it started waiting has failed.
"""

import threading
import time


class LinkWatch(object):
    """Mixin for gear Client/Worker subclasses (put it first in the bases).

    Call :meth:`_initLinkWatch` before the gear constructor: that
    constructor starts the connect thread, which uses these attributes.
    """

    def _initLinkWatch(self):
        self._link_condition = threading.Condition()
        self._rounds_started = 0
        self._rounds_finished = 0

    def _connectLoop(self):
        with self._link_condition:
            self._rounds_started += 1
            this_round = self._rounds_started
        try:
            return super(LinkWatch, self)._connectLoop()
        finally:
            with self._link_condition:
                self._rounds_finished = this_round
                self._link_condition.notify_all()

    def _onActiveConnection(self, conn):
        try:
            super(LinkWatch, self)._onActiveConnection(conn)
        finally:
            with self._link_condition:
                self._link_condition.notify_all()

    def isConnected(self):
        """True if at least one server connection is up."""
        return bool(self.active_connections)

    def waitConnected(self, timeout=None):
        """Wait for a connection; False if an attempt failed or time ran out.

        Only attempts that begin after this call count, so a failure that
        is already old never hides a server that has come back.
        """
        expires = None if timeout is None else time.monotonic() + timeout
        with self._link_condition:
            baseline = self._rounds_started
            while not self.active_connections:
                if not self.running or self._rounds_finished > baseline:
                    return False
                if expires is None:
                    self._link_condition.wait()
                    continue
                remaining = expires - time.monotonic()
                if remaining <= 0:
                    return False
                self._link_condition.wait(remaining)
            return True
