"""Small pieces shared by the server modules.

The server's code is split by job (loop and I/O, hot paths, scheduling,
packet handlers); what more than one of them needs lives here so that
none has to import another for a constant or a helper.
"""

import struct

from gear import constants
from gear.protocol import pack
from gear.server.jobs import ServerJob

RES = constants.RES

MAX_UNIQUE = 64
MAX_HANDLE = 64

_new_job = ServerJob.__new__


class _CloseConnection(Exception):
    """Raised by a handler: the peer sent something that ends the session.
    """


def _to_bytes(value):
    if isinstance(value, str):
        return value.encode('utf8')
    return bytes(value)


def _created_header(size):
    header = struct.pack('!4sII', RES, constants.JOB_CREATED, size)
    _CREATED_HEADERS[size] = header
    return header


_CREATED_HEADERS = {}
_NO_JOB = pack(RES, constants.NO_JOB)
