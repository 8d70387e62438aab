"""geard's command line: every flag, its type, and the statsd environment."""

import contextlib
import io
import logging
import os

import fixtures
import testtools

from gear.cmd import geard


def parse(*argv, environ=None):
    return geard.parse_args(list(argv), environ=environ or {})


class TestDefaults(testtools.TestCase):

    def test_defaults(self):
        args = parse()
        self.assertFalse(args.nodaemon)
        self.assertFalse(args.debug)
        self.assertEqual(4730, args.port)
        self.assertIsNone(args.listen_address)
        self.assertIsNone(args.log_config)
        self.assertEqual('/var/run/geard/geard.pid', args.pidfile)
        self.assertIsNone(args.ssl_ca)
        self.assertIsNone(args.ssl_cert)
        self.assertIsNone(args.ssl_key)
        self.assertIsNone(args.acl)
        self.assertFalse(args.keepalive)
        self.assertEqual(7200, args.tcp_keepidle)
        self.assertEqual(75, args.tcp_keepintvl)
        self.assertEqual(9, args.tcp_keepcnt)
        self.assertIsNone(args.job_retries)
        self.assertIsNone(args.store)
        self.assertFalse(args.exceptions)
        self.assertIsNone(args.job_handle_prefix)
        self.assertIsNone(args.backlog)
        self.assertIsNone(args.worker_wakeup)
        self.assertIsNone(args.max_packet_size)
        self.assertIsNone(args.max_connections)
        self.assertFalse(args.allow_admin_shutdown)
        self.assertIsNone(args.statsd_host)
        self.assertEqual(8125, args.statsd_port)
        self.assertIsNone(args.statsd_prefix)

    def test_default_kwargs_leave_server_defaults_alone(self):
        kwargs = geard.server_kwargs(parse())
        for name in ('job_retries', 'store', 'job_handle_prefix', 'backlog',
                     'worker_wakeup', 'max_packet_size', 'max_connections'):
            self.assertNotIn(name, kwargs)
        self.assertEqual(4730, kwargs['port'])
        self.assertIsNone(kwargs['host'])
        self.assertIsNone(kwargs['acl'])
        self.assertIsNone(kwargs['statsd_host'])


class TestFlags(testtools.TestCase):

    def setUp(self):
        super(TestFlags, self).setUp()
        # argparse reports errors on stderr and exits with status 2.
        self.stderr = io.StringIO()
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', self.stderr))

    def assertRejected(self, *argv):
        with testtools.ExpectedException(SystemExit):
            parse(*argv)
        self.assertIn('geard: error:', self.stderr.getvalue())

    def test_foreground_and_debug(self):
        args = parse('-d', '--debug')
        self.assertTrue(args.nodaemon)
        self.assertTrue(args.debug)

    def test_port_is_int(self):
        for flag in ('-p', '--port'):
            args = parse(flag, '4731')
            self.assertEqual(4731, args.port)
            self.assertIsInstance(args.port, int)
        self.assertEqual(0, parse('-p', '0').port)

    def test_port_rejects_text_and_negative(self):
        self.assertRejected('-p', 'gearman')
        self.assertRejected('-p', '-1')

    def test_listen_address(self):
        args = parse('--listen-address', '127.0.0.1')
        self.assertEqual('127.0.0.1', args.listen_address)
        self.assertEqual('127.0.0.1', geard.server_kwargs(args)['host'])

    def test_paths_are_absolute(self):
        cwd = os.getcwd()
        args = parse('--log-config', 'log.conf', '--pidfile', 'g.pid',
                     '--ssl-ca', 'ca.pem', '--ssl-cert', 'c.pem',
                     '--ssl-key', 'c.key', '--acl', 'acl.ini',
                     '--store', 'jobs.db')
        self.assertEqual(os.path.join(cwd, 'log.conf'), args.log_config)
        self.assertEqual(os.path.join(cwd, 'g.pid'), args.pidfile)
        self.assertEqual(os.path.join(cwd, 'ca.pem'), args.ssl_ca)
        self.assertEqual(os.path.join(cwd, 'c.pem'), args.ssl_cert)
        self.assertEqual(os.path.join(cwd, 'c.key'), args.ssl_key)
        self.assertEqual(os.path.join(cwd, 'acl.ini'), args.acl)
        self.assertEqual(os.path.join(cwd, 'jobs.db'), args.store)

    def test_tls_flags_reach_server(self):
        args = parse('--ssl-ca', '/t/ca.pem', '--ssl-cert', '/t/c.pem',
                     '--ssl-key', '/t/c.key')
        kwargs = geard.server_kwargs(args)
        self.assertEqual('/t/ca.pem', kwargs['ssl_ca'])
        self.assertEqual('/t/c.pem', kwargs['ssl_cert'])
        self.assertEqual('/t/c.key', kwargs['ssl_key'])

    def test_partial_tls_is_an_error(self):
        self.assertRejected('--ssl-cert', '/t/c.pem')
        self.assertIn('must be given together', self.stderr.getvalue())

    def test_keepalive(self):
        args = parse('--keepalive', '--keepalive-idle', '60',
                     '--keepalive-interval', '10', '--keepalive-count', '3')
        kwargs = geard.server_kwargs(args)
        self.assertEqual(
            (True, 60, 10, 3),
            (kwargs['keepalive'], kwargs['tcp_keepidle'],
             kwargs['tcp_keepintvl'], kwargs['tcp_keepcnt']))
        self.assertRejected('--keepalive-idle', '0')

    def test_new_server_options(self):
        args = parse('--job-retries', '0', '--store', '/q/jobs.db',
                     '--exceptions', '--job-handle-prefix', 'H:test',
                     '--backlog', '64', '--worker-wakeup', '2',
                     '--max-packet-size', '1048576',
                     '--max-connections', '100', '--allow-admin-shutdown')
        kwargs = geard.server_kwargs(args, acl='the-acl')
        self.assertEqual(0, kwargs['job_retries'])
        self.assertEqual('/q/jobs.db', kwargs['store'])
        self.assertIs(True, kwargs['exceptions'])
        self.assertEqual('H:test', kwargs['job_handle_prefix'])
        self.assertEqual(64, kwargs['backlog'])
        self.assertEqual(2, kwargs['worker_wakeup'])
        self.assertEqual(1048576, kwargs['max_packet_size'])
        self.assertEqual(100, kwargs['max_connections'])
        self.assertIs(True, kwargs['allow_admin_shutdown'])
        self.assertNotIn('max_output_buffer', kwargs)
        self.assertEqual('the-acl', kwargs['acl'])

    def test_max_output_buffer(self):
        kwargs = geard.server_kwargs(parse('--max-output-buffer', '65536'))
        self.assertEqual(65536, kwargs['max_output_buffer'])
        self.assertRejected('--max-output-buffer', '0')

    def test_store_sync_full_opens_a_syncing_store(self):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'jobs.db')
        kwargs = geard.server_kwargs(parse('--store', path,
                                           '--store-sync', 'full'))
        store = kwargs['store']
        self.addCleanup(store.close)
        self.assertEqual(path, store.path)
        self.assertTrue(store.group_commit)
        self.assertEqual(
            2, store.db.execute('PRAGMA synchronous').fetchone()[0])
        self.assertRejected('--store-sync', 'sometimes')

    def test_new_options_validate_numbers(self):
        self.assertRejected('--job-retries', '-1')
        self.assertRejected('--backlog', '0')
        self.assertRejected('--worker-wakeup', 'many')
        self.assertRejected('--max-packet-size', '0')
        self.assertRejected('--max-connections', '0')

    def test_metrics_histogram_functions(self):
        self.assertEqual(1000, parse().histogram_functions)
        self.assertEqual(0, parse('--metrics-histogram-functions',
                                  '0').histogram_functions)
        self.assertRejected('--metrics-histogram-functions', '-1')
        self.assertRejected('--metrics-histogram-functions', 'all')

    def test_acl_path(self):
        self.assertEqual('/etc/geard/acl.ini',
                         parse('--acl', '/etc/geard/acl.ini').acl)

    def test_port_out_of_range_is_a_usage_error(self):
        with testtools.ExpectedException(SystemExit, '2'):
            parse('-p', '99999')
        self.assertIn('geard: error: argument -p/--port: port 99999 is out '
                      'of range 0-65535', self.stderr.getvalue())
        self.assertRejected('-p', '-1')
        self.assertEqual(65535, parse('-p', '65535').port)

    def test_unknown_flag(self):
        self.assertRejected('--no-such-flag')

    def test_version(self):
        out = io.StringIO()
        code = 'no exit'
        with contextlib.redirect_stdout(out):
            try:
                parse('--version')
            except SystemExit as e:
                code = e.code
        from gear import version
        self.assertIn(code, (0, None))
        self.assertEqual('Gear version: %s\n' % version.__version__,
                         out.getvalue())


class TestStatsdEnvironment(testtools.TestCase):

    def test_all_three(self):
        args = parse(environ={'STATSD_HOST': '127.0.0.1',
                              'STATSD_PORT': '8126',
                              'STATSD_PREFIX': 'geard'})
        kwargs = geard.server_kwargs(args)
        self.assertEqual(('127.0.0.1', 8126, 'geard'),
                         (kwargs['statsd_host'], kwargs['statsd_port'],
                          kwargs['statsd_prefix']))

    def test_host_only_uses_default_port(self):
        args = parse(environ={'STATSD_HOST': 'stats.invalid'})
        self.assertEqual(('stats.invalid', 8125, None),
                         (args.statsd_host, args.statsd_port,
                          args.statsd_prefix))

    def test_empty_host_means_off(self):
        self.assertIsNone(parse(environ={'STATSD_HOST': ''}).statsd_host)

    def test_bad_port(self):
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', io.StringIO()))
        with testtools.ExpectedException(SystemExit):
            parse(environ={'STATSD_HOST': 'h', 'STATSD_PORT': 'x'})

    def test_reads_os_environ_by_default(self):
        self.useFixture(fixtures.EnvironmentVariable('STATSD_HOST', 'envhost'))
        self.useFixture(fixtures.EnvironmentVariable('STATSD_PORT', '9125'))
        args = geard.parse_args([])
        self.assertEqual(('envhost', 9125),
                         (args.statsd_host, args.statsd_port))


class TestParserShape(testtools.TestCase):
    """Every documented flag is known to the parser."""

    FLAGS = ['-d', '-p', '--port', '--listen-address', '--log-config',
             '--pidfile', '--ssl-ca', '--ssl-cert', '--ssl-key', '--acl',
             '--keepalive', '--keepalive-idle', '--keepalive-interval',
             '--keepalive-count', '--version', '--job-retries', '--store',
             '--exceptions', '--job-handle-prefix', '--backlog',
             '--worker-wakeup', '--max-packet-size', '--max-connections',
             '--allow-admin-shutdown', '--debug']

    def test_flags(self):
        parser = geard.build_parser()
        known = set(parser._option_string_actions)
        self.assertEqual([], [f for f in self.FLAGS if f not in known])


class TestStartupChecks(testtools.TestCase):
    """Start-up errors are StartupError with the file named."""

    def setUp(self):
        super(TestStartupChecks, self).setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def test_missing_acl_file(self):
        path = os.path.join(self.dir, 'missing.ini')
        e = self.assertRaises(geard.StartupError, geard.load_acl, path)
        self.assertIn(path, str(e))

    def test_bad_acl_file(self):
        path = os.path.join(self.dir, 'bad.ini')
        with open(path, 'w') as f:
            f.write('[subject]\nregister = (unclosed\n')
        e = self.assertRaises(geard.StartupError, geard.load_acl, path)
        self.assertIn(path, str(e))

    def test_good_acl_file(self):
        path = os.path.join(self.dir, 'acl.ini')
        with open(path, 'w') as f:
            f.write('[worker]\nregister = build-.*\n')
        acl = geard.load_acl(path)
        self.assertTrue(acl.canRegister('worker', 'build-x'))
        self.assertIsNone(geard.load_acl(None))

    def test_unreadable_cert(self):
        args = parse('--ssl-ca', os.path.join(self.dir, 'ca.pem'),
                     '--ssl-cert', os.path.join(self.dir, 'c.pem'),
                     '--ssl-key', os.path.join(self.dir, 'c.key'))
        e = self.assertRaises(geard.StartupError, geard.check_tls_files,
                              args)
        self.assertIn(os.path.join(self.dir, 'ca.pem'), str(e))

    def test_port_in_use(self):
        import socket
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(('127.0.0.1', 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        args = parse('-p', str(port), '--listen-address', '127.0.0.1')
        e = self.assertRaises(geard.StartupError, geard.check_port, args)
        self.assertIn('127.0.0.1:%d' % port, str(e))

    def test_store_checked_before_detaching(self):
        path = os.path.join(self.dir, 'jobs.db')
        geard.check_store(parse())
        geard.check_store(parse('--store', path))
        # The check does not keep the store: the daemon opens it again.
        from gear.server.sqlite_store import SqliteStore
        held = SqliteStore(path)
        self.addCleanup(held.close)
        e = self.assertRaises(geard.StartupError, geard.check_store,
                              parse('--store', path))
        self.assertIn('job store %s is in use by another server' % path,
                      str(e))
        empty = os.path.join(self.dir, 'empty.db')
        open(empty, 'wb').close()
        e = self.assertRaises(geard.StartupError, geard.check_store,
                              parse('--store', empty))
        self.assertIn('job store %s is damaged' % empty, str(e))

    def test_log_config_missing(self):
        args = parse('-d', '--log-config', os.path.join(self.dir, 'x.conf'))
        e = self.assertRaises(geard.StartupError, geard.setup_logging, args)
        self.assertIn(os.path.join(self.dir, 'x.conf'), str(e))


class TestReopenLogFiles(testtools.TestCase):

    def test_rotated_file_is_replaced(self):
        directory = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(directory, 'geard.log')
        handler = logging.FileHandler(path)
        logger = logging.getLogger('gear.test.reopen')
        logger.propagate = False
        logger.addHandler(handler)
        self.addCleanup(handler.close)
        self.addCleanup(logger.removeHandler, handler)
        logger.warning('before')
        os.rename(path, path + '.1')
        self.assertGreaterEqual(geard.reopen_log_files(), 1)
        logger.warning('after')
        handler.flush()
        with open(path) as f:
            self.assertEqual('after\n', f.read())
        with open(path + '.1') as f:
            self.assertEqual('before\n', f.read())
