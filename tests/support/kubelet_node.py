"""Re-export of `lmjob_cli.localcluster.kubelet_node`, which the tests and `lmjob cluster` share."""

from lmjob_cli.localcluster.kubelet_node import *  # noqa: F403
