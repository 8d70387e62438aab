"""The server's text admin commands (gearmand's set plus gear's ACLs).

Every line gets an answer.  Commands are matched word by word and
case-insensitively; a line ends at ``\\n`` with an optional ``\\r``.
Reply shapes follow gearmand: ``OK\\r\\n``, ``ERR CODE message\\r\\n``
(``+`` for spaces), ``OK value\\n`` and ``\\n``-terminated lists ending
with ``.\\n``.

:class:`AdminHandlers` is a mixin of :class:`gear.server.Server`, so that
the gear-named hooks (``handleStatus``, ``handleCancelJob`` ...) stay
overridable on the server class.
"""

import logging
import os

from gear import constants

OK = b'OK\r\n'
END = b'.\n'
ERR_ACL_DISABLED = b'ERR ACL_DISABLED\r\n'
ERR_PERMISSION_DENIED = b'ERR PERMISSION_DENIED\r\n'
ERR_UNKNOWN_ACL_VERB = b'ERR UNKNOWN_ACL_VERB\r\n'

#: Which right each admin command needs once the server has an ACL.
#: None: open to every connection (counts and identities, no job data);
#: ``'admin'``: the subject's ``admin`` right; ``'cancel'``: ``admin``, or
#: ``invoke`` on the function of the job being cancelled.  The ``acl``
#: subcommands check ``grant`` themselves (``acl list`` is open).
ADMIN_RIGHTS = {
    b'workers': None,
    b'status': None,
    b'prioritystatus': None,
    b'getpid': None,
    b'verbose': None,
    b'version': None,
    b'acl': None,
    b'maxqueue': 'admin',
    b'create': 'admin',
    b'drop': 'admin',
    b'show': 'admin',
    b'shutdown': 'admin',
    b'cancel': 'cancel',
}

_PRECEDENCE_COLUMNS = (constants.PRECEDENCE_HIGH,
                       constants.PRECEDENCE_NORMAL,
                       constants.PRECEDENCE_LOW)


def unknown_command(word):
    """gearmand's reply to a command it does not know (no separator)."""
    return b'ERR UNKNOWN_COMMAND Unknown+server+command' + word + b'\r\n'


def invalid_arguments(word):
    return (b'ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+'
            b'sent+to+this+command+' + word + b'\r\n')


def error(code, message=None):
    """``ERR CODE message`` with spaces in the message as ``+``."""
    line = b'ERR ' + code
    if message:
        if isinstance(message, str):
            message = message.encode('utf8', 'replace')
        line += b' ' + message.replace(b'\r', b'').replace(
            b'\n', b'+').replace(b' ', b'+')
    return line + b'\r\n'


def _text(value):
    if isinstance(value, bytes):
        return value.decode('utf8', 'surrogateescape')
    return value


def _bytes(value):
    if isinstance(value, str):
        return value.encode('utf8', 'surrogateescape')
    return value


def _version():
    from gear.version import __version__
    return __version__


class AdminHandlers(object):
    """Admin command handlers; mixed into the Server.

    Each handler takes the :class:`ServerAdminRequest`, whose ``words``
    attribute holds the split command line.
    """

    _admin_commands = {
        b'workers': 'handleWorkers',
        b'status': 'handleStatus',
        b'prioritystatus': 'handlePriorityStatus',
        b'maxqueue': 'handleMaxQueue',
        b'cancel': 'handleCancelJob',
        b'show': '_handleShow',
        b'create': 'handleCreateFunction',
        b'drop': 'handleDropFunction',
        b'getpid': 'handleGetPid',
        b'verbose': 'handleVerbose',
        b'version': 'handleVersion',
        b'shutdown': 'handleShutdown',
        b'acl': '_handleACL',
    }

    def _adminReply(self, request, data):
        self.core.send(request.connection, data)

    def handleAdminRequest(self, request):
        """Answer one admin line; never drops the connection."""
        # Tells the metrics' connection roles an admin from a client.
        request.connection._admin = True
        command = request.command or b''
        if isinstance(command, str):
            command = command.encode('utf8', 'surrogateescape')
        if command.endswith(b'\r'):
            command = command[:-1]
        words = command.split()
        request.words = words
        word = words[0] if words else b''
        name = self._admin_commands.get(word.lower())
        if name is None:
            self._adminReply(request, unknown_command(word))
            return
        if self.acl is not None and not self._adminPermitted(
                request, word.lower()):
            self.log.info("ACL denied %s the admin command %r",
                          request.connection.ssl_subject, command)
            self._adminReply(request, error(
                b'PERMISSION_DENIED', 'Permission denied by ACL'))
            return
        try:
            getattr(self, name)(request)
        except Exception:
            self.log.exception("Admin command %r failed", command)
            self._adminReply(request, error(b'UNKNOWN_ERROR'))

    def _adminPermitted(self, request, word):
        """Whether the caller's ACL entry allows the command (see
        ADMIN_RIGHTS); the one place admin commands meet the ACL."""
        right = ADMIN_RIGHTS.get(word, 'admin')
        if right is None:
            return True
        subject = request.connection.ssl_subject
        if self.acl.canAdmin(subject):
            return True
        if right == 'cancel':
            # A tenant may cancel the jobs of functions it may invoke.
            # Any other answer (no such job, a malformed line) is a
            # denial, so that handles of others cannot be probed.
            words = request.words
            job = self.queue.jobs.get(words[2]) if len(words) == 3 \
                else None
            return job is not None and self.acl.canInvoke(
                subject, _text(job.name))
        return False

    # -- listings -------------------------------------------------------------

    def handleWorkers(self, request):
        rows = []
        for conn in list(self.connection_map.values()):
            client_id = conn.client_id
            client_id = client_id if client_id else b'-'
            line = b'%d %s %s :' % (conn.fd if conn.fd is not None else -1,
                                    _bytes(str(conn.host)),
                                    _bytes(client_id))
            if conn.functions:
                line += b' ' + b' '.join(sorted(conn.functions))
            rows.append(line + b'\n')
        rows.append(END)
        self._adminReply(request, b''.join(rows))

    def handleStatus(self, request):
        rows = []
        for name, fq in list(self.queue.functions.items()):
            rows.append(b'%s\t%d\t%d\t%d\n' % (
                name, fq.total, fq.running, fq.workers))
        rows.append(END)
        self._adminReply(request, b''.join(rows))

    def handlePriorityStatus(self, request):
        rows = []
        for name, fq in list(self.queue.functions.items()):
            rows.append(b'%s\t%d\t%d\t%d\t%d\n' % (
                (name,) + tuple(fq.waiting(p) for p in _PRECEDENCE_COLUMNS) +
                (fq.workers,)))
        rows.append(END)
        self._adminReply(request, b''.join(rows))

    def _handleShow(self, request):
        words = [w.lower() for w in request.words]
        if len(words) == 1:
            self._adminReply(request, unknown_command(request.words[0]))
        elif words[1:] == [b'jobs']:
            self.handleShowJobs(request)
        elif words[1:] == [b'unique', b'jobs']:
            self.handleShowUniqueJobs(request)
        else:
            self._adminReply(request, b'ERR UNKNOWN_SHOW_ARGUMENTS\r\n')

    def handleShowJobs(self, request):
        rows = []
        for job in list(self.queue.jobs.values()):
            rows.append(b'%s\t%d\t%d\t%d\n' % (
                job.handle, job.retries, bool(job.ignore),
                bool(job.background)))
        rows.append(END)
        self._adminReply(request, b''.join(rows))

    def handleShowUniqueJobs(self, request):
        rows = [(job.unique or b'') + b'\n'
                for job in list(self.queue.jobs.values())]
        rows.append(END)
        self._adminReply(request, b''.join(rows))

    # -- queue control --------------------------------------------------------

    def handleMaxQueue(self, request):
        args = request.words[1:]
        if len(args) not in (1, 2, 4):
            self._adminReply(request, invalid_arguments(b'maxqueue'))
            return
        name = args[0]
        sizes = args[1:]
        try:
            sizes = [int(s) for s in sizes]
        except ValueError:
            self._adminReply(request, invalid_arguments(b'maxqueue'))
            return
        if not sizes:
            limits = None
        elif len(sizes) == 1:
            limits = [sizes[0]] * 3
        else:
            high, normal, low = sizes
            # Indexed by precedence value: [normal, low, high].
            limits = [normal, low, high]
        if limits is not None and all(n <= 0 for n in limits):
            limits = None
        self.queue.setLimits(name, limits)
        self._adminReply(request, OK)

    def handleCancelJob(self, request):
        words = request.words
        if len(words) < 3:
            self._adminReply(request, unknown_command(words[0]))
            return
        if words[1].lower() != b'job' or len(words) > 3:
            self._adminReply(request, error(b'UNKNOWN_ERROR'))
            return
        job = self.queue.jobs.get(words[2])
        if job is None or job.ignore or \
                not self.core.semantics.cancel(self.core, job):
            self._adminReply(request, b'ERR UNKNOWN_JOB\r\n')
            return
        self._adminReply(request, OK)

    def handleCreateFunction(self, request):
        words = request.words
        if len(words) != 3 or words[1].lower() != b'function':
            self._adminReply(request, invalid_arguments(b'create'))
            return
        self.queue.function(words[2])
        self._adminReply(request, OK)

    def handleDropFunction(self, request):
        words = request.words
        if len(words) != 3 or words[1].lower() != b'function':
            self._adminReply(request, invalid_arguments(b'drop'))
            return
        result = self.queue.dropFunction(words[2])
        if result is None:
            self._adminReply(request, OK)
        elif result == 'missing':
            self._adminReply(request, b'ERR function not found\r\n')
        else:
            self._adminReply(
                request,
                b'ERR there are still connected workers or executing '
                b'clients\r\n')

    # -- server information ---------------------------------------------------

    def handleGetPid(self, request):
        self._adminReply(request, b'OK %d\n' % os.getpid())

    def handleVerbose(self, request):
        level = logging.getLevelName(self.log.getEffectiveLevel())
        self._adminReply(request, b'OK ' + _bytes(str(level)) + b'\n')

    def handleVersion(self, request):
        self._adminReply(request, b'OK ' + _bytes(_version()) + b'\n')

    def handleShutdown(self, request):
        words = [w.lower() for w in request.words]
        if not self.allow_admin_shutdown or len(words) > 2 or (
                len(words) == 2 and words[1] != b'graceful'):
            self._adminReply(request, unknown_command(request.words[0]))
            return
        self._adminReply(request, OK)
        self.log.info("Shutdown requested by %s", request.connection)
        self._flushAllConnections()
        self.shutdown(graceful=len(words) == 2)

    # -- ACLs -----------------------------------------------------------------

    def _handleACL(self, request):
        words = request.words
        sub = words[1].lower() if len(words) > 1 else b''
        handler = {
            b'list': self.handleACLList,
            b'grant': self.handleACLGrant,
            b'revoke': self.handleACLRevoke,
            b'self-revoke': self.handleACLSelfRevoke,
        }.get(sub)
        if handler is None:
            self._adminReply(request, invalid_arguments(b'acl'))
            return
        handler(request)

    def handleACLList(self, request):
        if self.acl is None:
            self._adminReply(request, ERR_ACL_DISABLED)
            return
        rows = []
        for entry in self.acl.getEntries():
            rows.append((
                '%s\tregister=%s\tinvoke=%s\tgrant=%s\tadmin=%s\n' % (
                    entry.subject, entry.register, entry.invoke,
                    bool(entry.grant), bool(entry.admin))).encode(
                        'utf8', 'replace'))
        rows.append(END)
        self._adminReply(request, b''.join(rows))

    def _aclArgs(self, request, count):
        words = [_text(w) for w in request.words[2:]]
        if len(words) < count:
            self._adminReply(request, invalid_arguments(b'acl'))
            return None
        if self.acl is None:
            self._adminReply(request, ERR_ACL_DISABLED)
            return None
        return words

    def handleACLGrant(self, request):
        # acl grant <register|invoke|grant|admin> <subject> [<pattern>]
        words = self._aclArgs(request, 2)
        if words is None:
            return
        verb, subject = words[0].lower(), words[1]
        pattern = words[2] if len(words) > 2 else None
        caller = request.connection.ssl_subject
        if not self.acl.canGrant(caller):
            self._adminReply(request, ERR_PERMISSION_DENIED)
            return
        try:
            if verb == 'register' or verb == 'invoke':
                if pattern is None:
                    self._adminReply(request, invalid_arguments(b'acl'))
                    return
                if verb == 'register':
                    self.acl.grantRegister(subject, pattern)
                else:
                    self.acl.grantInvoke(subject, pattern)
            elif verb == 'grant':
                self.acl.grantGrant(subject)
            elif verb == 'admin':
                self.acl.grantAdmin(subject)
            else:
                self._adminReply(request, ERR_UNKNOWN_ACL_VERB)
                return
        except Exception as e:
            self._adminReply(request, error(b'UNABLE', str(e)))
            return
        self._adminReply(request, OK)

    def handleACLRevoke(self, request):
        # acl revoke <register|invoke|grant|admin|all> <subject>
        words = self._aclArgs(request, 2)
        if words is None:
            return
        verb, subject = words[0].lower(), words[1]
        caller = request.connection.ssl_subject
        if subject != caller and not self.acl.canGrant(caller):
            self._adminReply(request, ERR_PERMISSION_DENIED)
            return
        self._revoke(request, verb, subject)

    def handleACLSelfRevoke(self, request):
        # acl self-revoke <register|invoke|grant|admin|all>
        words = self._aclArgs(request, 1)
        if words is None:
            return
        self._revoke(request, words[0].lower(),
                     request.connection.ssl_subject)

    def _revoke(self, request, verb, subject):
        revoke = {
            'register': self.acl.revokeRegister,
            'invoke': self.acl.revokeInvoke,
            'grant': self.acl.revokeGrant,
            'admin': self.acl.revokeAdmin,
            'all': self.acl.remove,
        }.get(verb)
        if revoke is None:
            self._adminReply(request, ERR_UNKNOWN_ACL_VERB)
            return
        try:
            revoke(subject)
        except Exception as e:
            self._adminReply(request, error(b'UNABLE', str(e)))
            return
        self._adminReply(request, OK)
