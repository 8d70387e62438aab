"""The documentation builds without warnings or unresolved references,
its diagrams are drawn, and its examples run.

Conventions for ``doc/source/*.rst``:

* Every ``.. code-block:: python`` block is an example, and this module
  executes it.  Blocks that are not Python examples (``::`` literal
  blocks, ``console``, ``ini``, ``text``...) are not executed, so a
  Python fragment that cannot run on its own must not be a
  ``code-block:: python``.
* The examples of one page run in order in one namespace, as one
  program, inside a fresh temporary directory.
* Each page gets its own gear server (:class:`GearServerFixture`), and
  the port ``4730`` written in the examples is replaced by that server's
  port.  Examples that need something else (TLS, several servers) start
  it themselves.
* A ``unittest.TestCase`` subclass that a page defines is run, and must
  pass.
* Clients, workers and servers left running by a page are shut down
  afterwards; pages should still shut down what they start.
"""

import contextlib
import html as html_module
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

import fixtures
import pytest
import testtools

import gear
from gear.testing import GearServerFixture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DOC_SOURCE = os.path.join(ROOT, 'doc', 'source')

_DIRECTIVE = re.compile(r'^(?P<indent>\s*)\.\. code-block::\s*python\s*$')
_OPTION = re.compile(r'^\s*:[\w-]+:')
_PORT = re.compile(r'\b4730\b')
_SVG_OBJECT = re.compile(r'<object data="(_images/graphviz-[0-9a-f]+\.svg)"')


def python_examples(path):
    """Return ``(line_number, code)`` for each Python example in a page.

    ``code`` is padded with blank lines so that tracebacks point at the
    right line of the .rst file.
    """
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    examples = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if not match:
            continue
        indent = len(match.group('indent'))
        # Directive options, then one blank line, then the content.
        while i < len(lines) and _OPTION.match(lines[i]) and \
                len(lines[i]) - len(lines[i].lstrip()) > indent:
            i += 1
        start = i
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            i += 1
        body = lines[start:i]
        while body and not body[-1].strip():
            body.pop()
        code = textwrap.dedent('\n'.join(body))
        examples.append((start + 1, '\n' * start + code))
    return examples


def pages_with_examples():
    pages = []
    for name in sorted(os.listdir(DOC_SOURCE)):
        if name.endswith('.rst'):
            path = os.path.join(DOC_SOURCE, name)
            if python_examples(path):
                pages.append(name)
    return pages


def _sphinx_available():
    try:
        import sphinx  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
class TestDocsBuild(testtools.TestCase):
    """One build (-W -n) for the class, then checks on its pages."""

    @classmethod
    def setUpClass(cls):
        super(TestDocsBuild, cls).setUpClass()
        if not _sphinx_available():
            raise unittest.SkipTest('sphinx is not installed (pip install '
                                    '-r doc-requirements.txt)')
        if shutil.which('dot') is None:
            raise unittest.SkipTest('graphviz is not installed: the '
                                    'diagrams need its "dot" (apt-get '
                                    'install graphviz)')
        cls.out = tempfile.mkdtemp(prefix='gear-docs-')
        cls.html = os.path.join(cls.out, 'html')
        proc = subprocess.run(
            [sys.executable, '-m', 'sphinx', '-W', '-n', '--keep-going',
             '-q', '-b', 'html', '-d', os.path.join(cls.out, 'doctrees'),
             DOC_SOURCE, cls.html],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=300)
        cls.output = proc.stdout.decode('utf-8', 'replace')
        if proc.returncode != 0:
            cls.output += '\n(exit status %d)' % proc.returncode

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.out, ignore_errors=True)
        super(TestDocsBuild, cls).tearDownClass()

    def page(self, name):
        with open(os.path.join(self.html, name), encoding='utf-8') as f:
            return f.read()

    def diagrams(self, name):
        """The text of each SVG diagram drawn on page ``name``."""
        texts = []
        for path in _SVG_OBJECT.findall(self.page(name)):
            with open(os.path.join(self.html, path),
                      encoding='utf-8') as f:
                texts.append(f.read())
        return texts

    def test_build_without_warnings(self):
        self.assertEqual('', self.output.strip())
        html = self.html

        # Every public name of the package is documented somewhere.
        anchors = set()
        for name in os.listdir(html):
            if name.endswith('.html'):
                with open(os.path.join(html, name), encoding='utf-8') as f:
                    anchors.update(re.findall(r'id="(gear\.[\w.]+)"',
                                              f.read()))
        import gear.gearman
        import gear.testing
        wanted = ['gear.%s' % n for n in dir(gear)
                  if not n.startswith('_') and
                  not isinstance(getattr(gear, n), type(os))]
        wanted += ['gear.gearman.%s' % n for n in gear.gearman.__all__
                   if not n.isupper()]
        wanted.append('gear.testing.GearServerFixture')
        missing = sorted(set(wanted) - anchors)
        self.assertEqual([], missing)

    def test_architecture_diagrams_are_drawn(self):
        svgs = self.diagrams('architecture.html')
        self.assertEqual(4, len(svgs),
                         'architecture, layers, foreground, server core')
        for svg in svgs:
            self.assertIn('<svg', svg)
        self.assertIn('job server', svgs[0])
        self.assertIn('gear.protocol', svgs[1])
        self.assertIn('JOB_ASSIGN_UNIQ', svgs[2])
        self.assertIn('commitStore', svgs[3])
        # The ASCII art they replace is gone.
        self.assertNotIn('-------------------------&gt;',
                         self.page('architecture.html'))

    def test_lifecycle_diagrams_are_drawn(self):
        svgs = self.diagrams('lifecycle.html')
        self.assertEqual(3, len(svgs))
        foreground, background, requeue = svgs
        self.assertIn('WORK_COMPLETE (forwarded)', foreground)
        self.assertIn('SUBMIT_JOB_BG', background)
        self.assertIn('Worker B', requeue)

    def test_module_references_resolve(self):
        page = self.page('modules.html')
        for name in ('gear.job', 'gear.server', 'gear.cmd.geard',
                     'gear.testing'):
            self.assertIn(name, page)
        self.assertIn('id="module-gear.job"', page)

    def test_help_fits_the_page(self):
        page = self.page('commands.html')
        blocks = re.findall(r'(?s)<pre>(?:<span></span>)?(usage: .*?)</pre>',
                            page)
        self.assertEqual(3, len(blocks))
        for block in blocks:
            text = html_module.unescape(re.sub(r'<[^>]+>', '', block))
            widest = max(len(line) for line in text.splitlines())
            self.assertLessEqual(widest, 64, text)


def _sequence_extension():
    """doc/source/_ext/sequence.py, which needs Sphinx to import."""
    if not _sphinx_available():
        raise unittest.SkipTest('sphinx is not installed (pip install -r '
                                'doc-requirements.txt)')
    path = os.path.join(DOC_SOURCE, '_ext')
    if path not in sys.path:
        sys.path.insert(0, path)
    import sequence
    return sequence


class TestSequenceDiagram(testtools.TestCase):
    """The text format of ``.. sequence-diagram::``."""

    def setUp(self):
        super(TestSequenceDiagram, self).setUp()
        self.sequence = _sequence_extension()

    def test_messages_notes_and_answers(self):
        participants, steps = self.sequence.parse([
            'participants: Client, Server, Worker',
            '# a comment',
            'Client -> Server: SUBMIT_JOB f',
            'Server --> Client: JOB_CREATED H:1',
            'Server: queues it',
            'Worker -> Client: skips a column'])
        self.assertEqual(['Client', 'Server', 'Worker'], participants)
        self.assertEqual([
            ('msg', 'Client', 'Server', 'SUBMIT_JOB f', False),
            ('msg', 'Server', 'Client', 'JOB_CREATED H:1', True),
            ('note', 'Server', 'queues it'),
            ('msg', 'Worker', 'Client', 'skips a column', False),
        ], steps)
        dot = self.sequence.to_dot(participants, steps)
        self.assertTrue(dot.startswith('digraph sequence {'))
        # A message between columns 0 and 2 passes through column 1.
        self.assertIn('p0_4 -> p1_4', dot)
        self.assertIn('p1_4 -> p2_4', dot)
        self.assertIn('"JOB_CREATED H:1"', dot)

    def test_mistakes_are_reported(self):
        for lines, message in (
                (['Client -> Server: x'], 'participants'),
                (['participants: A, B', 'A -> C: x'], "unknown participant"),
                (['participants: A, B', 'A to B'], 'expected')):
            error = self.assertRaises(self.sequence.SequenceError,
                                      self.sequence.parse, lines)
            self.assertIn(message, str(error))


class TestDocExamples(testtools.TestCase):
    """One test per page that has Python examples (added below)."""

    def runPage(self, page):
        path = os.path.join(DOC_SOURCE, page)
        examples = python_examples(path)
        self.assertNotEqual([], examples)
        server = self.useFixture(GearServerFixture())
        workdir = self.useFixture(fixtures.TempDir()).path
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(workdir)
        namespace = {'__name__': 'doc_example_%s' % page[:-4]}
        self.addCleanup(self._stopLeftovers, namespace)
        output = io.StringIO()
        for line, code in examples:
            code = _PORT.sub(str(server.port), code)
            compiled = compile(code, path, 'exec')
            try:
                with contextlib.redirect_stdout(output):
                    exec(compiled, namespace)
            except Exception:
                self.addDetail('example output', testtools.content.
                               text_content(output.getvalue()))
                raise
        self._runTestCases(namespace)

    def _runTestCases(self, namespace):
        cases = [obj for obj in namespace.values()
                 if isinstance(obj, type) and
                 issubclass(obj, unittest.TestCase) and
                 obj.__module__ == namespace['__name__']]
        if not cases:
            return
        loader = unittest.TestLoader()
        suite = unittest.TestSuite(
            loader.loadTestsFromTestCase(case) for case in cases)
        stream = io.StringIO()
        result = unittest.TextTestRunner(stream=stream, verbosity=2).run(
            suite)
        self.assertTrue(result.wasSuccessful(), stream.getvalue())
        self.assertGreater(result.testsRun, 0)

    @staticmethod
    def _stopLeftovers(namespace):
        for obj in list(namespace.values()):
            if isinstance(obj, (gear.BaseClientServer, gear.Server)) and \
                    obj.running:
                obj.shutdown()


def _add_page_test(page):
    def test(self):
        self.runPage(page)
    name = 'test_%s' % re.sub(r'\W', '_', page[:-4])
    test.__name__ = name
    setattr(TestDocExamples, name, test)


for _page in pages_with_examples():
    _add_page_test(_page)
