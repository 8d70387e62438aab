"""Which server a job with a unique key goes to, when there are several.

Two clients that submit the same unique must reach the same server, or
the server cannot coalesce the two submissions into one job.  Rendezvous
(highest random weight) hashing gives every unique its own order of the
configured servers: the first server in that order owns the key, and
when it is down the next one takes over.  Adding or removing a server
only moves the keys that server owns or would own.

A server is named by ``host:port`` as the client was configured, so the
order is the same in every process and on every machine as long as the
clients spell their server lists the same way.  The scores come from
BLAKE2b, never from Python's ``hash()``, which differs between processes.
"""

import hashlib


def server_key(host, port):
    """The bytes that name a server in the hash: ``b'host:port'``."""
    if isinstance(host, bytes):
        host = host.decode('utf-8')
    return ('%s:%s' % (host, port)).encode('utf-8')


def routing_key(unique, arguments):
    """What a job is hashed by: its unique, or its arguments when the
    unique is ``-`` (the server then uses the arguments as the unique);
    None for no unique (such jobs are not hashed)."""
    if not unique:
        return None
    if unique == b'-':
        return bytes(arguments)
    return unique


def _score(key, unique):
    # The NUL keeps b'a:1' + b'2x' apart from b'a:12' + b'x'.
    return hashlib.blake2b(key + b'\x00' + unique, digest_size=8).digest()


def rendezvous_order(unique, servers, key):
    """``servers`` ordered for ``unique``: its owner first.

    :arg bytes unique: the job's unique key (not empty).
    :arg servers: any objects; ``key(server)`` gives each one's
        :func:`server_key`.
    """
    if isinstance(unique, str):
        unique = unique.encode('utf-8')
    scored = [(_score(key(server), unique), key(server), i, server)
              for i, server in enumerate(servers)]
    scored.sort(reverse=True)
    return [entry[3] for entry in scored]
