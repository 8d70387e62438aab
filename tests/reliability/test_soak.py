"""Soak: minutes of mixed load against geard with a store; the server's
memory and open files must be as flat at the end as at the start.

Runs only with GEAR_SOAK=1.  GEAR_SOAK_SECONDS sets the duration
(default 600).  The first and the last window (a minute, or a quarter of
a shorter run) are compared.
"""

import json
import os
import statistics
import time

import fixtures
import pytest
import testtools
from testtools.content import text_content

from tests.reliability import crash, peers, servers, soak

DURATION = float(os.environ.get('GEAR_SOAK_SECONDS', '600'))
RSS_TOLERANCE = 16 * 1024 * 1024
RSS_RATIO = 0.10
FD_TOLERANCE = 10


class TestSoak(testtools.TestCase):

    def setUp(self):
        super(TestSoak, self).setUp()
        if not peers.SOAK:
            self.skipTest('soak test: set GEAR_SOAK=1 (and optionally '
                          'GEAR_SOAK_SECONDS) to run it')

    # The run itself takes DURATION; allow time to set up and drain.
    @pytest.mark.timeout(int(DURATION) + 300)
    def test_memory_and_files_flat_under_mixed_load(self):
        workdir = self.useFixture(fixtures.TempDir()).path
        server = servers.Geard(store=os.path.join(workdir, 'store.db'),
                               workdir=workdir)
        self.addCleanup(server.stop)
        server.start()
        ctx = crash.mp_context()
        stop = ctx.Event()
        bg_acked = ctx.Array('q', 2, lock=False)
        bg_done = ctx.Array('q', 3, lock=False)
        fg_done = ctx.Array('q', 2, lock=False)
        fg_worked = ctx.Array('q', 3, lock=False)
        walkaways = ctx.Array('q', 3, lock=False)
        polls = ctx.Array('q', 1, lock=False)
        port = server.port
        worker_stop = ctx.Event()
        clients = (
            [ctx.Process(target=soak.bg_client, daemon=True,
                         args=(port, i, stop, bg_acked, bg_done))
             for i in range(2)] +
            [ctx.Process(target=soak.fg_client, daemon=True,
                         args=(port, i, stop, fg_done)) for i in range(2)] +
            [ctx.Process(target=soak.admin, daemon=True,
                         args=(port, 0, stop, polls))])
        workers = [ctx.Process(target=soak.worker, daemon=True,
                               args=(port, i, worker_stop, bg_done,
                                     fg_worked, walkaways))
                   for i in range(3)]
        procs = clients + workers
        for p in procs:
            p.start()
        self.addCleanup(lambda: [p.kill() for p in procs if p.is_alive()])

        window = min(60.0, DURATION / 4)
        interval = max(0.5, min(2.0, DURATION / 120))
        samples = []
        start = time.monotonic()
        wake = ctx.Event()  # never set: a bounded pause between samples
        while time.monotonic() - start < DURATION:
            for p in procs:
                if not p.is_alive():
                    self.fail('load process %s exited with %s' % (
                        p.name, p.exitcode))
            samples.append((time.monotonic() - start, server.rss(),
                            server.fds()))
            wake.wait(interval)
        # Clients finish what they started (foreground ones wait for
        # their results), then the workers stop.
        stop.set()
        for group in (clients, workers):
            for p in group:
                p.join(60)
                self.assertFalse(p.is_alive(), 'load process did not stop')
                self.assertEqual(0, p.exitcode)
            worker_stop.set()

        # Whatever is still queued is drained; then every acknowledged
        # background job was completed exactly once.
        drain_stop = ctx.Event()
        results = ctx.Queue()
        drainer = ctx.Process(target=crash.drain_main, daemon=True,
                              args=(port, soak.BG, 0, drain_stop, results))
        drainer.start()
        try:
            peers.wait_for(lambda: peers.function_total(port, soak.BG) == 0,
                           120, 'the background queue to drain',
                           interval=0.1)
        finally:
            drain_stop.set()
        drained = len(results.get(timeout=60)[2]['seen'])
        drainer.join(10)

        first = [s for s in samples if s[0] <= window]
        last = [s for s in samples if s[0] >= samples[-1][0] - window]
        report = {
            'seconds': round(samples[-1][0], 1),
            'samples': len(samples),
            'bg_acknowledged': sum(bg_acked),
            'bg_completed': sum(bg_done) + drained,
            'fg_completed': sum(fg_done),
            'walkaways': sum(walkaways),
            'admin_polls': sum(polls),
            'rss_first_mean': int(statistics.mean(s[1] for s in first)),
            'rss_last_mean': int(statistics.mean(s[1] for s in last)),
            'rss_max': max(s[1] for s in samples),
            'fds_first_max': max(s[2] for s in first),
            'fds_last_max': max(s[2] for s in last),
        }
        self.addDetail('soak', text_content(json.dumps(report, indent=1)))
        # Shown by pytest -s or -rP.
        print('soak report: %s' % json.dumps(report))
        message = json.dumps(report)
        self.assertTrue(server.alive(), message)
        self.assertIn(soak.BG, peers.status(port), message)
        self.assertGreater(report['bg_acknowledged'], 0, message)
        self.assertGreater(report['fg_completed'], 0, message)
        self.assertEqual(report['bg_acknowledged'], report['bg_completed'],
                         message)
        allowed = max(RSS_TOLERANCE,
                      RSS_RATIO * report['rss_first_mean'])
        self.assertLessEqual(
            report['rss_last_mean'] - report['rss_first_mean'], allowed,
            message)
        self.assertLessEqual(report['fds_last_max'],
                             report['fds_first_max'] + FD_TOLERANCE, message)
