"""Markers the compatibility tests use, declared here as well so that
they are known when this package runs outside the tree (against gear
0.16)."""


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: a test that takes more than a second or two')
