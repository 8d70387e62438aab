"""GearmanAdminClient: python-gearman's admin API on gear's admin requests.

It talks to exactly one server over one gear Client connection, sending
the text admin commands of gear.admin and the binary ECHO for pings.
Unlike python-gearman it strips the ``\\r`` of gearmand's ``\\r\\n``
lines and raises :class:`ServerError` on an ``ERR`` answer.
"""

import logging
import time
import weakref

import gear
from gear import admin as gear_admin

from gear.gearman.errors import (
    AdminHostListError, ConnectionError, InvalidAdminClientState,
    ServerError, ServerUnavailable)
from gear.gearman.hosts import parse_host_list
from gear.gearman.links import LinkWatch

log = logging.getLogger('gear.gearman.admin')

DEFAULT_ADMIN_CLIENT_TIMEOUT = 10.0
ECHO_STRING = b'ping? pong!'


class _AdminLink(LinkWatch, gear.Client):
    """The one connection of a GearmanAdminClient."""

    def __init__(self, address):
        self._initLinkWatch()
        super(_AdminLink, self).__init__(client_id=None, exceptions=False)
        if address.use_ssl:
            self.addServer(address.host, address.port, address.keyfile,
                           address.certfile, address.ca_certs)
        else:
            self.addServer(address.host, address.port)


def _line(request):
    """The first line of a raw reply, as str without its terminator."""
    raw = bytes(request.response or b'')
    return raw.split(b'\n', 1)[0].rstrip(b'\r').decode('utf-8',
                                                       'surrogateescape')


def _close_links(links):
    while links:
        links.pop().shutdown()


class GearmanAdminClient(object):
    """Query and steer one Gearman server (python-gearman API).

    :arg host_list: one server, in any form GearmanClient accepts.
        Without one (None or an empty list) the client is built, as
        python-gearman's was, and each call raises ServerUnavailable.
    :arg float poll_timeout: the longest any call waits, in seconds
        (None: for ever).
    """

    def __init__(self, host_list=None,
                 poll_timeout=DEFAULT_ADMIN_CLIENT_TIMEOUT):
        servers = parse_host_list(host_list)
        # python-gearman built an admin client without a server (its
        # calls failed later); test suites construct one at import time.
        if len(servers) > 1:
            raise AdminHostListError(
                'GearmanAdminClient takes exactly one server, got %d'
                % len(servers))
        self.host_list = servers
        self.poll_timeout = poll_timeout
        # The connection, once made; a dropped admin client closes it.
        self._links = []
        self._finalizer = weakref.finalize(self, _close_links, self._links)
        self._finalizer.atexit = False

    def shutdown(self):
        """Close the connection (it is reopened by the next call)."""
        _close_links(self._links)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.shutdown()

    # Plumbing

    def _connection(self):
        if not self.host_list:
            raise ServerUnavailable('Found no valid connections in list: []'
                                    ' (this admin client has no server)')
        if not self._links:
            self._links.append(_AdminLink(self.host_list[0]))
        link = self._links[0]
        if not link.isConnected() and \
                not link.waitConnected(self.poll_timeout):
            raise ServerUnavailable('Found no valid connections in list: %r'
                                    % (self.host_list,))
        try:
            return link.getConnection()
        except gear.NoConnectedServersError:
            raise ServerUnavailable('Lost the connection to %r'
                                    % (self.host_list[0],))

    def _send(self, request):
        conn = self._connection()
        try:
            conn.sendAdminRequest(request, timeout=self.poll_timeout)
        except gear.TimeoutError:
            raise InvalidAdminClientState(
                'No reply to %r within %s seconds'
                % (request.getCommand(), self.poll_timeout))
        except (gear.ConnectionError, OSError) as e:
            raise ConnectionError('Lost the connection to %r: %s'
                                  % (self.host_list[0], e))
        return request

    def _parse(self, request):
        """Send ``request`` and return its parsed reply."""
        self._send(request)
        try:
            return request.parse()
        except gear.AdminError as e:
            raise ServerError(e.code, e.message)
        except (gear.InvalidDataError, gear.GearmanError) as e:
            raise InvalidAdminClientState(
                'Unexpected reply to %r: %r (%s)'
                % (request.getCommand(), request.response, e))

    def _raw_line(self, request):
        """Send ``request``; return its one-line reply, raising on ERR."""
        self._parse(request)
        return _line(request)

    # python-gearman's commands

    def ping_server(self):
        """Round-trip an ECHO; returns the elapsed seconds (a float)."""
        conn = self._connection()
        start = time.time()
        try:
            echoed = conn.echo(ECHO_STRING, timeout=self.poll_timeout)
        except gear.TimeoutError:
            raise InvalidAdminClientState('No echo within %s seconds'
                                          % (self.poll_timeout,))
        except (gear.ConnectionError, OSError) as e:
            raise ConnectionError('Lost the connection to %r: %s'
                                  % (self.host_list[0], e))
        elapsed = time.time() - start
        if echoed != ECHO_STRING:
            raise InvalidAdminClientState('Echo mismatch: %r' % (echoed,))
        return elapsed

    def send_maxqueue(self, task, max_size):
        """Limit the queue of ``task`` to ``max_size`` jobs; returns 'OK'.
        """
        self._parse(gear_admin.MaxQueueAdminRequest(task, max_size))
        return 'OK'

    def send_shutdown(self, graceful=True):
        """Ask the server to shut down; raises ServerError if it refuses
        (gearmand >= 1.1.15 always does)."""
        self._parse(gear_admin.ShutdownAdminRequest(graceful))
        return None

    def get_status(self):
        """Per task: ``queued`` (queued plus running), ``running`` and
        ``workers``."""
        rows = self._parse(gear_admin.StatusAdminRequest())
        return tuple(dict(task=task, queued=total, running=running,
                          workers=workers)
                     for task, total, running, workers in rows)

    def get_version(self):
        """The raw reply line, e.g. ``'OK 1.1.20'``."""
        return self._raw_line(gear_admin.VersionAdminRequest())

    def get_workers(self):
        """Every connection: ``file_descriptor``, ``ip``, ``client_id`` and
        ``tasks`` (a tuple, empty for non-workers)."""
        rows = self._parse(gear_admin.WorkersAdminRequest())
        return tuple(dict(file_descriptor=str(fd), ip=ip,
                          client_id=client_id, tasks=tuple(tasks))
                     for fd, ip, client_id, tasks in rows)

    def get_pid(self):
        """The raw reply line, e.g. ``'OK 1234'``."""
        return self._raw_line(gear_admin.GetPidAdminRequest())

    def cancel_job(self, handle):
        """Cancel a job; returns the reply line (``'OK'`` or
        ``'ERR UNKNOWN_JOB'``) rather than raising."""
        request = gear_admin.CancelJobAdminRequest(handle)
        self._send(request)
        return _line(request)

    def get_jobs(self):
        """Every job: ``handle``, ``retries``, ``ignore_job`` and
        ``job_queued``.

        The same values also appear under python-gearman's misnamed keys
        ``queued`` (really retries), ``canceled`` (really ignore_job) and
        ``enabled`` (really job_queued); they are deprecated.
        """
        rows = self._parse(gear_admin.ShowJobsAdminRequest())
        return tuple(dict(handle=handle, retries=retries,
                          ignore_job=ignore_job, job_queued=job_queued,
                          queued=retries, canceled=ignore_job,
                          enabled=job_queued)
                     for handle, retries, ignore_job, job_queued in rows)

    def get_unique_jobs(self):
        """The unique id of every job, as ``{'unique': str}`` dicts."""
        rows = self._parse(gear_admin.ShowUniqueJobsAdminRequest())
        return tuple(dict(unique=unique) for unique in rows)

    # Commands python-gearman did not have

    def get_priority_status(self):
        """Per task: queued jobs by priority (``high``, ``normal``,
        ``low``) and ``workers``."""
        rows = self._parse(gear_admin.PriorityStatusAdminRequest())
        return tuple(dict(task=task, high=high, normal=normal, low=low,
                          workers=workers)
                     for task, high, normal, low, workers in rows)

    def get_verbose(self):
        """The server's log level name, e.g. ``'INFO'``."""
        return self._parse(gear_admin.VerboseAdminRequest())

    def create_function(self, task):
        """Make ``task`` known before any worker registers it; 'OK'."""
        self._parse(gear_admin.CreateFunctionAdminRequest(task))
        return 'OK'

    def drop_function(self, task):
        """Forget ``task`` (refused while it has workers or jobs); 'OK'."""
        self._parse(gear_admin.DropFunctionAdminRequest(task))
        return 'OK'
