"""Grab+complete cycles must not slow down when unrelated jobs pile up.

Starts two Servers on 127.0.0.1, one empty and one holding DEPTH queued
background jobs of another function, and times N submit/grab/complete
cycles of one function on each, alternating for ROUNDS rounds (the
median counts, so a noisy machine does not decide the result).  Prints
one JSON object; the ratio should stay close to 1 (gear 0.16 was 10-100
times slower with tens of thousands of unrelated jobs queued).

    python3 bench/grab_depth.py [--cycles N] [--depth D] [--rounds R]
"""

import argparse
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import gear  # noqa: E402
from gear import constants as c  # noqa: E402
from gear.protocol import pack  # noqa: E402


class Peer(object):
    """A minimal blocking raw-protocol peer."""

    def __init__(self, port):
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b''

    def send(self, ptype, *args):
        self.sock.sendall(pack(c.REQ, ptype, b'\x00'.join(args)))

    def read(self):
        while True:
            if len(self.buf) >= 12:
                size = struct.unpack('!I', self.buf[8:12])[0]
                if len(self.buf) >= 12 + size:
                    ptype = struct.unpack('!I', self.buf[4:8])[0]
                    payload = self.buf[12:12 + size]
                    self.buf = self.buf[12 + size:]
                    return ptype, payload
            data = self.sock.recv(65536)
            if not data:
                raise EOFError('server closed the connection')
            self.buf += data


def cycles(client, worker, count):
    start = time.perf_counter()
    for _ in range(count):
        client.send(c.SUBMIT_JOB_BG, b'mine', b'', b'payload')
        client.read()
        worker.send(c.GRAB_JOB_UNIQ)
        ptype, payload = worker.read()
        assert ptype == c.JOB_ASSIGN_UNIQ, ptype
        handle = payload.split(b'\x00', 1)[0]
        worker.send(c.WORK_COMPLETE, handle, b'')
    # One echo round trip makes sure the last completion was handled.
    worker.send(c.ECHO_REQ, b'done')
    worker.read()
    return time.perf_counter() - start


def fill(client, depth):
    batch = pack(c.REQ, c.SUBMIT_JOB_BG, b'other\x00\x00x') * 1000
    for _ in range(depth // 1000):
        client.sock.sendall(batch)
        for _ in range(1000):
            client.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cycles', type=int, default=2000)
    parser.add_argument('--depth', type=int, default=100000)
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()
    empty_server = gear.Server(0, host='127.0.0.1')
    deep_server = gear.Server(0, host='127.0.0.1')
    try:
        pairs = []
        for server in (empty_server, deep_server):
            client = Peer(server.port)
            worker = Peer(server.port)
            worker.send(c.CAN_DO, b'mine')
            cycles(client, worker, 200)  # warm up
            pairs.append((client, worker))
        fill(pairs[1][0], args.depth)
        empty, deep = [], []
        for _ in range(args.rounds):
            empty.append(cycles(pairs[0][0], pairs[0][1], args.cycles))
            deep.append(cycles(pairs[1][0], pairs[1][1], args.cycles))
        queued = len(deep_server.normal_queue)
    finally:
        empty_server.shutdown()
        deep_server.shutdown()
    empty = sorted(empty)[len(empty) // 2]
    deep = sorted(deep)[len(deep) // 2]
    print(json.dumps({
        'cycles': args.cycles,
        'rounds': args.rounds,
        'unrelated_queued': queued,
        'empty_seconds': round(empty, 4),
        'deep_seconds': round(deep, 4),
        'empty_us_per_cycle': round(empty / args.cycles * 1e6, 1),
        'deep_us_per_cycle': round(deep / args.cycles * 1e6, 1),
        'ratio': round(deep / empty, 3),
    }, sort_keys=True))


if __name__ == '__main__':
    main()
