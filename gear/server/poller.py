"""The server's readiness poller, apart from the loop that uses it.

The loop only needs register/modify/unregister/poll/close with epoll-style
event masks; this keeps the epoll-versus-``selectors`` choice (and the
mask translation the fallback needs) out of the server module.
"""

import select
import selectors

_HAS_EPOLL = hasattr(select, 'epoll')
_EV_READ = select.EPOLLIN if _HAS_EPOLL else 1
_EV_WRITE = select.EPOLLOUT if _HAS_EPOLL else 4
_EV_ERR = (select.EPOLLERR | select.EPOLLHUP) if _HAS_EPOLL else 8
_READ_MASK = _EV_READ | _EV_ERR


class Poller(object):
    """epoll where available, ``selectors`` elsewhere, one small API."""

    def __init__(self, use_epoll=_HAS_EPOLL):
        if use_epoll:
            self._epoll = select.epoll()
            self.poll = self._epoll.poll
            self.register = self._epoll.register
            self.modify = self._epoll.modify
            self.unregister = self._epoll.unregister
            self.close = self._epoll.close
        else:
            self._sel = selectors.DefaultSelector()
            self.poll = self._selPoll
            self.register = self._selRegister
            self.modify = self._selModify
            self.unregister = self._sel.unregister
            self.close = self._sel.close

    @staticmethod
    def _toSel(mask):
        events = 0
        if mask & _EV_READ:
            events |= selectors.EVENT_READ
        if mask & _EV_WRITE:
            events |= selectors.EVENT_WRITE
        return events or selectors.EVENT_READ

    def _selRegister(self, fd, mask):
        self._sel.register(fd, self._toSel(mask))

    def _selModify(self, fd, mask):
        self._sel.modify(fd, self._toSel(mask))

    def _selPoll(self, timeout=None):
        if timeout is not None and timeout < 0:
            timeout = None
        out = []
        for key, events in self._sel.select(timeout):
            mask = 0
            if events & selectors.EVENT_READ:
                mask |= _EV_READ
            if events & selectors.EVENT_WRITE:
                mask |= _EV_WRITE
            out.append((key.fd, mask))
        return out
