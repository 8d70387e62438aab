"""Sphinx configuration for the gear documentation.

Nothing here needs the network or an external program: the command-line
help shown in the pages is produced at build time from the programs' own
argument parsers (the ``program-help`` directive below), so it cannot
drift from the code.
"""

import contextlib
import importlib
import os
import sys
import textwrap

from docutils import nodes
from docutils.parsers.rst import Directive

# Document the package from this tree, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join('..', '..')))

from gear.version import __version__  # noqa: E402

project = 'gear'
copyright = 'gear developers'
author = 'gear developers'
release = __version__
version = '.'.join(__version__.split('.')[:2])

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.viewcode',
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
            with _columns(76):
                text = parser.format_help()
        except Exception as e:
            raise self.error('program-help: cannot get the help of %s: %s'
                             % (target, e))
        # Descriptions written for a raw formatter are not wrapped by
        # argparse; wrap those (unindented) lines for the page.
        text = '\n'.join(
            textwrap.fill(line, 76) if len(line) > 76 and
            not line[:1].isspace() else line
            for line in text.split('\n'))
        block = nodes.literal_block(text, text)
        block['language'] = 'text'
        return [block]


def setup(app):
    app.add_directive('program-help', ProgramHelp)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
