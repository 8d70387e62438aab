"""Random and mutated Gearman traffic, reproducible from a seed."""

import random
import struct

from gear import constants as C
from gear.protocol import pack

ADMIN_WORDS = [
    'status', 'workers', 'prioritystatus', 'version', 'getpid', 'verbose',
    'show jobs', 'show unique jobs', 'show', 'show nothing', 'maxqueue',
    'maxqueue {fn}', 'maxqueue {fn} {n}', 'maxqueue {fn} {n} {n} {n}',
    'maxqueue {fn} -1', 'cancel job {handle}', 'cancel job', 'cancel x y',
    'create function {fn}', 'create function', 'drop function {fn}',
    'drop function', 'shutdown', 'shutdown graceful', 'acl list',
    'acl grant invoke x .*', 'acl revoke all x', 'acl self-revoke all', '',
    'STATUS', '  status  ', 'status extra words', 'cancel job {junk}',
]


class Fuzzer(object):
    """Makes fuzz messages; ``handles`` collects handles seen in replies
    so that some packets name real jobs."""

    def __init__(self, seed, functions):
        self.rng = random.Random(seed)
        self.functions = list(functions)
        self.handles = ['H:none:1']

    def _fn(self):
        r = self.rng
        return r.choice(self.functions + ['', 'x' * r.randint(0, 600)])

    def _junk(self, top=40, newline=False):
        r = self.rng
        data = bytes(r.getrandbits(8) for _ in range(r.randint(0, top)))
        if not newline:
            data = data.replace(b'\n', b' ')
        return data

    def _arg(self):
        r = self.rng
        kind = r.random()
        if kind < 0.3:
            return self._fn().encode()
        if kind < 0.55:
            return r.choice(self.handles).encode()
        if kind < 0.7:
            return str(r.choice([0, 1, -1, 999, 2 ** 32, 10 ** 25])).encode()
        if kind < 0.75:
            return b'h' * r.choice([63, 64, 65, 200])
        return self._junk()

    def packet(self):
        """A request packet of any type with plausible arguments."""
        r = self.rng
        ptype = r.randint(1, C.MAX_TYPE)
        nargs = r.choice([0, 1, 2, 3, 3, 4, 5])
        return pack(C.REQ, ptype, b'\x00'.join(
            self._arg() for _ in range(nargs)))

    def mutated(self):
        """A packet with a damaged header or body."""
        r = self.rng
        data = bytearray(self.packet())
        how = r.randint(0, 6)
        if how == 0 and data:  # flip bytes anywhere
            for _ in range(r.randint(1, 4)):
                data[r.randrange(len(data))] ^= 1 << r.randint(0, 7)
        elif how == 1:  # truncate
            data = data[:r.randint(0, len(data))]
        elif how == 2:  # lie about the size
            struct.pack_into('!I', data, 8, max(0, len(data) - 12 +
                                                r.randint(-8, 8)))
        elif how == 3:  # bad type
            struct.pack_into('!I', data, 4, r.choice(
                [0, 43, 99, 2 ** 32 - 1]))
        elif how == 4:  # bad magic
            data[0:4] = r.choice([b'\x00RES', b'\x00REX', b'\x00\x00\x00\x00',
                                  b'\x00req'])
        elif how == 5:  # announce far more than the server allows
            struct.pack_into('!I', data, 8, r.choice(
                [2 ** 31, 2 ** 32 - 1, 70 * 1024 * 1024]))
        else:  # insert junk in the middle
            at = r.randint(0, len(data))
            data[at:at] = self._junk(8, newline=True)
        return bytes(data)

    def admin(self):
        r = self.rng
        line = r.choice(ADMIN_WORDS).format(
            fn=self._fn(), n=r.randint(-3, 5), handle=r.choice(self.handles),
            junk=self._junk(20).decode('latin-1'))
        data = line.encode('latin-1', 'replace')
        if r.random() < 0.2:
            at = r.randint(0, len(data))
            data = data[:at] + self._junk(10) + data[at:]
        if data[:1] == b'\x00':
            data = b' ' + data
        return data + r.choice([b'\n', b'\r\n', b'\r\r\n'])

    def random_bytes(self):
        r = self.rng
        data = self._junk(64, newline=True)
        if r.random() < 0.5:
            data = b'\x00' + data
        return data

    def message(self):
        """One fuzz message: ``(bytes, framed)``.  ``framed`` is False
        when the message may leave the server's parser mid-message."""
        r = self.rng.random()
        if r < 0.45:
            return self.packet(), True
        if r < 0.70:
            return self.mutated(), False
        if r < 0.90:
            return self.admin(), True
        return self.random_bytes(), False

    def note_reply(self, data):
        """Pick handles out of reply bytes (best effort)."""
        for part in data.split(b'\x00'):
            if part.startswith(b'H:') and len(part) < 64:
                try:
                    handle = part.split(b'\n')[0].decode()
                except UnicodeDecodeError:
                    continue
                if len(self.handles) < 1000:
                    self.handles.append(handle)
