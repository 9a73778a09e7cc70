"""`python -m lmjob_operator`: run the operator (kopf, in-process), by hand, in tests or in the image.

All namespaces by default; `--namespace NS` (repeatable) scopes it. The kubeconfig comes
from KUBECONFIG (or ~/.kube/config), else the in-cluster ServiceAccount.
"""

from __future__ import annotations

import argparse
import logging
import sys

# kopf imports the generated `kubernetes` client whenever it is installed, only to recognise
# its model objects, which this operator never hands it: about 20 MiB of resident memory for
# nothing. An entry of None makes that optional import fail as if the client were absent;
# connection.py removes it again in the one case that needs the client (a kubeconfig plugin).
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

import kopf  # noqa: E402
import prometheus_client  # noqa: E402

from lmjob_operator.config import load_config  # noqa: E402
from lmjob_operator.settings import PEERING_NAME, RunOptions  # noqa: E402

log = logging.getLogger("lmjob_operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lmjob_operator",
        description="Run the lmjob operator: LargeModelJob → elastic torchrun worker pods, "
        "LargeModelSweep → trial jobs.",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        metavar="URL",
        help="liveness endpoint served by kopf ('' to disable); default %(default)s",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="port of the lmjob_operator_* Prometheus metrics (0 to disable); default %(default)s",
    )
    parser.add_argument("--metrics-address", default="0.0.0.0", metavar="ADDR")
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="run without kopf peering (one replica only)",
    )
    parser.add_argument(
        "--peering-name",
        default=PEERING_NAME,
        help="kopf peering object shared by the replicas; default %(default)s",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority (default: random, so exactly one replica is active)",
    )
    parser.add_argument(
        "--log-format",
        choices=("plain", "full", "json"),
        default="full",
        help="log format; json lines carry the job's namespace/name",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config()
    except ValueError as err:
        print(f"lmjob-operator: {err}", file=sys.stderr)
        return 2
    log_format = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}.get(
        args.log_format, kopf.LogFormat.JSON
    )
    kopf.configure(
        verbose=args.verbose, log_format=log_format, log_prefix=True, log_refkey="object"
    )
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, addr=args.metrics_address)

    # Importing registers the handlers with kopf: the jobs', then the sweeps'.
    import lmjob_operator.handlers
    import lmjob_operator.sweep_handlers  # noqa: F401

    options = RunOptions(
        standalone=args.standalone, priority=args.priority, peering_name=args.peering_name
    )
    log.info(
        "starting: %s, trainer image %s",
        f"namespaces {', '.join(args.namespace)}" if args.namespace else "all namespaces",
        config.trainer_image,
    )
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
        standalone=True if args.standalone else None,
        memo=kopf.Memo(options=options, config=config),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
