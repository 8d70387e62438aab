"""Output shaping of the command-line tools, without sockets."""

import io
import json
import os

import fixtures
import testtools

import gear
from gear import errors
from gear.cmd import _common as common
from gear.cmd import admin as admin_cmd
from gear.cmd import submit as submit_cmd
from gear.cmd import worker as worker_cmd


class TestFormatTable(testtools.TestCase):

    def test_columns_line_up_and_numbers_align_right(self):
        text = common.format_table(
            ['FUNCTION', 'TOTAL', 'WORKERS'],
            [['reverse', 1, 12], ['a-much-longer-name', 250, 3]],
            right_aligned=(1, 2))
        self.assertEqual(
            'FUNCTION            TOTAL  WORKERS\n'
            'reverse                 1       12\n'
            'a-much-longer-name    250        3\n', text)

    def test_no_trailing_spaces_and_last_text_column_unpadded(self):
        text = common.format_table(['A', 'NAME'], [['x', 'long value'],
                                                   ['yy', 's']])
        lines = text.splitlines()
        self.assertEqual(['A   NAME', 'x   long value', 'yy  s'], lines)
        for line in lines:
            self.assertEqual(line, line.rstrip())

    def test_empty_rows_print_only_the_headers(self):
        self.assertEqual('A  B\n', common.format_table(['A', 'B'], []))

    def test_wide_characters_count_two_columns(self):
        self.assertEqual(4, common.display_width('\u65e5\u672c'))
        self.assertEqual(1, common.display_width('e\u0301'))
        text = common.format_table(['N', 'X'], [['\u65e5\u672c', 1],
                                                ['abcde', 2]],
                                   right_aligned=(1,))
        self.assertEqual(['N      X', '\u65e5\u672c   1', 'abcde  2'],
                         text.splitlines())


class TestAdminRender(testtools.TestCase):

    def test_status_json_has_named_fields(self):
        parsed = [('fn', 3, 1, 2), ('other', 0, 0, 1)]
        shaped = json.loads(admin_cmd.render('status', parsed, True))
        self.assertEqual([
            {'function': 'fn', 'total': 3, 'running': 1, 'workers': 2},
            {'function': 'other', 'total': 0, 'running': 0, 'workers': 1},
        ], shaped)

    def test_status_table(self):
        text = admin_cmd.render('status', [('fn', 3, 1, 2)])
        self.assertEqual('FUNCTION  TOTAL  RUNNING  WORKERS\n'
                         'fn            3        1        2\n', text)

    def test_priority_status(self):
        parsed = [('fn', 1, 2, 3, 4)]
        self.assertEqual(
            [{'function': 'fn', 'high': 1, 'normal': 2, 'low': 3,
              'workers': 4}],
            json.loads(admin_cmd.render('priority-status', parsed, True)))

    def test_workers_functions_are_a_list_in_json_and_words_in_tables(self):
        parsed = [(20, '127.0.0.1', 'w1', ('f1', 'f2')),
                  (21, '::1', '-', ())]
        shaped = json.loads(admin_cmd.render('workers', parsed, True))
        self.assertEqual({'fd': 20, 'ip': '127.0.0.1', 'client_id': 'w1',
                          'functions': ['f1', 'f2']}, shaped[0])
        self.assertEqual([], shaped[1]['functions'])
        lines = admin_cmd.render('workers', parsed).splitlines()
        self.assertEqual('FD  IP         CLIENT-ID  FUNCTIONS', lines[0])
        self.assertEqual('20  127.0.0.1  w1         f1 f2', lines[1])
        self.assertEqual('21  ::1        -', lines[2])

    def test_jobs_flags_are_booleans(self):
        parsed = [('H:vm:1', 0, 0, 1)]
        self.assertEqual(
            [{'handle': 'H:vm:1', 'retries': 0, 'ignore_job': False,
              'job_queued': True}],
            json.loads(admin_cmd.render('jobs', parsed, True)))
        self.assertIn('H:vm:1        0  no          yes',
                      admin_cmd.render('jobs', parsed))

    def test_unique_jobs_including_an_empty_unique(self):
        self.assertEqual([{'unique': 'u1'}, {'unique': ''}],
                         json.loads(admin_cmd.render('unique-jobs',
                                                     ['u1', ''], True)))

    def test_acl_list_keeps_none_as_null(self):
        parsed = [('alice', None, '^f.*', True),
                  gear.ACLRow('bob', None, None, False, admin=True)]
        self.assertEqual(
            [{'subject': 'alice', 'register': None, 'invoke': '^f.*',
              'grant': True, 'admin': False},
             {'subject': 'bob', 'register': None, 'invoke': None,
              'grant': False, 'admin': True}],
            json.loads(admin_cmd.render('acl list', parsed, True)))
        self.assertEqual(
            'SUBJECT  REGISTER  INVOKE  GRANT  ADMIN\n'
            'alice    -         ^f.*    yes    no\n'
            'bob      -         -       no     yes\n',
            admin_cmd.render('acl list', parsed))

    def test_acl_grant_takes_the_admin_right(self):
        args = admin_cmd.parse_args(['acl', 'grant', 'admin', 'bob'])
        request = args.request_factory()
        self.assertEqual(b'acl grant admin bob\n', request.getCommand())

    def test_single_values_and_ok(self):
        self.assertEqual({'version': '1.1.20'}, json.loads(
            admin_cmd.render('version', '1.1.20', True)))
        self.assertEqual('1.1.20\n', admin_cmd.render('version', '1.1.20'))
        self.assertEqual({'pid': 42},
                         json.loads(admin_cmd.render('pid', 42, True)))
        self.assertEqual({'level': 'INFO'},
                         json.loads(admin_cmd.render('verbose', 'INFO',
                                                     True)))
        self.assertEqual({'ok': True},
                         json.loads(admin_cmd.render('cancel', True, True)))
        self.assertEqual('OK\n', admin_cmd.render('maxqueue', True))

    def test_ping(self):
        parsed = ('127.0.0.1:4730', '127.0.0.1', 4730, 0.0012345)
        self.assertEqual({'host': '127.0.0.1', 'port': 4730,
                          'rtt_ms': 1.234},
                         json.loads(admin_cmd.render('ping', parsed, True)))
        self.assertEqual('echo from 127.0.0.1:4730: time=1.234 ms\n',
                         admin_cmd.render('ping', parsed))

    def test_json_is_one_line_and_escapes_undecodable_names(self):
        name = b'caf\xff'.decode('utf-8', 'surrogateescape')
        text = admin_cmd.render('status', [(name, 1, 0, 0)], True)
        self.assertEqual(1, text.count('\n'))
        self.assertTrue(text.endswith('\n'))
        self.assertEqual(name, json.loads(text)[0]['function'])


class TestAdminErrors(testtools.TestCase):

    def test_gearmand_unknown_acl_command(self):
        error = errors.AdminError('UNKNOWN_COMMAND',
                                  'Unknown server commandacl')
        self.assertEqual(
            'acl list: the server answered ERR UNKNOWN_COMMAND: unknown '
            'server command "acl" (this server has no ACL commands)',
            admin_cmd.describe_admin_error('acl list', error))

    def test_free_text_error(self):
        error = errors.AdminError('ERR', 'function not found')
        self.assertEqual(
            'drop function f: the server answered ERR: function not found',
            admin_cmd.describe_admin_error('drop function f', error))

    def test_code_hint(self):
        error = errors.AdminError('UNKNOWN_JOB')
        self.assertEqual(
            'cancel job H:x:1: the server answered ERR UNKNOWN_JOB (no job '
            'has this handle)',
            admin_cmd.describe_admin_error('cancel job H:x:1', error))


class TestAdminArguments(testtools.TestCase):

    def setUp(self):
        super(TestAdminArguments, self).setUp()
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', io.StringIO()))

    def test_global_options_before_or_after_the_command(self):
        args = admin_cmd.parse_args(['-p', '4731', 'status', '--json'])
        self.assertEqual(4731, args.port)
        self.assertTrue(args.json)
        self.assertEqual('127.0.0.1', args.host)
        args = admin_cmd.parse_args(['status', '-H', 'localhost'])
        self.assertEqual('localhost', args.host)
        self.assertEqual(4730, args.port)
        self.assertEqual(10.0, args.timeout)

    def test_maxqueue_takes_zero_one_or_three_sizes(self):
        for sizes in ([], ['5'], ['1', '2', '3']):
            args = admin_cmd.parse_args(['maxqueue', 'fn'] + sizes)
            self.assertEqual([int(s) for s in sizes], args.sizes)
        e = self.assertRaises(SystemExit, admin_cmd.parse_args,
                              ['maxqueue', 'fn', '1', '2'])
        self.assertEqual(2, e.code)

    def test_count_needs_watch(self):
        e = self.assertRaises(SystemExit, admin_cmd.parse_args,
                              ['--count', '2', 'status'])
        self.assertEqual(2, e.code)
        args = admin_cmd.parse_args(['--watch', '0.5', '--count', '2',
                                     'status'])
        self.assertEqual((0.5, 2), (args.watch, args.count))

    def test_acl_subcommands(self):
        args = admin_cmd.parse_args(['acl', 'grant', 'invoke', 'bob', '^f'])
        request = args.request_factory()
        self.assertEqual(b'acl grant invoke bob ^f\n', request.getCommand())
        e = self.assertRaises(SystemExit, admin_cmd.parse_args,
                              ['acl', 'grant', 'invoke', 'bob'])
        self.assertEqual(2, e.code)
        e = self.assertRaises(SystemExit, admin_cmd.parse_args,
                              ['acl', 'revoke', 'nonsense', 'bob'])
        self.assertEqual(2, e.code)

    def test_no_command_is_a_usage_error(self):
        e = self.assertRaises(SystemExit, admin_cmd.parse_args, [])
        self.assertEqual(2, e.code)


class TestMessages(testtools.TestCase):

    def test_connection_refused(self):
        self.assertEqual(
            'cannot connect to 127.0.0.1:4731: Connection refused',
            common.describe_connect_failure(
                '127.0.0.1:4731', 'Unable to open socket to 127.0.0.1 port '
                '4731: [Errno 111] Connection refused'))

    def test_tls_verify_failure_names_the_ca(self):
        text = common.describe_connect_failure(
            '127.0.0.1:4730', 'TLS handshake with 127.0.0.1 port 4730 '
            'failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify '
            'failed: unable to get local issuer certificate (_ssl.c:1006)',
            ('k.pem', 'c.pem', '/tmp/ca.pem'))
        self.assertEqual(
            'TLS handshake with 127.0.0.1:4730 failed: certificate verify '
            'failed: unable to get local issuer certificate (the '
            "server's certificate is not signed by the CA in /tmp/ca.pem)",
            text)

    def test_ipv6_address(self):
        self.assertEqual('[::1]:4730', common.format_address('::1', 4730))

    def test_partial_tls_options_are_a_usage_error(self):
        e = self.assertRaises(common.CliError, common.check_tls_files,
                              'key.pem', None, None)
        self.assertEqual(common.EXIT_USAGE, e.status)
        self.assertIn('--ssl-cert, --ssl-ca', e.message)

    def test_missing_tls_file_is_named(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        missing = os.path.join(tmp, 'nope.pem')
        e = self.assertRaises(common.CliError, common.check_tls_files,
                              missing, missing, missing)
        self.assertEqual(common.EXIT_USAGE, e.status)
        self.assertEqual('cannot read TLS CA file %s: No such file or '
                         'directory' % missing, e.message)


class TestWorkerMessages(testtools.TestCase):

    def test_command_stderr(self):
        self.assertEqual('', worker_cmd._stderr_text(b'  \n'))
        self.assertEqual(': broken', worker_cmd._stderr_text(b'broken\n'))
        self.assertEqual(':\n    one\n    two',
                         worker_cmd._stderr_text(b'one\ntwo\n'))

    def test_summary(self):
        serving = worker_cmd.CommandWorker(None, None, count=3)
        serving.done = 3
        serving.outcomes[worker_cmd.FAILED] = 1
        self.assertEqual('stopped after --count 3: ran 3 jobs (1 failed)',
                         serving.summary())
        serving = worker_cmd.CommandWorker(None, None)
        serving.done = 1
        serving.signal_name = 'SIGTERM'
        serving.outcomes[worker_cmd.LEFT] = 1
        self.assertEqual('stopped on SIGTERM: ran 1 job (1 left to the '
                         'server)', serving.summary())

    def test_lost_connection_suggests_tls_only_before_any_answer(self):
        before = common.describe_lost_connection('h:1', None)
        self.assertIn('does the server expect TLS?', before)
        after = common.describe_lost_connection('h:1', None, answered=True)
        self.assertEqual('the connection to h:1 was closed by the server',
                         after)


class TestOrderedOutput(testtools.TestCase):

    def test_results_come_out_in_submission_order(self):
        written = []
        out = submit_cmd.OrderedOutput(written.append, b'\n')
        first = submit_cmd.JobRecord(1, None)
        second = submit_cmd.JobRecord(2, None)
        third = submit_cmd.JobRecord(3, None)
        for record in (first, second, third):
            out.add(record)
        out.data(second, b'two')
        out.finish(second)
        out.data(first, b'o')       # the head streams at once
        self.assertEqual([b'o'], written)
        out.data(third, b'th')
        out.data(first, b'ne')
        out.finish(first)
        self.assertEqual([b'o', b'ne', b'\n', b'two', b'\n', b'th'], written)
        out.data(third, b'ree')
        out.finish(third)
        self.assertEqual(b'one\ntwo\nthree\n', b''.join(written))
        self.assertEqual(0, len(out))

    def test_a_job_without_result_is_marked_on_its_line(self):
        written = []
        out = submit_cmd.OrderedOutput(written.append, b'\n')
        lost = submit_cmd.JobRecord(1, None)
        empty = submit_cmd.JobRecord(2, None)
        out.add(lost)
        out.add(empty)
        lost.mark = submit_cmd.MARK_LOST
        out.finish(empty)
        out.finish(lost)
        self.assertEqual(b'[lost]\n\n', b''.join(written))

    def test_no_separator_keeps_bytes_exact(self):
        written = []
        out = submit_cmd.OrderedOutput(written.append)
        record = submit_cmd.JobRecord(1, None)
        out.add(record)
        out.data(record, b'\x00\xff')
        out.data(record, b'')
        out.finish(record)
        self.assertEqual(b'\x00\xff', b''.join(written))


class FakeClock(object):

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class TestProgressBar(testtools.TestCase):

    def test_render(self):
        bar = submit_cmd.ProgressBar(200, io.StringIO(), clock=FakeClock())
        self.assertEqual(
            '[###############---------------] 100/200  50% 50.0 jobs/s '
            'eta 0:00:02', bar.render(100, 2.0))
        self.assertEqual(
            '[##############################] 200/200 100% 100.0 jobs/s',
            bar.render(200, 2.0))

    def test_updates_are_throttled_and_closed_with_a_newline(self):
        clock = FakeClock()
        stream = io.StringIO()
        bar = submit_cmd.ProgressBar(10, stream, clock=clock)
        bar.update(1)
        bar.update(2)           # too soon: not drawn
        clock.now += 1
        bar.update(3)
        bar.message('gear-submit: job 3 failed')
        bar.close()
        text = stream.getvalue()
        self.assertIn(' 1/10 ', text)
        self.assertNotIn(' 2/10 ', text)
        self.assertIn(' 3/10 ', text)
        # The bar is wiped, the message printed, the bar drawn again.
        self.assertIn('\rgear-submit: job 3 failed\n[', text)
        self.assertTrue(text.endswith('eta 0:00:02\n'))
        self.assertEqual(1, text.count('\n', text.index('failed\n') + 7))

    def test_disabled_bar_writes_only_messages(self):
        stream = io.StringIO()
        bar = submit_cmd.ProgressBar(10, stream, enabled=False)
        bar.update(5)
        bar.message('hello')
        bar.close()
        self.assertEqual('hello\n', stream.getvalue())


class TestInputs(testtools.TestCase):

    def test_split_lines(self):
        self.assertEqual([b'a', b'', b'c'], submit_cmd.split_lines(
            b'a\n\r\nc\n'))
        self.assertEqual([b'a', b'b'], submit_cmd.split_lines(b'a\nb'))
        self.assertEqual([], submit_cmd.split_lines(b''))

    def test_worker_command_split(self):
        self.assertEqual((['-f', 'x'], ['tr', 'a-z', 'A-Z']),
                         worker_cmd.split_command(['-f', 'x', '--', 'tr',
                                                   'a-z', 'A-Z']))
        self.assertEqual((['-f', 'x'], None),
                         worker_cmd.split_command(['-f', 'x']))

    def test_submit_when_implies_background(self):
        args = submit_cmd.parse_args(['-f', 'fn', '--when', '100', 'x'])
        self.assertTrue(args.background)
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', io.StringIO()))
        e = self.assertRaises(SystemExit, submit_cmd.parse_args,
                              ['-f', 'fn', '--when', '100',
                               '--priority', 'high', 'x'])
        self.assertEqual(2, e.code)
