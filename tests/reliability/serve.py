"""Run a gear.Server in its own process: ``serve.py PORT JSON-KWARGS``.

geard exposes most Server options as flags; this runner passes any
keyword (``max_output_buffer``, ``max_packet_size``, ...) so a test can
measure the server process alone (its RSS, its open files) while it is
attacked.  ``store_synchronous`` (with ``store``, a path) opens the
SQLite store with that ``synchronous`` setting.  ``nofile_after_start``
lowers the soft file-descriptor limit once the server runs, so it meets
the limit at accept() rather than at start.  Like geard, it runs
gearmand's job semantics unless ``semantics`` says otherwise.  SIGTERM
stops it.
"""

import json
import logging
import signal
import sys
import threading


def main(argv):
    port = int(argv[1])
    kwargs = json.loads(argv[2]) if len(argv) > 2 else {}
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format='%(asctime)s %(levelname)s %(name)s: '
                               '%(message)s')
    import gear
    synchronous = kwargs.pop('store_synchronous', None)
    if synchronous:
        # A SQLite store with a chosen synchronous setting (geard's
        # --store always uses the default, NORMAL).
        from gear.server.sqlite_store import SqliteStore
        kwargs['store'] = SqliteStore(kwargs['store'], synchronous,
                                      group_commit=True)
    kwargs.setdefault('semantics', 'gearmand')
    nofile = kwargs.pop('nofile_after_start', None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    server = gear.Server(port, host='127.0.0.1', **kwargs)
    if nofile:
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    while not stop.wait(3600):
        pass
    server.shutdown()


if __name__ == '__main__':
    main(sys.argv)
