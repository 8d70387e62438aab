"""The installed version of gear.

``version_info`` is pbr's view of the package metadata.  ``__version__``
is a plain string that is always importable, even from a source tree that
was never installed, so that ``geard --version`` and log lines never fail.
"""

import pbr.version

version_info = pbr.version.VersionInfo('gear')


def _version_string():
    try:
        return version_info.release_string()
    except Exception:
        # Neither installed metadata nor a git checkout to derive it from.
        return '0.0.0'


__version__ = _version_string()
