"""Checks of a spec that the API server let through but that cannot run.

The CRD's schema and CEL rules reject most bad specs at admission. What they cannot see
(inside the free-form pod template) or what depends on the operator is checked here; a
job failing one is marked Failed with reason InvalidSpec and an event naming the field.
"""

from __future__ import annotations

from lmjob_api import LargeModelJob
from lmjob_api.validation import check_rules, check_template_env
from lmjob_operator.naming import CONFIG_DIR
from lmjob_operator.worker_pod import RESERVED_VOLUMES, WORKER_CONTAINER


def check_runnable(job: LargeModelJob) -> list[str]:
    """Every problem found, one line each (`field: what to do`); empty when the job can run."""
    problems = [str(p) for p in check_rules(job)]
    problems += [str(p) for p in check_template_env(job)]
    spec = job.spec.workers.template.spec
    base = "spec.workers.template.spec"
    for i, volume in enumerate(spec.get("volumes") or []):
        if isinstance(volume, dict) and volume.get("name") in RESERVED_VOLUMES:
            problems.append(
                f"{base}.volumes[{i}].name: {volume['name']} is lmjob's own volume: rename yours"
            )
    reserved_paths = {job.spec.storage.path, "/dev/shm", CONFIG_DIR}
    for i, container in enumerate(spec.get("containers") or []):
        if not isinstance(container, dict) or container.get("name") != WORKER_CONTAINER:
            continue
        where = f"{base}.containers[{i}]"
        for key, instead in (
            ("image", "spec.image"),
            ("command", "spec.command"),
            ("args", "spec.command"),
        ):
            if key in container:
                problems.append(f"{where}.{key}: set {instead} instead (the worker runs torchrun)")
        for j, mount in enumerate(container.get("volumeMounts") or []):
            if isinstance(mount, dict) and mount.get("mountPath") in reserved_paths:
                problems.append(
                    f"{where}.volumeMounts[{j}].mountPath: {mount['mountPath']} is used by lmjob "
                    "(storage, /dev/shm or the config): pick another path"
                )
    restart = spec.get("restartPolicy")
    if restart not in (None, "Never"):
        problems.append(
            f"{base}.restartPolicy: must be unset or Never (use spec.runPolicy.restartPolicy)"
        )
    return problems
