"""Entry point of `lmjob`: builds the subcommand parser; each subcommand lives in its own module.

Subcommand modules import torch or the Kubernetes client only inside their handlers,
so `lmjob validate` stays fast and works in either image.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Each module has `register(subparsers)`; optional ones may be absent from a slim install.
SUBCOMMAND_MODULES = (
    "lmjob_cli.validate",
    "lmjob_cli.run",
    "lmjob_cli.sweep",
    "lmjob_cli.cluster",
    "lmjob_cli.localcluster.command",
    "lmjob_cli.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmjob",
        description="Train and compress large models from one LargeModelJob manifest, "
        "on this machine (`lmjob run`) or on Kubernetes (`lmjob submit`).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
