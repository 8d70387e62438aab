"""Suite-wide pytest settings.

Timeouts, markers and the test paths live in setup.cfg ``[tool:pytest]``;
this file holds what cannot be said there.
"""

import logging
import os

import pytest

try:
    import hypothesis
except ImportError:  # pragma: no cover - hypothesis is a test requirement
    hypothesis = None


if hypothesis is not None:
    # Shared CI machines are slow and noisy: judge properties by their
    # results, never by how long one example took.
    hypothesis.settings.register_profile(
        'gear', deadline=None, print_blob=True)
    hypothesis.settings.register_profile(
        'gear-ci', deadline=None, print_blob=True, derandomize=True,
        database=None)
    hypothesis.settings.load_profile(
        'gear-ci' if os.environ.get('CI') else 'gear')


def _is_pytest_handler(handler):
    return type(handler).__module__.startswith('_pytest')


@pytest.fixture(autouse=True)
def _isolate_root_logger():
    """Undo any logging set-up a test makes (basicConfig, fileConfig).

    A handler left on the root logger would keep writing to a stream that
    pytest has already closed, and print errors into later tests.  Log
    records themselves are captured by pytest and shown only on failure.
    """
    root = logging.getLogger()
    handlers = root.handlers[:]
    level = root.level
    yield
    for handler in root.handlers[:]:
        # pytest's own capture handlers come and go with each test phase.
        if handler in handlers or _is_pytest_handler(handler):
            continue
        root.removeHandler(handler)
        try:
            handler.close()
        except Exception:
            pass
    root.setLevel(level)
