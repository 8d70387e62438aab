"""GearmanAdminClient reply handling, fed canned server replies."""

import testtools

import gear.gearman as gearman
from gear.gearman import errors


class CannedAdminClient(gearman.GearmanAdminClient):
    """Answers each command from ``replies`` instead of a server."""

    def __init__(self, replies):
        super(CannedAdminClient, self).__init__(['127.0.0.1:4730'])
        self.replies = replies
        self.sent = []

    def _send(self, request):
        command = request.getCommand()
        self.sent.append(command)
        reply = self.replies[command]
        complete, rest = request.isComplete(reply)
        assert complete and rest == b'', (command, reply)
        request.setComplete()
        return request


class TestConstruction(testtools.TestCase):

    def test_more_than_one_server(self):
        e = self.assertRaises(ValueError, gearman.GearmanAdminClient,
                              ['a:1', 'b:1'])
        self.assertIsInstance(e, gearman.GearmanError)

    def test_no_server_constructs_and_calls_fail(self):
        # As python-gearman: suites build one at import time.
        for host_list in (None, []):
            client = gearman.GearmanAdminClient(host_list)
            self.assertEqual([], client.host_list)
            e = self.assertRaises(gearman.ServerUnavailable,
                                  client.get_version)
            self.assertIn('no server', str(e))
            client.shutdown()

    def test_defaults(self):
        client = gearman.GearmanAdminClient([('127.0.0.1', 4730)])
        self.assertEqual(10.0, client.poll_timeout)
        # Nothing connects until the first command.
        self.assertEqual([], client._links)
        client.shutdown()


class TestReplies(testtools.TestCase):

    def test_status(self):
        c = CannedAdminClient({b'status\n': b'f1\t3\t1\t2\nf 2\t0\t0\t0\n.\n'})
        self.assertEqual(
            (dict(task='f1', queued=3, running=1, workers=2),
             dict(task='f 2', queued=0, running=0, workers=0)),
            c.get_status())

    def test_empty_status(self):
        c = CannedAdminClient({b'status\n': b'.\n'})
        self.assertEqual((), c.get_status())

    def test_workers(self):
        c = CannedAdminClient({b'workers\n': (
            b'20 127.0.0.1 - :\n'
            b'21 ::1 my-worker : f1 f2\n'
            b'22 127.0.0.1 - : \n.\n')})
        self.assertEqual(
            (dict(file_descriptor='20', ip='127.0.0.1', client_id='-',
                  tasks=()),
             dict(file_descriptor='21', ip='::1', client_id='my-worker',
                  tasks=('f1', 'f2')),
             dict(file_descriptor='22', ip='127.0.0.1', client_id='-',
                  tasks=())),
            c.get_workers())

    def test_version_and_pid_are_raw_lines(self):
        c = CannedAdminClient({b'version\n': b'OK 1.1.20+ds\n',
                               b'getpid\n': b'OK 1234\r\n'})
        self.assertEqual('OK 1.1.20+ds', c.get_version())
        self.assertEqual('OK 1234', c.get_pid())

    def test_maxqueue_strips_cr(self):
        c = CannedAdminClient({b'maxqueue f 5\n': b'OK\r\n'})
        self.assertEqual('OK', c.send_maxqueue('f', 5))

    def test_shutdown(self):
        ok = CannedAdminClient({b'shutdown graceful\n': b'OK\r\n',
                                b'shutdown\n': b'OK\r\n'})
        self.assertIsNone(ok.send_shutdown())
        self.assertIsNone(ok.send_shutdown(graceful=False))
        refused = CannedAdminClient({b'shutdown graceful\n': (
            b'ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n')})
        e = self.assertRaises(gearman.ServerError, refused.send_shutdown)
        self.assertEqual('UNKNOWN_COMMAND', e.code)
        self.assertEqual('Unknown server commandshutdown', e.text)

    def test_cancel_job_returns_the_line(self):
        c = CannedAdminClient({b'cancel job H:a:1\n': b'OK\r\n',
                               b'cancel job H:a:2\n': b'ERR UNKNOWN_JOB\r\n'})
        self.assertEqual('OK', c.cancel_job('H:a:1'))
        self.assertEqual('ERR UNKNOWN_JOB', c.cancel_job('H:a:2'))

    def test_jobs_have_correct_and_legacy_keys(self):
        c = CannedAdminClient({b'show jobs\n': b'H:vm:10\t1\t0\t1\n.\n'})
        [row] = c.get_jobs()
        self.assertEqual(dict(handle='H:vm:10', retries=1, ignore_job=0,
                              job_queued=1, queued=1, canceled=0,
                              enabled=1), row)

    def test_unique_jobs_are_strings(self):
        c = CannedAdminClient({b'show unique jobs\n': b'abc\n\nxyz\n.\n'})
        self.assertEqual(({'unique': 'abc'}, {'unique': ''},
                          {'unique': 'xyz'}), c.get_unique_jobs())

    def test_priority_status(self):
        c = CannedAdminClient({b'prioritystatus\n': b'f\t1\t2\t3\t4\n.\n'})
        self.assertEqual((dict(task='f', high=1, normal=2, low=3,
                               workers=4),), c.get_priority_status())

    def test_verbose_and_functions(self):
        c = CannedAdminClient({
            b'verbose\n': b'OK INFO\n',
            b'create function f\r\n': b'OK\r\n',
            b'drop function f\n': b'ERR function not found\r\n'})
        self.assertEqual('INFO', c.get_verbose())
        self.assertEqual('OK', c.create_function('f'))
        e = self.assertRaises(gearman.ServerError, c.drop_function, 'f')
        self.assertIn('function not found', str(e))

    def test_err_on_a_list_command_raises_server_error(self):
        c = CannedAdminClient({b'status\n': b'ERR PERMISSION_DENIED x+y\r\n'})
        e = self.assertRaises(gearman.ServerError, c.get_status)
        self.assertEqual(('PERMISSION_DENIED', 'x y'), (e.code, e.text))

    def test_garbled_reply_is_invalid_state(self):
        c = CannedAdminClient({b'status\n': b'nonsense\n.\n',
                               b'getpid\n': b'what\n'})
        self.assertRaises(errors.InvalidAdminClientState, c.get_status)
        self.assertRaises(errors.InvalidAdminClientState, c.get_pid)
