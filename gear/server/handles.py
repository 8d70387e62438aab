"""The server's handle -> job index, at about 8 bytes a job.

The server names its jobs ``<prefix>:<n>`` with ``n`` counting up, so
the index can be a list addressed by ``n`` instead of a dict of handle
strings: a dict costs about 42 bytes an entry at a million jobs, a list
slot 8.  The list is cut into chunks of :data:`CHUNK` slots; a chunk is
created when its first job arrives and freed when its last job leaves,
so memory follows the live jobs however far the counter has run.

Any other handle (a job replayed from a store written under another
prefix, or one queued by hand through a view) goes to a plain dict.

:class:`HandleIndex` is a mutable mapping, so ``server.jobs`` keeps the
dict interface gear code uses (``get``, ``in``, ``len``, ``values()``...).
"""

import collections.abc

CHUNK_BITS = 12
CHUNK = 1 << CHUNK_BITS
CHUNK_MASK = CHUNK - 1


class HandleIndex(collections.abc.MutableMapping):
    """handle (bytes) -> job, for every job the server knows."""

    def __init__(self, prefix=None):
        # ``prefix`` ends with the ':' before the number; without one,
        # every handle goes to the dict.
        self._prefix = prefix
        self._plen = len(prefix) if prefix is not None else 0
        self.chunks = {}     # n >> CHUNK_BITS -> list of CHUNK slots
        self.live = {}       # n >> CHUNK_BITS -> jobs in that chunk
        self._other = {}     # handles not of the numbered form
        self._numbered = 0   # jobs in the chunks

    def number(self, handle):
        """The counter value of one of the server's own handles, or None.

        Only the canonical spelling counts (``01`` or `` 1`` are other
        handles), so two different handles never share a slot.
        """
        prefix = self._prefix
        if prefix is None or type(handle) is not bytes or \
                not handle.startswith(prefix):
            return None
        tail = handle[self._plen:]
        if not tail.isdigit() or (tail[0] == 48 and len(tail) > 1):
            return None
        try:
            return int(tail)
        except ValueError:
            return None     # more digits than int() converts

    # The submit fast path calls put() directly with the number it has
    # just formatted into the handle; everything else goes through the
    # mapping methods.
    def put(self, n, job):
        """Store a job whose handle is ``prefix + str(n)``."""
        c = n >> CHUNK_BITS
        chunk = self.chunks.get(c)
        if chunk is None:
            chunk = self.chunks[c] = [None] * CHUNK
            self.live[c] = 0
        i = n & CHUNK_MASK
        if chunk[i] is None:
            self.live[c] += 1
            self._numbered += 1
        chunk[i] = job

    def get(self, handle, default=None):
        n = self.number(handle)
        if n is None:
            return self._other.get(handle, default)
        chunk = self.chunks.get(n >> CHUNK_BITS)
        if chunk is None:
            return default
        job = chunk[n & CHUNK_MASK]
        return default if job is None else job

    def discard(self, handle, job):
        """Remove ``handle`` if it still names ``job`` (once per finished
        job).  The number is read without checking the handle's form
        first: only a slot that holds this very job is emptied, and a
        job is in a slot only under its canonical handle, so any other
        handle falls through to the dict."""
        try:
            n = int(handle[self._plen:])
        except (ValueError, TypeError):
            n = -1
        if n >= 0:
            c = n >> CHUNK_BITS
            chunk = self.chunks.get(c)
            if chunk is not None:
                i = n & CHUNK_MASK
                if chunk[i] is job:
                    chunk[i] = None
                    self._numbered -= 1
                    left = self.live[c] = self.live[c] - 1
                    if not left:
                        del self.chunks[c]
                        del self.live[c]
                    return
        other = self._other
        if other.get(handle) is job:
            del other[handle]

    def __getitem__(self, handle):
        job = self.get(handle)
        if job is None:
            raise KeyError(handle)
        return job

    def __contains__(self, handle):
        return self.get(handle) is not None

    def __setitem__(self, handle, job):
        if job is None:
            raise ValueError('a job index entry cannot be None')
        n = self.number(handle)
        if n is None:
            self._other[handle] = job
        else:
            self.put(n, job)

    def __delitem__(self, handle):
        job = self.get(handle)
        if job is None:
            raise KeyError(handle)
        self.discard(handle, job)

    def __len__(self):
        return self._numbered + len(self._other)

    def items(self):
        """(handle, job) pairs, numbered ones in order (a snapshot list)."""
        out = []
        prefix = self._prefix
        chunks = self.chunks
        for c in sorted(chunks):
            base = c << CHUNK_BITS
            out.extend((prefix + b'%d' % (base + i), job)
                       for i, job in enumerate(chunks[c]) if job is not None)
        out.extend(self._other.items())
        return out

    def values(self):
        return [job for _, job in self.items()]

    def keys(self):
        return [handle for handle, _ in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def clear(self):
        self.chunks.clear()
        self.live.clear()
        self._other.clear()
        self._numbered = 0

    def __repr__(self):
        return '<HandleIndex jobs=%d>' % len(self)


__all__ = ['HandleIndex', 'CHUNK', 'CHUNK_BITS']
