"""The `lmjob` command (minimal; the coordinator's version wires every subcommand)."""

from __future__ import annotations

import argparse
import sys

from lmjob_cli import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmjob")
    subparsers = parser.add_subparsers(dest="command", required=True)
    run.register(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
