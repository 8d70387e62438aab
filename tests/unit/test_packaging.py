"""The installed shape of the package: public names and version."""

import os

import testtools

import gear
from gear import errors
from gear import version

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

EXCEPTIONS = (
    'GearmanError', 'ConnectionError', 'InvalidDataError',
    'ConfigurationError', 'NoConnectedServersError', 'UnknownJobError',
    'InterruptedError', 'TimeoutError', 'DisconnectError', 'RetryIOError',
    'ProtocolError', 'AdminError',
)


class TestPublicNames(testtools.TestCase):

    def test_precedences(self):
        self.assertEqual(0, gear.PRECEDENCE_NORMAL)
        self.assertEqual(1, gear.PRECEDENCE_LOW)
        self.assertEqual(2, gear.PRECEDENCE_HIGH)

    def test_exceptions_are_exported(self):
        for name in EXCEPTIONS:
            exc = getattr(gear, name)
            self.assertIs(getattr(errors, name), exc)
            self.assertTrue(issubclass(exc, Exception), name)

    def test_exception_hierarchy(self):
        self.assertTrue(issubclass(gear.NoConnectedServersError,
                                   gear.GearmanError))
        self.assertTrue(issubclass(gear.ProtocolError,
                                   gear.InvalidDataError))
        self.assertTrue(issubclass(gear.AdminError, gear.GearmanError))

    def test_shadowing_names_are_gears_own(self):
        # Catching gear.TimeoutError must not catch the builtin by accident.
        import builtins
        for name in ('ConnectionError', 'InterruptedError', 'TimeoutError'):
            self.assertIsNot(getattr(builtins, name), getattr(gear, name))

    def test_admin_error_fields(self):
        e = gear.AdminError('UNKNOWN_COMMAND', 'no such command')
        self.assertEqual('UNKNOWN_COMMAND', e.code)
        self.assertEqual('no such command', e.message)
        self.assertIn('UNKNOWN_COMMAND', str(e))

    def test_packet(self):
        from gear.protocol import Packet
        self.assertIs(Packet, gear.Packet)

    def test_constants_module(self):
        self.assertEqual(b'\x00REQ', gear.constants.REQ)
        self.assertEqual(b'\x00RES', gear.constants.RES)


class TestVersion(testtools.TestCase):

    def test_version_is_a_string(self):
        self.assertIsInstance(version.__version__, str)
        self.assertNotEqual('', version.__version__)

    def test_version_info(self):
        self.assertEqual('gear', version.version_info.package)


class TestDistribution(testtools.TestCase):
    """Files the packaging and CI rely on are present and consistent."""

    def read(self, name):
        with open(os.path.join(ROOT, name)) as f:
            return f.read()

    def test_console_script_declared(self):
        self.assertIn('geard = gear.cmd.geard:main', self.read('setup.cfg'))

    def test_pep517_backend(self):
        self.assertIn('build-backend = "pbr.build"',
                      self.read('pyproject.toml'))

    def test_ci_script_is_executable(self):
        path = os.path.join(ROOT, '.ci', 'run')
        self.assertTrue(os.access(path, os.X_OK))
        self.assertTrue(self.read('.ci/run').startswith('#!/bin/bash'))

    def test_readme_setup_commands(self):
        readme = self.read('README.rst')
        self.assertIn('python3 -m pip install . && geard -d', readme)
        self.assertIn('-r test-requirements.txt -e . && python3 -m pytest',
                      readme)
