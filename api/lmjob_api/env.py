"""The environment contract between the operator and a worker pod, written down once.

The operator sets these on every worker container; torchrun reads the `PET_*` ones
(each `PET_X` is the `--x` flag of torch.distributed.run) and the trainer reads
the `LMJOB_*` ones. Users may not set any of them (checked at admission).
"""

from __future__ import annotations

CONFIG_ERROR_FILE_ENV = "LMJOB_CONFIG_ERROR_FILE"
"""Names the configuration-error marker (lmjob_trainer.launch)."""
POD_NAME_ENV = "LMJOB_POD_NAME"
NODE_NAME_ENV = "LMJOB_NODE_NAME"

WORKER_ENV: dict[str, str] = {
    "PET_NNODES": "Elastic bounds `min:max` of the number of worker pods (torchrun --nnodes).",
    "PET_NPROC_PER_NODE": "Processes per worker pod (torchrun --nproc-per-node).",
    "PET_RDZV_BACKEND": "Always `c10d`.",
    "PET_RDZV_ENDPOINT": "host:port of the job's rendezvous store, which outlives any single worker.",
    "PET_RDZV_ID": "`<job uid>-<restarts>`: one rendezvous per job incarnation and whole-group "
    "restart (torchrun closes a run's rendezvous for good once an agent exits, so a restarted "
    "group needs a fresh one; a pod replaced alone rejoins the current one).",
    "PET_RDZV_CONF": "Extra rendezvous settings: `is_host=false` (no worker hosts the store) and "
    "`read_timeout=300` (wait up to 5 min for the store pod to come up).",
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "Always `1`: restarted workers must not reuse a dead peer's store (pytorch#135712).",
    "PET_MAX_RESTARTS": "How many times torchrun restarts its local workers before giving up.",
    "LMJOB_CONFIG": "Path of the rendered trainer config (training + compression), mounted read-only.",
    "LMJOB_CHECKPOINT_DIR": "Directory shared by all workers for checkpoints and stage outputs.",
    "LMJOB_JOB_NAME": "The LargeModelJob's name, used as the `job` metric label.",
    "LMJOB_NAMESPACE": "The LargeModelJob's namespace.",
    "LMJOB_METRICS_PORT": "Port of the trainer's Prometheus endpoint (rank 0 of each pod serves it).",
    "LMJOB_TERMINATION_LOG": "The container's terminationMessagePath: global rank 0 writes every "
    "stage's final phase and results there (lmjob_api.termination), for the operator.",
    POD_NAME_ENV: "The worker pod's own name (downward API `metadata.name`): the `pod` label of "
    "the trainer's straggler series.",
    NODE_NAME_ENV: "The node the pod runs on (downward API `spec.nodeName`): the `node` label of "
    "the trainer's straggler series. Both come from the pod's own spec, so workers need no "
    "Kubernetes credentials.",
    CONFIG_ERROR_FILE_ENV: "A file a worker process writes (its one-line error inside) when it "
    "exits with CONFIG_ERROR (78, lmjob_api.exit_codes): the launcher that runs torchrun "
    "(lmjob_trainer.launch) then stops torchrun instead of letting it restart the workers, and "
    "the container exits 78, which the operator never retries. The built-in trainer writes it; "
    "a program of your own (spec.command) may too. The operator points it into the pod's "
    "/dev/shm volume.",
}

# Set by torchrun itself for each worker process: a user value would be overwritten
# silently, so it is refused instead.
TORCHRUN_ENV: tuple[str, ...] = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)

RESERVED_PREFIXES: tuple[str, ...] = ("PET_", "LMJOB_", "TORCHELASTIC_")


def is_reserved_env(name: str) -> bool:
    """True for a variable name that lmjob or torchrun sets on workers."""
    return name in TORCHRUN_ENV or name.startswith(RESERVED_PREFIXES)


def reserved_env_cel(var: str) -> str:
    """CEL twin of `is_reserved_env` for a string expression `var`."""
    names = ", ".join(f"'{n}'" for n in TORCHRUN_ENV)
    prefixes = " || ".join(f"{var}.startsWith('{p}')" for p in RESERVED_PREFIXES)
    return f"({var} in [{names}] || {prefixes})"
