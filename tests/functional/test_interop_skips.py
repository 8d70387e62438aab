"""Without the C tools, every interop test skips and none fails.

The suite runs the ``interop``-marked tests in a child pytest with
GEAR_TEST_HIDE_TOOLS=all, which makes tests/gearmand.py report each tool
as missing, and reads the child's JUnit report.
"""

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

import pytest
import testtools

from tests.gearmand import HIDE_VARIABLE
from tests.util import REPO, child_env

RUN_TIMEOUT = 600


@pytest.mark.slow
class TestInteropSkipsWithoutTools(testtools.TestCase):

    def run_hidden(self, report):
        env = child_env()
        env[HIDE_VARIABLE] = 'all'
        return subprocess.run(
            [sys.executable, '-m', 'pytest', '-q', '-m', 'interop',
             '-p', 'no:cacheprovider', '--junitxml', report, 'tests'],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=RUN_TIMEOUT)

    def test_interop_tests_skip_with_the_tool_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            report = os.path.join(tmp, 'report.xml')
            result = self.run_hidden(report)
            root = ElementTree.parse(report).getroot()
        output = result.stdout.decode(errors='replace')
        self.assertEqual(0, result.returncode, output[-3000:])
        cases = root.findall('.//testcase')
        self.assertGreater(len(cases), 0, output[-3000:])
        reasons = []
        for case in cases:
            name = '%s.%s' % (case.get('classname'), case.get('name'))
            self.assertIsNone(case.find('failure'), name)
            self.assertIsNone(case.find('error'), name)
            skipped = case.find('skipped')
            self.assertIsNotNone(skipped, '%s ran without the tools' % name)
            reasons.append(skipped.get('message', ''))
        for reason in reasons:
            self.assertTrue(
                any(tool in reason for tool in ('gearmand', 'gearman')),
                reason)
