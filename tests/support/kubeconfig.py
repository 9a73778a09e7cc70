"""Re-export of `lmjob_cli.localcluster.kubeconfig`, which the tests and `lmjob cluster` share."""

from lmjob_cli.localcluster.kubeconfig import *  # noqa: F403
