"""The dashboard page in a real headless browser, against a live server.

Needs Debian's ``chromium``; skipped with the reason when it is missing.
The browser runs the page's own JavaScript, which fetches
/api/status.json and builds the tables; the test reads the rendered DOM
(``--dump-dom``) until the submitted functions and counts show up.
"""

import html
import os
import re
import shutil
import subprocess
import tempfile

import pytest
import testtools

import gear
from gear.server import exposition
from tests.functional.metrics_util import WAIT, MetricsServer, client
from tests.util import waiter

wait_for = waiter(WAIT * 2, 0.2)

BROWSERS = ('chromium', 'chromium-browser')


def find_browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_argv(browser, profile, *extra):
    return [browser, '--headless', '--no-sandbox', '--disable-gpu',
            '--no-first-run', '--disable-extensions',
            '--user-data-dir=%s' % profile,
            # Lets the page's status request and rendering finish before
            # the DOM is dumped.
            '--virtual-time-budget=5000'] + list(extra)


def function_rows(dom):
    """{function name: [cell texts]} of the rendered functions table."""
    table = re.search(r'<table id="functions">.*?</table>', dom, re.S)
    rows = {}
    if table is None:
        return rows
    for row in re.findall(r'<tr[^>]*>(.*?)</tr>', table.group(0), re.S):
        cells = [html.unescape(c) for c in
                 re.findall(r'<td[^>]*>(.*?)</td>', row, re.S)]
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
class DashboardTestCase(testtools.TestCase):

    def setUp(self):
        super(DashboardTestCase, self).setUp()
        missing = exposition.available()
        if missing:
            self.skipTest(missing)
        self.browser = find_browser()
        if self.browser is None:
            self.skipTest('no headless browser: install Debian\'s '
                          'chromium package')
        self.profile = tempfile.mkdtemp(prefix='gear-dashboard-')
        self.addCleanup(shutil.rmtree, self.profile, True)

    def dump_dom(self, url):
        proc = subprocess.run(
            browser_argv(self.browser, self.profile, '--dump-dom', url),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            timeout=WAIT * 2, env=dict(os.environ, HOME=self.profile))
        return proc.stdout.decode('utf8', 'replace')

    def test_the_page_shows_live_functions_and_counts(self):
        srv = self.useFixture(MetricsServer())
        port = srv.server.port
        c = client(port)
        self.addCleanup(c.shutdown)
        # Names with markup in them must come out as text.
        queued = {'dash-<b>resize</b>': 4, 'dash-mail': 7}
        for name, count in queued.items():
            for number in range(count):
                c.submitJob(gear.Job(name, b'x', unique=b'%d' % number),
                            background=True,
                            precedence=gear.PRECEDENCE_LOW)
        w = gear.Worker('dash-worker')
        w.addServer('127.0.0.1', port)
        w.waitForServer(WAIT)
        self.addCleanup(w.shutdown)
        w.registerFunction('dash-mail')
        for _ in range(3):
            w.getJob().sendWorkComplete(b'')
        wait_for(lambda: srv.status()['totals']['done'] == 3,
                 message='three jobs to complete')

        def rendered():
            dom = self.dump_dom(srv.url)
            rows = function_rows(dom)
            if 'dash-mail' in rows and 'dash-<b>resize</b>' in rows:
                return dom, rows
            return None
        dom, rows = wait_for(rendered, message='the dashboard to show '
                                               'the functions')
        self.assertNotIn('<b>resize</b>', dom.replace(
            '&lt;b&gt;resize&lt;/b&gt;', ''))
        columns = ['waiting', 'high', 'normal', 'low', 'scheduled',
                   'running', 'workers', 'jobs/s', 'completed', 'failed',
                   'exception', 'requeued', 'oldest wait']
        mail = dict(zip(columns, rows['dash-mail']))
        resize = dict(zip(columns, rows['dash-<b>resize</b>']))
        self.assertEqual('4', mail['waiting'])
        self.assertEqual('4', mail['low'])
        self.assertEqual('1', mail['workers'])
        self.assertEqual('3', mail['completed'])
        self.assertEqual('4', resize['waiting'])
        self.assertEqual('0', resize['workers'])
        self.assertIn('dash-worker', dom)
        self.assertRegex(dom, r'id="t-waiting">8<')
