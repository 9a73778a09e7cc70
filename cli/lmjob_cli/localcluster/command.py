"""`lmjob cluster up|down|status|env`: a Kubernetes cluster on this machine, no containers
(the control plane binaries from scripts/build-k8s plus local nodes running pods as processes).

`up` prints only `export KUBECONFIG=...` on stdout, so `eval "$(lmjob cluster up)"` points
kubectl at it; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

DEFAULT_STATE_DIR = Path.home() / ".cache" / "lmjob" / "dev-cluster"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="a local Kubernetes cluster (control plane + process-run nodes) on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("LMJOB_DEV_CLUSTER_DIR", DEFAULT_STATE_DIR)),
        help="the cluster's folder: certificates, kubeconfig, logs, node folders "
        "(default: $LMJOB_DEV_CLUSTER_DIR or %(default)s)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start what is not running (idempotent)")
    up.add_argument("--nodes", type=int, default=1, help="local nodes (default 1)")
    up.add_argument(
        "--gpus",
        type=int,
        default=0,
        help="nvidia.com/gpu each new node advertises to the scheduler (pods still run on CPU)",
    )
    up.add_argument("--no-controller-manager", action="store_true")
    up.add_argument("--no-scheduler", action="store_true")
    up.add_argument("--no-crds", action="store_true", help="do not install crds/")
    up.add_argument(
        "--kueue",
        action="store_true",
        help="also run Kueue (scripts/build-k8s --only kueue) with its CRDs and webhooks",
    )
    up.add_argument(
        "--gang-scheduling",
        action="store_true",
        help="Kubernetes' own gang scheduling (1.36 alpha: GenericWorkload and GangScheduling "
        "feature gates, scheduling.k8s.io/v1alpha2 PodGroups)",
    )
    actions.add_parser("down", help="stop the nodes, their pods and the control plane")
    actions.add_parser("status", help="what runs, with pids and logs")
    actions.add_parser("env", help="print the export KUBECONFIG line again")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import cryptography  # noqa: F401  (the cluster's PKI)
        import kubernetes  # noqa: F401  (the nodes' API client)
    except ModuleNotFoundError as err:
        print(f"lmjob cluster needs {err.name}: pip install 'lmjob[cluster]'", file=sys.stderr)
        return 1
    from lmjob_cli.localcluster import lifecycle
    from lmjob_cli.localcluster.binaries import REPO_ROOT, BinariesMissing
    from lmjob_cli.localcluster.controlplane import ControlPlaneError, Options

    state_dir = args.state_dir.expanduser().resolve()
    if args.action == "up":
        if args.nodes < 0 or args.gpus < 0:
            print("--nodes and --gpus must be 0 or more", file=sys.stderr)
            return 2
        crds = REPO_ROOT / "crds"
        options = Options(
            controller_manager=not args.no_controller_manager,
            scheduler=not args.no_scheduler,
            crd_dir=None if args.no_crds or not crds.is_dir() else crds,
            gang_scheduling=args.gang_scheduling,
        )
        try:
            with contextlib.suppress(KeyboardInterrupt):
                plane = lifecycle.up(
                    state_dir, options, num_nodes=args.nodes, gpus=args.gpus, kueue=args.kueue
                )
                print(
                    f"logs: {plane.log_dir}; node folders: {state_dir / 'nodes'}", file=sys.stderr
                )
                print(f"export KUBECONFIG={plane.kubeconfig}")
                return 0
            return 130
        except (BinariesMissing, ControlPlaneError, RuntimeError) as err:
            print(f"lmjob cluster up: {err}", file=sys.stderr)
            return 1
    if args.action == "down":
        stopped = lifecycle.down(state_dir)
        print(
            "cluster stopped; logs kept in " + str(state_dir / "logs") if stopped else "not running"
        )
        return 0
    if args.action == "status":
        lines, healthy = lifecycle.describe(state_dir)
        print("\n".join(lines))
        return 0 if healthy else 1
    plane = lifecycle.running_plane(state_dir)
    if plane is None:
        print("cluster not running; start it with `lmjob cluster up`", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0
