"""Re-export of `lmjob_cli.localcluster.certs`, which the tests and `lmjob cluster` share."""

from lmjob_cli.localcluster.certs import *  # noqa: F403
