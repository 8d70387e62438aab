"""Mixed long-running load for the soak test: background and foreground
clients, workers that sometimes walk away from a job, admin pollers, and
connections that come and go all the time.

Each role runs in its own process and counts what it did in a shared
array slot, so the parent can check that every acknowledged job was
completed exactly once.
"""

import random

from gear import constants as C
from tests.reliability import peers

BG = 'soak-bg'
FG = 'soak-fg'
BATCH = 100
MAX_BACKLOG = 5000


def bg_client(port, index, stop, bg_acked, bg_done):
    rng = random.Random(index)
    n = 0
    while not stop.is_set():
        if sum(bg_acked) - sum(bg_done) > MAX_BACKLOG:
            stop.wait(0.01)  # let the workers catch up
            continue
        with peers.RawPeer(port) as peer:
            for _ in range(rng.randint(1, 20)):
                peer.send(b''.join(
                    peers.req(C.SUBMIT_JOB_BG, BG, 'b%d-%d' % (index, n + i),
                              'x' * rng.randint(0, 200))
                    for i in range(BATCH)))
                for _ in range(BATCH):
                    peer.expect(C.JOB_CREATED)
                n += BATCH
                bg_acked[index] += BATCH
                if stop.is_set():
                    break


def fg_client(port, index, stop, fg_done):
    rng = random.Random(1000 + index)
    while not stop.is_set():
        with peers.RawPeer(port) as peer:
            for _ in range(rng.randint(1, 20)):
                count = rng.randint(1, 50)
                peer.send(b''.join(
                    peers.req(C.SUBMIT_JOB, FG, '', 'y' * rng.randint(0, 500))
                    for _ in range(count)))
                handles = set(peer.expect(C.JOB_CREATED)[0]
                              for _ in range(count))
                while handles:
                    ptype, args = peer.read_packet()
                    if ptype == C.WORK_COMPLETE:
                        handles.discard(args[0])
                fg_done[index] += count
                if stop.is_set():
                    break


def worker(port, index, stop, bg_done, fg_worked, walkaways):
    rng = random.Random(2000 + index)
    while not stop.is_set():
        with peers.RawPeer(port) as peer:
            peer.send(peers.req(C.CAN_DO, BG) + peers.req(C.CAN_DO, FG))
            for _ in range(rng.randint(1, 2000)):
                if stop.is_set():
                    break
                peer.send_packet(C.GRAB_JOB_UNIQ)
                ptype, args = peer.read_packet()
                if ptype == C.NO_JOB:
                    peer.send_packet(C.PRE_SLEEP)
                    try:
                        peer.read_packet(timeout=0.5, skip=())
                    except OSError:  # no NOOP yet: check stop, grab again
                        pass
                    continue
                handle, fn = args[0], args[1]
                if rng.random() < 0.002:
                    walkaways[index] += 1
                    break  # close while holding the job: it is requeued
                peer.send_packet(C.WORK_COMPLETE, handle, b'ok')
                if fn == BG.encode():
                    bg_done[index] += 1
                else:
                    fg_worked[index] += 1


def admin(port, index, stop, polls):
    commands = ['status', 'workers', 'prioritystatus', 'show jobs',
                'show unique jobs', 'version', 'getpid']
    while not stop.is_set():
        with peers.RawPeer(port) as peer:
            for command in commands:
                peer.admin(command)
                polls[index] += 1
        stop.wait(0.2)
