"""One version everywhere: the package, geard, the admin reply and the
command-line tools all report the release pbr derives."""

import subprocess
import sys

import testtools

import gear
from gear import version
from gear.testing import GearServerFixture
from tests.functional.test_cli_admin import CLI_TIMEOUT, REPO, run_cli
from tests.util import child_env


class TestOneVersion(testtools.TestCase):

    def test_package_version_is_pbr_release(self):
        self.assertEqual(version.version_info.release_string(),
                         gear.__version__)
        self.assertIs(version.__version__, gear.__version__)

    def test_geard_version_flag(self):
        result = subprocess.run(
            [sys.executable, '-m', 'gear.cmd.geard', '--version'],
            capture_output=True, cwd=REPO, env=child_env(),
            timeout=CLI_TIMEOUT)
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual('Gear version: %s\n' % gear.__version__,
                         result.stdout.decode())

    def test_admin_version_reply(self):
        server = self.useFixture(GearServerFixture())
        result = run_cli('admin', '-p', server.port, 'version')
        self.assertEqual((0, gear.__version__ + '\n'),
                         (result.returncode, result.stdout.decode()),
                         result.stderr)

    def test_tools_version_flag(self):
        for tool in ('admin', 'submit', 'worker'):
            result = run_cli(tool, '--version')
            self.assertEqual(
                (0, 'gear-%s %s\n' % (tool, gear.__version__)),
                (result.returncode, result.stdout.decode()), result.stderr)
