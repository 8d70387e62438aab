"""python-gearman's module name for the admin client."""

from gear.gearman.admin import (  # noqa: F401
    DEFAULT_ADMIN_CLIENT_TIMEOUT, ECHO_STRING, GearmanAdminClient)
