"""`lmjob submit|status|logs|list|delete`: LargeModelJobs on a cluster, with the user's kubeconfig.

The Kubernetes client is imported inside the handlers, so `lmjob validate` and `lmjob run`
never pay for it. Errors from the API server are printed as one line, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from lmjob_api import GROUP, PLURAL, VERSION
from lmjob_api.goodput import Breakdown, describe
from lmjob_api.job import MANAGED_BY_OPERATOR


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)"
    )
    common.add_argument("--context", help="kubeconfig context to use")
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")

    p = subparsers.add_parser(
        "submit",
        parents=[common],
        help="validate a manifest and create the job (or sweep) on the cluster",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--wait", action="store_true", help="wait until the job (or sweep) finishes")
    p.set_defaults(handler=_guard(submit))

    p = subparsers.add_parser("status", parents=[common], help="show a job's status")
    p.add_argument("name")
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    p.set_defaults(handler=_guard(status))

    p = subparsers.add_parser("logs", parents=[common], help="print a worker's logs")
    p.add_argument("name")
    p.add_argument("-w", "--worker", type=int, default=0, help="worker index (default 0)")
    p.add_argument("-f", "--follow", action="store_true", help="stream new lines")
    p.add_argument("--tail", type=int, default=None, help="only the last N lines")
    p.add_argument(
        "-p",
        "--previous",
        action="store_true",
        help="the kept log tail of the worker's last ended or deleted pod (after a restart, "
        "or once its pod is gone)",
    )
    p.set_defaults(handler=_guard(logs))

    p = subparsers.add_parser("list", parents=[common], help="list jobs")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.set_defaults(handler=_guard(list_jobs))

    p = subparsers.add_parser("delete", parents=[common], help="delete a job and its pods")
    p.add_argument("name")
    p.add_argument("--wait", action="store_true", help="wait until the job is gone")
    p.set_defaults(handler=_guard(delete))


class CliError(Exception):
    """A failure to report as one line (exit 1)."""


def _guard(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from kubernetes.client.rest import ApiException
        from kubernetes.config.config_exception import ConfigException

        try:
            return handler(args)
        except ApiException as err:
            sys.stderr.write(f"lmjob: {_api_message(err)}\n")
        except (CliError, ConfigException) as err:
            sys.stderr.write(f"lmjob: {err}\n")
        return 1

    return run


def _api_message(err: Any) -> str:
    try:
        return json.loads(err.body).get("message") or str(err.reason)
    except (TypeError, ValueError):
        return f"{err.status} {err.reason}"


def _clients(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(CustomObjectsApi, CoreV1Api, namespace) for the user's kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=args.kubeconfig, context=args.context)
        _, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
        if args.context:
            contexts, _ = config.list_kube_config_contexts(config_file=args.kubeconfig)
            active = next((c for c in contexts if c["name"] == args.context), active)
        default_ns = (active or {}).get("context", {}).get("namespace") or "default"
    except config.ConfigException:
        if args.kubeconfig:
            raise
        config.load_incluster_config()
        default_ns = "default"
    api = client.ApiClient()
    return client.CustomObjectsApi(api), client.CoreV1Api(api), args.namespace or default_ns


_KINDS = {"LargeModelJob": "largemodeljob", "LargeModelSweep": "largemodelsweep"}


def submit(args: argparse.Namespace) -> int:
    import copy

    from lmjob_api.sweep_checks import validate_manifest
    from lmjob_api.validation import ManifestError, load_documents

    try:
        docs = load_documents(args.file)
    except ManifestError as err:
        for problem in err.problems:
            sys.stderr.write(f"{args.file}: {problem}\n")
        return 1
    ours = [d for d in docs if isinstance(d, dict) and d.get("kind") in _KINDS] or docs
    if len(ours) != 1:
        sys.stderr.write(
            f"{args.file}: expected one LargeModelJob or LargeModelSweep, found {len(ours)} "
            "documents\n"
        )
        return 1
    obj, problems = validate_manifest(ours[0])
    if problems:
        for problem in problems:
            sys.stderr.write(f"{args.file}: {problem}\n")
        return 1
    custom, _, namespace = _clients(args)
    # The manifest as written (the API server applies the defaults), in the chosen namespace.
    body = copy.deepcopy(ours[0])
    body.pop("status", None)
    namespace = args.namespace or obj.metadata.namespace or namespace
    body["metadata"]["namespace"] = namespace
    singular = _KINDS[body["kind"]]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, f"{singular}s", body)
    name = obj.metadata.name
    sys.stdout.write(f"{singular}/{name} created in {namespace}\n")
    if args.wait:
        return _wait_finished(custom, namespace, name, f"{singular}s")
    return 0


def _wait_finished(custom: Any, namespace: str, name: str, plural: str = PLURAL) -> int:
    last = ""
    while True:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        st = obj.get("status") or {}
        line = _one_line(obj) if plural == PLURAL else _sweep_line(obj)
        if line != last:
            sys.stdout.write(line + "\n")
            last = line
        if st.get("phase") in ("Succeeded", "Failed"):
            return 0 if st["phase"] == "Succeeded" else 1
        time.sleep(2)


def _sweep_line(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    best = st.get("best") or {}
    value = best.get("value")
    return "  ".join(
        [
            f"{obj['metadata']['name']:<24}",
            f"{st.get('phase', 'Pending'):<10}",
            f"trials {st.get('summary', '0/?'):<8}",
            f"pruned {st.get('pruned', 0):<4}",
            f"best {'-' if value is None else f'{value:.4g}'} {best.get('name', '')}",
        ]
    )


def status(args: argparse.Namespace) -> int:
    custom, _, namespace = _clients(args)
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
    st = obj.get("status") or {}
    if args.output == "json":
        sys.stdout.write(json.dumps(st, indent=2) + "\n")
        return 0
    if args.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(st, sort_keys=False))
        return 0
    sys.stdout.write(format_status(obj))
    return 0


def format_status(obj: dict[str, Any]) -> str:
    """Human-readable status of a job object (pure, for the `status` command)."""
    st = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    workers = st.get("workers") or {}
    lines = [
        f"Job:         {meta.get('namespace')}/{meta.get('name')}",
        f"Phase:       {st.get('phase', 'Pending')}",
        f"Workers:     {workers.get('summary', '0/0')} active/desired, {workers.get('ready', 0)} ready, "
        f"world size {st.get('worldSize', 0)}",
        f"Restarts:    {st.get('restarts', 0)}",
    ]
    manager = (obj.get("spec") or {}).get("managedBy")
    if manager and manager != MANAGED_BY_OPERATOR:
        # Another controller (MultiKueue) runs the job; the status is what it mirrors back.
        lines.insert(1, f"Managed by:  {manager} (not the lmjob operator)")
    progress = st.get("progress")
    if progress:
        loss = progress.get("loss")
        tps = progress.get("tokensPerSecond")
        lines.append(
            f"Progress:    {progress.get('stage')} step {progress.get('step')}/{progress.get('totalSteps')}"
            + (f", loss {loss:.4g}" if loss is not None else "")
            + (f", {tps:.3g} tokens/s" if tps is not None else "")
        )
    goodput = st.get("goodput")
    if goodput and goodput.get("seconds"):
        seconds = {k: float(v) for k, v in goodput["seconds"].items()}
        known = Breakdown(wall_seconds=float(goodput.get("wallSeconds", 0.0)), seconds=seconds)
        lines.append(f"Goodput:     {describe(known).removeprefix('goodput ')}")
    checkpoint = st.get("checkpoint")
    if checkpoint and checkpoint.get("latest"):
        lines.append(f"Checkpoint:  {checkpoint['latest']} (step {checkpoint.get('step')})")
    for stage in st.get("stages") or []:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in (stage.get("metrics") or {}).items())
        lines.append(
            f"Stage:       {stage['name']:<12} {stage.get('phase', 'Pending'):<10} {metrics}"
        )
    conditions = st.get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        for c in conditions:
            lines.append(
                f"  {c['type']:<15} {c['status']:<6} {c.get('reason', ''):<22} {c.get('message', '')}"
            )
    return "\n".join(lines) + "\n"


def logs(args: argparse.Namespace) -> int:
    """A worker's log through the API server (the kubelet of its node serves it); with
    --follow, streamed until the worker's container exits or Ctrl-C. Once its pod is gone,
    and with --previous, the tail the operator kept (lmjob_api.kept_logs)."""
    from kubernetes.client.rest import ApiException

    from lmjob_api.pod_template import WORKER_CONTAINER

    _, core, namespace = _clients(args)
    pod = f"{args.name}-worker-{args.worker}"
    if args.previous:
        if args.follow:
            raise CliError("--previous shows a kept log: it cannot be followed")
        return _kept_log(core, args, namespace)
    kwargs: dict[str, Any] = {"container": WORKER_CONTAINER}
    if args.tail is not None:
        kwargs["tail_lines"] = args.tail
    try:
        if not args.follow:
            sys.stdout.write(core.read_namespaced_pod_log(pod, namespace, **kwargs) or "")
            return 0
        response = core.read_namespaced_pod_log(
            pod, namespace, follow=True, _preload_content=False, **kwargs
        )
    except ApiException as err:
        if err.status != 404:
            raise
        return _kept_log(core, args, namespace, gone=True)
    try:
        for chunk in response.stream(decode_content=True):
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130  # Ctrl-C ends following: no traceback
    finally:
        response.release_conn()
    return 0


def _kept_log(core: Any, args: argparse.Namespace, namespace: str, gone: bool = False) -> int:
    """Print the worker's latest kept tail (lmjob_api.kept_logs.select_kept); a one-line
    note on stderr says which."""
    from kubernetes.client.rest import ApiException

    from lmjob_api.kept_logs import kept_logs_name, select_kept

    pod = f"{args.name}-worker-{args.worker}"
    try:
        record = core.read_namespaced_config_map(kept_logs_name(args.name), namespace)
        data: dict[str, str] = record.data or {}
    except ApiException as err:
        if err.status != 404:
            raise
        data = {}
    key = select_kept(data, args.worker)
    if key is None:
        where = f"there is no pod {pod} and " if gone else ""
        raise CliError(f"{where}no log of worker {args.worker} of job {args.name} is kept")
    text = data[key]
    if args.tail is not None:
        text = "".join(text.splitlines(keepends=True)[-args.tail :] if args.tail else [])
    why = f"pod {pod} is gone: " if gone else ""
    sys.stderr.write(
        f"lmjob: {why}showing the log tail kept as {kept_logs_name(args.name)}/{key}\n"
    )
    sys.stdout.write(text)
    return 0


def _age(created: str | None) -> str:
    if not created:
        return "?"
    seconds = (
        datetime.now(UTC) - datetime.fromisoformat(created.replace("Z", "+00:00"))
    ).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _one_line(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    progress = st.get("progress") or {}
    loss = progress.get("loss")
    return "  ".join(
        [
            f"{obj['metadata']['name']:<24}",
            f"{st.get('phase', 'Pending'):<11}",
            f"{(st.get('workers') or {}).get('summary', '0/0'):<8}",
            f"{progress.get('stage', ''):<10}",
            f"{progress.get('step', ''):<7}",
            f"{'' if loss is None else f'{loss:.4g}':<8}",
            _age(obj["metadata"].get("creationTimestamp")),
        ]
    )


def list_jobs(args: argparse.Namespace) -> int:
    custom, _, namespace = _clients(args)
    if args.all_namespaces:
        items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    else:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    header = "  ".join(
        [
            f"{'NAME':<24}",
            f"{'PHASE':<11}",
            f"{'WORKERS':<8}",
            f"{'STAGE':<10}",
            f"{'STEP':<7}",
            f"{'LOSS':<8}",
            "AGE",
        ]
    )
    if args.all_namespaces:
        header = f"{'NAMESPACE':<20}  " + header
    sys.stdout.write(header.rstrip() + "\n")
    for obj in sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])):
        line = _one_line(obj)
        if args.all_namespaces:
            line = f"{obj['metadata']['namespace']:<20}  " + line
        sys.stdout.write(line.rstrip() + "\n")
    return 0


def delete(args: argparse.Namespace) -> int:
    from kubernetes.client.rest import ApiException

    custom, _, namespace = _clients(args)
    custom.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, args.name, propagation_policy="Foreground"
    )
    sys.stdout.write(f"largemodeljob/{args.name} deleted\n")
    while args.wait:
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
        except ApiException as err:
            if err.status == 404:
                break
            raise
        time.sleep(1)
    return 0
