"""The operator's kopf settings, applied by its one startup handler.

- Our own finalizer name, and kopf's bookkeeping (handler progress, the diff base of the
  last handled spec) in `lmjob.dev/*` annotations: nothing of kopf's lands in user status.
- Stalled watch streams are detected (no event or bookmark for `inactivity_timeout`) and
  reopened; the pod watch is filtered server-side to pods carrying our job label.
- kopf's own log lines become Kubernetes Events only from WARNING up; the job transitions
  are posted explicitly (status.transition_events).
- kopf's per-object event workers exit after 0.5 s idle (not 5 s): less memory in bursts.
- Peering: replicas share the `lmjob-operator` peering object; the highest priority runs,
  the others pause (priorities are random unless given, so exactly one replica is active).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import kopf

from lmjob_operator.naming import JOB_LABEL

FINALIZER = "lmjob.dev/finalizer"
ANNOTATION_PREFIX = "lmjob.dev"
PEERING_NAME = "lmjob-operator"


@dataclass(frozen=True)
class RunOptions:
    """Command-line choices the startup handler needs (passed through kopf's memo)."""

    standalone: bool = False
    priority: int | None = None
    peering_name: str = PEERING_NAME


def apply_settings(settings: kopf.OperatorSettings, options: RunOptions) -> None:
    """Configure kopf for lmjob (called once, from the startup handler)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )

    # Kubernetes sends a bookmark at least every minute; silence beyond this is a dead stream.
    settings.watching.inactivity_timeout = 90
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Only our pods: every other pod in the cluster never reaches this process.
    settings.watching.label_selectors["pods"] = JOB_LABEL

    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "lmjob-operator"
    settings.posting.event_name_prefix = "lmjob-"

    settings.peering.name = options.peering_name
    settings.peering.standalone = options.standalone
    settings.peering.mandatory = False
    settings.peering.stealth = True
    settings.peering.priority = (
        options.priority if options.priority is not None else random.randint(1, 1_000_000)
    )
    # kopf keeps a worker task (and its event queue) per object while events arrive, until the
    # object is idle this long (default 5 s): with thousands of pods starting, most of those
    # workers would sit idle in memory. A new event simply starts a new one.
    settings.queueing.idle_timeout = 0.5
    # A daemon gets this long to exit on its own before it is cancelled.
    settings.background.instant_exit_timeout = 1.0
