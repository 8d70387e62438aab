"""Small helpers every test module needs: a free loopback port and a
bounded polling wait,
and a thread that serves a worker's jobs.

Kept in one place so a fix to either reaches every test at once.
"""

import os
import pickle
import socket
import threading
import time

import gear
import gear.gearman as gearman

HOST = '127.0.0.1'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host=HOST):
    """A port nobody listens on right now (bind to 0, read, release)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def wait_for(predicate, timeout=10.0, interval=0.01, message=None):
    """Poll ``predicate`` until it is true or ``timeout`` passes.

    Returns the predicate's true value; raises AssertionError with
    ``message`` (or a description of the predicate) at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or "Timed out waiting for %r" %
                                 (predicate,))
        time.sleep(interval)


def waiter(default_timeout, interval):
    """A ``wait_for(predicate, timeout, what)`` whose failure says
    "timed out waiting for <what>", for modules that name the condition
    rather than write the whole message.
    """
    def wait(predicate, timeout=default_timeout, message='condition'):
        return wait_for(predicate, timeout, interval,
                        'timed out waiting for %s' % message)
    return wait


def serve_jobs(test, worker, handler, timeout):
    """Run ``handler(job)`` for each job ``worker`` gets, in a thread,
    until ``test``'s cleanup stops the worker and joins the thread
    (bounded by ``timeout``).
    """
    def loop():
        while True:
            try:
                job = worker.getJob()
            except gear.InterruptedError:
                return
            handler(job)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    test.addCleanup(thread.join, timeout)
    test.addCleanup(worker.stopWaitingForJobs)


def child_env():
    """The environment for a child Python process: this checkout first on
    its path, and no statsd settings inherited from the caller.
    """
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    for name in ('STATSD_HOST', 'STATSD_PORT', 'STATSD_PREFIX'):
        env.pop(name, None)
    return env


class PickleDataEncoder(gearman.DataEncoder):
    """The pickling encoder python-gearman's documentation shows."""

    @classmethod
    def encode(cls, encodable_object):
        return pickle.dumps(encodable_object)

    @classmethod
    def decode(cls, decodable_string):
        return pickle.loads(decodable_string)
