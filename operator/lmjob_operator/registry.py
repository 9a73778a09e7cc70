"""What one operator process remembers between passes: per-job and per-sweep state, the jobs
and sweeps it handles, the optional APIs the cluster serves, and the shared context of every
pass.

All of it may be lost (an operator restart): everything here is re-observed or only an
optimisation, which is what lets a pass be re-run by any process at any time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from lmjob_api import LargeModelJobStatus as Status
from lmjob_api.sweep import LargeModelSweepStatus
from lmjob_api.trainer_metrics import TrainerProgress
from lmjob_operator import metrics
from lmjob_operator.config import OperatorConfig
from lmjob_operator.kube import Kube
from lmjob_operator.pod_view import PodView
from lmjob_operator.stall import ScrapeWatch


@dataclass
class JobState:
    """What one operator process remembers about a job between passes (lost on restart,
    which is fine: everything here is either re-observed or only an optimisation)."""

    key: tuple[str, str]
    uid: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    created: dict[str, tuple[PodView, float]] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    last_status: Status | None = None
    progress: TrainerProgress | None = None
    progress_pod: str = ""
    scraped_at: float = 0.0
    watch: ScrapeWatch = field(default_factory=ScrapeWatch)
    """The current round's scrapes, for the hang verdicts (stall.py)."""
    ensured: tuple[int, float] = (-1, 0.0)
    rejected: str = ""
    """The API server's message when it refused a pod for good (failures.judge_create_error:
    invalid, PodSecurity, an admission webhook's denial): the job fails."""
    forbidden: str = ""
    """The API server's message when it forbade a pod for now (403: quota, RBAC); retried."""
    logs_kept: dict[str, bool] = field(default_factory=dict)
    """Uids of the worker pods whose log tail this process kept (or tried to: log_keeper),
    and whether that was after the worker ended."""


@dataclass
class SweepState:
    """What one operator process remembers about a sweep: its wake-up flag, the trial jobs
    it was refused (reported once) and, for the metrics, the status it last wrote. Nothing
    the search depends on: that is the sweep's status in the API."""

    key: tuple[str, str]
    uid: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_status: LargeModelSweepStatus | None = None
    rejected: set[str] = field(default_factory=set)
    """Trial jobs the API server refused (reported once, not on every pass)."""


@dataclass
class Registry:
    """Every job and sweep this process handles: lets pod events wake the right job's
    daemon, and trial job events their sweep's."""

    jobs: dict[tuple[str, str], JobState] = field(default_factory=dict)
    sweeps: dict[tuple[str, str], SweepState] = field(default_factory=dict)
    managed_elsewhere: set[str] = field(default_factory=set)
    """Uids of the jobs another controller runs (spec.managedBy) that were logged already."""

    def note_managed_elsewhere(self, uid: str, gone: bool) -> bool:
        """Record an event of a job another controller runs; true the first time it is seen
        (so the operator says once that it leaves it alone)."""
        if gone:
            self.managed_elsewhere.discard(uid)
            return False
        first = uid not in self.managed_elsewhere
        self.managed_elsewhere.add(uid)
        return first

    def state(self, namespace: str, name: str, uid: str) -> JobState:
        """The state of this incarnation of the job (a recreated job starts afresh)."""
        key = (namespace, name)
        if key not in self.jobs or self.jobs[key].uid != uid:
            self.jobs[key] = JobState(key, uid)
        return self.jobs[key]

    def wake(self, namespace: str, name: str) -> None:
        state = self.jobs.get((namespace, name))
        if state is not None:
            state.wake.set()

    def forget(self, namespace: str, name: str, uid: str) -> None:
        if (state := self.jobs.get((namespace, name))) is not None and state.uid == uid:
            del self.jobs[(namespace, name)]
            metrics.set_job_goodput(namespace, name, None)
        self.publish_phases()

    def publish_phases(self) -> None:
        metrics.set_job_phases(
            s.last_status.phase.value for s in self.jobs.values() if s.last_status is not None
        )

    def sweep_state(self, namespace: str, name: str, uid: str) -> SweepState:
        """The state of this incarnation of the sweep (a recreated sweep starts afresh)."""
        key = (namespace, name)
        if key not in self.sweeps or self.sweeps[key].uid != uid:
            self.sweeps[key] = SweepState(key, uid)
        return self.sweeps[key]

    def wake_sweep(self, namespace: str, name: str) -> None:
        state = self.sweeps.get((namespace, name))
        if state is not None:
            state.wake.set()

    def forget_sweep(self, namespace: str, name: str, uid: str) -> None:
        if (state := self.sweeps.get((namespace, name))) is not None and state.uid == uid:
            del self.sweeps[(namespace, name)]
        self.publish_sweeps()

    def publish_sweeps(self) -> None:
        statuses = [s.last_status for s in self.sweeps.values() if s.last_status is not None]
        metrics.set_sweep_counts(
            (s.phase.value for s in statuses), (t.state.value for s in statuses for t in s.trials)
        )


@dataclass
class ApiCatalog:
    """Which optional APIs (PodGroup flavours, PodMonitor) the cluster serves, cached."""

    kube: Kube
    ttl: float = 60.0
    _seen: dict[tuple[str, str, str], tuple[bool, float]] = field(default_factory=dict)

    async def has(self, group: str, version: str, plural: str) -> bool:
        key = (group, version, plural)
        known = self._seen.get(key)
        if known and time.monotonic() - known[1] < self.ttl:
            return known[0]
        found = await self.kube.has_api(group, version, plural)
        self._seen[key] = (found, time.monotonic())
        return found


@dataclass
class Context:
    """Operator-wide things every pass needs."""

    kube: Kube
    config: OperatorConfig
    registry: Registry
    catalog: ApiCatalog


async def build_context(config: OperatorConfig) -> Context:
    """Connect to the API server (inside the operator's event loop) and set up shared state."""
    kube = await Kube.connect()
    # Enough for a job's first pass: its concurrent pod creates, the rendezvous pod and the
    # Service/ConfigMap applies (kube.py keeps them open while they are used).
    await kube.open_connections(config.create_concurrency + 4)
    return Context(kube=kube, config=config, registry=Registry(), catalog=ApiCatalog(kube))
