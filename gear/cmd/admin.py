"""gear-admin: query and steer a Gearman job server from the shell.

Each subcommand sends one text admin command (or, for ``ping``, a binary
ECHO) over a :class:`gear.Connection` and prints the parsed reply as an
aligned table, or as JSON with ``--json``.  The same commands work
against geard and gearmand; where a server lacks a command (gearmand has
no ACLs) its ``ERR`` answer is printed, decoded, and the exit status is 1.

``--watch`` outlives the server: once the first refresh has worked, a
server that goes away is reported as down and reconnected to at every
refresh, and its return is reported too.
"""

import argparse
import json
import logging
import sys
import threading
import time

from gear import admin as gear_admin
from gear import constants
from gear.cmd import _common as common
from gear.errors import (
    AdminError, ConfigurationError, ConnectionError, InvalidDataError,
    TimeoutError)
from gear.protocol import Packet

PROG = 'gear-admin'
DEFAULT_TIMEOUT = 10.0
CLEAR_SCREEN = '\x1b[H\x1b[2J'

log = logging.getLogger('gear-admin')


# Shaping replies for people (tables) and programs (JSON)

def _yes_no(value):
    return 'yes' if value else 'no'


def _dash(value):
    return '-' if value is None else value


class RowsView(object):
    """A list reply: rows of named fields.

    ``convert`` turns one parsed row into the JSON values; ``cells`` maps
    a JSON value to its table text, per field.
    """

    def __init__(self, fields, right_aligned=(), convert=None, cells=None):
        self.fields = tuple(fields)
        self.right_aligned = frozenset(right_aligned)
        self.convert = convert
        self.cells = cells or {}

    def shape(self, parsed):
        rows = []
        for row in parsed:
            if not isinstance(row, tuple):
                row = (row,)
            if self.convert is not None:
                row = self.convert(row)
            rows.append(dict(zip(self.fields, row)))
        return rows

    def headers(self):
        return [f.replace('_', '-').upper() for f in self.fields]

    def render(self, shaped):
        table = []
        for record in shaped:
            line = []
            for field in self.fields:
                value = record[field]
                cell = self.cells.get(field)
                line.append(cell(value) if cell else value)
            table.append(line)
        right = [i for i, f in enumerate(self.fields)
                 if f in self.right_aligned]
        return common.format_table(self.headers(), table, right)


class ValueView(object):
    """A one-value reply (version, pid, log level) under one name."""

    def __init__(self, field):
        self.field = field

    def shape(self, parsed):
        return {self.field: parsed}

    def render(self, shaped):
        return '%s\n' % (shaped[self.field],)


class OkView(object):
    """A reply that is only ``OK``."""

    def shape(self, parsed):
        return {'ok': bool(parsed)}

    def render(self, shaped):
        return 'OK\n' if shaped['ok'] else 'FAILED\n'


class PingView(object):
    """The round-trip time of an ECHO."""

    def shape(self, parsed):
        address, host, port, seconds = parsed
        return {'host': host, 'port': port,
                'rtt_ms': round(seconds * 1000.0, 3)}

    def render(self, shaped):
        return 'echo from %s: time=%.3f ms\n' % (
            common.format_address(shaped['host'], shaped['port']),
            shaped['rtt_ms'])


def _job_row(row):
    handle, retries, ignore_job, job_queued = row
    return (handle, retries, bool(ignore_job), bool(job_queued))


def _acl_row(row):
    subject, register, invoke, grant = row
    return (subject, register, invoke, grant, getattr(row, 'admin', False))


def _worker_row(row):
    fd, ip, client_id, functions = row
    return (fd, ip, client_id, list(functions))


VIEWS = {
    'status': RowsView(('function', 'total', 'running', 'workers'),
                       ('total', 'running', 'workers')),
    'priority-status': RowsView(
        ('function', 'high', 'normal', 'low', 'workers'),
        ('high', 'normal', 'low', 'workers')),
    'workers': RowsView(('fd', 'ip', 'client_id', 'functions'), ('fd',),
                        convert=_worker_row,
                        cells={'functions': ' '.join}),
    'jobs': RowsView(('handle', 'retries', 'ignore_job', 'job_queued'),
                     ('retries',), convert=_job_row,
                     cells={'ignore_job': _yes_no, 'job_queued': _yes_no}),
    'unique-jobs': RowsView(('unique',)),
    'acl list': RowsView(('subject', 'register', 'invoke', 'grant',
                          'admin'), convert=_acl_row,
                         cells={'register': _dash, 'invoke': _dash,
                                'grant': _yes_no, 'admin': _yes_no}),
    'version': ValueView('version'),
    'pid': ValueView('pid'),
    'verbose': ValueView('level'),
    'ping': PingView(),
}
_OK = OkView()


def view_for(name):
    """The view that presents the reply of subcommand ``name``."""
    return VIEWS.get(name, _OK)


def to_json(shaped):
    """One line of JSON (so that ``--watch`` output is JSON Lines)."""
    return json.dumps(shaped, ensure_ascii=True, sort_keys=False)


def render(name, parsed, as_json=False):
    """Text to print for the parsed reply of subcommand ``name``."""
    view = view_for(name)
    shaped = view.shape(parsed)
    if as_json:
        return to_json(shaped) + '\n'
    return view.render(shaped)


# Server errors

_ERROR_HINTS = {
    'ACL_DISABLED': 'the server runs without an ACL',
    'PERMISSION_DENIED': 'the client certificate lacks the permission',
    'UNKNOWN_JOB': 'no job has this handle',
    'UNKNOWN_ACL_VERB': 'use register, invoke, grant, admin or all',
    'QUEUE_ERROR': 'the job queue is full',
}


def describe_admin_error(command_line, error):
    """One line for an ``ERR`` answer (``AdminError``)."""
    code, message = error.code, error.message or ''
    hint = _ERROR_HINTS.get(code)
    if code == 'UNKNOWN_COMMAND':
        prefix = 'Unknown server command'
        if message.startswith(prefix):
            # gearmand glues the unknown word to its message.
            word = message[len(prefix):].strip()
            message = 'unknown server command' + (
                ' "%s"' % word if word else '')
        if command_line.startswith('acl'):
            hint = 'this server has no ACL commands'
        else:
            hint = 'this server does not support the command'
    if code == 'ERR':
        # A free-text answer with no code (gearmand's drop function).
        text = '%s: the server answered ERR' % command_line
    else:
        text = '%s: the server answered ERR %s' % (command_line, code)
    if message:
        text += ': %s' % message
    if hint:
        text += ' (%s)' % hint
    return text


# The session: one connection and a thread that reads it

class AdminSession(object):
    """Send admin requests and echoes over one connection, with timeouts.

    :class:`gear.Connection` needs someone to read replies while a
    caller waits in ``sendAdminRequest``; a small reader thread does it.
    """

    def __init__(self, conn, target, timeout):
        self.conn = conn
        self.target = target
        self.timeout = timeout
        self.closed = threading.Event()
        self.error = None
        # Set by the first reply: the server speaks Gearman on this port.
        self.answered = False
        self._current = None
        self._reader = threading.Thread(target=self._read,
                                        name='gear-admin reader')
        self._reader.daemon = True
        self._reader.start()

    def _read(self):
        conn = self.conn
        try:
            while True:
                message = conn.readPacket()
                if message is None:
                    break
                if isinstance(message, Packet):
                    self._handlePacket(message)
                else:
                    message.setComplete()
        except Exception as e:
            if not self.closed.is_set():
                self.error = e
        finally:
            self.closed.set()
            try:
                conn.disconnect()
            except Exception:
                pass
            current = self._current
            if current is not None:
                current.setComplete()

    def _handlePacket(self, packet):
        conn = self.conn
        if packet.ptype == constants.ECHO_RES:
            conn._takeReplyTask(constants.ECHO_RES)
            conn.handleEchoRes(packet.data)
        elif packet.ptype == constants.ERROR:
            log.warning('server sent ERROR %r', packet.data)
        else:
            log.debug('ignoring %s', packet)

    def _lost(self, what):
        return common.CliError(common.describe_lost_connection(
            self.target.address, self.error, self.target.files, what,
            answered=self.answered), common.EXIT_CONNECTION)

    def request(self, request):
        """Send ``request``; return its parsed reply or raise CliError."""
        command_line = request.getCommand().rstrip(b'\r\n').decode(
            'utf-8', 'replace')
        what = "'%s'" % command_line
        self._current = request
        try:
            if self.closed.is_set():
                raise self._lost(what)
            try:
                self.conn.sendAdminRequest(request, timeout=self.timeout)
            except TimeoutError:
                raise common.CliError(
                    'no reply from %s to %s within %g s'
                    % (self.target.address, what, self.timeout),
                    common.EXIT_CONNECTION)
            except (ConnectionError, OSError):
                raise self._lost(what)
        finally:
            self._current = None
        if request.response is None:
            raise self._lost(what)
        self.answered = True
        try:
            return request.parse()
        except AdminError as e:
            raise common.CliError(describe_admin_error(command_line, e))
        except InvalidDataError as e:
            raise common.CliError('unexpected reply to %s: %s' % (what, e))

    def ping(self):
        """Round-trip an ECHO; return its duration in seconds."""
        if self.closed.is_set():
            raise self._lost('the echo')
        start = time.perf_counter()
        try:
            self.conn.echo(timeout=self.timeout)
        except TimeoutError:
            raise common.CliError('no echo from %s within %g s'
                                  % (self.target.address, self.timeout),
                                  common.EXIT_CONNECTION)
        except (ConnectionError, OSError):
            raise self._lost('the echo')
        self.answered = True
        return time.perf_counter() - start

    def close(self):
        self.closed.set()
        try:
            self.conn.disconnect()
        except Exception:
            pass
        self._reader.join(2.0)


# Command line

def _build_request(args):
    """The AdminRequest for the parsed command line (None for ping)."""
    name = args.command
    if name == 'status':
        return gear_admin.StatusAdminRequest()
    if name == 'priority-status':
        return gear_admin.PriorityStatusAdminRequest()
    if name == 'workers':
        return gear_admin.WorkersAdminRequest()
    if name == 'jobs':
        return gear_admin.ShowJobsAdminRequest()
    if name == 'unique-jobs':
        return gear_admin.ShowUniqueJobsAdminRequest()
    if name == 'cancel':
        return gear_admin.CancelJobAdminRequest(args.handle)
    if name == 'maxqueue':
        return gear_admin.MaxQueueAdminRequest(args.function, *args.sizes)
    if name == 'create-function':
        return gear_admin.CreateFunctionAdminRequest(args.name)
    if name == 'drop-function':
        return gear_admin.DropFunctionAdminRequest(args.name)
    if name == 'version':
        return gear_admin.VersionAdminRequest()
    if name == 'pid':
        return gear_admin.GetPidAdminRequest()
    if name == 'verbose':
        return gear_admin.VerboseAdminRequest()
    if name == 'acl':
        sub = args.acl_command
        if sub == 'list':
            return gear_admin.ACLListAdminRequest()
        if sub == 'grant':
            return gear_admin.ACLGrantAdminRequest(args.verb, args.subject,
                                                   args.pattern)
        if sub == 'revoke':
            return gear_admin.ACLRevokeAdminRequest(args.verb, args.subject)
        if sub == 'self-revoke':
            return gear_admin.ACLSelfRevokeAdminRequest(args.verb)
    if name == 'ping':
        return None
    raise ConfigurationError('unknown command %r' % name)


def _view_name(args):
    if args.command == 'acl':
        return 'acl list' if args.acl_command == 'list' else 'acl ok'
    return args.command


def _add_output_arguments(parser, suppress):
    def default(value):
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group('output')
    group.add_argument('--timeout', type=common.positive_number,
                       default=default(DEFAULT_TIMEOUT), metavar='SECONDS',
                       help='limit for connecting and for each reply '
                            '(default %g)' % DEFAULT_TIMEOUT)
    group.add_argument('--json', action='store_true',
                       default=default(False),
                       help='print the reply as JSON (one document per '
                            'line; rows are objects with named fields)')
    group.add_argument('--watch', type=common.positive_number,
                       default=default(None), metavar='N',
                       help='repeat every N seconds until interrupted, '
                            'clearing the screen; once connected, a server '
                            'that goes away is reported and reconnected '
                            'to')
    group.add_argument('--count', type=common.positive_int,
                       default=default(None), metavar='K',
                       help='with --watch: stop after K refreshes')
    group.add_argument('-v', '--verbose', action='count',
                       default=default(0),
                       help='log more (repeat for debug output)')


_ACL_GRANT_VERBS = ('register', 'invoke', 'grant', 'admin')
_ACL_REVOKE_VERBS = _ACL_GRANT_VERBS + ('all',)


def build_parser():
    """The gear-admin argument parser.

    Global options may be given before or after the subcommand.
    """
    shared = argparse.ArgumentParser(add_help=False)
    common.add_server_arguments(shared, suppress=True)
    _add_output_arguments(shared, suppress=True)

    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Query and control a Gearman job server (geard or '
                    'gearmand) with its text admin protocol.',
        epilog=common.EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_server_arguments(parser)
    _add_output_arguments(parser, suppress=False)
    common.add_version_argument(parser)
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    commands.required = True

    def add(name, help_text):
        return commands.add_parser(name, help=help_text, parents=[shared],
                                   description=help_text)

    add('status', 'jobs and workers per function')
    add('priority-status', 'queued jobs per function and priority')
    add('workers', 'every connection and the functions it registered')
    add('jobs', 'every job the server holds')
    add('unique-jobs', 'the unique id of every job')
    cancel = add('cancel', 'cancel a queued background job')
    cancel.add_argument('handle', metavar='HANDLE')
    maxqueue = add('maxqueue', 'limit the queue of a function (no size: '
                               'remove the limit)')
    maxqueue.add_argument('function', metavar='FUNCTION')
    maxqueue.add_argument('sizes', metavar='SIZE', type=int, nargs='*',
                          help='one size for every priority, or three: '
                               'HIGH NORMAL LOW')
    create = add('create-function', 'make a function known before any '
                                    'worker registers it')
    create.add_argument('name', metavar='NAME')
    drop = add('drop-function', 'forget a function nobody uses')
    drop.add_argument('name', metavar='NAME')
    add('version', "the server's version")
    add('pid', "the server's process id")
    add('verbose', "the server's log level")
    add('ping', 'measure the round trip of an ECHO')
    acl = add('acl', 'access control (geard with TLS and an ACL)')
    acl_commands = acl.add_subparsers(dest='acl_command', metavar='ACTION')
    acl_commands.required = True
    acl_commands.add_parser('list', help='every ACL entry', parents=[shared])
    grant = acl_commands.add_parser(
        'grant', parents=[shared],
        help='grant register/invoke (with a pattern), grant or '
             'admin')
    grant.add_argument('verb', choices=_ACL_GRANT_VERBS)
    grant.add_argument('subject', metavar='SUBJECT')
    grant.add_argument('pattern', metavar='PATTERN', nargs='?')
    revoke = acl_commands.add_parser('revoke', parents=[shared],
                                     help="remove a subject's permission")
    revoke.add_argument('verb', choices=_ACL_REVOKE_VERBS)
    revoke.add_argument('subject', metavar='SUBJECT')
    self_revoke = acl_commands.add_parser(
        'self-revoke', parents=[shared],
        help="remove a permission of this client's certificate")
    self_revoke.add_argument('verb', choices=_ACL_REVOKE_VERBS)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == 'maxqueue' and len(args.sizes) not in (0, 1, 3):
        parser.error('maxqueue takes no size, one SIZE, or HIGH NORMAL LOW')
    if args.count is not None and args.watch is None:
        parser.error('--count needs --watch')
    try:
        args.request_factory = _request_factory(args)
    except ConfigurationError as e:
        parser.error(str(e))
    return args


def _request_factory(args):
    # Build one request now, so bad arguments fail before connecting.
    _build_request(args)
    return lambda: _build_request(args)


def _run_once(session, args):
    request = args.request_factory()
    if request is None:
        seconds = session.ping()
        return (session.target.address, session.target.host,
                session.target.port, seconds)
    return session.request(request)


def _title(args):
    name = args.command
    if name == 'acl':
        name += ' ' + args.acl_command
    return name


class Watch(object):
    """``--watch``: refresh every N seconds, through server outages.

    The first refresh must work (a wrong port or TLS setting is an
    error, as without ``--watch``).  After that, losing the server is
    reported once on stderr, shown on the screen, and followed by a
    reconnect at every refresh until the server answers again.
    """

    def __init__(self, session, args, view_name):
        self.session = session
        self.args = args
        self.view_name = view_name
        self.target = session.target
        self.tty = sys.stdout.isatty()
        self.refreshes = 0
        self.down_since = None

    def run(self):
        next_time = time.monotonic()
        try:
            while True:
                self.refresh()
                self.refreshes += 1
                if self.args.count is not None and \
                        self.refreshes >= self.args.count:
                    return common.EXIT_OK
                next_time += self.args.watch
                delay = next_time - time.monotonic()
                if delay < 0:
                    next_time = time.monotonic()
                    delay = 0
                time.sleep(delay)
        except KeyboardInterrupt:
            return common.EXIT_OK
        finally:
            if self.session is not None:
                self.session.close()

    def refresh(self):
        try:
            if self.session is None:
                self.session = AdminSession(
                    self.target.connect('gear-admin'), self.target,
                    self.args.timeout)
            parsed = _run_once(self.session, self.args)
        except common.CliError as e:
            if e.status != common.EXIT_CONNECTION or not self.refreshes:
                raise
            self.serverDown(e.message)
            return
        if self.down_since is not None:
            self.down_since = None
            common.say(PROG, 'the server %s answers again'
                       % self.target.address)
        self.show(render(self.view_name, parsed, self.args.json))

    def serverDown(self, reason):
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.down_since is None:
            self.down_since = time.strftime('%H:%M:%S')
            common.say(PROG, '%s; the server is down, retrying every %gs'
                       % (reason, self.args.watch))
        if not self.args.json:
            self.show('server down since %s; retrying every %gs\n'
                      % (self.down_since, self.args.watch))

    def show(self, body):
        if self.args.json:
            common.write_text(body)
            return
        header = 'Every %gs: %s on %s    %s\n' % (
            self.args.watch, _title(self.args), self.target.address,
            time.strftime('%Y-%m-%d %H:%M:%S'))
        if self.tty:
            common.write_text(CLEAR_SCREEN + header + '\n' + body)
        else:
            common.write_text(('\n' if self.refreshes else '') + header +
                              body)


def _main(argv):
    args = parse_args(argv)
    common.setup_logging(PROG, args.verbose)
    target = common.ServerTarget(args, connect_timeout=args.timeout)
    conn = target.connect('gear-admin')
    session = AdminSession(conn, target, args.timeout)
    try:
        view_name = _view_name(args)
        if args.watch is not None:
            watch = Watch(session, args, view_name)
            session = None
            return watch.run()
        common.write_text(render(view_name, _run_once(session, args),
                                 args.json))
        return common.EXIT_OK
    finally:
        if session is not None:
            session.close()


def main(argv=None):
    """Console entry point of ``gear-admin``."""
    return common.run_main(PROG, lambda: _main(argv))


if __name__ == '__main__':
    sys.exit(main())
