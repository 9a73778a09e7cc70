"""`lmjob export CHECKPOINT_OR_RUN_DIR --format hf|onnx|gguf --out DIR`: a checkpoint or
stage output as a folder a serving stack loads, verified by loading it back.

The source is a run folder (`./runs/<job>/`: its training result, or `--stage NAME`), a
stage's folder or its `final/` output, or one `train/step-…` checkpoint. The export is
loaded by its runtime (transformers, onnxruntime, the gguf reader) and its logits are
compared with lmjob's own on a fixed prompt; the largest difference is printed, and an
export outside tolerance fails (exit 1) and leaves nothing at `--out`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from lmjob_trainer.export.result import FORMATS, ExportError

EXIT_FAILED = 1
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "gguf", "lmjob_trainer.export")


def register(subparsers: Any) -> None:
    """Add the `export` subcommand; its handler is `args.handler(args) -> exit code`."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint or stage output to hf, onnx or gguf, verified",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="run folder, stage folder or checkpoint")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument("--stage", help="with a run folder: the stage to export (default: train)")
    parser.add_argument(
        "--gguf-type",
        help="gguf only: f32, f16 or q8_0 (default: q8_0 for an int8 stage, else f32)",
    )
    parser.set_defaults(handler=export_command)


def export_command(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print(
            "lmjob export needs the trainer: pip install 'lmjob[trainer,export]'", file=sys.stderr
        )
        return EXIT_FAILED
    from lmjob_trainer.export import export_checkpoint

    # The exporters narrate every pass at INFO; the summary below is what a user needs.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        result = export_checkpoint(
            args.source, args.format, args.out, stage=args.stage, gguf_type=args.gguf_type
        )
    except ExportError as err:
        print(f"lmjob export: {err}", file=sys.stderr)
        return EXIT_FAILED
    except ModuleNotFoundError as err:
        print(
            f"lmjob export: format {args.format} needs the `{err.name}` package: "
            "pip install 'lmjob[export]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    v = result.verification
    limit = f"tolerance {v.tolerance:g}" if v.tolerance is not None else "reported only"
    zeros = result.notes.get("zero_fraction")
    print(
        f"lmjob export: {result.stage} → {result.out} ({result.format}, "
        f"{result.bytes / 1e6:.2f} MB)\n"
        f"  verified with {v.runtime}: max |Δlogit| {v.max_abs_diff:.3g} ({limit})"
        + (f"; {v.tensors_checked} tensors read back" if v.tensors_checked else "")
        + (f"\n  zero weights in block layers: {zeros:.1%}" if zeros else "")
    )
    return 0
