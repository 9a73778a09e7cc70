"""`lmjob validate FILE...`: the API server's verdicts, offline, one line per problem."""

from __future__ import annotations

import argparse
import sys

from lmjob_api.sweep_checks import validate_manifest
from lmjob_api.validation import ManifestError, load_documents


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check LargeModelJob and LargeModelSweep manifests offline",
        description="Check LargeModelJob and LargeModelSweep manifests (multi-document YAML allowed) against the same "
        "schema and rules the API server enforces. Exit 1 if any is invalid. Documents of other "
        "APIs beside a job (its PersistentVolumeClaims) are skipped.",
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
        # Beside a job, documents of other APIs are what kubectl applies with it; a file
        # with no job at all is most likely the wrong file, and reported.
        has_job = any(not _other_api(doc) for doc in docs)
        for index, doc in enumerate(docs):
            where = path if len(docs) == 1 else f"{path}[{index}]"
            if has_job and _other_api(doc):
                sys.stdout.write(f"{where}: {doc['kind']} skipped (not a LargeModelJob)\n")
                continue
            _, problems = validate_manifest(doc)
            if problems:
                invalid += 1
                for problem in problems:
                    sys.stdout.write(f"{where}: {problem}\n")
            else:
                name = doc.get("metadata", {}).get("name", "?")
                sys.stdout.write(f"{where}: {doc.get('kind')} {name} is valid\n")
    return 1 if invalid else 0


def _other_api(doc: object) -> bool:
    """A document of another API group (kubectl applies it beside the job); a wrong kind or
    version within lmjob.dev is still reported."""
    if not isinstance(doc, dict) or not doc.get("kind"):
        return False
    api_version = str(doc.get("apiVersion") or "")
    return not api_version.startswith("lmjob.dev/")
