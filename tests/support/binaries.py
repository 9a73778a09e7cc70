"""Re-export of `lmjob_cli.localcluster.binaries`, which the tests and `lmjob cluster` share."""

from lmjob_cli.localcluster.binaries import *  # noqa: F403
