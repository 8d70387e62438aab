"""A throw-away PostgreSQL cluster for the tests and the benchmarks.

``initdb`` and ``pg_ctl`` create and run it in a temporary directory, on
127.0.0.1 and a free port, with trust authentication for the ``gear``
role.  PostgreSQL refuses to run as root, so under root the cluster runs
as the ``postgres`` (or ``nobody``) user through ``runuser``.
"""

import os
import pwd
import shutil
import subprocess
import tempfile

from bench.servers import free_port

HOST = '127.0.0.1'
USER = 'gear'
TIMEOUT = 120


def missing():
    """None if a cluster can be made here, else the reason it cannot."""
    for tool in ('initdb', 'pg_ctl'):
        if _tool(tool) is None:
            return '%s is not installed (Debian: postgresql)' % tool
    if os.geteuid() == 0 and shutil.which('runuser') is None:
        return 'running as root without runuser to drop privileges'
    if os.geteuid() == 0 and _unprivileged_user() is None:
        return 'running as root with no postgres or nobody user'
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'psycopg is not installed (pip install psycopg[binary])'
    return None


def _tool(name):
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the server binaries out of PATH.
    base = '/usr/lib/postgresql'
    if os.path.isdir(base):
        for version in sorted(os.listdir(base), reverse=True):
            path = os.path.join(base, version, 'bin', name)
            if os.path.exists(path):
                return path
    return None


def _unprivileged_user():
    for name in ('postgres', 'nobody'):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class Cluster(object):
    """One PostgreSQL server in its own directory.

    :arg bool durable: keep ``fsync`` on (benchmarks); tests turn it off,
        which changes nothing for the crashes they make (they kill the
        job server, or stop PostgreSQL cleanly).
    """

    def __init__(self, durable=False):
        self.durable = durable
        self.dir = tempfile.mkdtemp(prefix='gear-pg-')
        self.data = os.path.join(self.dir, 'data')
        self.log_path = os.path.join(self.dir, 'postgresql.log')
        self.port = None
        self._user = None
        if os.geteuid() == 0:
            self._user = _unprivileged_user()
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        self._run(_tool('initdb'), '-D', self.data, '-U', USER,
                  '--auth=trust', '-E', 'UTF8', '--no-sync')
        self.start()

    def _run(self, *argv):
        argv = list(argv)
        if self._user is not None:
            argv = ['runuser', '-u', self._user.pw_name, '--'] + argv
        result = subprocess.run(argv, capture_output=True, timeout=TIMEOUT,
                                cwd=self.dir)
        if result.returncode:
            raise RuntimeError('%s failed: %s%s' % (
                ' '.join(argv), result.stdout.decode('utf8', 'replace'),
                result.stderr.decode('utf8', 'replace')))
        return result

    def start(self):
        """Start the server (on the port of the previous start, if any)."""
        if self.port is None:
            self.port = free_port()
        options = ('-c listen_addresses=%s -p %d -k %s '
                   '-c max_connections=200' % (HOST, self.port, self.dir))
        if not self.durable:
            options += ' -c fsync=off -c full_page_writes=off'
        self._run(_tool('pg_ctl'), '-D', self.data, '-l', self.log_path,
                  '-o', options, '-w', '-t', str(TIMEOUT), 'start')

    def stop(self, mode='fast'):
        self._run(_tool('pg_ctl'), '-D', self.data, '-m', mode, '-w',
                  '-t', str(TIMEOUT), 'stop')

    def url(self, database='postgres'):
        return 'postgresql://%s@%s:%d/%s' % (USER, HOST, self.port, database)

    def conninfo(self, database='postgres'):
        """The same as :meth:`url`, as libpq keywords (for gearmand)."""
        return 'host=%s port=%d dbname=%s user=%s' % (HOST, self.port,
                                                      database, USER)

    def create_database(self, name):
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute('CREATE DATABASE "%s"' % name)
        return self.url(name)

    def log(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read()[-4000:].decode('utf8', 'replace')
        except OSError:
            return ''

    def destroy(self):
        try:
            self.stop('immediate')
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
