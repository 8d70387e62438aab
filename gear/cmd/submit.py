"""gear-submit: run Gearman jobs from the shell and print their results.

Each data argument is one job; without arguments standard input is one
job, or one job per line with ``--lines``.  Results are written to
standard output as raw bytes, in submission order, streaming WORK_DATA
chunks of the oldest unfinished job as they arrive.  Many jobs are kept
in flight at once (``--window``), so large batches do not wait for one
round trip per job.

Before waiting for results, the server's ``status`` tells whether any
worker has registered the function: if none has, nothing is submitted
unless ``--wait-for-worker`` says to queue the jobs and wait anyway.
With ``--lines`` every input line gets one output line, a job without a
result gets a marker such as ``[lost]`` on its line, and a summary
("N done, M failed, K lost") ends the run on stderr.
"""

import argparse
import collections
import os
import queue
import sys
import time

from gear import admin as gear_admin
from gear import constants
from gear.client import Client
from gear.cmd import _common as common
from gear.connection import SubmitJobTask
from gear.errors import (
    AdminError, ConfigurationError, GearmanError, InvalidDataError,
    NoConnectedServersError, TimeoutError)
from gear.job import Job

PROG = 'gear-submit'
DEFAULT_WINDOW = 100
# How long the server may take to accept a job (JOB_CREATED).
DEFAULT_ACCEPT_TIMEOUT = 30.0
# Below this many jobs, --lines shows no progress bar unless asked to.
PROGRESS_MIN_JOBS = 50

# What --lines writes on the line of a job that has no result.
MARK_FAILED = b'[failed]'
MARK_EXCEPTION = b'[exception]'
MARK_LOST = b'[lost]'
MARK_TIMED_OUT = b'[timed out]'
MARK_NOT_SUBMITTED = b'[not submitted]'

PRIORITIES = {
    'high': constants.PRECEDENCE_HIGH,
    'normal': constants.PRECEDENCE_NORMAL,
    'low': constants.PRECEDENCE_LOW,
}


class SubmitClient(Client):
    """A Client that reports job updates as events on a queue.

    The poll thread updates jobs; the main thread writes output.  Events
    are ``(kind, job, payload)`` with kind one of the Client's job events:
    data, warning, status, complete, fail, exception, lost.
    """

    def __init__(self, client_id):
        super(SubmitClient, self).__init__(client_id=client_id,
                                           exceptions=True)
        self.events = queue.Queue()
        #: id(job) -> (code, text) of the ERROR that refused it.
        self.refusals = {}

    def handleJobEvent(self, job, event, data):
        if event == 'status':
            data = (job.numerator, job.denominator)
        # The payload travels in the event; do not keep a copy.
        del job.data[:]
        self.events.put((event, job, data))

    def handleError(self, packet):
        task = super(SubmitClient, self).handleError(packet)
        if isinstance(task, SubmitJobTask) and task.error is not None:
            self.refusals[id(task.job)] = task.error
        return task


class JobRecord(object):
    """One submitted job and what is known about its outcome."""

    __slots__ = ('number', 'job', 'chunks', 'finished', 'deadline', 'mark')

    def __init__(self, number, job):
        self.number = number
        self.job = job
        self.chunks = []
        self.finished = False
        self.deadline = None
        #: Written on the job's --lines line when it has no result.
        self.mark = b''


class OrderedOutput(object):
    """Write results in submission order while they stream in.

    Chunks of the oldest unfinished job are written at once; chunks of
    later jobs wait until every earlier job has finished.  ``separator``
    is written after each finished job (a newline with ``--lines``, so
    output line N belongs to input line N); before it, the record's
    ``mark`` says why a job has no result, so that an empty result and
    a lost job do not look alike.
    """

    def __init__(self, write, separator=b''):
        self.write = write
        self.separator = separator
        self._queue = collections.deque()

    def __len__(self):
        return len(self._queue)

    def add(self, record):
        self._queue.append(record)
        self._advance()

    def data(self, record, chunk):
        if not chunk:
            return
        if self._queue and self._queue[0] is record:
            self.write(chunk)
        else:
            record.chunks.append(chunk)

    def finish(self, record):
        record.finished = True
        self._advance()

    def _advance(self):
        while self._queue:
            head = self._queue[0]
            if head.chunks:
                for chunk in head.chunks:
                    self.write(chunk)
                head.chunks = []
            if not head.finished:
                return
            self._queue.popleft()
            if self.separator:
                self.write(head.mark + self.separator)


def _clock_text(seconds):
    seconds = int(seconds)
    return '%d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60,
                             seconds % 60)


class ProgressBar(object):
    """``[#####-----] done/total pct rate`` redrawn in place on a stream.
    """

    width = 30

    def __init__(self, total, stream, enabled=True, clock=time.monotonic,
                 interval=0.1):
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.clock = clock
        self.interval = interval
        self.start = clock()
        self.done = 0
        self._drawn = ''
        self._drawn_done = None
        self._last = None

    def render(self, done, elapsed):
        """The bar for ``done`` jobs after ``elapsed`` seconds."""
        total = self.total
        fraction = min(1.0, float(done) / total) if total > 0 else 1.0
        filled = int(fraction * self.width)
        rate = done / elapsed if elapsed > 0 else 0.0
        text = '[%s%s] %d/%d %3d%% %.1f jobs/s' % (
            '#' * filled, '-' * (self.width - filled), done, total,
            int(fraction * 100), rate)
        if 0 < rate and done < total:
            text += ' eta %s' % _clock_text((total - done) / rate)
        return text

    def update(self, done, force=False):
        self.done = done
        if not self.enabled:
            return
        now = self.clock()
        if not force and self._last is not None and \
                now - self._last < self.interval and done < self.total:
            return
        self._last = now
        self._drawn_done = done
        self._draw(self.render(done, now - self.start))

    def _draw(self, text):
        pad = ' ' * max(0, len(self._drawn) - len(text))
        self.stream.write('\r' + text + pad)
        self.stream.flush()
        self._drawn = text

    def message(self, text):
        """Print a line on the stream without garbling the bar."""
        if self.enabled and self._drawn:
            self.stream.write('\r' + ' ' * len(self._drawn) + '\r')
        self.stream.write(text + '\n')
        if self.enabled and self._drawn:
            self.stream.write(self._drawn)
        self.stream.flush()

    def close(self):
        if self.enabled:
            if self._drawn_done != self.done:
                self.update(self.done, force=True)
            self.stream.write('\n')
            self.stream.flush()
            self.enabled = False


def split_lines(data):
    """One job per line: drop each terminator (``\\n`` or ``\\r\\n``)."""
    if not data:
        return []
    lines = data.split(b'\n')
    if lines[-1] == b'':
        lines.pop()
    return [line[:-1] if line.endswith(b'\r') else line for line in lines]


def job_inputs(args, stdin):
    """The data of every job to submit, as bytes."""
    if args.data:
        # fsencode: arguments that are not UTF-8 go through unchanged.
        return [os.fsencode(item) for item in args.data]
    if args.no_input:
        return [b'']
    data = stdin.buffer.read() if hasattr(stdin, 'buffer') else \
        stdin.read()
    if args.lines:
        return split_lines(data)
    return [data]


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Submit Gearman jobs and print their results. Each '
                    'DATA argument is one job; with none, standard input '
                    'is one job (or one per line with --lines).',
        epilog=common.EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-f', '--function', required=True,
                        help='function to call')
    parser.add_argument('data', nargs='*', metavar='DATA',
                        help='job data (one job each)')
    parser.add_argument('--lines', action='store_true',
                        help='read standard input as one job per line; '
                             'each result is printed followed by a newline')
    parser.add_argument('-s', '--no-input', action='store_true',
                        help='submit one job with empty data; do not read '
                             'standard input')
    parser.add_argument('-b', '--background', action='store_true',
                        help='do not wait for results; print each job '
                             'handle')
    parser.add_argument('--priority', choices=sorted(PRIORITIES),
                        default='normal', help='job priority')
    parser.add_argument('-u', '--unique', metavar='U',
                        help='unique id (jobs with the same one coalesce)')
    parser.add_argument('--when', type=common.non_negative_number,
                        metavar='EPOCH',
                        help='run no earlier than this Unix time '
                             '(implies --background)')
    parser.add_argument('--timeout', type=common.positive_number,
                        metavar='SECONDS',
                        help='give up on a job not finished this long '
                             'after it was submitted (default: wait)')
    parser.add_argument('--wait-for-worker', action='store_true',
                        help='submit and wait even when no worker has '
                             'registered the function yet (without it, '
                             'gear-submit says so and exits with 1)')
    common.add_connect_timeout_argument(parser)
    parser.add_argument('--window', type=common.positive_int,
                        default=DEFAULT_WINDOW, metavar='N',
                        help='jobs in flight at once (default '
                             '%(default)s)')
    parser.add_argument('--progress', action='store_true',
                        help='show a progress bar on stderr (shown by '
                             'default for --lines batches when stderr is a '
                             'terminal)')
    parser.add_argument('--client-id', default=PROG,
                        help='name shown by the server (default '
                             '%(default)s)')
    common.add_server_arguments(parser)
    common.add_verbose_argument(parser)
    common.add_version_argument(parser)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.when is not None:
        if args.priority != 'normal':
            parser.error('--when needs normal priority')
        args.background = True
    if args.data and (args.lines or args.no_input):
        parser.error('DATA arguments cannot be combined with --lines or '
                     '--no-input')
    if args.unique is not None and not args.unique:
        parser.error('--unique must not be empty')
    return args


class Submitter(object):
    """Submit every job with a bounded window and collect the outcomes."""

    def __init__(self, client, args, inputs, progress, output, address):
        self.client = client
        self.args = args
        self.inputs = inputs
        self.progress = progress
        self.output = output
        self.address = address
        self.pending = {}
        self.finished = 0
        self.failed = 0
        self.lost = 0
        self.single = len(inputs) == 1
        self.precedence = PRIORITIES[args.priority]
        self.accept_timeout = min(args.timeout or DEFAULT_ACCEPT_TIMEOUT,
                                  DEFAULT_ACCEPT_TIMEOUT)

    # Messages

    def _label(self, record):
        name = 'the job' if self.single else 'job %d' % record.number
        handle = record.job.handle
        if handle:
            name += ' (%s)' % handle.decode('utf-8', 'replace')
        return name

    def _say(self, text):
        self.progress.message('%s: %s' % (PROG, text))

    # Outcomes

    def _finish(self, record, failed=False, lost=False, mark=b''):
        self.pending.pop(id(record.job), None)
        self.finished += 1
        if lost:
            self.lost += 1
        elif failed:
            self.failed += 1
        record.mark = mark
        if self.output is not None:
            self.output.finish(record)
        self.progress.update(self.finished)

    def _handle(self, event):
        kind, job, payload = event
        record = self.pending.get(id(job))
        if record is None:
            return
        if kind == 'data':
            self.output.data(record, payload)
        elif kind == 'complete':
            self.output.data(record, payload)
            self._finish(record)
        elif kind == 'warning':
            self._say('%s warns: %s' % (self._label(record),
                                        payload.decode('utf-8', 'replace')))
        elif kind == 'fail':
            self._say('%s failed' % self._label(record))
            self._finish(record, failed=True, mark=MARK_FAILED)
        elif kind == 'exception':
            text = (payload or b'').decode('utf-8', 'replace').strip()
            self._say('%s failed with an exception%s'
                      % (self._label(record), ': ' + text if text else ''))
            self._finish(record, failed=True, mark=MARK_EXCEPTION)
        elif kind == 'lost':
            self._say('%s did not finish: lost the connection to %s'
                      % (self._label(record), self.address))
            self._finish(record, lost=True, mark=MARK_LOST)

    def _expire(self, now):
        for record in list(self.pending.values()):
            if record.deadline is not None and record.deadline <= now:
                self._say('%s did not finish within %g s'
                          % (self._label(record), self.args.timeout))
                self._finish(record, failed=True, mark=MARK_TIMED_OUT)

    def _wait(self, block):
        """Handle queued events; with ``block``, wait for at least one."""
        events = self.client.events
        while True:
            timeout = None
            if block:
                deadlines = [r.deadline for r in self.pending.values()
                             if r.deadline is not None]
                if deadlines:
                    timeout = max(0.0, min(deadlines) - time.monotonic())
            try:
                event = events.get(block=block, timeout=timeout)
            except queue.Empty:
                self._expire(time.monotonic())
                return
            self._handle(event)
            block = False

    def summary(self):
        """"N done, M failed, K lost" (submitted/refused for -b)."""
        if self.args.background:
            return '%d submitted, %d refused' % (
                self.finished - self.failed, self.failed)
        return '%d done, %d failed, %d lost' % (
            self.finished - self.failed - self.lost, self.failed, self.lost)

    # Submitting

    def _submit(self, number, data):
        args = self.args
        job = Job(args.function, data, args.unique)
        record = JobRecord(number, job)
        if not args.background:
            self.pending[id(job)] = record
            self.output.add(record)
        try:
            self.client.submitJob(job, background=args.background,
                                  precedence=self.precedence,
                                  timeout=self.accept_timeout,
                                  when=args.when)
        except NoConnectedServersError:
            raise common.CliError('lost the connection to %s' % self.address,
                                  common.EXIT_CONNECTION)
        except GearmanError:
            refusal = self.client.refusals.pop(id(job), None)
            if refusal is not None:
                code, text = refusal
                reason = 'the server refused it: %s%s' % (
                    code.decode('utf-8', 'replace'),
                    ' ' + text.decode('utf-8', 'replace') if text else '')
            else:
                reason = 'the server did not accept it within %g s' % (
                    self.accept_timeout)
            self._say('%s was not submitted: %s' % (self._label(record),
                                                    reason))
            if args.background:
                self.finished += 1
                self.failed += 1
                self.progress.update(self.finished)
            else:
                self._finish(record, failed=True, mark=MARK_NOT_SUBMITTED)
            return
        except ConfigurationError as e:
            raise common.CliError(str(e), common.EXIT_USAGE)
        if args.background:
            common.write_bytes(job.handle + b'\n')
            self.finished += 1
            self.progress.update(self.finished)
        elif args.timeout and not record.finished:
            record.deadline = time.monotonic() + args.timeout

    def run(self):
        window = self.args.window
        for number, data in enumerate(self.inputs, 1):
            while len(self.pending) >= window:
                self._wait(block=True)
            self._wait(block=False)
            self._submit(number, data)
        while self.pending:
            self._wait(block=True)
        self.progress.close()
        if self.args.lines:
            self._say(self.summary())
        if self.lost:
            return common.EXIT_CONNECTION
        if self.failed:
            return common.EXIT_FAILED
        return common.EXIT_OK


def registered_workers(client, function, timeout):
    """Workers the server counts for ``function`` (admin ``status``), or
    None when the server does not say."""
    request = gear_admin.StatusAdminRequest()
    try:
        client.getConnection().sendAdminRequest(request, timeout=timeout)
        rows = request.parse()
    except (AdminError, InvalidDataError, TimeoutError, GearmanError,
            OSError):
        return None
    for row in rows:
        if row[0] == function:
            return row[3]
    return 0


def check_workers(client, args, target, progress):
    """Say so when no worker serves the function, and stop unless
    ``--wait-for-worker``: otherwise the jobs would wait silently."""
    workers = registered_workers(client, args.function,
                                 args.connect_timeout)
    if workers is None or workers > 0:
        return
    text = 'no worker has registered %s on %s' % (
        args.function, target.address)
    if not args.wait_for_worker:
        raise common.CliError(text + '; nothing submitted (use '
                              '--wait-for-worker to queue and wait)')
    progress.message('%s: %s yet; waiting for one' % (PROG, text))


def _main(argv):
    args = parse_args(argv)
    common.setup_logging(PROG, args.verbose)
    target = common.ServerTarget(args, connect_timeout=args.connect_timeout)
    inputs = job_inputs(args, sys.stdin)
    show_progress = args.progress or (
        args.lines and len(inputs) >= PROGRESS_MIN_JOBS and
        sys.stderr.isatty())
    progress = ProgressBar(len(inputs), sys.stderr, enabled=show_progress)
    output = OrderedOutput(common.write_bytes,
                           b'\n' if args.lines else b'')
    client = SubmitClient(args.client_id)
    try:
        target.attach(client, args.client_id)
        if not args.background and inputs:
            check_workers(client, args, target, progress)
        submitter = Submitter(client, args, inputs, progress, output,
                              target.address)
        return submitter.run()
    finally:
        progress.close()
        client.shutdown()


def main(argv=None):
    """Console entry point of ``gear-submit``."""
    return common.run_main(PROG, lambda: _main(argv))


if __name__ == '__main__':
    sys.exit(main())
