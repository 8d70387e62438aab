"""Unit tests for gear.acl: entries, the ACL set and the ACL file loader."""

import os

import fixtures
import testtools

import gear
from gear.acl import ACL, ACLEntry, ACLError


class TestACLEntry(testtools.TestCase):

    def test_defaults(self):
        e = ACLEntry('cn')
        self.assertEqual('cn', e.subject)
        self.assertIsNone(e.register)
        self.assertIsNone(e.invoke)
        self.assertIs(False, e.grant)
        self.assertTrue(e.isEmpty())
        self.assertFalse(e.canRegister('x'))
        self.assertFalse(e.canInvoke('x'))

    def test_exported_from_gear(self):
        self.assertIs(ACL, gear.ACL)
        self.assertIs(ACLEntry, gear.ACLEntry)
        self.assertIs(ACLError, gear.ACLError)

    def test_is_empty(self):
        self.assertFalse(ACLEntry('cn', register='a').isEmpty())
        self.assertFalse(ACLEntry('cn', invoke='a').isEmpty())
        self.assertFalse(ACLEntry('cn', grant=True).isEmpty())
        # An ACL-file entry without a grant key.
        self.assertTrue(ACLEntry('cn', grant=None).isEmpty())

    def test_patterns_match_at_start(self):
        e = ACLEntry('cn', register='build-.*', invoke='test')
        self.assertTrue(e.canRegister('build-x'))
        self.assertFalse(e.canRegister('xbuild-x'))
        self.assertTrue(e.canInvoke('test'))
        self.assertTrue(e.canInvoke('tests-more'))
        self.assertFalse(e.canInvoke('a-test'))
        self.assertFalse(e.canInvoke('build-x'))
        self.assertFalse(e.canRegister('test'))

    def test_bytes_names(self):
        e = ACLEntry('cn', register='r\u00e9g.*', invoke='inv')
        self.assertTrue(e.canRegister('r\u00e9g1'.encode('utf-8')))
        self.assertTrue(e.canInvoke(b'inv'))
        self.assertFalse(e.canInvoke(b'other'))
        self.assertFalse(e.canInvoke(b'\xff\xfe'))

    def test_bytes_subject_and_patterns(self):
        e = ACLEntry(b'cn', register=b'a.*')
        self.assertEqual('cn', e.subject)
        self.assertEqual('a.*', e.register)
        self.assertTrue(e.canRegister('abc'))

    def test_setters(self):
        e = ACLEntry('cn')
        e.setRegister('r')
        e.setInvoke('i')
        e.setGrant(True)
        self.assertEqual(('r', 'i', True), (e.register, e.invoke, e.grant))
        self.assertTrue(e.canRegister('r'))
        self.assertTrue(e.canInvoke('i'))
        e.setRegister(None)
        e.setInvoke('')
        e.setGrant(False)
        self.assertTrue(e.isEmpty())
        self.assertFalse(e.canRegister('r'))
        self.assertFalse(e.canInvoke('i'))

    def test_bad_regex(self):
        e = ACLEntry('cn', register='ok')
        err = self.assertRaises(ACLError, e.setRegister, '(')
        self.assertIn('register', str(err))
        self.assertIn("'('", str(err))
        # A failed set keeps the old pattern.
        self.assertEqual('ok', e.register)
        self.assertTrue(e.canRegister('ok'))
        err = self.assertRaises(ACLError, e.setInvoke, '[a')
        self.assertIn('invoke', str(err))
        self.assertRaises(ACLError, ACLEntry, 'cn', None, '*')

    def test_repr(self):
        self.assertEqual(
            '<ACLEntry for cn register=r.* invoke=None grant=True>',
            repr(ACLEntry('cn', register='r.*', grant=True)))


class TestACL(testtools.TestCase):

    def test_add_remove(self):
        acl = ACL()
        self.assertEqual({}, acl.subjects)
        e = ACLEntry('cn', invoke='x')
        acl.add(e)
        self.assertIs(e, acl.subjects['cn'])
        self.assertRaises(ACLError, acl.add, ACLEntry('cn'))
        acl.remove('cn')
        self.assertEqual({}, acl.subjects)
        err = self.assertRaises(ACLError, acl.remove, 'cn')
        self.assertIn('cn', str(err))

    def test_get_entries_sorted(self):
        acl = ACL()
        for subject in ('b', 'c', 'a'):
            acl.add(ACLEntry(subject, grant=True))
        acl.add(ACLEntry(None, invoke='x'))
        self.assertEqual([None, 'a', 'b', 'c'],
                         [e.subject for e in acl.getEntries()])
        self.assertEqual([], ACL().getEntries())

    def test_checks(self):
        acl = ACL()
        acl.add(ACLEntry('worker', register='build-.*'))
        acl.add(ACLEntry('client', invoke='build-'))
        acl.add(ACLEntry('admin', grant=True))
        self.assertTrue(acl.canRegister('worker', 'build-1'))
        self.assertTrue(acl.canRegister('worker', b'build-1'))
        self.assertFalse(acl.canRegister('worker', 'test'))
        self.assertFalse(acl.canInvoke('worker', 'build-1'))
        self.assertTrue(acl.canInvoke('client', b'build-1'))
        self.assertFalse(acl.canRegister('client', 'build-1'))
        self.assertTrue(acl.canGrant('admin'))
        self.assertFalse(acl.canGrant('client'))
        for check in (acl.canRegister, acl.canInvoke):
            self.assertFalse(check('nobody', 'build-1'))
            self.assertFalse(check(None, 'build-1'))
        self.assertFalse(acl.canGrant('nobody'))
        self.assertTrue(acl.canInvoke(b'client', 'build-1'))

    def test_grants_create_entries(self):
        acl = ACL()
        acl.grantInvoke('a', 'inv')
        acl.grantRegister('b', 'reg')
        acl.grantGrant('c')
        self.assertEqual(['a', 'b', 'c'], sorted(acl.subjects))
        self.assertTrue(acl.canInvoke('a', 'inv'))
        self.assertTrue(acl.canRegister('b', 'reg'))
        self.assertTrue(acl.canGrant('c'))
        # Granting again updates the same entry.
        acl.grantRegister('a', 'r2')
        acl.grantInvoke('a', 'i2')
        acl.grantGrant('a')
        entry = acl.subjects['a']
        self.assertEqual(('r2', 'i2', True),
                         (entry.register, entry.invoke, entry.grant))
        self.assertEqual(3, len(acl.subjects))

    def test_grant_bad_regex_creates_nothing(self):
        acl = ACL()
        self.assertRaises(ACLError, acl.grantInvoke, 'a', '(')
        self.assertRaises(ACLError, acl.grantRegister, 'a', '(')
        self.assertEqual({}, acl.subjects)

    def test_revokes_prune_empty_entries(self):
        acl = ACL()
        acl.grantInvoke('a', 'i')
        acl.grantRegister('a', 'r')
        acl.grantGrant('a')
        acl.revokeInvoke('a')
        self.assertFalse(acl.canInvoke('a', 'i'))
        self.assertIn('a', acl.subjects)
        acl.revokeGrant('a')
        self.assertFalse(acl.canGrant('a'))
        self.assertIn('a', acl.subjects)
        acl.revokeRegister('a')
        self.assertNotIn('a', acl.subjects)
        # Revoking for an unknown subject is a no-op.
        acl.revokeInvoke('zz')
        acl.revokeRegister('zz')
        acl.revokeGrant('zz')
        self.assertEqual({}, acl.subjects)

    def test_revoke_prunes_file_entry_without_grant(self):
        acl = ACL()
        acl.add(ACLEntry('a', invoke='x', grant=None))
        acl.revokeInvoke('a')
        self.assertEqual({}, acl.subjects)


GOOD_FILE = """\
# Comments are allowed.
[worker.example.org]
register = build-.*

[client with spaces]
invoke = build-(a|b)%%
grant = no

[Admin]
Invoke = .*
grant = true

[empty]
"""


class TestACLFile(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def write(self, text, name='acl.conf'):
        path = os.path.join(self.dir, name)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        return path

    def test_good_file(self):
        acl = ACL.fromFile(self.write(GOOD_FILE))
        self.assertEqual(['Admin', 'client with spaces', 'empty',
                          'worker.example.org'],
                         [e.subject for e in acl.getEntries()])
        self.assertTrue(acl.canRegister('worker.example.org', b'build-3'))
        self.assertFalse(acl.canInvoke('worker.example.org', 'build-3'))
        self.assertFalse(acl.canGrant('worker.example.org'))
        # No interpolation: '%' is literal.
        self.assertEqual('build-(a|b)%%',
                         acl.subjects['client with spaces'].invoke)
        self.assertTrue(acl.canInvoke('client with spaces', 'build-a%%'))
        self.assertFalse(acl.canGrant('client with spaces'))
        self.assertTrue(acl.canGrant('Admin'))
        self.assertTrue(acl.canInvoke('Admin', 'anything'))
        self.assertTrue(acl.subjects['empty'].isEmpty())
        self.assertIs(False, acl.subjects['empty'].grant)

    def test_empty_file(self):
        self.assertEqual([], ACL.fromFile(self.write('')).getEntries())

    def test_revoked_file_entry_is_pruned(self):
        acl = ACL.fromFile(self.write('[a]\ninvoke = x\n'))
        acl.revokeInvoke('a')
        self.assertEqual({}, acl.subjects)

    def test_from_string(self):
        acl = ACL.fromString('[a]\ngrant = 1\n')
        self.assertTrue(acl.canGrant('a'))

    def assertBadFile(self, text, *fragments):
        path = self.write(text)
        err = self.assertRaises(ACLError, ACL.fromFile, path)
        self.assertIn(path, str(err))
        for fragment in fragments:
            self.assertIn(fragment, str(err))
        return err

    def test_bad_regex(self):
        self.assertBadFile('[ok]\ninvoke = a\n[bad one]\nregister = (\n',
                           '[bad one]', 'register')

    def test_bad_boolean(self):
        self.assertBadFile('[a]\ngrant = maybe\n', '[a]', 'grant', 'maybe')
        self.assertBadFile('[a]\nadmin = perhaps\n', '[a]', 'admin',
                           'perhaps')

    def test_admin_key(self):
        acl = ACL.fromString('[ops]\nadmin = yes\n[other]\ninvoke = x\n')
        self.assertTrue(acl.canAdmin('ops'))
        self.assertFalse(acl.canGrant('ops'))
        self.assertFalse(acl.canAdmin('other'))
        self.assertFalse(acl.canAdmin('stranger'))
        self.assertIn('admin=True', repr(acl.subjects['ops']))
        self.assertNotIn('admin', repr(acl.subjects['other']))

    def test_admin_grant_and_revoke(self):
        acl = ACL()
        acl.grantAdmin('ops')
        self.assertTrue(acl.canAdmin('ops'))
        self.assertFalse(acl.subjects['ops'].isEmpty())
        acl.revokeAdmin('ops')
        self.assertEqual({}, acl.subjects)
        acl.revokeAdmin('nobody')

    def test_unknown_key(self):
        self.assertBadFile('[a]\ninvokes = x\n', '[a]', 'invokes')

    def test_syntax_errors(self):
        self.assertBadFile('invoke = x\n', 'section')
        self.assertBadFile('[a]\ninvoke = x\n[a]\ngrant = 1\n', "'a'")
        self.assertBadFile('[a]\ninvoke = x\ninvoke = y\n', 'invoke')
        self.assertBadFile('[a\n')

    def test_missing_file(self):
        path = os.path.join(self.dir, 'missing.conf')
        err = self.assertRaises(ACLError, ACL.fromFile, path)
        self.assertIn(path, str(err))

    def test_not_utf8(self):
        path = os.path.join(self.dir, 'latin.conf')
        with open(path, 'wb') as f:
            f.write(b'[\xe9]\ninvoke = x\n')
        err = self.assertRaises(ACLError, ACL.fromFile, path)
        self.assertIn(path, str(err))
