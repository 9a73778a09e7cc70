"""`spec.workers.template`: the user's PodTemplateSpec, and the rules that make it mergeable.

The template is a free-form core/v1 PodSpec fragment (the API server validates the pods
themselves), except the few fields lmjob's merge depends on, which are typed here so that
the CRD schema and CEL can check them at admission:

- The **worker container** is the template's only container, whatever its name (a Kubeflow
  `pytorch` or `trainer` container works as it is), or, when there are several, the one
  named `worker`. Its fields merge into the generated container; its image, command and
  args are lmjob's (spec.image, spec.command). Every other container is a sidecar and needs
  an image of its own.
- Environment names lmjob or torchrun set are refused in every container.
- The volume names and mount paths lmjob uses are refused; restartPolicy is lmjob's.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema

from lmjob_api.base import ApiModel, Rule
from lmjob_api.env import is_reserved_env, reserved_env_cel

WORKER_CONTAINER = "worker"
CONFIG_DIR = "/etc/lmjob"
"""Where the trainer config is mounted in the worker container."""
CONFIG_VOLUME = "lmjob-config"
STORAGE_VOLUME = "lmjob-storage"
SHM_VOLUME = "lmjob-dshm"
RESERVED_VOLUMES = (CONFIG_VOLUME, STORAGE_VOLUME, SHM_VOLUME)
RESERVED_MOUNTS = ("/dev/shm", CONFIG_DIR)
"""Mount paths of the worker container that lmjob uses, besides storage.path."""


# Bounds that keep the API server's CEL cost estimate of the rules below within budget;
# far above what a worker pod needs.
MAX_NAME = 253
MAX_PATH = 256
MAX_CONTAINERS = 8
MAX_ENV = 128
MAX_MOUNTS = 32
MAX_VOLUMES = 64


class _Fragment(ApiModel):
    """Typed where lmjob looks, free-form elsewhere (the API server checks the pods)."""

    model_config = ConfigDict(extra="allow")


class EnvVarFragment(_Fragment):
    """A core/v1 EnvVar."""

    name: str = Field(
        ..., min_length=1, max_length=MAX_NAME, description="Variable name (not one lmjob sets)."
    )

    rules = (
        Rule(
            cel=f"!{reserved_env_cel('self.name')}",
            message="this name is set by lmjob or torchrun (PET_*, LMJOB_*, TORCHELASTIC_*, "
            "RANK, WORLD_SIZE, MASTER_ADDR, ...): rename your variable",
            check=lambda e: not is_reserved_env(e.name),
            field="name",
        ),
    )


class VolumeMountFragment(_Fragment):
    """A core/v1 VolumeMount."""

    name: str = Field(..., min_length=1, max_length=MAX_NAME, description="Volume name.")
    mount_path: str = Field(
        ..., min_length=1, max_length=MAX_PATH, description="Path in the container."
    )


class ContainerFragment(_Fragment):
    """A core/v1 Container: the worker container or a sidecar."""

    name: str = Field(..., min_length=1, max_length=MAX_NAME, description="Container name.")
    image: str | None = Field(
        None, max_length=MAX_PATH, description="Sidecars only: the worker's is spec.image."
    )
    command: list[str] | None = Field(None, description="Sidecars only: see spec.command.")
    args: list[str] | None = Field(None, description="Sidecars only.")
    env: list[EnvVarFragment] | None = Field(
        None, max_length=MAX_ENV, description="Extra environment."
    )
    volume_mounts: list[VolumeMountFragment] | None = Field(
        None, max_length=MAX_MOUNTS, description="Extra mounts."
    )


class VolumeFragment(_Fragment):
    """A core/v1 Volume."""

    name: str = Field(
        ..., min_length=1, max_length=MAX_NAME, description="Volume name (not one of lmjob's)."
    )

    rules = (
        Rule(
            cel=f"!(self.name in {list(RESERVED_VOLUMES)})",
            message=f"{', '.join(RESERVED_VOLUMES)} are lmjob's own volumes: rename yours",
            check=lambda v: v.name not in RESERVED_VOLUMES,
            field="name",
        ),
    )


# CEL over a PodSpecFragment: whether container `c` is the worker container.
_HAS = "!has(self.containers) || "
_IS_WORKER = f"(self.containers.size() == 1 || c.name == '{WORKER_CONTAINER}')"


def _is_worker(containers: list[ContainerFragment], c: ContainerFragment) -> bool:
    return len(containers) == 1 or c.name == WORKER_CONTAINER


class PodSpecFragment(_Fragment):
    """A core/v1 PodSpec, typed where lmjob merges it."""

    containers: list[ContainerFragment] | None = Field(
        None,
        max_length=MAX_CONTAINERS,
        description="The worker container (the only one, or the one named worker) and sidecars.",
    )
    volumes: list[VolumeFragment] | None = Field(
        None, max_length=MAX_VOLUMES, description="Extra volumes."
    )
    restart_policy: str | None = Field(None, description="Unset or Never (lmjob's).")
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=0,
        description="Seconds a worker has after SIGTERM; prefer workers."
        "terminationGracePeriodSeconds (setting both is refused).",
    )

    rules = (
        Rule(
            cel=f"{_HAS}self.containers.size() <= 1 "
            f"|| self.containers.exists_one(c, c.name == '{WORKER_CONTAINER}')",
            message=f"with several containers, exactly one must be named {WORKER_CONTAINER} "
            "(the training container; the others run as sidecars): rename yours",
            check=lambda f: (
                len(f.containers or []) <= 1
                or sum(c.name == WORKER_CONTAINER for c in f.containers) == 1
            ),
            field="containers",
        ),
        Rule(
            cel=f"{_HAS}self.containers.all(c, {_IS_WORKER} || has(c.image))",
            message="a sidecar (any container but the worker container) needs an image",
            check=lambda f: all(
                _is_worker(f.containers, c) or c.image is not None for c in f.containers or []
            ),
            field="containers",
        ),
        Rule(
            cel=f"{_HAS}self.containers.all(c, !{_IS_WORKER} || "
            "(!has(c.image) && !has(c.command) && !has(c.args)))",
            message="the worker container's image, command and args are lmjob's: set "
            "spec.image and spec.command instead",
            check=lambda f: all(
                not _is_worker(f.containers, c) or (c.image, c.command, c.args) == (None,) * 3
                for c in f.containers or []
            ),
            field="containers",
        ),
        Rule(
            cel=f"{_HAS}self.containers.all(c, !{_IS_WORKER} || !has(c.volumeMounts) || "
            f"c.volumeMounts.all(m, !(m.mountPath in {list(RESERVED_MOUNTS)})))",
            message=f"the worker container may not mount over {', '.join(RESERVED_MOUNTS)}: "
            "lmjob uses them; pick another mountPath",
            check=lambda f: all(
                m.mount_path not in RESERVED_MOUNTS
                for c in f.containers or []
                if _is_worker(f.containers, c)
                for m in c.volume_mounts or []
            ),
            field="containers",
        ),
        Rule(
            cel="!has(self.restartPolicy) || self.restartPolicy == 'Never'",
            message="must be unset or Never: use spec.runPolicy.restartPolicy",
            check=lambda f: f.restart_policy in (None, "Never"),
            field="restartPolicy",
        ),
    )


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _fragment_schema() -> dict[str, Any]:
    raw = PodSpecFragment.model_json_schema(by_alias=True)
    schema = _inline(raw, raw.pop("$defs", {}))
    schema["description"] = "A core/v1 PodSpec fragment (the API server validates the pods)."
    return schema


def _checked(value: dict[str, Any]) -> dict[str, Any]:
    PodSpecFragment.model_validate(value)
    return value


PodSpecDict = Annotated[
    dict[str, Any], AfterValidator(_checked), WithJsonSchema(_fragment_schema())
]
"""The template's spec: kept as the user wrote it (the operator merges it as a dict),
validated as a PodSpecFragment."""


class PodTemplateMeta(ApiModel):
    """Labels and annotations added to every worker pod."""

    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")


class PodTemplate(ApiModel):
    """A PodTemplateSpec merged into each worker pod: tolerations, nodeSelector, volumes,
    sidecars, and the worker container (the only container, or the one named `worker`)
    whose fields merge into the generated one."""

    metadata: PodTemplateMeta = Field(default_factory=PodTemplateMeta, description="Pod metadata.")
    spec: PodSpecDict = Field(default_factory=dict, description="A core/v1 PodSpec fragment.")

    def rule_children(self) -> list[tuple[ApiModel, str]]:
        return [(self.fragment(), "spec")]

    def fragment(self) -> PodSpecFragment:
        """The spec as its typed fragment (validated when the template was)."""
        return PodSpecFragment.model_validate(self.spec)

    def _containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("containers") or [])

    def is_worker(self, container: dict[str, Any]) -> bool:
        """True for the container whose fields merge into the generated worker container."""
        return len(self._containers()) == 1 or container.get("name") == WORKER_CONTAINER

    def worker_container(self) -> dict[str, Any]:
        """The template's worker container, as written ({} when it has none)."""
        return next((c for c in self._containers() if self.is_worker(c)), {})

    def sidecars(self) -> list[dict[str, Any]]:
        """The template's other containers, as written."""
        return [c for c in self._containers() if not self.is_worker(c)]


def storage_mount_clear_cel(template: str, storage_path: str) -> str:
    """CEL: the worker container of `template` does not mount over `storage_path`."""
    containers = f"{template}.spec.containers"
    return (
        f"!has({containers}) || {containers}.all(c, !({containers}.size() == 1 "
        f"|| c.name == '{WORKER_CONTAINER}') || !has(c.volumeMounts) || "
        f"c.volumeMounts.all(m, m.mountPath != {storage_path}))"
    )


def storage_mount_clear(template: PodTemplate, storage_path: str) -> bool:
    """Python twin of storage_mount_clear_cel."""
    mounts = template.worker_container().get("volumeMounts") or []
    return all(m["mountPath"] != storage_path for m in mounts)
