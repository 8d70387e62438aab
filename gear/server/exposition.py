"""The Prometheus text exposition of a server snapshot.

A custom ``prometheus_client`` collector turns the plain data of
:func:`gear.server.metrics.snapshot` into metric families, so the server
itself never touches a prometheus_client object.  Names that the
existing Gearman exporters also publish (``gearman_up``,
``gearman_version_info``, ``gearman_jobs``, ``gearman_jobs_running``,
``gearman_jobs_waiting``, ``gearman_workers``) mean the same here, so
their dashboards and alerts keep working.

``prometheus_client`` is optional (``pip install gear[metrics]``); this
module imports it only when it is used.
"""

_INSTALL_HINT = ("the prometheus_client package is needed for /metrics "
                 "(pip install 'gear[metrics]')")


def available():
    """None if prometheus_client can be imported, else why not."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as e:
        return '%s: %s' % (_INSTALL_HINT, e)
    return None


#: The ``function`` label of the wait and run histograms that the
#: functions beyond a :class:`HistogramBudget` share.
OTHER_FUNCTIONS = '(other)'
#: How many functions get wait and run histograms of their own unless
#: told otherwise.
HISTOGRAM_FUNCTIONS = 1000


class HistogramBudget(object):
    """Which functions get wait and run histograms of their own.

    A function's two histograms are 42 series; a CI farm whose ten
    thousand functions all run jobs would expose 420,000 of them, more
    than a scrape or Prometheus should carry.  The first ``limit``
    functions a scrape finds with jobs keep their own histograms for the
    life of the server, so that no series ever moves between a function
    and the shared one; the rest are summed under
    ``function="(other)"``.  Sums over all functions stay right either
    way.  Counters and gauges are always per function.

    Used under :class:`gear.server.http.StatusSource`'s lock.
    """

    def __init__(self, limit=HISTOGRAM_FUNCTIONS):
        if limit < 0:
            raise ValueError('the histogram budget cannot be negative')
        self.limit = limit
        self._owners = set()

    def owns(self, name):
        """Whether function ``name`` has histograms of its own.  A
        function named ``(other)`` never has: its series would clash with
        the shared ones."""
        owners = self._owners
        if name in owners:
            return True
        if len(owners) < self.limit and name != OTHER_FUNCTIONS:
            owners.add(name)
            return True
        return False


class _Sum(object):
    """A histogram that several functions' observations add up to."""

    def __init__(self):
        self.bounds = self.cumulative = None
        self.sum = 0.0
        self.count = 0

    def add(self, hist):
        counts = [count for _, count in hist['buckets']]
        if self.cumulative is None:
            self.bounds = [bound for bound, _ in hist['buckets']]
            self.cumulative = counts
        else:
            self.cumulative = [a + b for a, b in zip(self.cumulative,
                                                     counts)]
        self.sum += hist['sum']
        self.count += hist['count']

    def histogram(self):
        return {'buckets': list(zip(self.bounds, self.cumulative)),
                'sum': self.sum, 'count': self.count}


def _cumulative(hist):
    buckets = [(repr(float(bound)), count)
               for bound, count in hist['buckets']]
    buckets.append(('+Inf', hist['count']))
    return buckets


class SnapshotCollector(object):
    """Yields the metric families of the snapshot ``source()`` returns.

    :arg budget: a :class:`HistogramBudget` (by default a fresh one,
        which is right for one scrape only).
    """

    def __init__(self, source, budget=None):
        self._source = source
        self._budget = budget if budget is not None else HistogramBudget()

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
        snap = self._source()
        if snap is None:
            yield GaugeMetricFamily('gearman_up',
                                    'Whether the job server answers.', 0)
            return
        yield GaugeMetricFamily('gearman_up',
                                'Whether the job server answers.',
                                1 if snap['up'] else 0)
        info = GaugeMetricFamily('gearman_version_info',
                                 'The job server version.',
                                 labels=['version'])
        info.add_metric([snap['version'] or 'unknown'], 1)
        yield info
        yield GaugeMetricFamily('gearman_uptime_seconds',
                                'Seconds since the job server started.',
                                snap['uptime'])

        fn = ['function']
        gauges = {
            'gearman_jobs': ('Jobs of a function, queued or running '
                             '(the "status" total).', 'total'),
            'gearman_jobs_running': ('Jobs of a function a worker holds.',
                                     'running'),
            'gearman_jobs_waiting': ('Jobs of a function not yet handed '
                                     'to a worker (scheduled ones '
                                     'included).', None),
            'gearman_jobs_scheduled': ('Jobs submitted with an epoch '
                                       'time still in the future.',
                                       'scheduled'),
            'gearman_workers': ('Worker connections that registered the '
                                'function.', 'workers'),
            'gearman_queue_oldest_age_seconds': (
                'How long the oldest queued job of a function has waited.',
                'oldest_age'),
        }
        families = {name: GaugeMetricFamily(name, doc, labels=fn)
                    for name, (doc, _) in gauges.items()}
        by_priority = GaugeMetricFamily(
            'gearman_jobs_queued', 'Queued jobs by function and priority.',
            labels=['function', 'priority'])
        submitted = CounterMetricFamily(
            'gearman_jobs_submitted', 'Jobs created, by priority.',
            labels=['function', 'priority'])
        counters = {
            'completed': ('gearman_jobs_completed',
                          'Jobs a worker finished with WORK_COMPLETE.'),
            'failed': ('gearman_jobs_failed',
                       'Jobs a worker finished with WORK_FAIL.'),
            'exception': ('gearman_jobs_exception',
                          'Jobs a worker finished with WORK_EXCEPTION.'),
            'requeued': ('gearman_jobs_requeued',
                         'Jobs given back to their queue after losing '
                         'their worker.'),
            'timed_out': ('gearman_jobs_timed_out',
                          'Jobs that overran their CAN_DO_TIMEOUT.'),
            'retries_exhausted': ('gearman_jobs_retries_exhausted',
                                  'Jobs failed by the server after '
                                  'losing their worker too often.'),
        }
        counter_families = {
            key: CounterMetricFamily(name, doc, labels=fn)
            for key, (name, doc) in counters.items()}
        wait = HistogramMetricFamily(
            'gearman_job_queue_wait_seconds',
            'Time from entering the queue to being handed to a worker.',
            labels=fn)
        run = HistogramMetricFamily(
            'gearman_job_run_seconds',
            'Time from being handed to a worker to its final result.',
            labels=fn)
        histograms = ((wait, 'wait_seconds'), (run, 'run_seconds'))
        owns = self._budget.owns
        others = {key: _Sum() for _, key in histograms}
        for f in snap['functions']:
            label = [f['name']]
            if not f['active']:
                # No job was ever submitted (a worker registered it):
                # only what the status command shows.
                families['gearman_jobs'].add_metric(label, 0)
                families['gearman_jobs_running'].add_metric(label, 0)
                families['gearman_jobs_waiting'].add_metric(label, 0)
                families['gearman_workers'].add_metric(label, f['workers'])
                continue
            for name, (_, key) in gauges.items():
                if key is None:
                    value = sum(f['queued'].values()) + f['scheduled']
                else:
                    value = f[key]
                families[name].add_metric(label, value)
            for priority, value in f['queued'].items():
                by_priority.add_metric([f['name'], priority], value)
            for priority, value in f['submitted'].items():
                submitted.add_metric([f['name'], priority], value)
            for key, family in counter_families.items():
                family.add_metric(label, f[key])
            if not owns(f['name']):
                for key, total in others.items():
                    total.add(f[key])
                continue
            for family, key in histograms:
                hist = f[key]
                family.add_metric(label, _cumulative(hist), hist['sum'])
        for family, key in histograms:
            total = others[key]
            if total.cumulative is not None:
                hist = total.histogram()
                family.add_metric([OTHER_FUNCTIONS], _cumulative(hist),
                                  hist['sum'])
        yield from families.values()
        yield by_priority
        yield submitted
        yield from counter_families.values()
        yield wait
        yield run

        roles = GaugeMetricFamily('gearman_connections',
                                  'Open connections by role.',
                                  labels=['role'])
        for role, count in sorted(snap['connections'].items()):
            roles.add_metric([role], count)
        yield roles
        io = snap['io']
        for name, key, doc in (
                ('gearman_packets_received', 'packets_in',
                 'Packets and admin lines received.'),
                ('gearman_packets_sent', 'packets_out',
                 'Packets queued for sending.'),
                ('gearman_received_bytes', 'bytes_in', 'Bytes received.'),
                ('gearman_sent_bytes', 'bytes_out', 'Bytes sent.')):
            yield CounterMetricFamily(name, doc, io[key])
        yield GaugeMetricFamily('gearman_output_queued_bytes',
                                'Bytes waiting in output buffers for '
                                'peers to read them.',
                                io['output_queued_bytes'])
        store = snap['store']
        hist = store['commit_seconds']
        commit = HistogramMetricFamily(
            'gearman_store_commit_seconds',
            'Time the job store took to commit a loop turn\'s writes.')
        commit.add_metric([], _cumulative(hist), hist['sum'])
        yield commit
        yield CounterMetricFamily('gearman_store_commit_failures',
                                  'Store commits that failed.',
                                  store['commit_failures'])


def render(snap, budget=None):
    """The text exposition of one snapshot, as bytes.

    :arg budget: the server's :class:`HistogramBudget`.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snap, budget))
    return generate_latest(registry)


def content_type():
    from prometheus_client import CONTENT_TYPE_LATEST
    return CONTENT_TYPE_LATEST
