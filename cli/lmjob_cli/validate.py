"""`lmjob validate FILE...`: the API server's verdicts, offline, one line per problem."""

from __future__ import annotations

import argparse
import sys

from lmjob_api.validation import ManifestError, load_documents, validate_job


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check LargeModelJob manifests offline",
        description="Check LargeModelJob manifests (multi-document YAML allowed) against the same "
        "schema and rules the API server enforces. Exit 1 if any is invalid.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    invalid = 0
    for path in args.files:
        try:
            docs = load_documents(path)
        except ManifestError as err:
            invalid += 1
            for problem in err.problems:
                sys.stdout.write(f"{path}: {problem}\n")
            continue
        if not docs:
            invalid += 1
            sys.stdout.write(f"{path}: no documents\n")
        for index, doc in enumerate(docs):
            where = path if len(docs) == 1 else f"{path}[{index}]"
            _, problems = validate_job(doc)
            if problems:
                invalid += 1
                for problem in problems:
                    sys.stdout.write(f"{where}: {problem}\n")
            else:
                name = doc.get("metadata", {}).get("name", "?")
                sys.stdout.write(f"{where}: LargeModelJob {name} is valid\n")
    return 1 if invalid else 0
