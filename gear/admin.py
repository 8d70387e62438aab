"""Requests of the Gearman text admin protocol, and parsers for their replies.

An admin request is a plain text line (``status\\n``); the reply is either
one line (``OK\\r\\n``, ``OK 1.1.20\\n``, ``ERR CODE message\\r\\n``) or a
list of rows closed by a line holding a single dot.  The classes here know
how to build the line, how to tell when the reply is complete in a byte
stream that may already hold the next reply (pipelining), and how to turn
the reply into Python values.  They never touch a socket: a connection
sends :meth:`AdminRequest.getCommand`, feeds what it reads to
:meth:`AdminRequest.isComplete`, stores the reply in ``response`` and calls
:meth:`AdminRequest.setComplete`.
"""

import threading

from gear.errors import AdminError, ConfigurationError, GearmanError
from gear.errors import InvalidDataError

__all__ = [
    'AdminRequest', 'StatusAdminRequest', 'ShowJobsAdminRequest',
    'ShowUniqueJobsAdminRequest', 'CancelJobAdminRequest',
    'VersionAdminRequest', 'WorkersAdminRequest',
    'PriorityStatusAdminRequest', 'MaxQueueAdminRequest',
    'GetPidAdminRequest', 'VerboseAdminRequest',
    'CreateFunctionAdminRequest', 'DropFunctionAdminRequest',
    'ACLRow', 'ACLListAdminRequest', 'ACLGrantAdminRequest',
    'ACLRevokeAdminRequest', 'ACLSelfRevokeAdminRequest',
    'ShutdownAdminRequest',
]

# Bytes that would end the command line early or split one argument in two.
_LINE_BREAKERS = (b'\n', b'\r', b'\x00')


def _to_bytes(value):
    if isinstance(value, str):
        return value.encode('utf-8')
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ConfigurationError(
        'Admin request arguments must be str or bytes, not %s'
        % type(value).__name__)


def _decode(data):
    # Names on the wire are bytes; surrogateescape keeps undecodable ones
    # round-trippable instead of failing the whole reply.
    return data.decode('utf-8', 'surrogateescape')


def _is_error_line(line):
    """True if a first reply line is an ``ERR`` answer.

    Rows of the tab-separated listings never count: gearmand's error lines
    use ``+`` for spaces and never hold a tab, while a function named
    ``ERR x`` would show up in ``status`` as ``ERR x\\t0\\t0\\t1``.
    """
    line = line.rstrip(b'\r')
    return (line == b'ERR' or line.startswith(b'ERR ')) and b'\t' not in line


def _raise_admin_error(line):
    """Raise :class:`AdminError` for an ``ERR`` line (bytes, no newline)."""
    text = _decode(line.rstrip(b'\r'))[3:].strip()
    code, _, message = text.partition(' ')
    message = message.replace('+', ' ')
    if not code or not all(c.isupper() or c.isdigit() or c == '_'
                           for c in code):
        # gearmand's ``drop function`` answers free text with no code
        # ("ERR function not found"); keep all of it in the message.
        code, message = 'ERR', text.replace('+', ' ')
    raise AdminError(code, message)


def _int(value, what):
    try:
        return int(value)
    except ValueError:
        raise InvalidDataError('Bad %s in admin reply: %r' % (what, value))


class AdminRequest(object):
    """One admin command and, once it has arrived, its reply.

    Subclasses set ``command`` and ``multiline`` and implement
    :meth:`parse`; the base class cannot be instantiated.
    """

    command = None
    multiline = True
    # Whether the last argument may contain spaces (a free-text tail).
    _free_text_tail = False
    _line_end = b'\n'

    def __init__(self, *arguments):
        if type(self) is AdminRequest:
            raise NotImplementedError('AdminRequest must be subclassed')
        self.arguments = tuple(_to_bytes(a) for a in arguments)
        self._checkArguments()
        self.response = None
        self.wait_event = threading.Event()
        # Incremental scan state for isComplete: offset of the first byte
        # not yet known to belong to a finished line, and whether a whole
        # line has already been seen there.
        self._scan_pos = 0
        self._seen_line = False

    def _checkArguments(self):
        last = len(self.arguments) - 1
        for i, arg in enumerate(self.arguments):
            if not arg:
                raise ConfigurationError(
                    'Empty argument for admin command %r' % self.command)
            for bad in _LINE_BREAKERS:
                if bad in arg:
                    raise ConfigurationError(
                        'Admin command argument %r holds %r' % (arg, bad))
            if b' ' in arg and not (self._free_text_tail and i == last):
                raise ConfigurationError(
                    'Admin command argument %r holds a space' % (arg,))

    def __repr__(self):
        state = 'complete' if self.wait_event.is_set() else 'pending'
        return '<%s %r %s>' % (type(self).__name__,
                               self.getCommand().rstrip(b'\r\n'), state)

    def getCommand(self):
        """Return the command line to send, terminator included."""
        cmd = self.command
        if self.arguments:
            cmd += b' ' + b' '.join(self.arguments)
        return cmd + self._line_end

    def isComplete(self, data):
        """Check whether ``data`` starts with this request's whole reply.

        Returns ``(False, None)`` while the reply is incomplete and
        ``(True, rest)`` once it is, where ``rest`` holds any bytes that
        follow the reply (the start of the next one).  May be called again
        with a longer prefix of the same stream; earlier lines are not
        scanned twice.
        """
        if self.multiline:
            end = self._findListEnd(data)
        else:
            end = data.find(b'\n')
            end = -1 if end < 0 else end + 1
        if end < 0:
            return (False, None)
        self.response = data[:end]
        return (True, data[end:])

    def _findListEnd(self, data):
        # A list ends at a line that is just "." (or ".\r"); it also ends
        # right after the first line when that line is an ERR answer.
        pos = self._scan_pos
        if pos > len(data):
            pos = 0
            self._seen_line = False
        while True:
            nl = data.find(b'\n', pos)
            if nl < 0:
                self._scan_pos = pos
                return -1
            line = data[pos:nl]
            if line == b'.' or line == b'.\r':
                return self._finishScan(nl + 1)
            if not self._seen_line and _is_error_line(line):
                return self._finishScan(nl + 1)
            self._seen_line = True
            pos = nl + 1

    def _finishScan(self, end):
        self._scan_pos = 0
        self._seen_line = False
        return end

    def setComplete(self):
        """Mark the reply as arrived and wake up waiters."""
        self.wait_event.set()

    def waitForResponse(self, timeout=None):
        """Wait for the reply; return True if it arrived in time."""
        self.wait_event.wait(timeout)
        return self.wait_event.is_set()

    # Reply parsing

    def _replyLines(self):
        """Return the reply as a list of lines without terminators.

        An ERR answer raises :class:`AdminError`; the closing dot of a list
        is dropped.
        """
        if self.response is None:
            raise GearmanError('%r has no response yet' % (self,))
        data = bytes(self.response)
        lines = data.split(b'\n')
        if lines and lines[-1] == b'':
            lines.pop()
        lines = [line[:-1] if line.endswith(b'\r') else line
                 for line in lines]
        if lines and _is_error_line(lines[0]):
            _raise_admin_error(lines[0])
        if self.multiline:
            if b'.' in lines:
                lines = lines[:lines.index(b'.')]
        elif not lines:
            raise InvalidDataError('Empty admin reply to %r' % (self,))
        return lines

    def _okValue(self):
        """Return the text after ``OK`` on a one-line reply ('' if none)."""
        line = self._replyLines()[0]
        if line == b'OK':
            return ''
        if line.startswith(b'OK '):
            return _decode(line[3:])
        raise InvalidDataError('Unexpected admin reply: %r' % (line,))

    def parse(self):
        """Return the reply as Python values; raise AdminError on ERR."""
        raise NotImplementedError()


class _OkAdminRequest(AdminRequest):
    """A one-line command whose success is a bare ``OK``."""

    multiline = False

    def parse(self):
        """Return True on ``OK``; raise AdminError on ``ERR``."""
        self._okValue()
        return True


class _TabbedListAdminRequest(AdminRequest):
    """A list whose rows are a name followed by tab-separated integers."""

    _columns = 0

    def parse(self):
        rows = []
        for line in self._replyLines():
            parts = line.rsplit(b'\t', self._columns)
            if len(parts) != self._columns + 1:
                raise InvalidDataError('Bad admin reply row: %r' % (line,))
            rows.append((_decode(parts[0]),) + tuple(
                _int(p, 'number') for p in parts[1:]))
        return rows


class StatusAdminRequest(_TabbedListAdminRequest):
    """``status``: per function, parse() gives (name, total, running, workers).

    ``total`` counts queued plus running jobs over all priorities.
    """

    command = b'status'
    _columns = 3

    def __init__(self):
        super().__init__()


class PriorityStatusAdminRequest(_TabbedListAdminRequest):
    """``prioritystatus``: parse() gives (name, high, normal, low, workers).

    The three middle columns count queued, not running, jobs.
    """

    command = b'prioritystatus'
    _columns = 4

    def __init__(self):
        super().__init__()


class ShowJobsAdminRequest(_TabbedListAdminRequest):
    """``show jobs``: parse() gives (handle, retries, ignore_job, job_queued).

    The handle is decoded to str, the three flags are ints.
    """

    command = b'show jobs'
    _columns = 3

    def __init__(self):
        super().__init__()


class ShowUniqueJobsAdminRequest(AdminRequest):
    """``show unique jobs``: parse() gives a list of unique ids (str).

    A job without a unique id shows up as an empty string.
    """

    command = b'show unique jobs'

    def __init__(self):
        super().__init__()

    def parse(self):
        return [_decode(line) for line in self._replyLines()]


class WorkersAdminRequest(AdminRequest):
    """``workers``: parse() gives (fd, ip, client_id, functions) rows.

    ``fd`` is an int and ``functions`` a tuple of str, empty when the
    connection registered none.
    """

    command = b'workers'

    def __init__(self):
        super().__init__()

    def parse(self):
        rows = []
        for line in self._replyLines():
            text = _decode(line)
            fd, _, rest = text.partition(' ')
            ip, _, rest = rest.partition(' ')
            # The client id ends at the first " :" that is followed by a
            # space or the end of the line.
            sep = rest.find(' :')
            while sep >= 0 and sep + 2 < len(rest) and rest[sep + 2] != ' ':
                sep = rest.find(' :', sep + 1)
            if not ip or sep < 0:
                raise InvalidDataError('Bad workers row: %r' % (line,))
            client_id = rest[:sep]
            functions = tuple(f for f in rest[sep + 2:].split(' ') if f)
            rows.append((_int(fd, 'file descriptor'), ip, client_id,
                         functions))
        return rows


class ACLRow(tuple):
    """One ``acl list`` row: a (subject, register, invoke, grant) tuple
    that also carries ``admin`` (a bool), so code unpacking four values
    keeps working."""

    admin = False

    def __new__(cls, subject, register, invoke, grant, admin=False):
        row = super().__new__(cls, (subject, register, invoke, grant))
        row.admin = admin
        return row


class ACLListAdminRequest(AdminRequest):
    """``acl list``: parse() gives (subject, register, invoke, grant) rows.

    ``register`` and ``invoke`` are patterns or None, ``grant`` is a bool;
    each row is an :class:`ACLRow` whose ``admin`` attribute tells whether
    the subject has the admin right (False from servers that do not list
    it).
    """

    command = b'acl list'
    _fields = (b'register=', b'invoke=', b'grant=', b'admin=')

    def __init__(self):
        super().__init__()

    def parse(self):
        rows = []
        for line in self._replyLines():
            parts = line.rsplit(b'\t', 4)
            if len(parts) != 5 or not parts[4].startswith(b'admin='):
                # Servers without the admin right list four columns.
                parts = line.rsplit(b'\t', 3)
            if len(parts) < 4 or not all(
                    p.startswith(f) for p, f in zip(parts[1:], self._fields)):
                raise InvalidDataError('Bad acl list row: %r' % (line,))
            values = [_decode(p[len(f):])
                      for p, f in zip(parts[1:], self._fields)]
            register, invoke = [None if v == 'None' else v
                                for v in values[:2]]
            flags = [v == 'True' for v in values[2:]]
            rows.append(ACLRow(_decode(parts[0]), register, invoke,
                               *flags))
        return rows


class CancelJobAdminRequest(_OkAdminRequest):
    """``cancel job <handle>``: parse() gives True, or raises AdminError
    (``UNKNOWN_JOB``, ``PERMISSION_DENIED``)."""

    command = b'cancel job'

    def __init__(self, handle):
        super().__init__(handle)


class VersionAdminRequest(AdminRequest):
    """``version``: parse() gives the server's version string."""

    command = b'version'
    multiline = False

    def __init__(self):
        super().__init__()

    def parse(self):
        return self._okValue()


class GetPidAdminRequest(AdminRequest):
    """``getpid``: parse() gives the server's process id as an int."""

    command = b'getpid'
    multiline = False

    def __init__(self):
        super().__init__()

    def parse(self):
        return _int(self._okValue(), 'pid')


class VerboseAdminRequest(AdminRequest):
    """``verbose``: parse() gives the server's log level name (``INFO``)."""

    command = b'verbose'
    multiline = False

    def __init__(self):
        super().__init__()

    def parse(self):
        return self._okValue()


class MaxQueueAdminRequest(_OkAdminRequest):
    """``maxqueue <name> [size | high normal low]``.

    No size resets the limit; one size applies to every priority; three
    set high, normal and low.  0 or less means unlimited.
    """

    command = b'maxqueue'

    def __init__(self, name, *sizes):
        if len(sizes) not in (0, 1, 3):
            raise ConfigurationError(
                'maxqueue takes 0, 1 or 3 sizes, not %d' % len(sizes))
        numbers = []
        for size in sizes:
            if isinstance(size, bool):
                raise ConfigurationError('Bad maxqueue size: %r' % (size,))
            try:
                numbers.append(int(size))
            except (TypeError, ValueError):
                raise ConfigurationError('Bad maxqueue size: %r' % (size,))
        super().__init__(name, *[str(n) for n in numbers])


class CreateFunctionAdminRequest(_OkAdminRequest):
    """``create function <name>``: make a function known before any worker.

    Sent with ``\\r\\n``: gearmand drops the last character of the name
    when the line ends in a bare ``\\n``.
    """

    command = b'create function'
    _line_end = b'\r\n'

    def __init__(self, name):
        super().__init__(name)


class DropFunctionAdminRequest(_OkAdminRequest):
    """``drop function <name>``; refused while workers or jobs use it."""

    command = b'drop function'

    def __init__(self, name):
        super().__init__(name)


class ShutdownAdminRequest(_OkAdminRequest):
    """``shutdown [graceful]``.

    Most servers refuse it (``ERR UNKNOWN_COMMAND``), which parse() raises.
    """

    command = b'shutdown'

    def __init__(self, graceful=False):
        if graceful:
            super().__init__(b'graceful')
        else:
            super().__init__()


_GRANT_VERBS = ('register', 'invoke', 'grant', 'admin')
_REVOKE_VERBS = _GRANT_VERBS + ('all',)


def _check_verb(verb, allowed):
    text = verb.decode('utf-8', 'replace') if isinstance(
        verb, (bytes, bytearray)) else verb
    if text not in allowed:
        raise ConfigurationError('Unknown ACL verb %r; expected one of %s'
                                 % (verb, ', '.join(allowed)))
    return text


class ACLGrantAdminRequest(_OkAdminRequest):
    """``acl grant <register|invoke|grant|admin> <subject> [<pattern>]``.

    ``register`` and ``invoke`` need a pattern (it may hold spaces);
    ``grant`` and ``admin`` take none.
    """

    command = b'acl grant'
    _free_text_tail = True

    def __init__(self, verb, subject, pattern=None):
        verb = _check_verb(verb, _GRANT_VERBS)
        if verb in ('grant', 'admin'):
            if pattern is not None:
                raise ConfigurationError('acl grant %s takes no pattern'
                                         % verb)
            arguments = (verb, subject)
        else:
            if not pattern:
                raise ConfigurationError('acl grant %s needs a pattern'
                                         % verb)
            arguments = (verb, subject, pattern)
        self._free_text_tail = len(arguments) == 3
        super().__init__(*arguments)


class ACLRevokeAdminRequest(_OkAdminRequest):
    """``acl revoke <register|invoke|grant|admin|all> <subject>``."""

    command = b'acl revoke'

    def __init__(self, verb, subject):
        super().__init__(_check_verb(verb, _REVOKE_VERBS), subject)


class ACLSelfRevokeAdminRequest(_OkAdminRequest):
    """``acl self-revoke <register|invoke|grant|admin|all>`` for the
    caller's CN."""

    command = b'acl self-revoke'

    def __init__(self, verb):
        super().__init__(_check_verb(verb, _REVOKE_VERBS))
