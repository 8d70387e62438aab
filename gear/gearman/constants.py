"""Constants of the python-gearman 2.x API.

Priorities and request states are plain strings (or None), exactly as
python-gearman defined them, so that code comparing against literals keeps
working.
"""

from gear import constants as _wire

DEFAULT_GEARMAN_PORT = _wire.DEFAULT_PORT

PRIORITY_NONE = None
PRIORITY_LOW = 'LOW'
PRIORITY_HIGH = 'HIGH'

# Request states.
JOB_UNKNOWN = 'UNKNOWN'    # not submitted yet, or its connection failed
JOB_PENDING = 'PENDING'    # sent, waiting for a handle
JOB_CREATED = 'CREATED'    # the server gave it a handle
JOB_FAILED = 'FAILED'      # WORK_FAIL, WORK_EXCEPTION or an ERROR reply
JOB_COMPLETE = 'COMPLETE'  # WORK_COMPLETE

# python-gearman priorities mapped onto gear's precedences.
PRECEDENCE_FOR_PRIORITY = {
    PRIORITY_NONE: _wire.PRECEDENCE_NORMAL,
    PRIORITY_LOW: _wire.PRECEDENCE_LOW,
    PRIORITY_HIGH: _wire.PRECEDENCE_HIGH,
}
