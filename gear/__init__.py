"""gear: a Gearman client, worker, admin library and job server.

This module only re-exports the public names; the code lives in one
module per concern (see doc/source/architecture.rst).
"""

from gear.acl import ACL, ACLEntry, ACLError  # noqa: F401
from gear.admin import *  # noqa: F401,F403
from gear.base import BaseClient, BaseClientServer  # noqa: F401
from gear.client import Client  # noqa: F401
from gear.connection import (  # noqa: F401
    Connection, NonBlockingConnection, OptionReqTask, SubmitJobTask, Task)
from gear.constants import (  # noqa: F401
    PRECEDENCE_HIGH, PRECEDENCE_LOW, PRECEDENCE_NORMAL)
from gear.errors import (  # noqa: F401
    AdminError, ConfigurationError, ConnectionError, DisconnectError,
    GearmanError, InterruptedError, InvalidDataError,
    NoConnectedServersError, ProtocolError, RetryIOError, TimeoutError,
    UnknownJobError)
from gear.job import (  # noqa: F401
    BaseBinaryJob, BaseJob, BinaryJob, BinaryWorkerJob, FunctionRecord, Job,
    TextJob, TextJobArguments, TextJobUnique, TextList, TextWorkerJob,
    WorkerJob)
from gear.protocol import Packet  # noqa: F401
from gear.server import (  # noqa: F401
    Server, ServerAdminRequest, ServerConnection, ServerJob)
from gear.version import __version__  # noqa: F401
from gear.util import (  # noqa: F401
    best_tls_version, convert_to_bytes, create_ssl_context)
from gear.worker import TextWorker, Worker  # noqa: F401
