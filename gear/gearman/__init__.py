"""python-gearman 2.x compatible API on top of gear.

Code written for python-gearman should only need::

    import gear.gearman as gearman

The submodules ``errors``, ``constants``, ``job``, ``client``, ``worker``,
``admin_client`` and ``connection_manager`` mirror python-gearman's, so
both ``gearman.errors.ServerUnavailable`` and
``from gear.gearman.errors import ServerUnavailable`` work.  Where
python-gearman misbehaved, this package does the right thing instead;
doc/source/migration-python-gearman.rst lists every difference.
"""

from gear.version import __version__  # noqa: F401

from gear.gearman import constants  # noqa: F401
from gear.gearman import errors  # noqa: F401
from gear.gearman import job  # noqa: F401
from gear.gearman.admin import GearmanAdminClient  # noqa: F401
from gear.gearman.client import GearmanClient  # noqa: F401
from gear.gearman.constants import (  # noqa: F401
    DEFAULT_GEARMAN_PORT, JOB_COMPLETE, JOB_CREATED, JOB_FAILED,
    JOB_PENDING, JOB_UNKNOWN, PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NONE)
from gear.gearman.encoder import DataEncoder, NoopEncoder  # noqa: F401
from gear.gearman.errors import (  # noqa: F401
    ConnectionError, ExceededConnectionAttempts, GearmanError,
    InvalidAdminClientState, InvalidClientState, InvalidWorkerState,
    ProtocolError, ServerError, ServerUnavailable, UnknownCommandError)
from gear.gearman.job import GearmanJob, GearmanJobRequest  # noqa: F401
from gear.gearman.worker import GearmanWorker  # noqa: F401

__all__ = [
    'DEFAULT_GEARMAN_PORT', 'PRIORITY_NONE', 'PRIORITY_LOW',
    'PRIORITY_HIGH', 'JOB_UNKNOWN', 'JOB_PENDING', 'JOB_CREATED',
    'JOB_FAILED', 'JOB_COMPLETE', 'GearmanError', 'ConnectionError',
    'ServerUnavailable', 'ProtocolError', 'UnknownCommandError',
    'ExceededConnectionAttempts', 'InvalidClientState',
    'InvalidWorkerState', 'InvalidAdminClientState', 'ServerError',
    'GearmanClient', 'GearmanWorker', 'GearmanAdminClient', 'DataEncoder',
    'NoopEncoder', 'GearmanJob', 'GearmanJobRequest',
]
