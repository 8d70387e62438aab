"""Shared by the metrics and dashboard tests: a server with its HTTP side,
and HTTP/Prometheus helpers."""

import json
import urllib.request

import fixtures

import gear
from gear.server.http import HTTPServer

HOST = '127.0.0.1'
WAIT = 30.0


class MetricsServer(fixtures.Fixture):
    """A gear.Server with metrics on and an HTTPServer in front of it."""

    def __init__(self, max_age=0.0, **http_kwargs):
        super(MetricsServer, self).__init__()
        self.max_age = max_age
        self.http_kwargs = http_kwargs
        self.server_kwargs = {}

    def _setUp(self):
        self.server = gear.Server(0, host=HOST, metrics=True,
                                  **self.server_kwargs)
        self.addCleanup(self.server.shutdown)
        self.http = HTTPServer(self.server, HOST, 0, max_age=self.max_age,
                               **self.http_kwargs).start()
        self.addCleanup(self.http.stop)
        self.url = self.http.url

    def get(self, path, timeout=WAIT):
        with urllib.request.urlopen(self.url + path.lstrip('/'),
                                    timeout=timeout) as reply:
            return reply.status, reply.headers, reply.read()

    def status(self):
        return json.loads(self.get('api/status.json')[2])

    def scrape(self):
        return parse_metrics(self.get('metrics')[2].decode('utf8'))

    def scrape_when(self, name, **labels):
        """A scrape in which sample ``name`` is non-zero, else None (for
        wait_for)."""
        samples = self.scrape()
        return samples if value(samples, name, 0, **labels) else None


def parse_metrics(text):
    """{(sample name, ((label, value), ...)): value} of an exposition,
    parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


_MISSING = object()


def value(samples, name, default=_MISSING, **labels):
    """One sample's value, or ``default`` if given and the sample is
    missing; else KeyError names what is missing."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        if default is not _MISSING:
            return default
        raise KeyError('no sample %s%r' % (name, labels))
    return samples[key]


def client(port):
    c = gear.Client('metrics-test-client')
    c.addServer(HOST, port)
    c.waitForServer(WAIT)
    return c


def worker(port, name, *functions):
    w = gear.Worker(name)
    w.addServer(HOST, port)
    w.waitForServer(WAIT)
    for function in functions:
        w.registerFunction(function)
    return w
