"""Gearman wire constants: magic codes, the 42 packet types, precedences.

One module global per packet type (``CAN_DO = 1`` ...), plus ``types``
mapping number to name, so callers can name packets in logs and tables
without a second source of truth.
"""

PRECEDENCE_NORMAL = 0
PRECEDENCE_LOW = 1
PRECEDENCE_HIGH = 2

REQ = b'\x00REQ'
RES = b'\x00RES'

HEADER_SIZE = 12

# The default port registered with IANA for Gearman.
DEFAULT_PORT = 4730

CAN_DO = 1
CANT_DO = 2
RESET_ABILITIES = 3
PRE_SLEEP = 4
# 5 is unused by the protocol and deliberately left out.
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_STATUS = 12
WORK_COMPLETE = 13
WORK_FAIL = 14
GET_STATUS = 15
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB_BG = 18
ERROR = 19
STATUS_RES = 20
SUBMIT_JOB_HIGH = 21
SET_CLIENT_ID = 22
CAN_DO_TIMEOUT = 23
ALL_YOURS = 24
WORK_EXCEPTION = 25
OPTION_REQ = 26
OPTION_RES = 27
WORK_DATA = 28
WORK_WARNING = 29
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31
SUBMIT_JOB_HIGH_BG = 32
SUBMIT_JOB_LOW = 33
SUBMIT_JOB_LOW_BG = 34
SUBMIT_JOB_SCHED = 35
SUBMIT_JOB_EPOCH = 36
SUBMIT_REDUCE_JOB = 37
SUBMIT_REDUCE_JOB_BACKGROUND = 38
GRAB_JOB_ALL = 39
JOB_ASSIGN_ALL = 40
GET_STATUS_UNIQUE = 41
STATUS_RES_UNIQUE = 42

MAX_TYPE = 42

types = {
    value: name for name, value in sorted(globals().items())
    if name.isupper() and isinstance(value, int)
    and name not in ('PRECEDENCE_NORMAL', 'PRECEDENCE_LOW',
                     'PRECEDENCE_HIGH', 'HEADER_SIZE', 'DEFAULT_PORT',
                     'MAX_TYPE')
}

# How many NUL-separated fields each packet type carries; the last one is
# the unterminated tail and may itself contain NUL bytes.
ARGUMENT_COUNTS = {
    CAN_DO: 1, CANT_DO: 1, RESET_ABILITIES: 0, PRE_SLEEP: 0, NOOP: 0,
    SUBMIT_JOB: 3, JOB_CREATED: 1, GRAB_JOB: 0, NO_JOB: 0, JOB_ASSIGN: 3,
    WORK_STATUS: 3, WORK_COMPLETE: 2, WORK_FAIL: 1, GET_STATUS: 1,
    ECHO_REQ: 1, ECHO_RES: 1, SUBMIT_JOB_BG: 3, ERROR: 2, STATUS_RES: 5,
    SUBMIT_JOB_HIGH: 3, SET_CLIENT_ID: 1, CAN_DO_TIMEOUT: 2, ALL_YOURS: 0,
    WORK_EXCEPTION: 2, OPTION_REQ: 1, OPTION_RES: 1, WORK_DATA: 2,
    WORK_WARNING: 2, GRAB_JOB_UNIQ: 0, JOB_ASSIGN_UNIQ: 4,
    SUBMIT_JOB_HIGH_BG: 3, SUBMIT_JOB_LOW: 3, SUBMIT_JOB_LOW_BG: 3,
    SUBMIT_JOB_SCHED: 8, SUBMIT_JOB_EPOCH: 4, SUBMIT_REDUCE_JOB: 5,
    SUBMIT_REDUCE_JOB_BACKGROUND: 5, GRAB_JOB_ALL: 0, JOB_ASSIGN_ALL: 5,
    GET_STATUS_UNIQUE: 1, STATUS_RES_UNIQUE: 6,
}

# Types only a server may send; receiving one as a request is an error.
RESPONSE_TYPES = frozenset((
    NOOP, JOB_CREATED, NO_JOB, JOB_ASSIGN, ECHO_RES, ERROR, STATUS_RES,
    OPTION_RES, JOB_ASSIGN_UNIQ, JOB_ASSIGN_ALL, STATUS_RES_UNIQUE,
))

# What a worker sends about the job it runs; the final ones end the job.
FINAL_WORK_TYPES = frozenset((WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION))
WORK_TYPES = FINAL_WORK_TYPES | frozenset((WORK_DATA, WORK_WARNING,
                                           WORK_STATUS))

# Submit packet type -> (precedence, background).
SUBMIT_TYPES = {
    SUBMIT_JOB: (PRECEDENCE_NORMAL, False),
    SUBMIT_JOB_BG: (PRECEDENCE_NORMAL, True),
    SUBMIT_JOB_HIGH: (PRECEDENCE_HIGH, False),
    SUBMIT_JOB_HIGH_BG: (PRECEDENCE_HIGH, True),
    SUBMIT_JOB_LOW: (PRECEDENCE_LOW, False),
    SUBMIT_JOB_LOW_BG: (PRECEDENCE_LOW, True),
}

# (precedence, background) -> submit packet type; the inverse of the above.
SUBMIT_TYPE_FOR = {v: k for k, v in SUBMIT_TYPES.items()}
