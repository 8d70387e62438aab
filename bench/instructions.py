"""Instructions per request through the job server's read path.

Wall-clock figures of a shared two-core machine move by 10-20 % between
runs, more than most changes to the server's hot path.  Instructions do
not: this runs requests through ``Server._processData`` (the framing,
the dispatch and the core, as the loop calls them for a read, without
sockets) in a child process under ``valgrind --tool=cachegrind``, twice
with different counts, and reports the difference of the totals divided
by the difference of the counts, so start-up costs cancel out.

Paths:

* ``submit``: SUBMIT_JOB_BG of new jobs, 100 to a read;
* ``drain``: a job's WORK_COMPLETE and the worker's next GRAB_JOB_UNIQ
  in one read (background jobs queued beforehand);
* ``can-do``: CAN_DO of a function another worker registered, in
  64 KiB reads;
* ``can-do-new``: CAN_DO that creates its function, in 64 KiB reads.

``--root DIR`` measures the gear package of another checkout (a
``git worktree`` of an older commit), so that a change and its base are
compared with the same harness::

    python3 -m bench.instructions --paths submit,drain
    python3 -m bench.instructions --paths submit,drain --root ../base

Each child builds the same data whatever its count, so only the measured
requests differ.  It imports nothing from this directory: the script
runs on its own with the measured checkout on ``PYTHONPATH``.
"""

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys

PATHS = ('submit', 'drain', 'can-do', 'can-do-new')
# Requests built in every child, whatever it measures.
SIZE = 12000
READ = 65536

_HEADER = struct.Struct('!4sII').pack


def _request(ptype, payload):
    return _HEADER(b'\x00REQ', ptype, len(payload)) + payload


def run(path, n, tune=False):
    """Run ``n`` requests of ``path`` through a server in this process;
    return what the server holds afterwards: (jobs, the measured
    worker's functions).  ``tune``: once the data is built, set the
    collector up as geard does its own process (only for a child that
    does nothing else)."""
    import gc
    import socket
    from gear import constants as C
    from gear.server.connection import ServerConnection
    from gear.server.server import Server

    names = [b'build:job-%06d:label' % i for i in range(SIZE)]
    can_do = [_request(C.CAN_DO, name) for name in names]
    submits = [_request(C.SUBMIT_JOB_BG,
                        b'fn\x00u%d\x00' % i + b'p' * 100)
               for i in range(SIZE)]
    grab = _request(C.GRAB_JOB_UNIQ, b'')
    server = Server(0, host='127.0.0.1')
    socks = socket.socketpair() + socket.socketpair() + socket.socketpair()
    try:
        client = ServerConnection(('client', 1), socks[0], False, 'c')
        worker = ServerConnection(('worker', 2), socks[2], False, 'w')
        other = ServerConnection(('other', 3), socks[4], False, 'o')
        if tune:
            _tune_gc()
        else:
            gc.collect()
        with server.lock:
            if path == 'submit':
                for i in range(0, n, 100):
                    server._processData(client, b''.join(submits[i:i + 100]))
                    client.send_queue.clear()
            elif path == 'drain':
                server._processData(worker, _request(C.CAN_DO, b'fn'))
                server._processData(client, b''.join(submits))
                client.send_queue.clear()
                server._processData(worker, grab)
                for _ in range(n):
                    out = bytes(worker.send_queue)
                    handle = out[12:out.index(b'\x00', 12)]
                    worker.send_queue.clear()
                    server._processData(worker, _request(
                        C.WORK_COMPLETE, handle + b'\x00ok') + grab)
            else:
                if path == 'can-do':
                    data = b''.join(can_do)
                    for i in range(0, len(data), READ):
                        server._processData(other, data[i:i + READ])
                data = b''.join(can_do[:n])
                for i in range(0, len(data), READ):
                    server._processData(worker, data[i:i + READ])
            # These connections are not the loop's: it must not try to
            # write to them once the lock is released (the list is
            # ``core.dirty``; older checkouts kept it as ``_dirty``).
            core = getattr(server, 'core', None)
            dirty = getattr(core, 'dirty', None)
            if dirty is None:
                dirty = getattr(server, '_dirty', [])
            del dirty[:]
        return len(server.queue.jobs), len(worker.functions)
    finally:
        server.shutdown()
        for sock in socks:
            sock.close()


def _tune_gc():
    """geard's collector settings: thresholds, and everything made so
    far frozen out of the collector's sight."""
    try:
        from gear.cmd.geard import tune_gc
    except ImportError:
        return
    tune_gc()


def instructions(path, n, root):
    """Instructions a child running ``n`` requests of ``path`` executes."""
    env = dict(os.environ, PYTHONHASHSEED='0', PYTHONPATH=root)
    proc = subprocess.run(
        ['valgrind', '--tool=cachegrind', '--cache-sim=no',
         '--cachegrind-out-file=/dev/null', sys.executable,
         os.path.abspath(__file__), '--once', path, '--n', str(n)],
        env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True)
    found = re.search(r'I\s+refs:\s+([\d,]+)', proc.stderr)
    if proc.returncode or not found:
        raise RuntimeError('%s under valgrind failed:\n%s' % (
            path, proc.stderr[-2000:]))
    return int(found.group(1).replace(',', ''))


def main(argv=None):
    p = argparse.ArgumentParser(prog='python3 -m bench.instructions',
                                description=__doc__.split('\n')[0])
    p.add_argument('--paths', default=','.join(PATHS),
                   help='comma list of %s' % ', '.join(PATHS))
    p.add_argument('--root', default=None,
                   help='checkout whose gear package is measured '
                        '(default: this one)')
    p.add_argument('--small', type=int, default=2000)
    p.add_argument('--large', type=int, default=10000)
    p.add_argument('--once', default=None, choices=PATHS,
                   help='run one path in this process, for valgrind')
    p.add_argument('--n', type=int, default=1000, help='with --once')
    opts = p.parse_args(argv)
    if opts.once:
        run(opts.once, opts.n, tune=True)
        return 0
    paths = [path.strip() for path in opts.paths.split(',')]
    for path in paths:
        if path not in PATHS:
            p.error('unknown path %r: %s' % (path, ', '.join(PATHS)))
    if not 0 < opts.small < opts.large <= SIZE:
        p.error('need 0 < --small < --large <= %d' % SIZE)
    if shutil.which('valgrind') is None:
        p.error('valgrind is not installed (Debian: apt-get install '
                'valgrind)')
    root = os.path.abspath(opts.root or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), os.pardir))
    for path in paths:
        low = instructions(path, opts.small, root)
        high = instructions(path, opts.large, root)
        print(json.dumps({
            'path': path, 'root': root,
            'instructions_per_request': round(
                (high - low) / float(opts.large - opts.small))}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
