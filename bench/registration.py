"""Function registration at CI-farm scale, and a job's round trip meanwhile.

W worker connections each register the same K functions (as CI workers
register ``build:<job>:<label>`` for every job they can build), send
RESET_ABILITIES, and register again.  Each pass ends with an ECHO_REQ
barrier per connection, so its server CPU and wall time cover exactly
the requests of that pass.  A separate process keeps timing the round
trip of one foreground job (SUBMIT_JOB .. GRAB_JOB_UNIQ .. WORK_COMPLETE)
before and during the passes.
"""

import array
import multiprocessing
import socket
import statistics
import threading
import time

from gear import constants as C
from gear.protocol import InputBuffer, pack

RECV_SIZE = 1 << 16
PHASES = ('register', 'reset', 'reregister')
PROBE_FN = b'bench-registration-probe'
BARRIER = pack(C.REQ, C.ECHO_REQ, b'barrier')
RESET = pack(C.REQ, C.RESET_ABILITIES)


class RegistrationError(Exception):
    """The server did not answer as the protocol says."""


def function_names(k):
    return [b'build:job-%06d:label' % i for i in range(k)]


def _connect(host, port, timeout=60.0):
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until(sock, inbuf, ptype):
    """Read packets until one of ``ptype`` arrives; return it."""
    while True:
        packet = inbuf.readPacket()
        if packet is None:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise RegistrationError('server closed a connection')
            inbuf.feed(data)
            continue
        if packet[1] == ptype:
            return packet
        if packet[1] != C.NOOP:
            raise RegistrationError('expected %s, got %s' % (
                C.types.get(ptype), C.types.get(packet[1], packet[1])))


def _send_pass(sock, data, errors):
    try:
        sock.sendall(data + BARRIER)
        _read_until(sock, InputBuffer(), C.ECHO_RES)
    except Exception as e:
        errors.append('%s: %s' % (type(e).__name__, e))


def run_pass(socks, data):
    """Send ``data`` plus a barrier on every socket at once; wait for all
    barriers.  Returns the wall time."""
    errors = []
    threads = [threading.Thread(target=_send_pass, args=(s, data, errors))
               for s in socks]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    if errors:
        raise RegistrationError(errors[0])
    return seconds


def _prober(host, port, stop, ready, out):
    """Child process: time one job's round trip again and again.

    Writes (monotonic time at the end, microseconds) pairs to ``out``.
    """
    client, worker = _connect(host, port), _connect(host, port)
    cbuf, wbuf = InputBuffer(), InputBuffer()
    worker.sendall(pack(C.REQ, C.CAN_DO, PROBE_FN) + BARRIER)
    _read_until(worker, wbuf, C.ECHO_RES)
    submit = pack(C.REQ, C.SUBMIT_JOB, PROBE_FN + b'\x00\x00probe')
    grab = pack(C.REQ, C.GRAB_JOB_UNIQ)
    samples = array.array('d')
    ready.set()
    while not stop.is_set():
        t0 = time.perf_counter()
        client.sendall(submit)
        handle = _read_until(client, cbuf, C.JOB_CREATED)[2]
        worker.sendall(grab)
        assigned = _read_until(worker, wbuf, C.JOB_ASSIGN_UNIQ)[2]
        if not assigned.startswith(handle + b'\x00'):
            raise RegistrationError('probe got %r' % assigned[:80])
        worker.sendall(pack(C.REQ, C.WORK_COMPLETE, handle + b'\x00'))
        _read_until(client, cbuf, C.WORK_COMPLETE)
        samples.append(time.monotonic())
        samples.append((time.perf_counter() - t0) * 1e6)
        if len(samples) >= 2 * 200000:
            break
        # A steady sampling rate, so the probe is not a load of its own.
        stop.wait(0.002)
    out.put(samples.tobytes())
    client.close()
    worker.close()


def _window(samples, t0, t1):
    return [samples[i + 1] for i in range(0, len(samples), 2)
            if t0 <= samples[i] <= t1]


def _pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def scenario(server, opts, cpu, check_status):
    """Run the three passes against ``server``; return the record.

    ``cpu()`` reads the server's CPU seconds (None if unknown);
    ``check_status()`` returns the admin ``status`` table.
    """
    w, k = opts.reg_workers, opts.reg_functions
    names = function_names(k)
    register = b''.join(pack(C.REQ, C.CAN_DO, name) for name in names)
    ctx = multiprocessing.get_context('fork')
    stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    prober = ctx.Process(target=_prober,
                         args=(server.host, server.port, stop, ready, out))
    prober.daemon = True
    prober.start()
    socks = []
    try:
        if not ready.wait(60):
            raise RegistrationError('the round-trip probe did not start')
        socks = [_connect(server.host, server.port) for _ in range(w)]
        # Round trips on an idle server first, for comparison.
        time.sleep(0.5)
        t_idle = time.monotonic()
        record = {'n': w * k, 'reg_workers': w, 'reg_functions': k}
        spans = {}
        for phase, data in zip(PHASES, (register, RESET, register)):
            c0, t0 = cpu(), time.monotonic()
            seconds = run_pass(socks, data)
            c1, t1 = cpu(), time.monotonic()
            spans[phase] = (t0, t1)
            record['%s_seconds' % phase] = round(seconds, 4)
            if c0 is not None and c1 is not None:
                record['%s_server_cpu_s' % phase] = round(c1 - c0, 3)
            if phase != 'reset':
                status = check_status()
                missing = [n for n in names
                           if status.get(n, (0, 0, 0))[2] != w]
                if missing:
                    raise RegistrationError(
                        '%d functions without %d workers after %s, e.g. '
                        '%r: %r' % (len(missing), w, phase, missing[0],
                                    status.get(missing[0])))
        stop.set()
        samples = array.array('d')
        samples.frombytes(out.get(timeout=60))
    finally:
        stop.set()
        for s in socks:
            s.close()
        prober.join(30)
        if prober.is_alive():
            prober.kill()
    idle = _window(samples, t_idle - 0.5, spans['register'][0])
    flood = (_window(samples, *spans['register']) +
             _window(samples, *spans['reregister']))
    n = w * k
    for phase in ('register', 'reregister'):
        cpu_s = record.get('%s_server_cpu_s' % phase)
        if cpu_s is not None:
            record['server_cpu_us_per_can_do_%s' % phase] = round(
                cpu_s * 1e6 / n, 3)
    if record.get('reset_server_cpu_s') is not None:
        record['server_cpu_us_per_reset_function'] = round(
            record['reset_server_cpu_s'] * 1e6 / n, 3)
    total = [record.get('%s_server_cpu_s' % p) for p in PHASES]
    record['server_cpu_us_per_job'] = (
        round(sum(total) * 1e6 / (2 * n), 3)
        if None not in total else None)
    register_s = record['register_seconds'] + record['reregister_seconds']
    record['seconds'] = round(register_s + record['reset_seconds'], 4)
    record['jobs_per_sec'] = round(2 * n / register_s, 1)
    record.update(
        rt_idle_samples=len(idle), rt_flood_samples=len(flood),
        rt_idle_p50_us=_pct(idle, 0.5),
        rt_flood_p50_us=_pct(flood, 0.5),
        rt_flood_p99_us=_pct(flood, 0.99),
        rt_flood_max_us=(round(max(flood), 1) if flood else None),
        rt_flood_mean_us=(round(statistics.mean(flood), 1)
                          if flood else None))
    return record
