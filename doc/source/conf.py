"""Sphinx configuration for the gear documentation.

Nothing here needs the network.  The command-line help shown in the
pages is produced at build time from the programs' own argument parsers
(the ``program-help`` directive below), so it cannot drift from the
code.  The diagrams are written as text (``diagrams/*.dot`` and
``*.seq``, see ``_ext/sequence.py``) and drawn at build time by
graphviz's ``dot``, the one program the build needs besides Python.

The pages are meant to build with ``-W -n``: every cross-reference must
resolve.  Three rules below make that hold without cluttering the text:
references into the standard library and ``fixtures`` are not checked
(there is no intersphinx, which would need the network); a short name
in a docstring (``ProtocolError``) means the public name under ``gear``;
and the private base classes of public ones are not shown.
"""

import ast
import contextlib
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
import textwrap

from docutils import nodes
from docutils import statemachine as docutils_statemachine
from docutils.parsers.rst import Directive

# Document the package from this tree, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join('..', '..')))
sys.path.insert(0, os.path.abspath('_ext'))

from gear.version import __version__  # noqa: E402

project = 'gear'
copyright = 'gear developers'
author = 'gear developers'
release = __version__
version = '.'.join(__version__.split('.')[:2])

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.graphviz',
    'sphinx.ext.viewcode',
    'sequence',
]

# SVG scales with the page and keeps its text searchable.
graphviz_output_format = 'svg'
graphviz_dot_args = ['-Gbgcolor=transparent']

# Not documented here, so not checked: Python's standard library (no
# intersphinx: the build must not need the network) and fixtures.
nitpick_ignore_regex = [
    ('py:.*', r'(abc|asyncio|cProfile|datetime|gc|logging|re|ssl|'
              r'threading)(\..*)?'),
    ('py:.*', r'fixtures(\..*)?'),
]

autodoc_member_order = 'bysource'
# No default 'members': each directive lists what it documents (and some
# Sphinx versions let a default 'members' override an explicit list).
autodoc_default_options = {
    'show-inheritance': True,
}
# The signatures already say what the arguments are; the docstrings say
# what they mean.
autodoc_typehints = 'none'
autoclass_content = 'both'

source_suffix = {'.rst': 'restructuredtext'}
master_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'sphinx'

html_theme = 'alabaster'
html_title = 'gear %s' % release
htmlhelp_basename = 'geardoc'
html_theme_options = {
    'description': 'Gearman in pure Python',
    'fixed_sidebar': True,
}
html_static_path = ['_static']
html_css_files = ['gear.css']


# What a literal block of the theme's text column shows without wrapping.
HELP_COLUMNS = 64


@contextlib.contextmanager
def _columns(width):
    """argparse wraps its help to $COLUMNS; pin it for a stable page."""
    old = os.environ.get('COLUMNS')
    os.environ['COLUMNS'] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ['COLUMNS']
        else:
            os.environ['COLUMNS'] = old


class ProgramHelp(Directive):
    """``.. program-help:: package.module:function``

    Shows ``--help`` of the ``argparse`` parser that the named function
    returns, as a literal block.
    """

    required_arguments = 1
    has_content = False

    def run(self):
        target = self.arguments[0]
        module_name, _, func_name = target.partition(':')
        try:
            parser = getattr(importlib.import_module(module_name),
                             func_name)()
            with _columns(HELP_COLUMNS):
                text = parser.format_help()
        except Exception as e:
            raise self.error('program-help: cannot get the help of %s: %s'
                             % (target, e))
        # Descriptions written for a raw formatter are not wrapped by
        # argparse; wrap those (unindented) lines for the page.
        text = '\n'.join(
            textwrap.fill(line, HELP_COLUMNS) if len(line) > HELP_COLUMNS and
            not line[:1].isspace() else line
            for line in text.split('\n'))
        block = nodes.literal_block(text, text)
        block['language'] = 'text'
        return [block]


def _module_summary(name):
    """The first line of a module's docstring, read without importing
    it (some modules need optional packages)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith('.py'):
        return ''
    with open(spec.origin, encoding='utf-8') as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ''
    return doc.strip().split('\n\n')[0].replace('\n', ' ')


_DECLARED = re.compile(r'^\.\. (?:py:)?(?:auto)?module:: (\S+)', re.M)


def _declared_modules(srcdir):
    """Modules that some page declares with ``module``/``automodule``."""
    found = set()
    for name in os.listdir(srcdir):
        if name.endswith('.rst'):
            with open(os.path.join(srcdir, name), encoding='utf-8') as f:
                found.update(_DECLARED.findall(f.read()))
    return found


class ModuleList(Directive):
    """``.. module-list:: package``

    Every public module of the package with the first paragraph of its
    docstring.
    A module no other page declares gets its ``py:module`` target here,
    so that ``:mod:`gear.job``` resolves wherever it is written.
    """

    required_arguments = 1
    has_content = False

    def run(self):
        package_name = self.arguments[0]
        package = importlib.import_module(package_name)
        names = [package_name] + sorted(
            info.name for info in pkgutil.walk_packages(
                package.__path__, package_name + '.')
            if '._' not in info.name)
        env = self.state.document.settings.env
        declared = _declared_modules(env.srcdir)
        lines = []
        for name in names:
            if name not in declared:
                lines += ['.. py:module:: %s' % name, '']
            lines += [':mod:`%s`' % name,
                      '   %s' % (_module_summary(name) or '\\'), '']
        lines.append('.. py:currentmodule:: None')
        container = nodes.container()
        self.state.nested_parse(
            docutils_statemachine.StringList(lines, source='module-list'),
            self.content_offset, container)
        return container.children


def _public_bases(app, name, obj, options, bases):
    """Show public classes as bases, in place of private helpers."""
    import gear
    import gear.gearman
    exported = (gear, gear.gearman)

    def public(cls):
        if not cls.__module__.startswith('gear'):
            return True
        return any(getattr(module, cls.__name__, None) is cls
                   for module in exported)

    def expand(classes):
        for cls in classes:
            if cls is object:
                continue
            if public(cls):
                yield cls
            else:
                yield from expand(cls.__bases__)

    shown = []
    for cls in expand(list(bases)):
        if cls not in shown:
            shown.append(cls)
    bases[:] = shown or [object]


def _resolve_short_names(app, env, node, contnode):
    """Resolve a short Python name that failed in its own module's
    context: first as ``gear.<name>``, then as the one documented name
    that ends with it (``GearmanClient.shutdown``)."""
    if node.get('refdomain') != 'py':
        return None
    target = node['reftarget'].lstrip('.~')
    domain = env.get_domain('py')
    candidates = ['gear.' + target]
    if not target.startswith('gear.'):
        suffix = '.' + target
        matches = [full for full in domain.objects
                   if full.endswith(suffix) and full.startswith('gear.')]
        if len(matches) == 1:
            candidates.append(matches[0])
    for full in candidates:
        if full not in domain.objects:
            continue
        retry = node.deepcopy()
        retry['reftarget'] = full
        retry['py:module'] = None
        retry['py:class'] = None
        retry['refspecific'] = False
        resolved = domain.resolve_xref(env, node['refdoc'], app.builder,
                                       node['reftype'], full, retry,
                                       contnode)
        if resolved is not None:
            return resolved
    return None


def setup(app):
    app.add_directive('program-help', ProgramHelp)
    app.add_directive('module-list', ModuleList)
    app.connect('autodoc-process-bases', _public_bases)
    app.connect('missing-reference', _resolve_short_names)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
