#!/bin/bash
# Run tests/compat against gear 0.16.0 from PyPI, in a virtual
# environment of its own, to show that the compatibility tests describe
# gear 0.16's behaviour.  The tests are copied out of the tree so that
# this checkout's gear package cannot shadow the installed one.
#
# Usage: tests/compat/run-against-gear016.sh [pytest arguments]
# GEAR016_VENV names a directory to keep (and reuse) the environment.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

venv="${GEAR016_VENV:-$work/venv}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        'gear==0.16.0' pytest
fi

mkdir "$work/tree"
cp -r "$here" "$work/tree/compat"
rm -f "$work/tree/compat/run-against-gear016.sh"
find "$work/tree" -name __pycache__ -prune -exec rm -rf {} +

cd "$work/tree"
"$venv/bin/python" - <<'PY'
import gear, os
assert not os.path.isdir(os.path.join(os.path.dirname(gear.__file__),
                                      'server')), gear.__file__
print('gear under test:', gear.__file__)
PY
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q -rxXs \
    -W ignore::DeprecationWarning compat "$@"
