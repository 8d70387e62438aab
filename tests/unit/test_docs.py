"""The documentation builds without warnings, and its examples run.

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
import io
import os
import re
import subprocess
import sys
import textwrap
import unittest

import fixtures
import testtools

import gear
from gear.testing import GearServerFixture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DOC_SOURCE = os.path.join(ROOT, 'doc', 'source')

_DIRECTIVE = re.compile(r'^(?P<indent>\s*)\.\. code-block::\s*python\s*$')
_OPTION = re.compile(r'^\s*:[\w-]+:')
_PORT = re.compile(r'\b4730\b')


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


class TestDocsBuild(testtools.TestCase):

    def setUp(self):
        super(TestDocsBuild, self).setUp()
        if not _sphinx_available():
            self.skipTest('sphinx is not installed (pip install -r '
                          'doc-requirements.txt)')

    def test_build_without_warnings(self):
        out = self.useFixture(fixtures.TempDir()).path
        html = os.path.join(out, 'html')
        proc = subprocess.run(
            [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q',
             '-b', 'html', '-d', os.path.join(out, 'doctrees'),
             DOC_SOURCE, html],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=300)
        output = proc.stdout.decode('utf-8', 'replace')
        self.assertEqual(0, proc.returncode, output)
        self.assertEqual('', output.strip())

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
