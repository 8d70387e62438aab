"""gear-admin ``--http URL``: answer from geard's ``/api/status.json``.

For a geard started with ``--http-port``, the listings the dashboard
shows can be read over HTTP instead of the admin port (through a proxy,
or where only the HTTP port is reachable).  The rows have the shapes the
admin replies parse to, so the output is the same table or JSON.
"""

import json
import urllib.error
import urllib.parse
import urllib.request

from gear.cmd import _common as common

#: The subcommands that can be answered from the status document.
COMMANDS = ('status', 'priority-status', 'workers')


def status_url(url):
    """The status document's address for a dashboard or server URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        raise common.CliError('--http needs an http:// URL, not %r' % url,
                              common.EXIT_USAGE)
    path = parts.path
    if not path.endswith('/api/status.json'):
        path = path.rstrip('/') + '/api/status.json'
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, '',
                                    ''))


def rows(command, status):
    """The parsed admin reply of ``command``, built from ``status``."""
    if command == 'status':
        return [(f['name'], f['total'], f['running'], f['workers'])
                for f in status['functions'] if f['present']]
    if command == 'priority-status':
        return [(f['name'], f['queued']['high'],
                 f['queued']['normal'] + f['scheduled'], f['queued']['low'],
                 f['workers'])
                for f in status['functions'] if f['present']]
    return [(w['fd'], w['host'], w['client_id'], tuple(w['functions']))
            for w in status['workers']]


class HTTPSession(object):
    """Stands in for the admin session: one GET per request."""

    def __init__(self, url, command, timeout):
        if command not in COMMANDS:
            raise common.CliError(
                '--http answers %s only' % ', '.join(COMMANDS),
                common.EXIT_USAGE)
        self.url = status_url(url)
        self.command = command
        self.timeout = timeout
        # What the --watch header names as the server.
        self.target = self
        self.address = self.url

    def request(self, request=None):
        try:
            with urllib.request.urlopen(self.url,
                                        timeout=self.timeout) as reply:
                status = json.loads(reply.read().decode('utf8'))
        except urllib.error.HTTPError as e:
            raise common.CliError('%s: HTTP %d %s' % (self.url, e.code,
                                                      e.reason))
        except (urllib.error.URLError, OSError) as e:
            raise common.CliError('cannot read %s: %s' % (
                self.url, getattr(e, 'reason', None) or e),
                common.EXIT_CONNECTION)
        except ValueError as e:
            raise common.CliError('%s is not a status document: %s' % (
                self.url, e))
        return rows(self.command, status)

    def close(self):
        pass
