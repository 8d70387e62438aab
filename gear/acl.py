"""Access control for a Gearman server that authenticates clients by TLS.

The subject of a connection is the CN of its client certificate (None for
a plain TCP connection).  Once a server has an :class:`ACL`, everything not
granted is denied: a subject may register (CAN_DO) functions that match its
``register`` pattern, submit or cancel jobs of functions that match its
``invoke`` pattern, change other subjects' entries if it has ``grant``, and
use the admin commands that change the server or reveal other subjects'
jobs if it has ``admin``.
Patterns are Python regular expressions applied with ``re.match``, so they
are anchored at the start of the name only.
"""

import configparser
import re

__all__ = ['ACLError', 'ACLEntry', 'ACL']


class ACLError(Exception):
    """An ACL operation or an ACL file is not valid."""


def _text(value):
    """Names arrive as bytes from the wire and as str from users."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode('utf-8', 'surrogateescape')
    return value


def _compile(kind, pattern):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ACLError('Invalid %s pattern %r: %s' % (kind, pattern, e))


class ACLEntry(object):
    """What one subject is allowed to do."""

    def __init__(self, subject, register=None, invoke=None, grant=False,
                 admin=False):
        self.subject = _text(subject)
        self.register = None
        self.invoke = None
        self._register = None
        self._invoke = None
        self.setRegister(register)
        self.setInvoke(invoke)
        self.setGrant(grant)
        self.setAdmin(admin)

    def __repr__(self):
        text = '<ACLEntry for %s register=%s invoke=%s grant=%s' % (
            self.subject, self.register, self.invoke, self.grant)
        # Entries without admin print as they always did.
        if self.admin:
            text += ' admin=True'
        return text + '>'

    def isEmpty(self):
        """True when the entry grants nothing and may be dropped."""
        return (self.register is None and self.invoke is None
                and not self.grant and not self.admin)

    def canRegister(self, name):
        """May this subject register function ``name`` (str or bytes)?"""
        if self._register is None:
            return False
        return self._register.match(_text(name)) is not None

    def canInvoke(self, name):
        """May this subject submit or cancel jobs of ``name``?"""
        if self._invoke is None:
            return False
        return self._invoke.match(_text(name)) is not None

    def setRegister(self, register):
        """Set the register pattern; None or '' removes it."""
        register = _text(register) or None
        compiled = None if register is None else _compile('register',
                                                          register)
        self.register, self._register = register, compiled

    def setInvoke(self, invoke):
        """Set the invoke pattern; None or '' removes it."""
        invoke = _text(invoke) or None
        compiled = None if invoke is None else _compile('invoke', invoke)
        self.invoke, self._invoke = invoke, compiled

    def setGrant(self, grant):
        """Allow or forbid changing other subjects' entries."""
        # An ACL-file entry without a grant key used to carry None here.
        self.grant = bool(grant)

    def setAdmin(self, admin):
        """Allow or forbid the admin commands that need ``admin``."""
        self.admin = bool(admin)


class ACL(object):
    """The set of :class:`ACLEntry`, one per subject."""

    def __init__(self):
        self.subjects = {}

    def __repr__(self):
        return '<ACL with %d entries>' % len(self.subjects)

    def add(self, entry):
        """Add an entry; a second entry for the same subject is an error."""
        if entry.subject in self.subjects:
            raise ACLError('An ACL entry for %s already exists'
                           % (entry.subject,))
        self.subjects[entry.subject] = entry

    def remove(self, subject):
        """Remove the entry of ``subject``; it must exist."""
        subject = _text(subject)
        if subject not in self.subjects:
            raise ACLError('There is no ACL entry for %s' % (subject,))
        del self.subjects[subject]

    def getEntries(self):
        """Return the entries sorted by subject (None first)."""
        return sorted(self.subjects.values(),
                      key=lambda e: (e.subject is not None, e.subject or ''))

    def _get(self, subject):
        return self.subjects.get(_text(subject))

    def canRegister(self, subject, name):
        entry = self._get(subject)
        return entry is not None and entry.canRegister(name)

    def canInvoke(self, subject, name):
        entry = self._get(subject)
        return entry is not None and entry.canInvoke(name)

    def canGrant(self, subject):
        entry = self._get(subject)
        return entry is not None and entry.grant

    def canAdmin(self, subject):
        entry = self._get(subject)
        return entry is not None and entry.admin

    def _getOrCreate(self, subject):
        entry = self._get(subject)
        if entry is None:
            entry = ACLEntry(subject)
            self.add(entry)
        return entry

    def _pruneIfEmpty(self, entry):
        if entry.isEmpty():
            self.remove(entry.subject)

    def grantInvoke(self, subject, invoke):
        """Set the invoke pattern of ``subject``, creating its entry."""
        # Validate before creating, so a bad pattern leaves no empty entry.
        _compile('invoke', _text(invoke) or '')
        entry = self._getOrCreate(subject)
        entry.setInvoke(invoke)
        self._pruneIfEmpty(entry)

    def grantRegister(self, subject, register):
        """Set the register pattern of ``subject``, creating its entry."""
        _compile('register', _text(register) or '')
        entry = self._getOrCreate(subject)
        entry.setRegister(register)
        self._pruneIfEmpty(entry)

    def grantGrant(self, subject):
        """Let ``subject`` change ACL entries, creating its entry."""
        self._getOrCreate(subject).setGrant(True)

    def grantAdmin(self, subject):
        """Let ``subject`` use the admin commands that need ``admin``."""
        self._getOrCreate(subject).setAdmin(True)

    def revokeInvoke(self, subject):
        """Remove the invoke pattern; drop the entry if nothing is left."""
        entry = self._get(subject)
        if entry is not None:
            entry.setInvoke(None)
            self._pruneIfEmpty(entry)

    def revokeRegister(self, subject):
        """Remove the register pattern; drop the entry if nothing is left."""
        entry = self._get(subject)
        if entry is not None:
            entry.setRegister(None)
            self._pruneIfEmpty(entry)

    def revokeGrant(self, subject):
        """Remove the grant right; drop the entry if nothing is left."""
        entry = self._get(subject)
        if entry is not None:
            entry.setGrant(False)
            self._pruneIfEmpty(entry)

    def revokeAdmin(self, subject):
        """Remove the admin right; drop the entry if nothing is left."""
        entry = self._get(subject)
        if entry is not None:
            entry.setAdmin(False)
            self._pruneIfEmpty(entry)

    # Loading the geard ACL file

    _FILE_KEYS = ('register', 'invoke', 'grant', 'admin')
    _FILE_FLAGS = ('grant', 'admin')

    @classmethod
    def fromFile(cls, path):
        """Build an ACL from an INI file, as read by ``geard --acl``.

        Each section names a subject (a certificate CN) and may set
        ``register`` and ``invoke`` (regular expressions), ``grant`` and
        ``admin`` (booleans: yes/no, true/false, on/off, 1/0)::

            [worker.example.org]
            register = build-.*

            [operator]
            invoke = .*
            grant = true
            admin = true

        A missing or unreadable file, a syntax error, an unknown key, a
        bad pattern or a bad boolean raises :class:`ACLError` naming the
        file (and the section when there is one).
        """
        try:
            with open(path, encoding='utf-8') as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ACLError('Cannot read ACL file %s: %s' % (path, e))
        return cls.fromString(text, source=str(path))

    @classmethod
    def fromString(cls, text, source='<string>'):
        """Build an ACL from the text of an ACL file (see :meth:`fromFile`).

        ``source`` names the text in error messages.
        """
        # No interpolation: '%' is an ordinary character in a pattern.
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text, source=source)
        except configparser.Error as e:
            raise ACLError('Invalid ACL file %s: %s' % (source, e))
        acl = cls()
        for section in parser.sections():
            where = 'ACL file %s, section [%s]' % (source, section)
            options = parser[section]
            unknown = sorted(set(options) - set(cls._FILE_KEYS))
            if unknown:
                raise ACLError('%s: unknown key(s) %s; expected %s' % (
                    where, ', '.join(unknown), ', '.join(cls._FILE_KEYS)))
            flags = {}
            for flag in cls._FILE_FLAGS:
                try:
                    flags[flag] = options.getboolean(flag, fallback=False)
                except ValueError:
                    raise ACLError('%s: %s must be a boolean, not %r'
                                   % (where, flag, options[flag]))
            try:
                acl.add(ACLEntry(section, options.get('register'),
                                 options.get('invoke'), **flags))
            except ACLError as e:
                raise ACLError('%s: %s' % (where, e))
        return acl
