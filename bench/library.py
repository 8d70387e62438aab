"""Load processes that use this project's own ``gear.Client`` and
``gear.Worker``.

``bench.loadgen`` drives servers with raw sockets so that the server is
what gets measured.  With ``--load library`` the same scenarios run with
these processes instead, which use the public API as an application
would: ``Client.submitJob`` from a few submitting threads, foreground
completions seen through the client's ``job_callback``, and a pool of threads
per worker calling ``Worker.getJob`` and ``sendWorkComplete``.  The
difference in ``client_cpu_us_per_job`` is then what the library costs
its user per job.

Each role returns the same result dictionary as its raw counterpart in
``bench.loadgen``, so the scenarios verify both kinds with one set of
checks.

Run as a module, it runs a single library client or worker in this
process against a fresh server, so that a profiler sees only the
library's side::

    python3 -m bench.library --scenario drain --n 50000 --cprofile out.prof
    py-spy record -o out.txt --format raw -- python3 -m bench.library
"""

import argparse
import array
import cProfile
import os
import sys
import threading
import time

if __package__ in (None, ''):  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))

import gear  # noqa: E402

# Scenarios that have a library load (deepqueue measures the server
# alone, so it only runs with the raw load).
SCENARIOS = ('submit-bg', 'drain', 'pipeline', 'roundtrip')

# Threads per client process that call submitJob().  submitJob() waits
# for JOB_CREATED, so this is how many submissions a process has in
# flight (never more than the raw window).
SUBMIT_THREADS = 8
CONNECT_TIMEOUT = 30.0
# How often an idle getJob() wakes up to see whether the run is over,
# and how often the worker's main thread looks at the shared progress.
GET_JOB_SLICE = 0.5
MONITOR_INTERVAL = 0.01
JOIN_TIMEOUT = 10.0


class LoadError(Exception):
    """A library load process failed (its message says how)."""


def _split(first, count, parts):
    """Cut [first, first+count) into ``parts`` contiguous ranges."""
    base, extra = divmod(count, parts)
    out = []
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((first, size))
        first += size
    return out


def _connect(role, host, port):
    role.addServer(host, port)
    try:
        role.waitForServer(timeout=CONNECT_TIMEOUT)
    except gear.TimeoutError:
        role.shutdown()
        raise LoadError('no connection to %s:%s within %.0f s'
                        % (host, port, CONNECT_TIMEOUT))


def _join(threads, deadline):
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(1 for t in threads if t.is_alive())
    if alive:
        raise LoadError('%d thread(s) did not finish' % alive)


_FINAL_EVENTS = {'complete': True, 'fail': False, 'exception': False,
                 'lost': False}


class LibrarySubmitter(object):
    """Submits jobs ``first .. first+count-1`` with one gear.Client.

    Background jobs count once submitJob() returns (JOB_CREATED came).
    Foreground jobs count when WORK_COMPLETE arrives; a semaphore keeps
    at most ``window`` of them unfinished, and their latency (just
    before submitJob() to completion) is recorded.  Uniques and payloads
    are those of the raw submitter.
    """

    def __init__(self, spec):
        self.fn = spec['fn']
        self.tag = spec['tag']
        self.first = spec['first']
        self.count = spec['count']
        self.payload = spec['payload']
        self.foreground = spec['foreground']
        self.stall_timeout = spec['stall_timeout']
        window = spec['window']
        self.threads = max(1, min(SUBMIT_THREADS, window, self.count))
        self._window = (threading.BoundedSemaphore(window)
                        if self.foreground else None)
        self.handles = []
        self.completed = 0
        self.latencies = array.array('d')
        self.errors = []
        self.t_end = None
        self._ends = []
        self._finished = threading.Event()
        self.client = gear.Client('bench-' + self.tag.decode(),
                                  job_callback=self._ended)
        _connect(self.client, spec['host'], spec['port'])

    def describe(self):
        return ('library submitter %s: %d/%d created, %d completed, '
                'errors %s' % (self.tag.decode(), len(self.handles),
                               self.count, self.completed, self.errors[:3]))

    def _ended(self, job, event, data):
        # The client's job_callback, in its poll thread: the only writer
        # of completed and latencies.
        ok = _FINAL_EVENTS.get(event)
        if ok is None:
            return
        now = time.perf_counter()
        if not ok:
            self.errors.append('job %s failed (disconnected: %s)'
                               % (job.unique, job.disconnected))
            self._finished.set()
            return
        self.latencies.append(now - job.sent)
        self.completed += 1
        self._window.release()
        if self.completed == self.count:
            self.t_end = time.monotonic()
            self._finished.set()

    def _submit(self, first, size):
        submit = self.client.submitJob
        fn, payload, tag = self.fn, self.payload, self.tag
        background = not self.foreground
        window = self._window
        handles = self.handles
        timeout = self.stall_timeout
        perf_counter = time.perf_counter
        try:
            for j in range(first, first + size):
                if self.errors:
                    return
                job = gear.Job(fn, payload, unique=tag + b'%09d' % j)
                if window is not None:
                    if not window.acquire(timeout=timeout):
                        raise LoadError('no completion for %.0f s'
                                        % timeout)
                    job.sent = perf_counter()
                submit(job, background=background, timeout=timeout)
                handles.append(job.handle)
        except Exception as e:
            self.errors.append('%s: %s' % (type(e).__name__, e))
            self._finished.set()
        finally:
            self._ends.append(time.monotonic())

    def run(self):
        if self.count:
            threads = [threading.Thread(target=self._submit, args=r,
                                        daemon=True)
                       for r in _split(self.first, self.count,
                                       self.threads)]
            for t in threads:
                t.start()
            self._wait(lambda: not any(t.is_alive() for t in threads))
            _join(threads, time.monotonic() + JOIN_TIMEOUT)
            if self.foreground:
                self._wait(self._finished.is_set)
            else:
                self.t_end = max(self._ends)
        if self.errors:
            raise LoadError(self.describe())

    def _wait(self, done):
        """Wait until ``done()``; fail after stall_timeout without
        progress."""
        last, last_change = -1, time.monotonic()
        while not done():
            if self.errors:
                raise LoadError(self.describe())
            self._finished.wait(0.05)
            seen = len(self.handles) + self.completed
            now = time.monotonic()
            if seen != last:
                last, last_change = seen, now
            elif now - last_change > self.stall_timeout:
                raise LoadError('no progress for %.0f s: %s'
                                % (self.stall_timeout, self.describe()))

    def result(self):
        created = len(self.handles)
        return {
            'role': 'submitter', 'count': self.count, 'created': created,
            'completed': self.completed if self.foreground else created,
            'distinct_handles': len(set(self.handles)),
            'latencies': self.latencies.tobytes(),
            'checkpoints': [], 't_end': self.t_end,
        }

    def close(self):
        self.client.shutdown()


class LibraryWorker(object):
    """Completes jobs with one gear.Worker until ``target`` are done
    overall.

    ``grab_window`` threads wait in getJob(); gear.Worker itself keeps
    at most one GRAB_JOB_UNIQ in flight per connection, but with several
    callers waiting it sends the next grab as soon as a job arrives.
    The main thread publishes progress in the same shared array as the
    raw workers use, and ends the run when the total reaches ``target``.
    """

    def __init__(self, spec, progress):
        self.fn = spec['fn']
        self.slot = spec['slot']
        self.target = spec['target']
        self.threads = spec['grab_window']
        self.stall_timeout = spec['stall_timeout']
        self.progress = progress
        self.uniques = []
        self.errors = []
        self.t_last = None
        self._stopping = False
        self._wake = threading.Event()
        self.worker = gear.Worker('bench-worker-%d' % self.slot)
        self.worker.registerFunction(self.fn)
        _connect(self.worker, spec['host'], spec['port'])

    def describe(self):
        return ('library worker %d: completed %d, overall %d/%d, errors %s'
                % (self.slot, len(self.uniques), sum(self.progress),
                   self.target, self.errors[:3]))

    def _work(self):
        get_job = self.worker.getJob
        uniques = self.uniques
        monotonic = time.monotonic
        try:
            while not self._stopping:
                try:
                    job = get_job(timeout=GET_JOB_SLICE)
                except gear.TimeoutError:
                    continue
                except gear.InterruptedError:
                    return
                job.sendWorkComplete(b'')
                uniques.append(job.unique)
                self.t_last = monotonic()
        except Exception as e:
            self.errors.append('%s: %s' % (type(e).__name__, e))
            self._wake.set()

    def run(self):
        threads = [threading.Thread(target=self._work, daemon=True)
                   for _ in range(self.threads)]
        for t in threads:
            t.start()
        last, last_change = -1, time.monotonic()
        try:
            while True:
                if self.errors:
                    raise LoadError(self.describe())
                # Only this thread publishes the count, so it never goes
                # backwards.
                self.progress[self.slot] = len(self.uniques)
                seen = sum(self.progress)
                if seen >= self.target:
                    break
                now = time.monotonic()
                if seen != last:
                    last, last_change = seen, now
                elif now - last_change > self.stall_timeout:
                    raise LoadError('no progress for %.0f s: %s'
                                    % (self.stall_timeout, self.describe()))
                self._wake.wait(MONITOR_INTERVAL)
        finally:
            self._stopping = True
            self.worker.stopWaitingForJobs()
        _join(threads, time.monotonic() + JOIN_TIMEOUT)
        if self.errors:
            raise LoadError(self.describe())
        # The server answers in order: once the echo is back, it has
        # processed every WORK_COMPLETE sent before it.
        try:
            self.worker.getConnection().echo(timeout=self.stall_timeout)
        except (gear.GearmanError, gear.ConnectionError, OSError) as e:
            raise LoadError('no echo after the last completion: %s' % e)
        except gear.TimeoutError:
            raise LoadError('no echo after the last completion within %.0f'
                            ' s (does the server answer ECHO_REQ?)'
                            % self.stall_timeout)

    def result(self):
        return {'role': 'worker', 'completed': len(self.uniques),
                'uniques': self.uniques, 't_end': self.t_last}

    def close(self):
        self.worker.shutdown()


def make_role(spec, progress):
    """The library role for one load-process ``spec`` of bench.loadgen,
    connected and ready to ``run()``."""
    if spec['kind'] == 'submitter':
        return LibrarySubmitter(spec)
    return LibraryWorker(spec, progress)


# -- one role in this process, for profiling ----------------------------------

def _profile_new_threads(profiles):
    """Give every thread started from now on its own cProfile.Profile."""
    def first_call(*args):
        sys.setprofile(None)
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()
    threading.setprofile(first_call)


def _profile_main(argv=None):
    from bench import loadgen
    from bench import servers as servers_mod
    p = argparse.ArgumentParser(
        prog='python3 -m bench.library',
        description='Run one gear.Client (submit-bg, pipeline: its jobs'
        ' are completed by raw workers) or one gear.Worker (drain: the'
        ' jobs are preloaded raw) in this process, for profiling.')
    p.add_argument('--scenario', default='submit-bg',
                   choices=('submit-bg', 'drain', 'pipeline'))
    p.add_argument('--server', default='geard',
                   choices=servers_mod.KNOWN_SERVERS[:3])
    p.add_argument('--n', type=int, default=50000)
    p.add_argument('--window', type=int, default=100)
    p.add_argument('--grab-window', type=int, default=4)
    p.add_argument('--cprofile', metavar='FILE',
                   help='write merged cProfile stats of every thread')
    args = p.parse_args(argv)
    opts = loadgen.parse_args(['--n', str(args.n)])
    opts.load = 'raw'
    fn = b'bench-profile-%s' % opts.run_token.encode()
    profiles = []
    with servers_mod.make_server(args.server) as server:
        base = dict(host=server.host, port=server.port,
                    stall_timeout=opts.stall_timeout)
        helper = None
        if args.scenario == 'drain':
            loadgen.run_phase(server, loadgen.submitter_specs(
                fn, args.n, 4, args.window, opts.payload_bytes, False),
                opts)
            spec = dict(base, kind='worker', fn=fn, slot=0,
                        target=args.n, grab_window=args.grab_window)
        else:
            foreground = args.scenario == 'pipeline'
            spec = dict(base, kind='submitter', fn=fn, tag=b'c00-',
                        first=0, count=args.n, window=args.window,
                        payload=opts.payload_bytes, foreground=foreground)
            if foreground:
                helper = threading.Thread(
                    target=loadgen.run_phase, daemon=True,
                    args=(server, loadgen.worker_specs(
                        fn, 4, args.grab_window, args.n), opts))
                helper.start()
        if args.cprofile:
            _profile_new_threads(profiles)
            main_prof = cProfile.Profile()
            profiles.append(main_prof)
            main_prof.enable()
        progress = array.array('q', [0])
        role = make_role(spec, progress)
        times0, t0 = os.times(), time.monotonic()
        role.run()
        times1, wall = os.times(), time.monotonic() - t0
        role.close()
        if args.cprofile:
            main_prof.disable()
            threading.setprofile(None)
        if helper is not None:
            helper.join(60)
    user = (times1.user - times0.user) * 1e6 / args.n
    system = (times1.system - times0.system) * 1e6 / args.n
    print('%s against %s: %d jobs in %.2f s; CPU per job in this process:'
          ' %.1f us user + %.1f us system' % (
              args.scenario, args.server, args.n, wall, user, system))
    if args.cprofile:
        import pstats
        stats = pstats.Stats(profiles[0])
        for prof in profiles[1:]:
            stats.add(prof)
        stats.dump_stats(args.cprofile)
        stats.sort_stats('tottime').print_stats(25)
    return 0


if __name__ == '__main__':
    sys.exit(_profile_main())
