"""Re-export of `lmjob_cli.localcluster.kueue`: Kueue run against the test control plane."""

from lmjob_cli.localcluster.kueue import *  # noqa: F403
