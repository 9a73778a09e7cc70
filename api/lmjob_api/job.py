"""The LargeModelJob resource (`lmjob.dev/v1alpha1`): spec and its cross-field rules.

Field names here are the contract users see (DESIGN.md); descriptions become
`kubectl explain` text.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field

from lmjob_api.base import ApiModel, Rule
from lmjob_api.compression import CompressionSpec
from lmjob_api.env import is_reserved_env, reserved_env_cel
from lmjob_api.export import EXPORT_FIT_RULES, ExportSpec
from lmjob_api.pod_template import PodTemplate, storage_mount_clear, storage_mount_clear_cel
from lmjob_api.stage_fit import STAGE_FIT_RULES
from lmjob_api.status import LargeModelJobStatus
from lmjob_api.training import TrainingSpec, tp_cel

GROUP = "lmjob.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LargeModelJob"
PLURAL = "largemodeljobs"
SINGULAR = "largemodeljob"
SHORT_NAMES = ("lmj",)

# Pod names are `<job>-worker-<index>` and must stay valid DNS labels (63 chars)
# with up to five index digits; the job name is also the headless Service's name.
MAX_JOB_NAME = 50
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class EnvVar(ApiModel):
    """An environment variable for every worker process."""

    name: str = Field(..., min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = Field("", description="The value.")

    rules = (
        Rule(
            cel=f"!{reserved_env_cel('self.name')}",
            message="workers.env: this name is set by lmjob or torchrun (PET_*, LMJOB_*, TORCHELASTIC_*, "
            "RANK, WORLD_SIZE, MASTER_ADDR, ...): rename your variable",
            check=lambda e: not is_reserved_env(e.name),
            field="name",
        ),
    )


GPU_RESOURCE = "nvidia.com/gpu"
GPU_COUNT_PATTERN = "^[0-9]{1,4}$"
# CEL over WorkersSpec / LargeModelJobSpec: the GPU limit as a number (0 when unset); the
# resources rule above guarantees it is digits by the time these are evaluated.
_LIMITS = "self.resources.limits"
GPUS_CEL = (
    f"(has({_LIMITS}) && '{GPU_RESOURCE}' in {_LIMITS} "
    f"? int(string({_LIMITS}['{GPU_RESOURCE}'])) : 0)"
)
_SPEC_GPUS = GPUS_CEL.replace("self.resources", "self.workers.resources")
PROCS_CEL = (
    "(has(self.workers.procsPerWorker) ? self.workers.procsPerWorker : "
    f"({_SPEC_GPUS} > 0 ? {_SPEC_GPUS} : 1))"
)


class ResourceRequirements(ApiModel):
    """Compute resources of each worker container, as in a Pod (e.g. `nvidia.com/gpu: 8`)."""

    limits: dict[str, int | str] = Field(default_factory=dict, description="Resource limits.")
    requests: dict[str, int | str] = Field(default_factory=dict, description="Resource requests.")

    rules = (
        Rule(
            cel=f"!has(self.limits) || !('{GPU_RESOURCE}' in self.limits) "
            f"|| string(self.limits['{GPU_RESOURCE}']).matches('{GPU_COUNT_PATTERN}')",
            message=f"resources.limits[{GPU_RESOURCE}] must be a whole number of GPUs",
            check=lambda r: (
                re.fullmatch(r"[0-9]+", str(r.limits.get(GPU_RESOURCE, "0"))) is not None
            ),
            field="limits",
        ),
    )

    @property
    def num_gpus(self) -> int:
        """GPUs per pod: the nvidia.com/gpu limit (0 when unset)."""
        value = str(self.limits.get(GPU_RESOURCE, 0))
        return int(value) if re.fullmatch(GPU_COUNT_PATTERN, value) else 0


class WorkersSpec(ApiModel):
    """Worker pods: how many, their elastic bounds, processes and resources."""

    replicas: int = Field(1, ge=1, le=10000, description="Worker pods now (the scale subresource).")
    min_replicas: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="Fewest pods the job keeps running with (default: replicas).",
    )
    max_replicas: int | None = Field(
        None, ge=1, le=10000, description="Most pods the job may be scaled to (default: replicas)."
    )
    procs_per_worker: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Training processes per pod (torchrun --nproc-per-node). Default: the pod's "
        "nvidia.com/gpu limit, else 1.",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Resources of each worker container."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=256, description="Extra environment variables."
    )
    template: PodTemplate = Field(
        default_factory=PodTemplate, description="Merged into each worker pod."
    )
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=1,
        le=86400,
        description="Seconds a worker has after SIGTERM (pod deletion, suspend, eviction, "
        "preemption) to save its checkpoint and exit before it is killed. Default: what the "
        "job's last checkpoint save took, times 1.5 plus 10 s, at least 30 (Kubernetes' "
        "default). A value shorter than a save has taken shows a GracePeriodShort warning.",
    )

    rules = (
        Rule(
            cel="!has(self.terminationGracePeriodSeconds) || !has(self.template.spec) "
            "|| !has(self.template.spec.terminationGracePeriodSeconds)",
            message="workers.terminationGracePeriodSeconds and "
            "workers.template.spec.terminationGracePeriodSeconds are both set: keep "
            "workers.terminationGracePeriodSeconds only",
            check=lambda w: (
                w.termination_grace_period_seconds is None
                or "terminationGracePeriodSeconds" not in w.template.spec
            ),
            field="terminationGracePeriodSeconds",
        ),
        Rule(
            cel=f"!has(self.procsPerWorker) || {GPUS_CEL} == 0 || self.procsPerWorker <= {GPUS_CEL}",
            message="workers.procsPerWorker must not exceed the pod's nvidia.com/gpu limit: "
            "each process drives one GPU (leave procsPerWorker out to run one per GPU)",
            check=lambda w: (
                w.procs_per_worker is None
                or w.resources.num_gpus == 0
                or w.procs_per_worker <= w.resources.num_gpus
            ),
            field="procsPerWorker",
        ),
        Rule(
            cel="!has(self.minReplicas) || self.minReplicas <= self.replicas",
            message="workers.minReplicas must not exceed workers.replicas: lower minReplicas or raise replicas",
            check=lambda w: w.min_replicas is None or w.min_replicas <= w.replicas,
            field="minReplicas",
        ),
        Rule(
            cel="!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
            message="workers.replicas must not exceed workers.maxReplicas: raise maxReplicas or scale down",
            check=lambda w: w.max_replicas is None or w.replicas <= w.max_replicas,
            field="replicas",
        ),
    )

    @property
    def num_procs(self) -> int:
        """Training processes per pod: procsPerWorker, else the GPU limit, else 1."""
        return self.procs_per_worker or max(1, self.resources.num_gpus)

    @property
    def bounds(self) -> tuple[int, int]:
        """Elastic bounds (min, max) with the defaults applied."""
        return (self.min_replicas or self.replicas, self.max_replicas or self.replicas)


class StorageSpec(ApiModel):
    """Storage shared by all workers for checkpoints and stage outputs."""

    volume: dict[str, Any] | None = Field(
        None,
        description="A core/v1 volume source (e.g. persistentVolumeClaim). Absent: an emptyDir per pod, "
        "so a job can only resume while its pods live.",
    )
    path: str = Field(
        "/checkpoints",
        pattern=r"^/.*",
        description="Mount path in the worker containers (absolute).",
    )


class RunPolicy(ApiModel):
    """Restarts, deadlines, cleanup and suspension."""

    restart_policy: Literal["OnFailure", "ExitCode", "Never"] = Field(
        "OnFailure",
        description="`OnFailure`: any failure restarts the worker group. `ExitCode`: only retryable exit "
        "codes (>128, signals, e.g. OOM-kill or preemption) restart; 1-127 fail the job. `Never`: the "
        "first failure fails the job.",
    )
    backoff_limit: int = Field(
        3, ge=0, le=1000, description="Restarts allowed before the job fails."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job after running this long (seconds)."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this long after it succeeded or failed."
    )
    clean_pod_policy: Literal["All", "Running", "None"] = Field(
        "Running",
        description="Pods deleted when the job finishes: `All`, only still `Running` ones, or `None`.",
    )
    suspend: bool = Field(
        False, description="Suspended: pods are deleted, checkpoints kept; unsuspending resumes."
    )


GangApi = Literal["Kubernetes", "SchedulerPlugins", "Volcano"]
"""The APIs a gang can be made with: Kubernetes' own `scheduling.k8s.io` PodGroup
(1.36+, `GenericWorkload` feature gate), scheduler-plugins' coscheduling PodGroup
(`scheduling.x-k8s.io`), Volcano's (`scheduling.volcano.sh`)."""


class SchedulingSpec(ApiModel):
    """Placement: gang scheduling, scheduler, queue and priority."""

    gang: bool = Field(
        False,
        description="Schedule the workers the job needs to start (workers.minReplicas) together "
        "or none, through a PodGroup of the API gangApi names.",
    )
    gang_api: GangApi | None = Field(
        None,
        description="The PodGroup API of the gang: `Kubernetes` (scheduling.k8s.io, Kubernetes "
        "1.36+ with the GenericWorkload feature gate), `SchedulerPlugins` (scheduling.x-k8s.io "
        "coscheduling) or `Volcano` (needs schedulerName volcano). Default: Volcano when "
        "schedulerName is volcano, else the first of Kubernetes and SchedulerPlugins the "
        "cluster serves.",
    )
    scheduler_name: str | None = Field(
        None, min_length=1, description="Scheduler for the worker pods."
    )
    queue: str | None = Field(
        None, min_length=1, description="Queue name (Kueue LocalQueue or Volcano queue)."
    )
    priority_class_name: str | None = Field(
        None, min_length=1, description="PriorityClass of the pods."
    )

    rules = (
        Rule(
            cel="!has(self.gangApi) || (has(self.gang) && self.gang)",
            message="scheduling.gangApi is set but scheduling.gang is not: set gang: true, "
            "or remove gangApi",
            check=lambda s: s.gang_api is None or s.gang,
            field="gangApi",
        ),
        Rule(
            cel="!has(self.gangApi) || (self.gangApi == 'Volcano') == "
            "(has(self.schedulerName) && self.schedulerName == 'volcano')",
            message="scheduling.gangApi Volcano goes with schedulerName volcano, and only it: "
            "only Volcano's scheduler acts on a Volcano PodGroup, and it acts on no other",
            check=lambda s: (
                s.gang_api is None or (s.gang_api == "Volcano") == (s.scheduler_name == "volcano")
            ),
            field="gangApi",
        ),
    )


class MetricsSpec(ApiModel):
    """The trainer's Prometheus endpoint."""

    port: int = Field(
        9400, ge=1024, le=65535, description="Port of the metrics endpoint in each worker."
    )
    pod_monitor: bool = Field(
        False, description="Create a Prometheus Operator PodMonitor for the workers."
    )


# `spec.managedBy`, as batch/v1 Job's: which controller runs the job. Absent or this
# operator's name: lmjob runs it; any other (MultiKueue's `kueue.x-k8s.io/multikueue`):
# lmjob leaves it alone. A domain-prefixed path, as Kubernetes validates the Job's field.
MANAGED_BY_OPERATOR = "lmjob.dev/operator"
MAX_MANAGED_BY = 63
MANAGED_BY_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[-A-Za-z0-9/._~%!$&'()*+,;=:]+$"
)


class LargeModelJobSpec(ApiModel):
    """A training job: workers, what they run, and what happens to the result."""

    image: str | None = Field(
        None,
        min_length=1,
        description="Worker image (default: the operator's configured trainer image).",
    )
    command: list[str] | None = Field(
        None,
        min_length=1,
        description="Your own entrypoint, run under torchrun instead of the built-in trainer.",
    )
    workers: WorkersSpec = Field(default_factory=WorkersSpec, description="Worker pods.")
    training: TrainingSpec | None = Field(None, description="The built-in trainer's settings.")
    compression: CompressionSpec | None = Field(
        None, description="Post-training compression stages (built-in trainer only)."
    )
    export: ExportSpec | None = Field(
        None,
        description="Deployable artifacts (hf, onnx, gguf) of chosen stages, written after the "
        "last stage under `<storage.path>/exports/` and verified by their runtimes.",
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description="Shared checkpoint storage."
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Restarts, deadlines, cleanup."
    )
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Placement.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Prometheus endpoint.")
    managed_by: str | None = Field(
        None,
        max_length=MAX_MANAGED_BY,
        pattern=MANAGED_BY_PATTERN,
        description=f"The controller that runs the job, as a domain-prefixed path. Absent or "
        f"`{MANAGED_BY_OPERATOR}`: the lmjob operator. Any other value (e.g. "
        "`kueue.x-k8s.io/multikueue`): the lmjob operator leaves the job alone (no pods, no "
        "status) and that controller runs it. Immutable.",
    )

    rules = (
        Rule(
            # On the spec, not the field: Kubernetes only lets a transition rule see a field
            # that may be absent through a required parent (here: adding or removing it).
            cel="has(self.managedBy) == has(oldSelf.managedBy) "
            "&& (!has(self.managedBy) || self.managedBy == oldSelf.managedBy)",
            message="spec.managedBy is immutable: it cannot be set, changed or removed once "
            "the job exists; delete the job and create it with the managedBy you want",
            check=lambda new, old: new.managed_by == old.managed_by,
            field="managedBy",
            transition=True,
        ),
        Rule(
            cel="has(self.command) != has(self.training)",
            message="set exactly one of spec.command (your own entrypoint) and spec.training "
            "(the built-in trainer)",
            check=lambda s: (s.command is None) != (s.training is None),
        ),
        Rule(
            cel="!has(self.compression) || has(self.training)",
            message="spec.compression needs spec.training: compression stages run in the built-in trainer",
            check=lambda s: s.compression is None or s.training is not None,
            field="compression",
        ),
        Rule(
            cel=f"!has(self.training) || {PROCS_CEL} % {tp_cel('self.training')} == 0",
            message="training.parallelism.tensorParallel must divide the processes per pod "
            "(workers.procsPerWorker, default: the nvidia.com/gpu limit, else 1): a "
            "tensor-parallel group stays inside one pod",
            check=lambda s: (
                s.training is None or s.workers.num_procs % s.training.tensor_parallel == 0
            ),
            field="workers.procsPerWorker",
        ),
        Rule(
            cel=storage_mount_clear_cel("self.workers.template", "self.storage.path"),
            message="workers.template: the worker container mounts over storage.path, where "
            "lmjob mounts the job's storage: pick another mountPath",
            check=lambda s: storage_mount_clear(s.workers.template, s.storage.path),
            field="workers.template.spec.containers",
        ),
        *STAGE_FIT_RULES,
        *EXPORT_FIT_RULES,
    )


class ObjectMeta(ApiModel):
    """The parts of metadata lmjob reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(..., min_length=1, description="The object's name.")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LargeModelJob(ApiModel):
    """A LargeModelJob manifest."""

    api_version: Literal["lmjob.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["LargeModelJob"]
    metadata: ObjectMeta
    spec: LargeModelJobSpec
    status: LargeModelJobStatus | None = None

    rules = (
        Rule(
            cel=f"self.metadata.name.size() <= {MAX_JOB_NAME} && self.metadata.name.matches('{JOB_NAME_PATTERN}')",
            message=f"metadata.name must be at most {MAX_JOB_NAME} characters of lowercase letters, digits "
            "and '-', starting with a letter: it names the job's Service and pods",
            check=lambda j: (
                len(j.metadata.name) <= MAX_JOB_NAME
                and re.fullmatch(JOB_NAME_PATTERN, j.metadata.name) is not None
            ),
            # No fieldPath: the server only allows ones inside the schema, and metadata has none.
        ),
    )
