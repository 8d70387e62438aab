"""The admin text protocol of a real Server, with exact reply bytes."""

import os

import gear
from gear import constants as c

from tests.functional.test_server_base import ServerTestCase, wait_for


class TestAdminCommands(ServerTestCase):

    # gearmand's cancel: queued or running, the clients get WORK_FAIL
    # (gear 0.16's is in test_server_compat_policy).
    server_options = {'semantics': 'gearmand'}

    def test_unknown_and_empty(self):
        admin = self.connect()
        self.assertEqual(
            b'ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n',
            admin.admin(b'bogus'))
        self.assertEqual(b'ERR UNKNOWN_COMMAND Unknown+server+command\r\n',
                         admin.admin(b''))
        # Exact words: a prefix is not a command.
        self.assertEqual(
            b'ERR UNKNOWN_COMMAND Unknown+server+commandstatusXYZ\r\n',
            admin.admin(b'statusXYZ'))
        admin.sync()

    def test_case_insensitive_and_crlf(self):
        admin = self.connect()
        self.assertEqual(b'.\n', admin.adminList(b'STATUS'))
        admin.sendRaw(b'Status\r\n')
        self.assertEqual(b'.\n', admin.readText(end=b'\n'))

    def test_pipelined_commands(self):
        admin = self.connect()
        admin.sendRaw(b'status\nversion\ngetpid\n')
        self.assertEqual(b'.\n', admin.readText(end=b'\n'))
        self.assertTrue(admin.readText(end=b'\n').startswith(b'OK '))
        self.assertEqual(b'OK %d\n' % os.getpid(), admin.readText(end=b'\n'))

    def test_status_and_prioritystatus(self):
        client = self.connect()
        worker = self.connect()
        client.submit(b'fn', ptype=c.SUBMIT_JOB_HIGH_BG)
        client.submit(b'fn', ptype=c.SUBMIT_JOB_BG)
        client.submit(b'fn', ptype=c.SUBMIT_JOB_LOW_BG)
        client.submit(b'fn', ptype=c.SUBMIT_JOB_LOW_BG)
        worker.canDo(b'fn', b'idle')
        worker.grab()
        self.assertEqual(b'fn\t4\t1\t1\nidle\t0\t0\t1\n.\n',
                         client.adminList(b'status'))
        self.assertEqual(b'fn\t0\t1\t2\t1\nidle\t0\t0\t0\t1\n.\n',
                         client.adminList(b'prioritystatus'))

    def test_workers(self):
        admin = self.connect()
        worker = self.connect()
        worker.send(c.SET_CLIENT_ID, b'w1')
        worker.canDo(b'b', b'a')
        worker.sync()
        out = admin.adminList(b'workers')
        lines = out.split(b'\n')
        self.assertEqual([b'.', b''], lines[-2:])
        rows = sorted(lines[:-2])
        self.assertEqual(2, len(rows))
        fds = sorted(b'%d' % conn.fd
                     for conn in self.server.connection_map.values())
        self.assertEqual(fds, sorted(r.split(b' ', 1)[0] for r in rows))
        self.assertTrue(any(r.endswith(b' 127.0.0.1 w1 : a b') for r in rows))
        # No trailing space after ':' without functions.
        self.assertTrue(any(r.endswith(b' 127.0.0.1 - :') for r in rows))

    def test_maxqueue(self):
        admin = self.connect()
        self.assertEqual(
            b'ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent'
            b'+to+this+command+maxqueue\r\n', admin.admin(b'maxqueue'))
        self.assertEqual(b'OK\r\n', admin.admin(b'maxqueue fn 1'))
        h = admin.submit(b'fn', b'', b'u')
        admin.send(c.SUBMIT_JOB_BG, b'fn', b'', b'x')
        admin.expect(c.ERROR, b'QUEUE_ERROR\x00Job queue is full')
        # A coalesced submission does not count.
        self.assertEqual(h, admin.submit(b'fn', b'', b'u'))
        # Per-priority sizes: high normal low, each compared with the
        # function's total.
        self.assertEqual(b'OK\r\n', admin.admin(b'maxqueue fn 3 1 2'))
        admin.submit(b'fn', ptype=c.SUBMIT_JOB_HIGH_BG)
        for ptype in (c.SUBMIT_JOB_LOW_BG, c.SUBMIT_JOB_BG):
            admin.send(ptype, b'fn', b'', b'x')
            admin.expect(c.ERROR, b'QUEUE_ERROR\x00Job queue is full')
        admin.submit(b'fn', ptype=c.SUBMIT_JOB_HIGH)
        admin.send(c.SUBMIT_JOB_HIGH, b'fn', b'', b'x')
        admin.expect(c.ERROR, b'QUEUE_ERROR\x00Job queue is full')
        # Reset to unlimited.
        self.assertEqual(b'OK\r\n', admin.admin(b'maxqueue fn'))
        admin.submit(b'fn', ptype=c.SUBMIT_JOB_LOW_BG)

    def test_maxqueue_kept_for_future_function(self):
        admin = self.connect()
        self.assertEqual(b'OK\r\n', admin.admin(b'maxqueue later 1'))
        self.assertEqual(b'.\n', admin.adminList(b'status'))
        admin.submit(b'later', ptype=c.SUBMIT_JOB_BG)
        admin.send(c.SUBMIT_JOB_BG, b'later', b'', b'x')
        admin.expect(c.ERROR, b'QUEUE_ERROR\x00Job queue is full')

    def test_cancel_job(self):
        admin = self.connect()
        client = self.connect()
        self.assertEqual(b'ERR UNKNOWN_COMMAND Unknown+server+commandcancel'
                         b'\r\n', admin.admin(b'cancel job'))
        self.assertEqual(b'ERR UNKNOWN_ERROR\r\n', admin.admin(b'cancel x y'))
        self.assertEqual(b'ERR UNKNOWN_JOB\r\n',
                         admin.admin(b'cancel job H:nope:1'))
        handle = client.submit(b'fn', b'd', b'u')
        self.assertEqual(b'OK\r\n', admin.admin(b'cancel job ' + handle))
        client.expect(c.WORK_FAIL, handle)
        self.assertEqual(b'ERR UNKNOWN_JOB\r\n',
                         admin.admin(b'cancel job ' + handle))
        self.assertEqual(b'fn\t0\t0\t0\n.\n', admin.adminList(b'status'))
        worker = self.connect()
        worker.canDo(b'fn')
        self.assertIsNone(worker.grab())

    def test_cancel_running_job(self):
        admin = self.connect()
        client = self.connect()
        worker = self.connect()
        handle = client.submit(b'fn', b'd')
        worker.canDo(b'fn')
        worker.grab()
        self.assertEqual(b'OK\r\n', admin.admin(b'cancel job ' + handle))
        client.expect(c.WORK_FAIL, handle)
        self.assertEqual(b'%s\t0\t1\t0\n.\n' % handle,
                         admin.adminList(b'show jobs'))
        # The worker's late result is accepted silently and goes nowhere.
        worker.send(c.WORK_COMPLETE, handle, b'r')
        worker.sync()
        client.sync()
        self.assertEqual(b'.\n', admin.adminList(b'show jobs'))

    def test_show_jobs_and_unique_jobs(self):
        admin = self.connect()
        h1 = admin.submit(b'fn', b'', b'u1', c.SUBMIT_JOB_BG)
        h2 = admin.submit(b'fn', b'', b'')
        self.assertEqual(b'%s\t0\t0\t1\n%s\t0\t0\t0\n.\n' % (h1, h2),
                         admin.adminList(b'show jobs'))
        self.assertEqual(b'u1\n\n.\n', admin.adminList(b'show unique jobs'))
        self.assertEqual(b'ERR UNKNOWN_SHOW_ARGUMENTS\r\n',
                         admin.admin(b'show stuff'))
        self.assertEqual(b'ERR UNKNOWN_COMMAND Unknown+server+commandshow'
                         b'\r\n', admin.admin(b'show'))

    def test_create_and_drop_function(self):
        admin = self.connect()
        self.assertEqual(b'OK\r\n', admin.admin(b'create function foobar'))
        self.assertEqual(b'foobar\t0\t0\t0\n.\n', admin.adminList(b'status'))
        self.assertEqual(
            b'ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent'
            b'+to+this+command+create\r\n', admin.admin(b'create function'))
        self.assertEqual(b'ERR function not found\r\n',
                         admin.admin(b'drop function nope'))
        worker = self.connect()
        worker.canDo(b'foobar')
        worker.sync()
        self.assertEqual(b'ERR there are still connected workers or '
                         b'executing clients\r\n',
                         admin.admin(b'drop function foobar'))
        worker.send(c.CANT_DO, b'foobar')
        worker.sync()
        self.assertEqual(b'OK\r\n', admin.admin(b'drop function foobar'))
        self.assertEqual(b'.\n', admin.adminList(b'status'))
        self.assertEqual(
            b'ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent'
            b'+to+this+command+drop\r\n', admin.admin(b'drop foo'))

    def test_getpid_verbose_version(self):
        admin = self.connect()
        self.assertEqual(b'OK %d\n' % os.getpid(), admin.admin(b'getpid'))
        verbose = admin.admin(b'verbose')
        self.assertRegex(verbose.decode(), r'^OK [A-Z]+\n$')
        self.assertRegex(admin.admin(b'version').decode(), r'^OK \S+\n$')

    def test_shutdown_refused_by_default(self):
        admin = self.connect()
        self.assertEqual(
            b'ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n',
            admin.admin(b'shutdown'))
        self.assertEqual(
            b'ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n',
            admin.admin(b'shutdown graceful'))
        admin.sync()

    def test_shutdown_when_allowed(self):
        server = self.makeServer(allow_admin_shutdown=True)
        admin = self.connect(server)
        self.assertEqual(b'OK\r\n', admin.admin(b'shutdown'))
        admin.assertClosed()
        self.assertTrue(wait_for(lambda: not server.poll_thread.is_alive()))

    def test_acl_disabled(self):
        admin = self.connect()
        self.assertEqual(b'ERR ACL_DISABLED\r\n', admin.admin(b'acl list'))
        self.assertEqual(b'ERR ACL_DISABLED\r\n',
                         admin.admin(b'acl grant invoke x .*'))
        self.assertEqual(
            b'ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent'
            b'+to+this+command+acl\r\n', admin.admin(b'acl grant'))


class TestAdminACL(ServerTestCase):
    """ACL commands over plain TCP, where the caller's subject is None."""

    def setUp(self):
        super(TestAdminACL, self).setUp()
        self.acl = gear.ACL()
        self.acl.add(gear.ACLEntry(None, grant=True))
        self.server.acl = self.acl

    def test_grant_list_revoke(self):
        admin = self.connect()
        self.assertEqual(b'OK\r\n',
                         admin.admin(b'acl grant invoke worker fn.*'))
        self.assertEqual(b'OK\r\n',
                         admin.admin(b'acl grant register worker fn.*'))
        self.assertEqual(b'ERR UNKNOWN_ACL_VERB\r\n',
                         admin.admin(b'acl grant fly worker'))
        self.assertTrue(admin.admin(b'acl grant invoke w (').startswith(
            b'ERR UNABLE '))
        out = admin.adminList(b'acl list')
        self.assertIn(b'worker\tregister=fn.*\tinvoke=fn.*\tgrant=False'
                      b'\tadmin=False\n', out)
        self.assertEqual(b'OK\r\n', admin.admin(b'acl revoke invoke worker'))
        self.assertIn(b'worker\tregister=fn.*\tinvoke=None\tgrant=False'
                      b'\tadmin=False\n', admin.adminList(b'acl list'))
        self.assertEqual(b'OK\r\n', admin.admin(b'acl revoke all worker'))
        self.assertNotIn(b'worker\t', admin.adminList(b'acl list'))

    def test_permission_checks(self):
        admin = self.connect()
        # Drop our own grant: then granting is refused.
        self.assertEqual(b'OK\r\n', admin.admin(b'acl self-revoke grant'))
        self.assertEqual(b'ERR PERMISSION_DENIED\r\n',
                         admin.admin(b'acl grant invoke x .*'))
        self.assertEqual(b'ERR PERMISSION_DENIED\r\n',
                         admin.admin(b'acl revoke all someone'))

    def test_submit_and_cancel_need_invoke(self):
        client = self.connect()
        client.send(c.SUBMIT_JOB, b'fn', b'', b'x')
        client.expect(c.ERROR, b'PERMISSION_DENIED\x00Permission denied by '
                      b'ACL')
        # A denied CAN_DO is silent and has no effect.
        client.canDo(b'fn')
        self.assertEqual(b'.\n', client.adminList(b'status'))
        self.acl.grantInvoke(None, 'fn')
        handle = client.submit(b'fn', b'x')
        self.acl.revokeInvoke(None)
        self.acl.add(gear.ACLEntry('nobody', grant=True))
        self.assertEqual(
            b'ERR PERMISSION_DENIED Permission+denied+by+ACL\r\n',
            client.admin(b'cancel job ' + handle))
