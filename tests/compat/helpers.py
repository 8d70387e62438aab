"""Bounded waits and servers for the compatibility tests.

Self-contained on purpose: this package also runs against gear 0.16,
where the rest of the test suite's helpers do not import.
"""

import time

import gear

HOST = '127.0.0.1'
WAIT = 20.0


def wait_for(predicate, timeout=WAIT, what=None):
    """Poll ``predicate`` until true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError('timed out waiting for %s' %
                                 (what or predicate,))
        time.sleep(0.01)


def start_server(cls=None, **kw):
    """A server of ``cls`` (default gear.Server) on a free port."""
    cls = cls or gear.Server
    server = cls(0, **kw)
    wait_for(lambda: server.port, what='the server to listen')
    return server


def stop(*things):
    """Shut down clients, workers and servers, ignoring repeats."""
    for thing in things:
        try:
            thing.shutdown()
        except Exception:
            pass


def admin(connection, request, timeout=WAIT):
    """Send an admin request on a client's connection; return the reply.
    """
    connection.sendAdminRequest(request, timeout=timeout)
    return request.response


def worker_functions(connection, client_id):
    """The functions the server lists (``workers``) for ``client_id``."""
    response = admin(connection, gear.WorkersAdminRequest())
    functions = set()
    for line in response.decode('utf8').splitlines():
        head, _, tail = line.partition(' : ')
        if head.split()[-1:] == [client_id]:
            functions.update(tail.split())
    return functions
