"""Unit tests for gear.admin: command bytes, reply framing and parsing."""

import threading

import testtools

import gear
from gear import admin
from gear.errors import AdminError, ConfigurationError, GearmanError
from gear.errors import InvalidDataError


MULTILINE_CLASSES = [
    admin.StatusAdminRequest, admin.ShowJobsAdminRequest,
    admin.ShowUniqueJobsAdminRequest, admin.WorkersAdminRequest,
    admin.PriorityStatusAdminRequest, admin.ACLListAdminRequest,
]


def one_line_requests():
    return [
        admin.CancelJobAdminRequest(b'H:lap:1'),
        admin.VersionAdminRequest(),
        admin.MaxQueueAdminRequest('fn'),
        admin.GetPidAdminRequest(),
        admin.VerboseAdminRequest(),
        admin.CreateFunctionAdminRequest('fn'),
        admin.DropFunctionAdminRequest('fn'),
        admin.ACLGrantAdminRequest('grant', 'cn'),
        admin.ACLRevokeAdminRequest('all', 'cn'),
        admin.ACLSelfRevokeAdminRequest('invoke'),
        admin.ShutdownAdminRequest(),
    ]


def replied(request, reply):
    """Feed a whole reply and return the request with ``response`` set."""
    complete, rest = request.isComplete(reply)
    assert complete and rest == b'', (complete, rest)
    request.response = reply[:len(reply) - len(rest)]
    request.setComplete()
    return request


class TestBase(testtools.TestCase):

    def test_base_is_abstract(self):
        self.assertRaises(NotImplementedError, admin.AdminRequest)
        self.assertRaises(NotImplementedError, admin.AdminRequest, b'x')

    def test_exported_from_gear(self):
        for name in admin.__all__:
            self.assertIs(getattr(admin, name), getattr(gear, name))

    def test_initial_state(self):
        req = admin.StatusAdminRequest()
        self.assertIsNone(req.response)
        self.assertEqual((), req.arguments)
        self.assertIsInstance(req.wait_event, threading.Event)
        self.assertFalse(req.wait_event.is_set())

    def test_arguments_are_bytes(self):
        req = admin.CancelJobAdminRequest('H:\u00e9:1')
        self.assertEqual(('H:\u00e9:1'.encode('utf-8'),), req.arguments)
        req = admin.CancelJobAdminRequest(bytearray(b'H:x:1'))
        self.assertEqual((b'H:x:1',), req.arguments)

    def test_bad_arguments(self):
        for bad in ('a b', 'a\nstatus', 'a\r', 'a\x00', '', 12):
            self.assertRaises(ConfigurationError,
                              admin.CancelJobAdminRequest, bad)

    def test_wait_for_response(self):
        req = admin.VersionAdminRequest()
        self.assertFalse(req.waitForResponse(timeout=0))
        done = threading.Thread(target=req.setComplete)
        done.start()
        self.assertTrue(req.waitForResponse(timeout=10))
        done.join(10)
        self.assertTrue(req.waitForResponse())

    def test_repr(self):
        req = admin.CancelJobAdminRequest('H:x:1')
        self.assertEqual(
            "<CancelJobAdminRequest b'cancel job H:x:1' pending>", repr(req))
        req.setComplete()
        self.assertIn('complete', repr(req))

    def test_parse_without_response(self):
        self.assertRaises(GearmanError, admin.StatusAdminRequest().parse)
        self.assertRaises(GearmanError, admin.VersionAdminRequest().parse)


class TestGetCommand(testtools.TestCase):

    def test_every_class(self):
        cases = [
            (admin.StatusAdminRequest(), b'status\n'),
            (admin.ShowJobsAdminRequest(), b'show jobs\n'),
            (admin.ShowUniqueJobsAdminRequest(), b'show unique jobs\n'),
            (admin.CancelJobAdminRequest(b'H:lap:1'),
             b'cancel job H:lap:1\n'),
            (admin.VersionAdminRequest(), b'version\n'),
            (admin.WorkersAdminRequest(), b'workers\n'),
            (admin.PriorityStatusAdminRequest(), b'prioritystatus\n'),
            (admin.MaxQueueAdminRequest('fn'), b'maxqueue fn\n'),
            (admin.MaxQueueAdminRequest('fn', 5), b'maxqueue fn 5\n'),
            (admin.MaxQueueAdminRequest(b'fn', 1, '2', -3),
             b'maxqueue fn 1 2 -3\n'),
            (admin.GetPidAdminRequest(), b'getpid\n'),
            (admin.VerboseAdminRequest(), b'verbose\n'),
            (admin.CreateFunctionAdminRequest('foobar'),
             b'create function foobar\r\n'),
            (admin.DropFunctionAdminRequest('foobar'),
             b'drop function foobar\n'),
            (admin.ACLListAdminRequest(), b'acl list\n'),
            (admin.ACLGrantAdminRequest('invoke', 'cn', 'fn-.*'),
             b'acl grant invoke cn fn-.*\n'),
            (admin.ACLGrantAdminRequest(b'register', 'cn', 'a b'),
             b'acl grant register cn a b\n'),
            (admin.ACLGrantAdminRequest('grant', 'cn'),
             b'acl grant grant cn\n'),
            (admin.ACLRevokeAdminRequest('all', 'cn'),
             b'acl revoke all cn\n'),
            (admin.ACLRevokeAdminRequest('invoke', 'cn'),
             b'acl revoke invoke cn\n'),
            (admin.ACLSelfRevokeAdminRequest('register'),
             b'acl self-revoke register\n'),
            (admin.ShutdownAdminRequest(), b'shutdown\n'),
            (admin.ShutdownAdminRequest(graceful=True),
             b'shutdown graceful\n'),
        ]
        for req, expected in cases:
            self.assertEqual(expected, req.getCommand(), req)

    def test_maxqueue_size_count(self):
        self.assertRaises(ConfigurationError,
                          admin.MaxQueueAdminRequest, 'fn', 1, 2)
        self.assertRaises(ConfigurationError,
                          admin.MaxQueueAdminRequest, 'fn', 1, 2, 3, 4)
        self.assertRaises(ConfigurationError,
                          admin.MaxQueueAdminRequest, 'fn', 'many')
        self.assertRaises(ConfigurationError,
                          admin.MaxQueueAdminRequest, 'fn', True)

    def test_acl_argument_checks(self):
        self.assertRaises(ConfigurationError,
                          admin.ACLGrantAdminRequest, 'all', 'cn', 'x')
        self.assertRaises(ConfigurationError,
                          admin.ACLGrantAdminRequest, 'invoke', 'cn')
        self.assertRaises(ConfigurationError,
                          admin.ACLGrantAdminRequest, 'grant', 'cn', 'x')
        self.assertRaises(ConfigurationError,
                          admin.ACLGrantAdminRequest, 'invoke', 'a b', 'x')
        self.assertRaises(ConfigurationError,
                          admin.ACLRevokeAdminRequest, 'bogus', 'cn')
        self.assertRaises(ConfigurationError,
                          admin.ACLSelfRevokeAdminRequest, 'bogus')


class TestIsComplete(testtools.TestCase):

    status_reply = b'color\t0\t0\t1\n.\n'

    def assertIncremental(self, req, reply, rest=b''):
        """Every strict prefix is incomplete; the whole reply completes."""
        data = reply + rest
        for i in range(len(reply)):
            self.assertEqual((False, None), req.isComplete(data[:i]),
                             data[:i])
        self.assertEqual((True, rest), req.isComplete(data))
        self.assertEqual(reply, req.response)

    def test_status_byte_by_byte(self):
        self.assertIncremental(admin.StatusAdminRequest(), self.status_reply)

    def test_status_remainder(self):
        req = admin.StatusAdminRequest()
        self.assertEqual((True, b'.\n'),
                         req.isComplete(self.status_reply + b'.\n'))

    def test_dot_alone(self):
        for cls in MULTILINE_CLASSES:
            self.assertIncremental(cls(), b'.\n')
            self.assertIncremental(cls(), b'.\r\n')
            self.assertIncremental(cls(), b'.\n', rest=b'OK 1\n')

    def test_crlf_list(self):
        self.assertIncremental(admin.StatusAdminRequest(),
                               b'a\t1\t0\t1\r\nb\t0\t0\t1\r\n.\r\n')

    def test_dot_inside_row_is_not_the_end(self):
        req = admin.StatusAdminRequest()
        self.assertEqual((False, None), req.isComplete(b'a.b\t1\t0\t1\n.'))
        self.assertEqual((False, None), req.isComplete(b'.a\t1\t0\t1\n'))
        self.assertEqual((True, b''), req.isComplete(b'.a\t1\t0\t1\n.\n'))

    def test_empty_unique_row(self):
        req = admin.ShowUniqueJobsAdminRequest()
        self.assertIncremental(req, b'\n.\n')
        self.assertEqual([''], req.parse())

    def test_err_first_line_completes_multiline(self):
        for cls in MULTILINE_CLASSES:
            self.assertIncremental(cls(), b'ERR UNKNOWN_SHOW_ARGUMENTS\r\n',
                                   rest=b'OK 1.1.20\n')
            self.assertIncremental(cls(), b'ERR ACL_DISABLED\n')

    def test_err_later_is_a_row(self):
        req = admin.ShowUniqueJobsAdminRequest()
        self.assertEqual((False, None), req.isComplete(b'u1\nERR X\n'))
        self.assertEqual((True, b''), req.isComplete(b'u1\nERR X\n.\n'))

    def test_function_named_err_is_a_row(self):
        req = admin.StatusAdminRequest()
        reply = b'ERR x\t1\t0\t1\n.\n'
        self.assertIncremental(req, reply)
        self.assertEqual([('ERR x', 1, 0, 1)], req.parse())

    def test_pipelined_status_and_version(self):
        status = admin.StatusAdminRequest()
        version = admin.VersionAdminRequest()
        data = self.status_reply + b'OK 1.1.20+ds\n'
        complete, rest = status.isComplete(data)
        self.assertTrue(complete)
        self.assertEqual(b'OK 1.1.20+ds\n', rest)
        self.assertEqual(self.status_reply, status.response)
        self.assertEqual((True, b''), version.isComplete(rest))
        self.assertEqual('1.1.20+ds', version.parse())
        self.assertEqual([('color', 0, 0, 1)], status.parse())

    def test_pipelined_two_lists(self):
        first = b'a\t1\t0\t1\n.\n'
        second = b'20 127.0.0.1 - :\n.\n'
        self.assertIncremental(admin.StatusAdminRequest(), first,
                               rest=second)

    def test_one_line_framing(self):
        for req in one_line_requests():
            self.assertIncremental(req, b'OK\r\n')
        for req in one_line_requests():
            self.assertIncremental(req, b'ERR UNKNOWN_JOB\r\n',
                                   rest=b'.\n')
        self.assertIncremental(admin.VersionAdminRequest(), b'OK 1.1.20\n',
                               rest=b'OK 5\n')

    def test_shorter_data_restarts_scan(self):
        req = admin.StatusAdminRequest()
        self.assertEqual((False, None), req.isComplete(b'a\t1\t0\t1\nb\t'))
        # A different, shorter buffer must be scanned from its start.
        self.assertEqual((True, b'x'), req.isComplete(b'.\nx'))

    def test_reusable_after_completion(self):
        req = admin.StatusAdminRequest()
        self.assertEqual((True, b''), req.isComplete(self.status_reply))
        self.assertEqual((True, b''), req.isComplete(self.status_reply))


class TestParse(testtools.TestCase):

    def test_status(self):
        req = replied(admin.StatusAdminRequest(),
                      b'fnA\t3\t1\t2\nf\xc3\xa9\t0\t0\t0\n'
                      b'bad\xff\t1\t1\t1\n.\n')
        self.assertEqual([('fnA', 3, 1, 2), ('f\u00e9', 0, 0, 0),
                          ('bad\udcff', 1, 1, 1)], req.parse())

    def test_status_empty(self):
        self.assertEqual([], replied(admin.StatusAdminRequest(),
                                     b'.\n').parse())

    def test_status_tab_in_name(self):
        req = replied(admin.StatusAdminRequest(), b'a\tb\t1\t2\t3\n.\n')
        self.assertEqual([('a\tb', 1, 2, 3)], req.parse())

    def test_status_bad_row(self):
        req = replied(admin.StatusAdminRequest(), b'a\t1\t2\n.\n')
        self.assertRaises(InvalidDataError, req.parse)
        req = replied(admin.StatusAdminRequest(), b'a\t1\tx\t2\n.\n')
        self.assertRaises(InvalidDataError, req.parse)

    def test_priority_status(self):
        req = replied(admin.PriorityStatusAdminRequest(),
                      b'fnA\t1\t2\t3\t0\nfnB\t0\t0\t0\t1\n.\n')
        self.assertEqual([('fnA', 1, 2, 3, 0), ('fnB', 0, 0, 0, 1)],
                         req.parse())

    def test_workers(self):
        reply = (b'20 127.0.0.1 - :\n'
                 b'21 127.0.0.1 my-worker : f1 f2\n'
                 b'22 ::1 gear : \n'
                 b'23 10.0.0.1 id with : colon : f3\r\n'
                 b'.\n')
        req = replied(admin.WorkersAdminRequest(), reply)
        self.assertEqual([
            (20, '127.0.0.1', '-', ()),
            (21, '127.0.0.1', 'my-worker', ('f1', 'f2')),
            (22, '::1', 'gear', ()),
            (23, '10.0.0.1', 'id with', ('colon', ':', 'f3')),
        ], req.parse())

    def test_workers_bad_row(self):
        req = replied(admin.WorkersAdminRequest(), b'20 127.0.0.1 -\n.\n')
        self.assertRaises(InvalidDataError, req.parse)
        req = replied(admin.WorkersAdminRequest(), b'x 127.0.0.1 - :\n.\n')
        self.assertRaises(InvalidDataError, req.parse)

    def test_show_jobs(self):
        req = replied(admin.ShowJobsAdminRequest(),
                      b'H:vm:10\t1\t0\t0\nH:vm:11\t0\t1\t1\n.\n')
        self.assertEqual([('H:vm:10', 1, 0, 0), ('H:vm:11', 0, 1, 1)],
                         req.parse())

    def test_show_unique_jobs(self):
        req = replied(admin.ShowUniqueJobsAdminRequest(),
                      b'u-1\n\nu 3\r\n.\n')
        self.assertEqual(['u-1', '', 'u 3'], req.parse())

    def test_acl_list(self):
        req = replied(admin.ACLListAdminRequest(),
                      b'admin\tregister=None\tinvoke=.*\tgrant=True\n'
                      b'worker\tregister=build-.*\tinvoke=None\t'
                      b'grant=False\r\n'
                      b'.\n')
        self.assertEqual([('admin', None, '.*', True),
                          ('worker', 'build-.*', None, False)], req.parse())

    def test_acl_list_with_admin_column(self):
        req = replied(admin.ACLListAdminRequest(),
                      b'ops\tregister=None\tinvoke=a b\tgrant=False\t'
                      b'admin=True\n'
                      b'w\tregister=x\tinvoke=None\tgrant=True\t'
                      b'admin=False\n.\n')
        rows = req.parse()
        self.assertEqual([('ops', None, 'a b', False),
                          ('w', 'x', None, True)], rows)
        self.assertEqual([True, False], [row.admin for row in rows])
        subject, register, invoke, grant = rows[0]
        self.assertEqual('ops', subject)

    def test_acl_list_rows_of_older_servers_have_no_admin(self):
        req = replied(admin.ACLListAdminRequest(),
                      b'a\tregister=None\tinvoke=.*\tgrant=True\n.\n')
        self.assertIs(False, req.parse()[0].admin)

    def test_acl_grant_admin_takes_no_pattern(self):
        self.assertEqual(b'acl grant admin ops\n',
                         admin.ACLGrantAdminRequest('admin', 'ops')
                         .getCommand())
        self.assertRaises(ConfigurationError, admin.ACLGrantAdminRequest,
                          'admin', 'ops', '.*')
        self.assertEqual(b'acl revoke admin ops\n',
                         admin.ACLRevokeAdminRequest('admin', 'ops')
                         .getCommand())

    def test_acl_list_bad_row(self):
        req = replied(admin.ACLListAdminRequest(),
                      b'admin\tinvoke=None\tregister=.*\tgrant=True\n.\n')
        self.assertRaises(InvalidDataError, req.parse)

    def test_acl_list_disabled(self):
        req = replied(admin.ACLListAdminRequest(), b'ERR ACL_DISABLED\r\n')
        e = self.assertRaises(AdminError, req.parse)
        self.assertEqual('ACL_DISABLED', e.code)
        self.assertEqual('', e.message)

    def test_one_line_values(self):
        self.assertEqual('1.1.20+ds', replied(
            admin.VersionAdminRequest(), b'OK 1.1.20+ds\n').parse())
        self.assertEqual(5670, replied(
            admin.GetPidAdminRequest(), b'OK 5670\n').parse())
        self.assertEqual('INFO', replied(
            admin.VerboseAdminRequest(), b'OK INFO\n').parse())
        self.assertRaises(InvalidDataError, replied(
            admin.GetPidAdminRequest(), b'OK many\n').parse)

    def test_one_line_ok(self):
        for req in one_line_requests():
            if isinstance(req, (admin.VersionAdminRequest,
                                admin.GetPidAdminRequest,
                                admin.VerboseAdminRequest)):
                continue
            self.assertIs(True, replied(req, b'OK\r\n').parse())
        for req in one_line_requests()[:1]:
            self.assertIs(True, replied(req, b'OK\n').parse())

    def test_one_line_unexpected(self):
        req = replied(admin.CancelJobAdminRequest('H:x:1'), b'NO\n')
        self.assertRaises(InvalidDataError, req.parse)

    def test_errors(self):
        cases = [
            (admin.CancelJobAdminRequest('H:x:1'), b'ERR UNKNOWN_JOB\r\n',
             'UNKNOWN_JOB', ''),
            (admin.CancelJobAdminRequest('H:x:1'),
             b'ERR PERMISSION_DENIED\n', 'PERMISSION_DENIED', ''),
            (admin.MaxQueueAdminRequest('fn'),
             b'ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+'
             b'sent+to+this+command+maxqueue\r\n',
             'INVALID_ARGUMENTS',
             'An incomplete set of arguments was sent to this command '
             'maxqueue'),
            (admin.ShutdownAdminRequest(),
             b'ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n',
             'UNKNOWN_COMMAND', 'Unknown server commandshutdown'),
            (admin.DropFunctionAdminRequest('fn'),
             b'ERR there are still connected workers or executing '
             b'clients\r\n',
             'ERR', 'there are still connected workers or executing clients'),
            (admin.DropFunctionAdminRequest('fn'),
             b'ERR function not found\r\n', 'ERR', 'function not found'),
            (admin.ACLGrantAdminRequest('invoke', 'cn', '('),
             b'ERR UNABLE missing+),+unterminated+subpattern\r\n',
             'UNABLE', 'missing ), unterminated subpattern'),
            (admin.VersionAdminRequest(), b'ERR\r\n', 'ERR', ''),
            (admin.StatusAdminRequest(), b'ERR UNKNOWN_COMMAND x\r\n',
             'UNKNOWN_COMMAND', 'x'),
            (admin.ShowJobsAdminRequest(), b'ERR UNKNOWN_SHOW_ARGUMENTS\r\n',
             'UNKNOWN_SHOW_ARGUMENTS', ''),
        ]
        for req, reply, code, message in cases:
            e = self.assertRaises(AdminError, replied(req, reply).parse)
            self.assertEqual((code, message), (e.code, e.message), reply)
            self.assertIsInstance(e, GearmanError)
