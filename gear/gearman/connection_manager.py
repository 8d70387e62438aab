"""python-gearman's module name for the data encoders."""

from gear.gearman.encoder import DataEncoder, NoopEncoder  # noqa: F401
