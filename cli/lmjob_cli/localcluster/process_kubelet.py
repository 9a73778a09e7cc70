"""A kubelet that runs pods as local processes: those the real kube-scheduler bound to its Node
(a local cluster's node, `lmjob cluster up`, and each end-to-end test's node).

There is no container runtime on these machines, so this is the one part of the cluster
that is played rather than run. It does what a kubelet does for our pods, as far as a
plain process can:

- volumes: a folder per volume and pod (gone with the pod, as an emptyDir is), holding a
  configMap's keys as files; a persistentVolumeClaim is one folder per claim that outlives
  pods, as its volume would (`pvc/<namespace>/<claim>`). A process cannot mount, so paths under a volume's
  `mountPath` in the container's command and env are rewritten to that folder, and the
  termination-message path to a file of the pod's own; so are such paths inside the files
  of the pod's configMap volumes (the trainer's config names `data.source` under a mount);
- a hostPath volume is that folder of this machine; a claim bound to a hostPath or local
  PersistentVolume (a local cluster's StorageClass provisions those: storage.py) is that
  volume's folder;
- the ServiceAccount token: the projected `kube-api-access-*` volume is written as the kubelet
  writes it (a token bound to the pod from the TokenRequest API for its serviceAccountName,
  kube-root-ca.crt's `ca.crt`, the `namespace`), into the pod's folder. Clients read those
  files at a fixed path a process cannot mount, so the node names the folder in
  LMJOB_SERVICE_ACCOUNT_DIR, which the operator's in-cluster login honours
  (lmjob_operator/credentials.py), and KUBERNETES_SERVICE_HOST/PORT name the API server's
  own address (there is no kube-proxy for the `kubernetes` Service). Not rotated: the API
  server extends these tokens to a year (--service-account-extend-token-expiration);
- networking: every pod shares this machine's network (as with hostNetwork), but gets an
  address of its own on the loopback (127.a.b.c, from its uid: `pod_ip`) as its podIP, and
  LMJOB_METRICS_ADDRESS names it, so two pods' trainers each serve their metrics port on
  their own address, as in pods' own network namespaces, and the operator scrapes the pod
  it means; a Service name `<svc>.<ns>.svc[.cluster.local]` resolves to 127.0.0.1, where
  whatever the Service fronts listens on every address;
- images: a container without `command` runs its image's entrypoint and cmd from
  IMAGE_ENTRYPOINTS below (the operator image runs `python -m lmjob_operator`, as
  images/operator/Dockerfile does), matched by repository whatever the registry and tag; an
  image missing there waits in ErrImagePull naming this table;
- the container's `python` is this interpreter, with the checkout on PYTHONPATH
  (the worker's launcher, `python -m lmjob_trainer.launch`, starts torchrun with it too,
  and its configuration-error marker lands in the pod's /dev/shm folder); `HOME` and the
  working folder are the pod's folder, named in `LMJOB_POD_DIR` too (inherited by all the
  pod's processes, so they can be found after their node process died);
- status: Running with its IP once started; Succeeded or Failed with the exit code and
  the termination message once the process exits; a pod being deleted gets SIGTERM, then
  SIGKILL after its grace period, and is then removed from the API;
- GPUs: a node's `--gpus` are capacity for the scheduler, not devices: every container
  gets CUDA_VISIBLE_DEVICES="" (as a pod the NVIDIA device plugin gave no GPU), so torch
  sees none and the trainer runs the processes a GPU manifest asks for on CPU with gloo;
- logs: the Node's endpoint serves each container's log to the API server (`kubectl logs`,
  `lmjob logs`; kubelet_node.py).

Which pods: those bound to its Node (spec.nodeName) in every namespace, placed there by the
real kube-scheduler against the Node's capacity (and its taint, when it has one: the tests'
nodes do, so only their own job's pods land there). Everything else (scheduling, owner
references, garbage collection, the operator's RBAC) is the real control plane's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes import client
from kubernetes.client.rest import ApiException

from lmjob_cli.localcluster.binaries import REPO_ROOT
from lmjob_cli.localcluster.kubelet_node import KubeletNode
from lmjob_operator.credentials import DEFAULT_SERVICE_ACCOUNT_DIR, SERVICE_ACCOUNT_DIR_ENV
from lmjob_trainer.launch import descendants

NO_GPUS_ENV = "CUDA_VISIBLE_DEVICES"
log = logging.getLogger(__name__)

SOURCE_DIRS = [str(REPO_ROOT / d) for d in ("api", "cli", "operator", "trainer")]
SERVICE_IP = "127.0.0.1"
METRICS_ADDRESS_ENV = "LMJOB_METRICS_ADDRESS"
SERVICE_HOST = re.compile(r"\b[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9-]+\.svc(\.cluster\.local)?\b")
TERMINATION_DEFAULT = "/dev/termination-log"
MAX_MESSAGE = 4096
POD_DIR_ENV = "LMJOB_POD_DIR"

# What each image runs when a container names no `command`, as its Dockerfile says:
# repository (after any registry) -> (ENTRYPOINT, CMD). `python` is this interpreter.
IMAGE_ENTRYPOINTS: dict[str, tuple[list[str], list[str]]] = {
    "lmjob/operator": (["python", "-m", "lmjob_operator"], []),
    "lmjob/trainer": ([], ["python", "-m", "lmjob_trainer.launch", "--", "-m", "lmjob_trainer"]),
}


def image_command(image: str, command: list[str], args: list[str]) -> list[str] | None:
    """The argv of a container, as a runtime builds it from the pod and the image's
    ENTRYPOINT/CMD; None when it needs an image IMAGE_ENTRYPOINTS does not know."""
    if command:
        return [*command, *args]
    repository = image.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    for known, (entrypoint, cmd) in IMAGE_ENTRYPOINTS.items():
        if repository == known or repository.endswith("/" + known):
            return [*entrypoint, *(args or cmd)]
    return None


def rewrite_mount_paths(text: str, mounts: dict[str, str]) -> str:
    """`text` with every mount path in it (whole path components: `/data` in `/data/x.txt`,
    not in `/database` or `/srv/data`) replaced by its host folder."""
    hosts = {(m.rstrip("/") or "/"): h for m, h in mounts.items()}
    paths = sorted((p for p in hosts if p != "/"), key=len, reverse=True)
    if not paths:
        return text
    pattern = rf"(?<![\w./-])({'|'.join(re.escape(p) for p in paths)})(?![\w.-])"
    return re.sub(pattern, lambda m: hosts[m[1]], text)


class _NotYet(Exception):
    """A pod's volume source does not exist yet (a kubelet leaves such a pod in
    ContainerCreating and tries again)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Running:
    proc: subprocess.Popen[bytes]
    namespace: str
    name: str
    container: str
    termination_file: Path
    started: str
    fallback_to_logs: bool
    stopping_since: float | None = None


class ProcessKubelet:
    """Registers Node `node_name` (with `capacity`; tainted NoSchedule with `taint`) and runs
    the pods bound to it, until `stop()`."""

    def __init__(
        self,
        core: client.CoreV1Api,
        root: Path,
        *,
        node_name: str,
        capacity: dict[str, str] | None = None,
        taint: bool = False,
        interval: float = 0.2,
    ) -> None:
        self.core = core
        self.node_name = node_name
        self.root = root
        self.interval = interval
        self.pods: dict[str, _Running] = {}  # by pod uid
        self.finished: dict[str, int] = {}  # pod uid -> exit code
        self.exit_codes: dict[str, list[int]] = {}  # pod name -> its incarnations' exit codes
        # pod name -> exit code of each incarnation stopped by its pod's deletion (SIGTERM;
        # 137 when it outlived the grace period and was SIGKILLed)
        self.stopped: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="process-kubelet")
        self.errors: list[str] = []
        # Set in every container this node starts from then on, over the pod's own env: the
        # node's environment (tests put the trainer's test hooks here, which a manifest may
        # not name: LMJOB_* is lmjob's own).
        self.extra_env: dict[str, str] = {}
        # Where each pod's current incarnation starts in its log file (what `logs` shows).
        self.log_starts: dict[str, int] = {}
        self.node = KubeletNode(
            core, node_name, root / "kubelet", self.current_log, taint=taint, capacity=capacity
        )

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> ProcessKubelet:
        self.node.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for running in self.pods.values():
            self._kill(running.proc, signal.SIGKILL)
        self.node.stop()

    def _log_path(self, namespace: str, pod: str) -> Path:
        # A node's pods come from every namespace, where names repeat.
        return self.root / "logs" / namespace / f"{pod}.txt"

    def log_of(self, pod: str, namespace: str) -> str:
        """Everything every incarnation of pod `pod` printed."""
        path = self._log_path(namespace, pod)
        return path.read_text(errors="replace") if path.exists() else ""

    def current_log(self, namespace: str, pod: str) -> tuple[bytes, bool] | None:
        """The log of pod `pod`'s current container, and whether it still runs."""
        path = self._log_path(namespace, pod)
        # A log without a start ran under a previous incarnation of this node process.
        start = self.log_starts.get(f"{namespace}/{pod}", 0 if path.exists() else None)
        if start is None:
            return None
        # Asked before reading: a container seen exited has written everything read next.
        running = any(r.name == pod and r.namespace == namespace for r in list(self.pods.values()))
        with path.open("rb") as f:
            f.seek(start)
            return f.read(), running

    def claim_dir(self, claim: str, namespace: str) -> Path:
        """The folder standing for PersistentVolumeClaim `claim`'s volume: the folder of the
        hostPath or local PersistentVolume it is bound to, else one of this kubelet's."""
        with contextlib.suppress(ApiException):
            found = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
            if found.spec.volume_name:
                volume = self.core.read_persistent_volume(found.spec.volume_name).spec
                source = volume.host_path or volume.local
                if source is not None:
                    return Path(source.path)
        return self.root / "pvc" / namespace / claim

    def kill(self, pod: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to every process of pod `pod`'s container, as an OOM kill or a crash."""
        for running in list(self.pods.values()):
            if running.name == pod:
                self._kill(running.proc, sig)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except ApiException as err:
                if err.status != 404:
                    self.errors.append(repr(err))
                    log.exception("process kubelet sync failed")
                # An object deleted during the pass (a pod stopped as it started, its token's
                # pod gone): as a kubelet, the next pass sees the world without it.
                else:
                    log.info("object gone during sync: %s", err.reason)
            except Exception as err:  # the test reads these; the loop must go on
                self.errors.append(repr(err))
                log.exception("process kubelet sync failed")
            self._stop.wait(self.interval)

    # -- one pass ---------------------------------------------------------------
    def sync(self) -> None:
        self.node.heartbeat()
        pods = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}"
        ).items
        seen = set()
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            running = self.pods.get(uid)
            if pod.metadata.deletion_timestamp is not None:
                self._terminate(pod, running)
            elif running is None and uid not in self.finished:
                if self._adopt(pod):
                    continue
                try:
                    self._start(pod)
                except _NotYet as wait:
                    log.info("pod %s/%s waits: %s", pod.metadata.namespace, pod.metadata.name, wait)
            elif running is not None and running.proc.poll() is not None:
                self._report_exit(pod, running)
        for uid in list(self.pods):
            if uid not in seen:  # deleted by someone with grace 0: stop the process
                self._kill(self.pods.pop(uid).proc, signal.SIGKILL)

    def _adopt(self, pod: Any) -> bool:
        """A pod a previous incarnation of this node process saw: never run it twice.

        Its process is gone with that incarnation, so a pod it left Running is failed, as a
        container lost with its node; one already finished only needs remembering."""
        phase = pod.status.phase if pod.status else None
        if phase not in ("Running", "Succeeded", "Failed"):
            return False
        if phase == "Running":
            container = pod.spec.containers[0].name
            lost = {
                "exitCode": 137,
                "reason": "NodeRestarted",
                "message": f"node {self.node_name} restarted; this container's process was lost",
                "finishedAt": _now(),
            }
            self._patch_status(pod, "Failed", {"terminated": lost}, container)
        self.finished[pod.metadata.uid] = -1
        return True

    def _start(self, pod: Any) -> None:
        name = pod.metadata.name
        namespace = pod.metadata.namespace
        pod_dir = self.root / "pods" / f"{name}-{pod.metadata.uid}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        container = pod.spec.containers[0]
        mounts = self._volumes(pod, container, pod_dir)
        termination_file = pod_dir / "termination-log"
        mounts[container.termination_message_path or TERMINATION_DEFAULT] = str(termination_file)

        def translate(value: str) -> str:
            for mount_path, host_path in sorted(mounts.items(), key=lambda m: -len(m[0])):
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    value = host_path + value[len(mount_path) :]
                    break
            return SERVICE_HOST.sub(SERVICE_IP, value)

        argv = image_command(container.image or "", container.command or [], container.args or [])
        if not argv:
            self._image_unknown(pod, container)
            return
        self._translate_config_maps(pod, container, mounts)
        command = [translate(a) for a in argv]
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(pod_dir),
            "PYTHONPATH": os.pathsep.join(SOURCE_DIRS),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            **self._service_env(),
        }
        if DEFAULT_SERVICE_ACCOUNT_DIR in mounts:
            env[SERVICE_ACCOUNT_DIR_ENV] = mounts[DEFAULT_SERVICE_ACCOUNT_DIR]
        for var in container.env or []:
            env[var.name] = translate(var.value or "") if not var.value_from else _field(pod, var)
        # The node's nvidia.com/gpu exist for the scheduler only: like a pod the device plugin
        # gave no GPU, every process sees none, so the trainer runs its processes on CPU.
        env[NO_GPUS_ENV] = ""
        env[METRICS_ADDRESS_ENV] = pod_ip(pod)
        env.update(self.extra_env)
        # Inherited by every process of the pod (torchrun's workers too): how `lmjob cluster`
        # finds a killed node's orphans, and nothing else.
        env[POD_DIR_ENV] = str(pod_dir)
        log_path = self._log_path(namespace, name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        self.log_starts[f"{namespace}/{name}"] = log_file.tell()
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=pod_dir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        running = _Running(
            proc,
            namespace,
            name,
            container.name,
            termination_file,
            _now(),
            fallback_to_logs=container.termination_message_policy == "FallbackToLogsOnError",
        )
        self.pods[pod.metadata.uid] = running
        self._patch_status(
            pod,
            "Running",
            {"running": {"startedAt": running.started}},
            container.name,
            ready=True,
        )

    def _volumes(self, pod: Any, container: Any, pod_dir: Path) -> dict[str, str]:
        """mountPath -> host folder, with configMap keys written as files."""
        volumes = {v.name: v for v in pod.spec.volumes or []}
        mounts = {}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            claim = volume.persistent_volume_claim if volume is not None else None
            host_path = volume.host_path if volume is not None else None
            if host_path is not None:
                host = Path(host_path.path)
                if host_path.type in (None, "", "DirectoryOrCreate"):
                    host.mkdir(parents=True, exist_ok=True)
                mounts[mount.mount_path] = str(host)
                continue
            host = (
                self.claim_dir(claim.claim_name, pod.metadata.namespace)
                if claim
                else pod_dir / "volumes" / mount.name
            )
            host.mkdir(parents=True, exist_ok=True)
            if volume is not None and volume.config_map is not None:
                config_map = self.core.read_namespaced_config_map(
                    volume.config_map.name, pod.metadata.namespace
                )
                for key, value in (config_map.data or {}).items():
                    (host / key).write_text(value)
            if volume is not None and volume.projected is not None:
                self._project(pod, volume.projected, host)
            mounts[mount.mount_path] = str(host)
        return mounts

    def _project(self, pod: Any, projected: Any, folder: Path) -> None:
        """A projected volume's files, as the kubelet writes `kube-api-access-*`."""
        namespace = pod.metadata.namespace
        for source in projected.sources or []:
            if source.service_account_token is not None:
                wanted = source.service_account_token
                request = {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "audiences": [wanted.audience] if wanted.audience else [],
                        "expirationSeconds": wanted.expiration_seconds or 3600,
                        "boundObjectRef": {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "name": pod.metadata.name,
                            "uid": pod.metadata.uid,
                        },
                    },
                }
                answer = self.core.create_namespaced_service_account_token(
                    pod.spec.service_account_name or "default", namespace, request
                )
                (folder / wanted.path).write_text(answer.status.token)
            for kind, reader in (
                ("config_map", self.core.read_namespaced_config_map),
                ("secret", self.core.read_namespaced_secret),
            ):
                selected = getattr(source, kind)
                if selected is None:
                    continue
                try:
                    found = reader(selected.name, namespace)
                except ApiException as err:
                    if err.status != 404:
                        raise
                    if selected.optional:
                        continue
                    # kube-root-ca.crt appears once the controller-manager saw the namespace.
                    raise _NotYet(f"{kind} {selected.name} not found") from None
                data = dict(found.data or {})
                if kind == "secret":
                    data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                items = selected.items or [client.V1KeyToPath(key=k, path=k) for k in data]
                for item in items:
                    if item.key in data:
                        (folder / item.path).parent.mkdir(parents=True, exist_ok=True)
                        (folder / item.path).write_text(data[item.key])
            if source.downward_api is not None:
                fields = {
                    "metadata.namespace": namespace,
                    "metadata.name": pod.metadata.name,
                    "metadata.uid": pod.metadata.uid,
                    "spec.serviceAccountName": pod.spec.service_account_name or "",
                    "spec.nodeName": pod.spec.node_name or "",
                }
                for item in source.downward_api.items or []:
                    if item.field_ref is not None and item.field_ref.field_path in fields:
                        (folder / item.path).write_text(fields[item.field_ref.field_path])

    def _translate_config_maps(self, pod: Any, container: Any, mounts: dict[str, str]) -> None:
        """Mount paths inside the pod's configMap files name the host folders too."""
        volumes = {v.name: v for v in pod.spec.volumes or []}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            if volume is None or volume.config_map is None:
                continue
            for file in Path(mounts[mount.mount_path]).iterdir():
                if file.is_file():
                    file.write_text(rewrite_mount_paths(file.read_text(), mounts))

    def _service_env(self) -> dict[str, str]:
        """The `kubernetes` Service's env, naming the API server this node talks to."""
        server = urlparse(self.core.api_client.configuration.host)
        return {
            "KUBERNETES_SERVICE_HOST": server.hostname or SERVICE_IP,
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
        }

    def _image_unknown(self, pod: Any, container: Any) -> None:
        """A container this node cannot run: waiting, as a kubelet whose pull failed."""
        known = ", ".join(IMAGE_ENTRYPOINTS)
        waiting = {
            "reason": "ErrImagePull",
            "message": f"container {container.name} sets no command and image "
            f"{container.image!r} is none this local node knows ({known}): set command, or "
            "add the image to IMAGE_ENTRYPOINTS in lmjob_cli/localcluster/process_kubelet.py",
        }
        self._patch_status(pod, "Pending", {"waiting": waiting}, container.name)
        self.finished[pod.metadata.uid] = -1

    def _report_exit(self, pod: Any, running: _Running) -> None:
        code = running.proc.returncode
        # A process killed by a signal shows as 128 + signal, as a container's does.
        exit_code = 128 - code if code < 0 else code
        message = ""
        if running.termination_file.exists():
            message = running.termination_file.read_bytes()[:MAX_MESSAGE].decode(errors="replace")
        if not message and exit_code != 0 and running.fallback_to_logs:
            # The kubelet's FallbackToLogsOnError: the log's last 80 lines, at most 2 KiB.
            tail = self.log_of(running.name, running.namespace).splitlines()[-80:]
            message = "\n".join(tail)[-2048:]
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": running.started,
            "finishedAt": _now(),
        }
        if message:
            terminated["message"] = message
        phase = "Succeeded" if exit_code == 0 else "Failed"
        self._patch_status(pod, phase, {"terminated": terminated}, running.container)
        self.finished[pod.metadata.uid] = exit_code
        self.exit_codes.setdefault(pod.metadata.name, []).append(exit_code)
        del self.pods[pod.metadata.uid]

    def _terminate(self, pod: Any, running: _Running | None) -> None:
        """SIGTERM, SIGKILL after the grace period, then remove the pod (grace 0)."""
        if running is not None and running.proc.poll() is None:
            grace = pod.metadata.deletion_grace_period_seconds or 0
            if running.stopping_since is None:
                running.stopping_since = time.monotonic()
                self._kill(running.proc, signal.SIGTERM)
            if time.monotonic() - running.stopping_since < grace:
                return
            self._kill(running.proc, signal.SIGKILL)
            running.proc.wait(10)
        if running is not None and running.stopping_since is not None:
            code = running.proc.poll()
            if code is not None:
                self.stopped.setdefault(pod.metadata.name, []).append(
                    128 - code if code < 0 else code
                )
        self.pods.pop(pod.metadata.uid, None)
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=pod.metadata.uid),
                ),
            )
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], sig: int) -> None:
        """SIGTERM goes to the container's main process, as a kubelet sends it; SIGKILL to
        every process the container started (a cgroup kill), since torchrun's workers run
        in sessions of their own."""
        if proc.poll() is not None and sig != signal.SIGKILL:
            return
        targets = [proc.pid] if sig != signal.SIGKILL else [proc.pid, *descendants(proc.pid)]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _patch_status(
        self, pod: Any, phase: str, state: dict[str, Any], container: str, ready: bool = False
    ) -> None:
        status = {
            "phase": phase,
            "podIP": pod_ip(pod),
            "podIPs": [{"ip": pod_ip(pod)}],
            "startTime": _now(),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": _now(),
                }
            ],
            "containerStatuses": [
                {
                    "name": container,
                    "ready": ready,
                    "restartCount": 0,
                    "image": "process",
                    "imageID": "",
                    "state": state,
                }
            ],
        }
        try:
            self.core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status}
            )
        except ApiException as err:
            if err.status != 404:
                raise


def _field(pod: Any, var: Any) -> str:
    """A downward-API variable (`valueFrom.fieldRef`) as the kubelet fills it; other sources
    (secrets, config maps, resources) are not translated and read empty."""
    ref = var.value_from.field_ref
    if ref is None:
        return ""
    values = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "metadata.uid": pod.metadata.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": pod_ip(pod),
        "status.hostIP": SERVICE_IP,
    }
    return str(values.get(ref.field_path) or "")


def pod_ip(pod: Any) -> str:
    """The pod's own loopback address, 127.a.b.c (a, c in 1..254), fixed by its uid: distinct
    for the pods of any test or local cluster (16 million addresses), never 127.0.0.1."""
    h = int(hashlib.sha256(str(pod.metadata.uid).encode()).hexdigest(), 16)
    return f"127.{1 + h % 254}.{(h >> 8) % 256}.{1 + (h >> 16) % 254}"
