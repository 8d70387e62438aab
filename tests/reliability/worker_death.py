"""Workers that are killed in the middle of jobs, under a test's control.

Each worker process speaks the raw protocol and asks its parent before
every step of a job, so the parent decides precisely where a SIGKILL
lands:

* ``before``: the job was assigned, no work was done;
* ``after``: the work was done but WORK_COMPLETE was never sent (the
  only case where running the job again is a visible duplicate);
* ``racing``: WORK_COMPLETE is being sent as the kill arrives; the server
  may or may not have read it.

The parent (:class:`KillController`) keeps the books: assignments, work
done, kills by kind, and the outcome every client saw.
"""

import multiprocessing.connection
import select
import threading
import time

from gear import constants as C
from tests.reliability import crash, peers

STEP_TIMEOUT = 30.0
# A run fails only when no worker reports anything for this long: on a
# loaded machine the whole run may take many minutes and still be fine.
STALL_TIMEOUT = 120.0


def worker_main(port, fn, pipe):
    """One worker: grab, then report each step and wait for the go-ahead.
    """
    peer = peers.RawPeer(port)
    peer.send_packet(C.CAN_DO, fn)
    pipe.send(('ready', None, None))
    while True:
        peer.send_packet(C.GRAB_JOB_UNIQ)
        ptype, args = peer.read_packet(timeout=3600)
        if ptype == C.NO_JOB:
            peer.send_packet(C.PRE_SLEEP)
            # Sleep until NOOP; the parent ends an idle worker by SIGKILL
            # or by closing the pipe.
            while not peer.inbuf:
                r, _, _ = select.select([peer.sock, pipe], [], [], 1.0)
                if pipe in r:
                    return
                if peer.sock in r:
                    peer._fill(time.monotonic() + 5)
            peer.read_packet(timeout=5, skip=())  # the NOOP
            continue
        if ptype != C.JOB_ASSIGN_UNIQ:
            raise AssertionError('unexpected %s' % C.types.get(ptype))
        handle, _, unique, data = args
        unique = unique.decode()
        pipe.send(('assigned', unique, handle))
        if pipe.recv() != 'work':
            return
        result = data[::-1]  # the work
        pipe.send(('did', unique, None))
        if pipe.recv() != 'send':
            return
        peer.send_packet(C.WORK_COMPLETE, handle, result)
        pipe.send(('sent', unique, None))


class JobBook(object):
    """What happened to one job."""

    __slots__ = ('unique', 'plan', 'background', 'assigned', 'did',
                 'kills', 'killed_before', 'killed_after', 'killed_racing',
                 'sent', 'outcome', 'result', 'held_by', 'action')

    def __init__(self, unique, plan, background):
        self.unique = unique
        self.plan = plan
        self.background = background
        self.assigned = self.did = self.kills = self.sent = 0
        self.killed_before = self.killed_after = self.killed_racing = 0
        self.outcome = []  # packets the client saw: 'complete' / 'fail'
        self.result = None
        self.held_by = None
        self.action = None

    def as_dict(self):
        out = {name: getattr(self, name) for name in self.__slots__
               if name not in ('held_by',)}
        if isinstance(out['result'], bytes):
            out['result'] = out['result'].decode('utf8', 'replace')
        return out


class Client(threading.Thread):
    """Submits foreground jobs on one connection and records outcomes."""

    def __init__(self, port, fn, books, timeout):
        super(Client, self).__init__(daemon=True)
        self.port = port
        self.fn = fn
        self.books = books
        self.timeout = timeout
        self.error = None
        self.done = threading.Event()

    def run(self):
        try:
            with peers.RawPeer(self.port) as peer:
                order = [b for b in self.books if not b.background]
                peer.send(b''.join(
                    peers.req(C.SUBMIT_JOB, self.fn, b.unique, b.unique)
                    for b in order))
                by_handle = {}
                for book in order:
                    by_handle[peer.expect(C.JOB_CREATED,
                                          self.timeout)[0]] = book
                pending = len(order)
                while pending:
                    ptype, args = peer.read_packet(self.timeout)
                    book = by_handle[args[0]]
                    if ptype == C.WORK_COMPLETE:
                        book.outcome.append('complete')
                        book.result = args[1]
                    elif ptype == C.WORK_FAIL:
                        book.outcome.append('fail')
                    else:
                        continue
                    pending -= 1
                # Anything more for these jobs would be a duplicate final:
                # read up to a barrier the server answers after them.
                peer.send_packet(C.GET_STATUS, 'H:barrier:0')
                while True:
                    ptype, args = peer.read_packet(self.timeout)
                    if ptype == C.STATUS_RES:
                        break
                    if args and args[0] in by_handle:
                        by_handle[args[0]].outcome.append(
                            'extra ' + C.types.get(ptype, '?'))
        except BaseException as e:
            self.error = e
        finally:
            self.done.set()


def plan_jobs(rng, target_kills, max_kills_per_job, tag, bg_share=0.0):
    """Jobs with a kill budget each, until the budgets add up to the
    target."""
    books = []
    total = 0
    while total < target_kills:
        plan = rng.randint(0, max_kills_per_job)
        background = rng.random() < bg_share
        books.append(JobBook('%s-%d' % (tag, len(books)), plan, background))
        total += plan
    return books


class KillController(object):
    """Runs the workers and kills them as each job's plan says."""

    def __init__(self, port, fn, books, workers, rng, racing=True):
        self.port = port
        self.fn = fn
        self.books = {b.unique: b for b in books}
        self.rng = rng
        self.racing = racing
        self.ctx = crash.mp_context()
        self.workers = {}  # pipe -> process
        self.holding = {}  # pipe -> unique
        self.kills = 0
        self.spawned = 0
        self.double_holds = []
        for _ in range(workers):
            self._spawn()

    def _spawn(self):
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=worker_main, daemon=True,
                             args=(self.port, self.fn, child))
        p.start()
        child.close()
        self.workers[parent] = p
        self.spawned += 1

    def _kill(self, pipe):
        p = self.workers.pop(pipe)
        p.kill()
        p.join(STEP_TIMEOUT)
        if p.is_alive():
            raise AssertionError('worker %d survived SIGKILL' % p.pid)
        pipe.close()
        unique = self.holding.pop(pipe, None)
        if unique is not None:
            book = self.books[unique]
            book.kills += 1
            book.held_by = None
        self.kills += 1
        self._spawn()

    def _choose(self, book):
        if book.kills >= book.plan:
            return 'complete'
        kinds = ['before', 'after'] + (['racing'] if self.racing else [])
        return self.rng.choice(kinds)

    def _on(self, pipe, what, unique):
        if what == 'ready':
            return
        book = self.books[unique]
        if what == 'assigned':
            if book.held_by is not None:
                self.double_holds.append(unique)
            book.held_by = pipe
            self.holding[pipe] = unique
            book.assigned += 1
            book.action = self._choose(book)
            if book.action == 'before':
                book.killed_before += 1
                self._kill(pipe)
            else:
                pipe.send('work')
        elif what == 'did':
            book.did += 1
            if book.action == 'after':
                book.killed_after += 1
                self._kill(pipe)
            elif book.action == 'racing':
                book.killed_racing += 1
                pipe.send('send')
                self._kill(pipe)
            else:
                pipe.send('send')
        elif what == 'sent':
            book.sent += 1
            book.held_by = None
            self.holding.pop(pipe, None)

    def run(self, finished, stall_timeout=STALL_TIMEOUT):
        """Serve worker reports until ``finished()``; fail when no report
        arrives for ``stall_timeout`` seconds (bounded by progress)."""
        deadline = time.monotonic() + stall_timeout
        while not finished():
            if time.monotonic() > deadline:
                raise AssertionError(
                    'worker-death run made no progress for %ss (%d kills,'
                    ' %d workers started)' % (stall_timeout, self.kills,
                                              self.spawned))
            ready = multiprocessing.connection.wait(list(self.workers), 0.2)
            if ready:
                deadline = time.monotonic() + stall_timeout
            for pipe in ready:
                if pipe not in self.workers:
                    continue  # killed while handling an earlier report
                try:
                    what, unique, _ = pipe.recv()
                except EOFError:
                    p = self.workers.pop(pipe)
                    p.join(STEP_TIMEOUT)
                    raise AssertionError('worker %d exited with %s' % (
                        p.pid, p.exitcode))
                self._on(pipe, what, unique)

    def close(self):
        for pipe, p in list(self.workers.items()):
            p.kill()
            p.join(STEP_TIMEOUT)
            pipe.close()
        self.workers.clear()
