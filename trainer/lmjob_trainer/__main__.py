"""`python -m lmjob_trainer --config FILE`: a worker process, under torchrun or on its own.

Environment (docs/contracts.md, api/lmjob_api/env.py): LMJOB_CONFIG (default of --config),
LMJOB_CHECKPOINT_DIR (default ./runs/<job>), LMJOB_METRICS_PORT (no endpoint if unset),
LMJOB_METRICS_ADDRESS (the address it binds; all by default: only nodes that run pods as
processes, `lmjob cluster`'s and the tests', set it to the pod's own loopback address).
A configuration error exits with CONFIG_ERROR (78, lmjob_api.exit_codes), never retried:
its message goes to the termination log, and a marker tells the launcher (launch.py) to stop
torchrun instead of restarting the workers.
Relative paths in the config (data.source, tokenizer, model.path) resolve against the
working directory; `lmjob run` makes them absolute first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lmjob_api.trainer_config import load_trainer_config
from lmjob_api.validation import ManifestError
from lmjob_trainer.launch import config_error_message, report_config_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lmjob_trainer", description=__doc__)
    parser.add_argument(
        "--config",
        default=os.environ.get("LMJOB_CONFIG"),
        help="trainer config (training + compression blocks); default $LMJOB_CONFIG",
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=os.environ.get("LMJOB_CHECKPOINT_DIR"),
        help="storage root; default $LMJOB_CHECKPOINT_DIR, else ./runs/<job>",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ["LMJOB_METRICS_PORT"])
        if os.environ.get("LMJOB_METRICS_PORT")
        else None,
        help="Prometheus port served by local rank 0; default $LMJOB_METRICS_PORT",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.config:
        print("lmjob_trainer: give --config FILE or set LMJOB_CONFIG", file=sys.stderr)
        return 2  # a usage error, as argparse's
    try:
        config = load_trainer_config(args.config)
    except (ManifestError, OSError) as err:
        # Before logging is set up; one line per problem, no traceback.
        problems = getattr(err, "problems", [err])
        for problem in problems:
            print(f"lmjob_trainer: {args.config}: {problem}", file=sys.stderr)
        return report_config_error(config_error_message([str(p) for p in problems]))
    root = Path(args.checkpoint_dir or Path("runs") / config.job_name).resolve()
    # Imported here: torch takes seconds to import, and config errors should not wait.
    from lmjob_trainer.train import main as train_main

    return train_main(config, checkpoint_dir=root, metrics_port=args.metrics_port)


if __name__ == "__main__":
    code = main()
    # Tearing torch's modules down at interpreter exit takes seconds, in every worker at
    # every restart. Everything is closed and written by now: flush and leave at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
