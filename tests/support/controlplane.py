"""Re-export of `lmjob_cli.localcluster.controlplane`, which the tests and `lmjob cluster` share."""

from lmjob_cli.localcluster.controlplane import *  # noqa: F403
