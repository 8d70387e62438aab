"""The gear job server: event loop, queues, admin commands, persistence."""

from gear.server.connection import (  # noqa: F401
    ServerAdminRequest, ServerConnection)
from gear.server.jobs import ServerJob  # noqa: F401
from gear.server.server import Server  # noqa: F401
