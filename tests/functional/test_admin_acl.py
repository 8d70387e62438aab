"""Every admin command under a certificate ACL, over real mutual TLS.

Each command is sent by a subject with the ``admin`` right and by one
without it; open commands answer both, the others deny the second with
``ERR PERMISSION_DENIED`` and leave the server as it was.
"""

import time

import gear
from gear import constants as c
from gear.server.admin import ADMIN_RIGHTS
from tests.functional.test_tls import (
    WAIT, TLSTestCase, TLSWire, wait_for)

DENIED = b'ERR PERMISSION_DENIED Permission+denied+by+ACL\r\n'


class AdminWire(TLSWire):
    """A TLS connection that speaks the text admin protocol."""

    def _line_reply_complete(self, multiline):
        if not multiline or self.buf.startswith(b'ERR '):
            return b'\n' in self.buf
        return self.buf == b'.\n' or self.buf.endswith(b'\n.\n')

    def admin(self, line, multiline=False):
        """Send one admin line and return its whole reply."""
        self.sock.sendall(line + b'\n')
        deadline = time.monotonic() + WAIT
        while not self._line_reply_complete(multiline):
            self._receive(deadline)
        reply, self.buf = self.buf, b''
        return reply


class TestAdminCommandsUnderACL(TLSTestCase):

    def setUp(self):
        acl = gear.ACL()
        acl.add(gear.ACLEntry('operator', admin=True))
        acl.add(gear.ACLEntry('tenant', invoke='t-'))
        acl.add(gear.ACLEntry('granter', grant=True))
        self.acl = acl
        self.server_options = {'acl': acl, 'allow_admin_shutdown': True}
        super().setUp()
        self.server = self.fixture.server
        tenant = self.wire('tenant')
        tenant.send(c.SUBMIT_JOB_BG, b't-job', b'secret-unique', b'data')
        ptype, args = tenant.read()
        self.assertEqual(c.JOB_CREATED, ptype)
        self.handle = args[0]

    def admin_wire(self, cn):
        key, cert, ca = self.fixture.client_cert(cn)
        wire = AdminWire(self.port, key, cert, ca)
        self.addCleanup(wire.close)
        return wire

    def assertDenied(self, wire, line, multiline=False):
        self.assertEqual(DENIED, wire.admin(line, multiline))
        # The denial leaves the connection usable.
        self.assertTrue(wire.admin(b'version').startswith(b'OK '))

    def test_every_command_is_covered(self):
        covered = {b'workers', b'status', b'prioritystatus', b'getpid',
                   b'verbose', b'version', b'acl', b'maxqueue', b'create',
                   b'drop', b'show', b'shutdown', b'cancel'}
        self.assertEqual(covered, set(ADMIN_RIGHTS))
        self.assertEqual(set(self.server._admin_commands), covered)

    def test_open_commands_answer_everyone(self):
        for cn in ('stranger', 'tenant', 'operator'):
            wire = self.admin_wire(cn)
            self.assertIn(b't-job\t1\t0\t0\n',
                          wire.admin(b'status', True))
            self.assertIn(b't-job\t0\t1\t0\t0\n',
                          wire.admin(b'prioritystatus', True))
            self.assertTrue(wire.admin(b'workers', True).endswith(b'.\n'))
            self.assertTrue(wire.admin(b'version').startswith(b'OK '))
            self.assertTrue(wire.admin(b'getpid').startswith(b'OK '))
            self.assertTrue(wire.admin(b'verbose').startswith(b'OK '))
            self.assertIn(b'operator\tregister=None\tinvoke=None\t'
                          b'grant=False\tadmin=True\n',
                          wire.admin(b'acl list', True))

    def test_show_jobs_needs_admin(self):
        for cn in ('stranger', 'tenant'):
            wire = self.admin_wire(cn)
            self.assertDenied(wire, b'show jobs', True)
            self.assertDenied(wire, b'show unique jobs', True)
            self.assertDenied(wire, b'SHOW JOBS', True)
        wire = self.admin_wire('operator')
        self.assertIn(self.handle + b'\t0\t0\t1\n',
                      wire.admin(b'show jobs', True))
        self.assertIn(b'secret-unique\n',
                      wire.admin(b'show unique jobs', True))

    def test_maxqueue_needs_admin(self):
        wire = self.admin_wire('tenant')
        self.assertDenied(wire, b'maxqueue t-job 1')
        self.assertIsNone(self.server.queue.functions[b't-job'].limits)
        wire = self.admin_wire('operator')
        self.assertEqual(b'OK\r\n', wire.admin(b'maxqueue t-job 1'))
        self.assertIsNotNone(self.server.queue.functions[b't-job'].limits)

    def test_create_and_drop_function_need_admin(self):
        stranger = self.admin_wire('stranger')
        operator = self.admin_wire('operator')
        self.assertDenied(stranger, b'create function made')
        self.assertNotIn(b'made', self.server.queue.functions)
        self.assertEqual(b'OK\r\n', operator.admin(b'create function made'))
        self.assertIn(b'made', self.server.queue.functions)
        self.assertDenied(stranger, b'drop function made')
        self.assertIn(b'made', self.server.queue.functions)
        self.assertEqual(b'OK\r\n', operator.admin(b'drop function made'))
        self.assertNotIn(b'made', self.server.queue.functions)

    def test_cancel_job_needs_admin_or_invoke(self):
        stranger = self.admin_wire('stranger')
        self.assertDenied(stranger, b'cancel job ' + self.handle)
        self.assertIn(self.handle, self.server.jobs)
        # An unknown handle is denied as well: no probing for handles.
        self.assertDenied(stranger, b'cancel job H:nowhere:1')
        operator = self.admin_wire('operator')
        self.assertEqual(b'ERR UNKNOWN_JOB\r\n',
                         operator.admin(b'cancel job H:nowhere:1'))
        tenant = self.admin_wire('tenant')
        self.assertEqual(b'OK\r\n',
                         tenant.admin(b'cancel job ' + self.handle))
        wait_for(lambda: self.handle not in self.server.jobs,
                 message='the cancelled job to go')

    def test_operator_cancels_any_job(self):
        operator = self.admin_wire('operator')
        self.assertEqual(b'OK\r\n',
                         operator.admin(b'cancel job ' + self.handle))

    def test_acl_changes_need_grant(self):
        stranger = self.admin_wire('stranger')
        self.assertEqual(b'ERR PERMISSION_DENIED\r\n',
                         stranger.admin(b'acl grant admin stranger'))
        self.assertFalse(self.acl.canAdmin('stranger'))
        self.assertEqual(b'ERR PERMISSION_DENIED\r\n',
                         stranger.admin(b'acl revoke admin operator'))
        self.assertTrue(self.acl.canAdmin('operator'))
        granter = self.admin_wire('granter')
        self.assertEqual(b'OK\r\n',
                         granter.admin(b'acl grant admin stranger'))
        # The new right applies to the next command.
        self.assertIn(b'secret-unique\n',
                      stranger.admin(b'show unique jobs', True))
        self.assertEqual(b'OK\r\n', stranger.admin(b'acl self-revoke admin'))
        self.assertDenied(stranger, b'show unique jobs', True)

    def test_unknown_command_is_unknown_for_everyone(self):
        wire = self.admin_wire('stranger')
        self.assertTrue(wire.admin(b'frobnicate').startswith(
            b'ERR UNKNOWN_COMMAND'))

    def test_shutdown_needs_admin(self):
        for cn in ('stranger', 'tenant', 'granter'):
            self.assertDenied(self.admin_wire(cn), b'shutdown')
            self.assertDenied(self.admin_wire(cn), b'shutdown graceful')
        self.assertTrue(self.server.poll_thread.is_alive())
        self.assertEqual(b'OK\r\n',
                         self.admin_wire('operator').admin(b'shutdown'))
        wait_for(lambda: not self.server.poll_thread.is_alive(),
                 message='the server to stop')


class TestAdminWithoutACL(TLSTestCase):
    """Without an ACL, admin commands stay open, as in gearmand."""

    def test_show_jobs_open(self):
        wire = AdminWire(self.port, *self.fixture.client_cert('anyone'))
        self.addCleanup(wire.close)
        self.assertEqual(b'.\n', wire.admin(b'show jobs', True))
        self.assertEqual(b'OK\r\n', wire.admin(b'maxqueue f 3'))
