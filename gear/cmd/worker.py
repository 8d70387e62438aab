"""gear-worker: serve Gearman jobs with any shell command.

For every job, COMMAND runs with the job data on its standard input; what
it writes to standard output becomes the result (WORK_COMPLETE), or a
stream of WORK_DATA chunks with ``--stream``.  A non-zero exit sends
WORK_FAIL and prints the command's standard error.  Jobs run one at a
time.  The worker says on stderr what it serves and where when it
starts, and how many jobs it ran when it stops.

With ``--timeout-ms`` the command is killed when the server's time limit
for the job runs out: by then the job is another worker's.

SIGTERM or SIGINT stops the worker once the running command has
finished and its result is sent; a second signal kills the command and
leaves the job to the server, which gives it to another worker.
"""

import argparse
import logging
import os
import shutil
import shlex
import signal
import socket
import subprocess
import sys
import threading

from gear.cmd import _common as common
from gear.errors import InterruptedError, TimeoutError
from gear.worker import Worker

PROG = 'gear-worker'
# getJob() wakes this often to notice a stop request.
POLL_INTERVAL = 1.0
# Bytes of a failing command's stderr that are shown.
STDERR_LOG_LIMIT = 4000
# How runJob() says a job ended.
DONE, FAILED, LEFT = 'done', 'failed', 'left to the server'

log = logging.getLogger('gear-worker')


class CommandResult(object):
    """How one run of the command ended."""

    __slots__ = ('returncode', 'stdout', 'stderr', 'error', 'killed',
                 'timed_out')

    def __init__(self, returncode=None, stdout=b'', stderr=b'', error=None,
                 killed=False, timed_out=False):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.error = error
        self.killed = killed
        self.timed_out = timed_out

    @property
    def ok(self):
        return self.error is None and not self.killed and \
            self.returncode == 0


class CommandRunner(object):
    """Run the command for one job, feeding stdin and reading output.

    Output is read in chunks as the command writes it, so that
    ``on_chunk`` (``--stream``) can forward it while the command runs.
    The command gets its own session, so a terminal's Ctrl-C reaches
    only the worker, which then lets the command finish.
    """

    def __init__(self, command, read_size=65536):
        self.command = list(command)
        self.read_size = read_size
        self._lock = threading.Lock()
        self._process = None

    def run(self, data, env=None, on_chunk=None, timeout=None):
        """Run the command once; with ``timeout`` (seconds) it is killed
        when it runs longer."""
        try:
            process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as e:
            return CommandResult(error='cannot run %s: %s' % (
                self.command[0], common.exception_reason(e)))
        with self._lock:
            self._process = process
        stderr_chunks = []
        feeder = threading.Thread(target=self._feed,
                                  args=(process.stdin, data))
        drainer = threading.Thread(target=self._drain,
                                   args=(process.stderr, stderr_chunks))
        for thread in (feeder, drainer):
            thread.daemon = True
            thread.start()
        expired = threading.Event()
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self._expire, (expired,))
            timer.daemon = True
            timer.start()
        stdout_chunks = []
        fd = process.stdout.fileno()
        while True:
            chunk = os.read(fd, self.read_size)
            if not chunk:
                break
            if on_chunk is not None:
                on_chunk(chunk)
            else:
                stdout_chunks.append(chunk)
        process.stdout.close()
        returncode = process.wait()
        if timer is not None:
            timer.cancel()
        feeder.join()
        drainer.join()
        with self._lock:
            killed = self._process is None
            self._process = None
        return CommandResult(returncode, b''.join(stdout_chunks),
                             b''.join(stderr_chunks), killed=killed,
                             timed_out=killed and expired.is_set())

    def _expire(self, expired):
        expired.set()
        self.kill()

    @staticmethod
    def _feed(pipe, data):
        try:
            if data:
                pipe.write(data)
        except (BrokenPipeError, OSError):
            # The command did not read all of its input: its business.
            pass
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    @staticmethod
    def _drain(pipe, chunks):
        try:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            pipe.close()

    def kill(self):
        """Kill the running command (its whole process group)."""
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            try:
                process.kill()
            except OSError:
                pass


def job_environment(job, base=None):
    """The command's environment: ours plus the job's identity."""
    env = dict(os.environ if base is None else base)
    env['GEAR_FUNCTION'] = job.binary_name.decode('utf-8', 'replace')
    env['GEAR_HANDLE'] = job.handle.decode('utf-8', 'replace')
    if job.binary_unique:
        env['GEAR_UNIQUE'] = job.binary_unique.decode('utf-8', 'replace')
    else:
        env.pop('GEAR_UNIQUE', None)
    return env


def split_command(argv):
    """Split ``argv`` at the first ``--`` into (options, command)."""
    if '--' in argv:
        index = argv.index('--')
        return argv[:index], argv[index + 1:]
    return argv, None


def _timeout_ms(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            '%r is not a number of milliseconds' % text)
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage='%(prog)s -f FUNCTION [-f FUNCTION ...] [options] -- '
              'COMMAND [ARGS ...]',
        description='Serve Gearman jobs by running COMMAND once per job, '
                    'with the job data on its standard input. Its standard '
                    'output is the result; a non-zero exit fails the job. '
                    'The command sees GEAR_FUNCTION, GEAR_HANDLE and '
                    'GEAR_UNIQUE in its environment.',
        epilog=common.EXIT_STATUS_HELP + '\nSIGTERM or SIGINT: stop after '
        'the running job; a second one kills the command.\n',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-f', '--function', action='append', required=True,
                        dest='functions', metavar='FUNCTION',
                        help='function to serve (repeat for several)')
    parser.add_argument('--count', type=common.positive_int, metavar='N',
                        help='exit after N jobs')
    parser.add_argument('--client-id',
                        help='name shown by the server (default '
                             'gear-worker:HOST:PID)')
    parser.add_argument('--timeout-ms', type=_timeout_ms, metavar='MS',
                        help='register with CAN_DO_TIMEOUT: the server '
                             'gives a job to another worker after MS '
                             'milliseconds, and the command is killed then')
    parser.add_argument('--stream', action='store_true',
                        help='send output as WORK_DATA chunks while the '
                             'command runs')
    common.add_connect_timeout_argument(parser)
    common.add_server_arguments(parser)
    common.add_verbose_argument(parser)
    common.add_version_argument(parser)
    return parser


def parse_args(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    options, command = split_command(list(argv))
    parser = build_parser()
    args = parser.parse_args(options)
    if not command:
        parser.error('give the command to run after --')
    if shutil.which(command[0]) is None:
        parser.error('command not found: %s' % command[0])
    args.command = command
    if not args.client_id:
        args.client_id = '%s:%s:%d' % (PROG, socket.gethostname(),
                                       os.getpid())
    return args


class CommandWorker(object):
    """Take jobs one by one and answer them with the command's output."""

    def __init__(self, worker, runner, count=None, stream=False,
                 timeout_ms=None):
        self.worker = worker
        self.runner = runner
        self.count = count
        self.stream = stream
        # The server gives the job to another worker after this long, so
        # a command still running then is wasted work: kill it.
        self.timeout_ms = timeout_ms
        self.done = 0
        #: How many jobs ended each way other than DONE.
        self.outcomes = {FAILED: 0, LEFT: 0}
        self.stopping = threading.Event()
        self.signals = 0
        self.signal_name = None

    def request_stop(self, signum=None, frame=None):
        """Signal handler: finish the current job, then exit."""
        self.signals += 1
        if signum is not None and self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        self.stopping.set()
        if self.signals > 1:
            log.warning('second signal: killing the command')
            self.runner.kill()
        # Interrupt a waiting getJob() from another thread: it takes
        # locks the interrupted main thread may hold.
        thread = threading.Thread(target=self.worker.stopWaitingForJobs)
        thread.daemon = True
        thread.start()

    def serve(self):
        while not self.stopping.is_set():
            if self.count is not None and self.done >= self.count:
                break
            try:
                job = self.worker.getJob(timeout=POLL_INTERVAL)
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            try:
                outcome = self.runJob(job)
            except Exception as e:
                # Most likely the connection dropped while answering;
                # the server gives the job to another worker.
                log.error('job %s: could not send the result: %s',
                          job.handle.decode('utf-8', 'replace'), e)
                outcome = LEFT
            self.done += 1
            if outcome in self.outcomes:
                self.outcomes[outcome] += 1
        return common.EXIT_OK

    def summary(self):
        """Why the worker stopped and what it did, in one line."""
        if self.signal_name:
            why = 'on %s' % self.signal_name
        elif self.count is not None and self.done >= self.count:
            why = 'after --count %d' % self.count
        else:
            why = 'on request'
        jobs = '%d job%s' % (self.done, '' if self.done == 1 else 's')
        others = ['%d %s' % (n, how) for how, n in self.outcomes.items()
                  if n]
        if others:
            jobs += ' (%s)' % ', '.join(others)
        return 'stopped %s: ran %s' % (why, jobs)

    def runJob(self, job):
        handle = job.handle.decode('utf-8', 'replace')
        log.info('running job %s (%s)', handle,
                 job.binary_name.decode('utf-8', 'replace'))
        on_chunk = job.sendWorkData if self.stream else None
        timeout = self.timeout_ms / 1000.0 if self.timeout_ms else None
        result = self.runner.run(bytes(job.binary_arguments),
                                 env=job_environment(job),
                                 on_chunk=on_chunk, timeout=timeout)
        if result.timed_out:
            log.warning('job %s: command still running after --timeout-ms '
                        '%d; killed it, the server gives the job to another '
                        'worker', handle, self.timeout_ms)
            return LEFT
        if result.killed:
            log.warning('job %s: command killed; the server will give the '
                        'job to another worker', handle)
            return LEFT
        if result.error is not None:
            log.error('job %s: %s', handle, result.error)
            job.sendWorkException(result.error.encode('utf-8', 'replace'))
            return FAILED
        if result.returncode == 0:
            if result.stderr:
                log.info('job %s: stderr%s', handle,
                         _stderr_text(result.stderr))
            job.sendWorkComplete(result.stdout)
            return DONE
        if result.returncode < 0:
            how = 'was killed by signal %d' % -result.returncode
        else:
            how = 'exited with status %d' % result.returncode
        log.warning('job %s: %s %s%s', handle, self.runner.command[0], how,
                    _stderr_text(result.stderr))
        job.sendWorkFail()
        return FAILED


def _stderr_text(data):
    """A command's stderr for a message: after ``: `` when it is one
    line, else as indented lines below it."""
    text = data.decode('utf-8', 'replace').strip()
    if len(text) > STDERR_LOG_LIMIT:
        text = text[:STDERR_LOG_LIMIT] + '...'
    if not text:
        return ''
    lines = text.splitlines()
    if len(lines) == 1:
        return ': ' + lines[0]
    return ':\n' + '\n'.join('    ' + line for line in lines)


def _main(argv):
    args = parse_args(argv)
    common.setup_logging(PROG, args.verbose)
    target = common.ServerTarget(args, connect_timeout=args.connect_timeout)
    worker = Worker(client_id=args.client_id)
    for name in args.functions:
        worker.registerFunction(name, timeout=args.timeout_ms)
    runner = CommandRunner(args.command)
    serving = CommandWorker(worker, runner, count=args.count,
                            stream=args.stream, timeout_ms=args.timeout_ms)
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, serving.request_stop)
    try:
        target.attach(worker, args.client_id)
        common.say(PROG, 'serving %s on %s as %s with: %s' % (
            ', '.join(args.functions), target.address, args.client_id,
            shlex.join(args.command)))
        status = serving.serve()
        common.say(PROG, serving.summary())
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        worker.shutdown()


def main(argv=None):
    """Console entry point of ``gear-worker``."""
    return common.run_main(PROG, lambda: _main(argv))


if __name__ == '__main__':
    sys.exit(main())
