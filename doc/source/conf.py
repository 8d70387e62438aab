"""Sphinx configuration for the gear documentation."""

import os
import sys

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
autodoc_default_options = {
    'members': True,
    'show-inheritance': True,
}

source_suffix = {'.rst': 'restructuredtext'}
master_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'sphinx'

html_theme = 'alabaster'
html_title = 'gear %s' % release
htmlhelp_basename = 'geardoc'
