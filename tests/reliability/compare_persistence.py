"""Crash the job servers mid-stream and count what their stores kept.

Runs the crash scenario of the reliability suite (several clients
pipeline background jobs, the server gets SIGKILL once a share of them is
acknowledged, it is restarted on the same store and drained) against

* geard with ``--store`` (SQLite, WAL, one group commit per loop turn,
  ``synchronous=NORMAL``: survives a process crash);
* the same server with ``synchronous=FULL`` (each group commit is
  fsynced: survives power loss too);
* gearmand with ``-q libsqlite3`` (skipped, with a reason, when gearmand
  or its sqlite queue is not available);

and prints one JSON document with both results side by side::

    python3 tests/reliability/compare_persistence.py --jobs 20000

``lost`` is the number of acknowledged jobs that no worker received
after the restart; it should be 0 for both.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile

if __package__ in (None, ''):  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))

from tests.reliability import crash, servers  # noqa: E402

KEYS = {'geard': 'geard-sqlite-normal',
        'gear-full': 'gear-sqlite-full',
        'gearmand': 'gearmand-libsqlite3'}
FIELDS = ('acknowledged', 'delivered_after_restart', 'lost',
          'unacknowledged_but_delivered', 'duplicates_after_restart')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--jobs', type=int, default=20000,
                        help='jobs each client group sets out to submit '
                             '(default %(default)s)')
    parser.add_argument('--clients', type=int, default=4)
    parser.add_argument('--workers', type=int, default=3)
    parser.add_argument('--kill-fraction', type=float, default=0.5,
                        help='kill once this share of --jobs is '
                             'acknowledged (default %(default)s)')
    parser.add_argument('--kill-after', type=float, default=120.0,
                        help='...or after this many seconds of submitting')
    parser.add_argument('--rounds', type=int, default=1,
                        help='crash/restart rounds per server')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--servers', default='geard,gear-full,gearmand',
                        help='comma-separated: geard, gear-full, gearmand '
                             '(default %(default)s)')
    return parser.parse_args(argv)


def make_server(name, workdir):
    if name == 'geard':
        return servers.Geard(store=os.path.join(workdir, 'store.db'),
                             workdir=workdir)
    if name == 'gear-full':
        return servers.Serve(workdir=workdir,
                             store=os.path.join(workdir, 'store.db'),
                             store_synchronous='FULL')
    if name == 'gearmand':
        why = servers.Gearmand.available()
        if why:
            return why
        return servers.Gearmand(os.path.join(workdir, 'queue.db'),
                                workdir=workdir)
    raise SystemExit('unknown server %r' % name)


def run_server(name, opts):
    rounds = []
    for i in range(opts.rounds):
        workdir = tempfile.mkdtemp(prefix='gear-compare-')
        try:
            server = make_server(name, workdir)
            if isinstance(server, str):
                return {'skipped': server}
            try:
                rounds.append(crash.run(
                    server, opts.jobs, clients=opts.clients,
                    workers=opts.workers, kill_fraction=opts.kill_fraction,
                    kill_after=opts.kill_after, seed=opts.seed + i,
                    fn='compare'))
            finally:
                server.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {field: sum(r[field] for r in rounds) for field in FIELDS}
    acked = sum(r['acked_at_kill_signal'] for r in rounds)
    seconds = sum(r['submit_seconds'] for r in rounds)
    summary['acknowledged_per_second'] = round(acked / seconds) \
        if seconds else None
    summary['drain_per_second'] = round(
        sum(r['delivered_after_restart'] +
            r['unacknowledged_but_delivered'] for r in rounds) /
        max(1e-9, sum(r['drain_seconds'] for r in rounds)))
    summary['rounds'] = rounds
    return summary


def main(argv=None):
    opts = parse_args(argv)
    report = {
        'command': ' '.join(['python3', 'tests/reliability/'
                             'compare_persistence.py'] +
                            (sys.argv[1:] if argv is None else argv)),
        'machine': {'python': platform.python_version(),
                    'platform': platform.platform(),
                    'cpus': os.cpu_count()},
        'settings': {'jobs': opts.jobs, 'clients': opts.clients,
                     'workers': opts.workers,
                     'kill_fraction': opts.kill_fraction,
                     'rounds': opts.rounds, 'seed': opts.seed},
    }
    for name in opts.servers.split(','):
        name = name.strip()
        report[KEYS.get(name, name)] = run_server(name, opts)
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write('\n')
    lost = sum(v.get('lost', 0) for v in report.values()
               if isinstance(v, dict))
    return 1 if lost else 0


if __name__ == '__main__':
    sys.exit(main())
