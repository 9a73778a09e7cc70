"""lmjob's API: the LargeModelJob models shared by the CRD, the CLI, the operator and the trainer.

Imports only pydantic and yaml: the operator image has no torch, the trainer image no kopf.
"""

from lmjob_api.job import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    LargeModelJob,
    LargeModelJobSpec,
)
from lmjob_api.status import JobPhase, LargeModelJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "JobPhase",
    "LargeModelJob",
    "LargeModelJobSpec",
    "LargeModelJobStatus",
]
