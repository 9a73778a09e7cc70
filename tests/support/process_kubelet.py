"""Re-export of `lmjob_cli.localcluster.process_kubelet`, which the tests and `lmjob cluster` share."""

from lmjob_cli.localcluster.process_kubelet import *  # noqa: F403
