#!/bin/bash
# Run gear 0.16.0's own test suite (from its source distribution on PyPI)
# against this checkout's gear package, in a virtual environment of its
# own: code written against gear 0.16 must keep working unchanged.
#
# The tests come with the sdist as the package gear.tests; they are
# unpacked into a temporary directory as a package of their own (this
# checkout has no gear.tests), and run with testtools' runner, which
# applies their test scenarios as gear's own runner did.
#
# Usage: tests/compat/run-gear016-own-tests.sh
# GEAR016_OWN_VENV names a directory to keep (and reuse) the environment.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

venv="${GEAR016_OWN_VENV:-$work/venv}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    # What gear 0.16's test-requirements.txt asks for its tests.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        fixtures testresources testscenarios testtools pyOpenSSL
fi
# This checkout, again on every run (a kept environment has an older one).
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$root"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    --force-reinstall --no-deps "$root"

"$venv/bin/python" -m pip download -q --disable-pip-version-check \
    --no-deps --no-binary :all: 'gear==0.16.0' -d "$work/sdist"
tar -xzf "$work/sdist"/gear-0.16.0.tar.gz -C "$work/sdist"
mkdir "$work/tree"
cp -r "$work/sdist/gear-0.16.0/gear/tests" "$work/tree/gear016_tests"
sed -i 's/^from gear import tests$/import gear016_tests as tests/' \
    "$work/tree/gear016_tests"/test_*.py

cd "$work/tree"
"$venv/bin/python" - <<'PY'
import os
import gear
import gear.server
assert 'site-packages' in gear.__file__, gear.__file__
print('gear under test:', os.path.dirname(gear.__file__), gear.__version__)
PY
exec "$venv/bin/python" -m testtools.run \
    gear016_tests.test_gear gear016_tests.test_functional
