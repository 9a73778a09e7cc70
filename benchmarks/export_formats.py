"""Export-format benchmark: every stage of examples/shakespeare-cpu.yaml in every format.

    python benchmarks/export_formats.py [--run runs/shakespeare-cpu] [--out runs/bench-export]
                                        [--threads 1] [--rounds 20] [--repeats 20]

1. Takes a finished run of the example: `--run DIR`, or by default `lmjob run
   examples/shakespeare-cpu.yaml` from the repository root (storage `runs/shakespeare-cpu/`;
   a finished run is reused as it is, about 5 min on 2 cores otherwise).
2. Exports every stage (train, prune, lowrank, int8, student) to every format (hf, onnx,
   gguf) with `lmjob_trainer.export.export_checkpoint`, recording the artifact's bytes on
   disk, the max |Δlogit| its runtime's verification reports and the export's wall time
   (load, dense form, write and verify; one untimed export per format first, so no row
   pays for importing its libraries). The trained model also goes out as F16 and Q8_0
   GGUF, to show what the encodings save on one model.
3. Times one forward of one sequence (batch 1, the full seqLen context, logits only) on
   the CPU, in this one process with the same fixed thread count for every runtime: lmjob's
   eager model as `load_stage` loads it (the baseline), transformers' AutoModelForCausalLM
   from the hf folder, and onnxruntime (CPU execution provider) on the onnx file. Within a
   round a stage's runtimes take turns forward by forward, so load from other processes
   hits the ones a ratio compares alike; ms is the best per-round median, the ratio the
   median over rounds of the round's ratio. GGUF is not timed: that needs llama.cpp.
4. Prints markdown tables (latency in ms and as a ratio to the eager model of the same
   stage) and writes them with the raw numbers to `<out>/results.md` and
   `<out>/results.json`. Exports are redone on every run (`<out>/exports/` is replaced).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import REPO, machine, worker_env

for sub in ("api", "trainer"):
    sys.path.insert(0, str(REPO / sub))

EXAMPLE = REPO / "examples" / "shakespeare-cpu.yaml"
STAGES = ("train", "prune", "lowrank", "int8", "student")
FORMATS = ("hf", "onnx", "gguf")
EAGER = "lmjob"
TIMED = (EAGER, "transformers", "onnxruntime")
EXTRA_GGUF = ("f16", "q8_0")  # the trained model in the other GGUF encodings
WEIGHT_FILES = {"hf": "model.safetensors", "onnx": "model.onnx", "gguf": "model.gguf"}
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "gguf", "lmjob_trainer.export")


def finished_run(run: Path | None) -> Path:
    """A run of the example with every stage finished: `run`, or the example run here."""
    if run is None:
        run = REPO / "runs" / "shakespeare-cpu"
        if missing_stages(run):
            cmd = [sys.executable, "-m", "lmjob_cli.main", "run", str(EXAMPLE)]
            subprocess.run(cmd, cwd=REPO, env=worker_env(), check=True)
    missing = missing_stages(run)
    if missing:
        raise SystemExit(f"--run {run}: stages {', '.join(missing)} did not finish")
    return run


def missing_stages(run: Path) -> list[str]:
    return [s for s in STAGES if not (run / s / "report.json").exists()]


def export_all(run: Path, exports: Path) -> list[dict[str, Any]]:
    """Every (stage, format) export, plus the trained model's other GGUF encodings."""
    from lmjob_trainer.export import export_checkpoint

    shutil.rmtree(exports, ignore_errors=True)
    exports.mkdir(parents=True)
    # Untimed first exports: the first of each format would also pay for importing its
    # libraries (transformers, torch.onnx, gguf: seconds).
    for fmt in FORMATS:
        export_checkpoint(run, fmt, exports / f".warm-up-{fmt}", stage="student")
        shutil.rmtree(exports / f".warm-up-{fmt}")
    jobs = [(stage, fmt, None) for stage in STAGES for fmt in FORMATS]
    jobs += [("train", "gguf", t) for t in EXTRA_GGUF]
    rows = []
    for stage, fmt, gguf_type in jobs:
        name = f"{stage}-{fmt}" + (f"-{gguf_type}" if gguf_type else "")
        start = time.perf_counter()
        result = export_checkpoint(run, fmt, exports / name, stage=stage, gguf_type=gguf_type)
        seconds = time.perf_counter() - start
        v = result.verification
        rows.append(
            {
                "stage": stage,
                "format": fmt,
                "encoding": _encoding(fmt, result.notes),
                "extra": gguf_type is not None,
                "out": result.out,
                "bytes": result.bytes,
                "weightsBytes": (Path(result.out) / WEIGHT_FILES[fmt]).stat().st_size,
                "verifiedBy": v.runtime,
                "maxAbsDiff": v.max_abs_diff,
                "tolerance": v.tolerance,
                "exportSeconds": seconds,
                "zeroFraction": result.notes.get("zero_fraction"),
            }
        )
        print(
            f"exported {name}: {result.bytes:,} B, max |Δlogit| {v.max_abs_diff:.2g}, "
            f"{seconds:.1f} s",
            file=sys.stderr,
        )
    return rows


def _encoding(fmt: str, notes: dict[str, Any]) -> str:
    if fmt == "gguf":
        return notes["gguf_type"].upper()
    return "fp32"


def stage_output_bytes(run: Path, scratch: Path) -> dict[str, int]:
    """Bytes of each stage's own output. Training's checkpoint also holds the optimizer,
    so the trained model is written in the stage-output format (as the compression
    benchmark does) for a comparable figure."""
    from lmjob_trainer.compression import load_stage
    from lmjob_trainer.compression.artifact import Architecture, folder_bytes, write_output

    sizes = {s: folder_bytes(run / s / "final") for s in STAGES if s != "train"}
    model = load_stage(run, "train")
    folder = scratch / "train-final"
    shutil.rmtree(folder, ignore_errors=True)
    write_output(
        folder,
        model.state_dict(),
        Architecture(model.spec.to_wire(), model.vocab_size),
        sparse=False,
    )
    sizes["train"] = folder_bytes(folder)
    return sizes


def forwards(
    run: Path, exports: Path, threads: int
) -> tuple[dict[tuple[str, str], Callable[[], Any]], int]:
    """One no-grad forward of a (1, seqLen) prompt per (stage, runtime), and seqLen."""
    import onnxruntime
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from lmjob_trainer.compression import load_stage

    hf_logging.disable_progress_bar()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    for stage in STAGES:
        eager = load_stage(run, stage)
        hf = AutoModelForCausalLM.from_pretrained(
            exports / f"{stage}-hf", local_files_only=True, dtype=torch.float32
        ).eval()
        ort = onnxruntime.InferenceSession(
            str(exports / f"{stage}-onnx" / WEIGHT_FILES["onnx"]),
            options,
            providers=["CPUExecutionProvider"],
        )
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 256, (1, eager.seq_len), generator=gen)  # byte tokens
        feed = {"input_ids": ids.numpy()}
        calls[stage, EAGER] = _no_grad(lambda m=eager, x=ids: m(x))
        calls[stage, "transformers"] = _no_grad(
            lambda m=hf, x=ids: m(input_ids=x, use_cache=False).logits
        )
        calls[stage, "onnxruntime"] = lambda s=ort, f=feed: s.run(["logits"], f)
    return calls, eager.seq_len


def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    import torch

    def call() -> Any:
        with torch.inference_mode():
            return fn()

    return call


def time_all(
    calls: dict[tuple[str, str], Callable[[], Any]], rounds: int, repeats: int, warmup: int
) -> dict[tuple[str, str], list[float]]:
    """Per-round median milliseconds of every (stage, runtime) call.

    Within a round, a stage's runtimes take turns forward by forward, so the runtimes a
    ratio compares meet the same load from other processes (it drifts within seconds on
    a shared machine); rounds visit every stage in turn."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    stages = dict.fromkeys(stage for stage, _ in calls)
    medians: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for stage in stages:
            group = {key: fn for key, fn in calls.items() if key[0] == stage}
            times: dict[tuple[str, str], list[float]] = {key: [] for key in group}
            for _ in range(repeats):
                for key, fn in group.items():
                    start = time.perf_counter()
                    fn()
                    times[key].append((time.perf_counter() - start) * 1000.0)
            for key, values in times.items():
                medians[key].append(statistics.median(values))
    return medians


def latency_rows(medians: dict[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
    """One row per stage: each runtime's best per-round median (the machine at its
    quietest), and its ratio to eager lmjob on the same stage as the median over rounds
    of the same round's ratio (below 1: faster than the baseline)."""
    rows = []
    for stage in dict.fromkeys(s for s, _ in medians):
        row: dict[str, Any] = {"stage": stage}
        base = medians[stage, EAGER]
        for runtime in TIMED:
            if (stage, runtime) in medians:
                ms = medians[stage, runtime]
                ratios = [m / b for m, b in zip(ms, base, strict=True)]
                row[runtime] = {"ms": min(ms), "ratio": statistics.median(ratios)}
        rows.append(row)
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The two tables (sizes and verification; latency) and the conditions."""
    outputs = results["stageOutputBytes"]
    lines = [
        "#### Size on disk and verification",
        "",
        "| stage | format | encoding | bytes on disk | weights file | vs stage output "
        "| max abs Δlogit (verified by) | export s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for stage in dict.fromkeys(r["stage"] for r in results["exports"]):
        lines.append(
            f"| {stage} | stage output (lmjob) | - | {outputs[stage]:,} | - | 1.00× | - | - |"
        )
        for r in (r for r in results["exports"] if r["stage"] == stage):
            limit = "" if r["tolerance"] is not None else ", reported only"
            lines.append(
                f"| {stage} | {r['format']} | {r['encoding']} | {r['bytes']:,} "
                f"| {r['weightsBytes']:,} | {r['bytes'] / outputs[stage]:.2f}× "
                f"| {r['maxAbsDiff']:.1e} ({r['verifiedBy']}{limit}) "
                f"| {r['exportSeconds']:.1f} |"
            )
    lines += [
        "",
        "Bytes on disk: every file of the artifact folder (tokenizer and config files "
        "included, export.json not); weights file: model.safetensors / model.onnx / "
        "model.gguf; vs stage output: bytes on disk over the stage's own output folder "
        "(train: its model in the stage-output format, without optimizer state). Max abs "
        "Δlogit: the export's own verification on a fixed prompt against lmjob's eager "
        "model; gguf-reader builds a torch GPT from the tensors it reads back (not llama.cpp).",
        "",
        "#### One-sequence CPU latency (ms; × eager lmjob on the same stage)",
        "",
        "| stage | lmjob eager (baseline) | transformers (hf) | onnxruntime (onnx) | gguf |",
        "|---|---:|---:|---:|---|",
    ]
    for row in results["latency"]:
        cells = [f"{row[r]['ms']:.2f} ({row[r]['ratio']:.2f}×)" if r in row else "-" for r in TIMED]
        lines.append(f"| {row['stage']} | {' | '.join(cells)} | needs llama.cpp |")
    c = results["conditions"]
    lines += [
        "",
        f"Latency: batch 1, {c['seqLen']} tokens, one forward returning logits, no KV cache, "
        f"torch.set_num_threads({c['threads']}) and onnxruntime intra-op threads "
        f"{c['threads']} (inter-op 1), {c['warmup']} warm-up forwards per model, then "
        f"{c['rounds']} rounds visiting every stage in turn, a stage's runtimes taking "
        f"turns forward by forward, {c['repeats']} forwards each; ms: the best of the "
        "per-round medians; ratio: the median over rounds of the round's median over eager "
        f"lmjob's. Machine: {c['machine']}; "
        f"{c['versions']}.",
    ]
    return "\n".join(lines) + "\n"


def versions() -> str:
    from importlib.metadata import version

    import onnxruntime
    import transformers

    return (
        f"transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"onnx {version('onnx')}, gguf {version('gguf')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run of the example (default: run it)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-export")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every runtime")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)

    import torch

    logging.basicConfig(level=logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    run = finished_run(args.run)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    exports = export_all(run, out / "exports")
    sizes = stage_output_bytes(run, out)
    calls, seq_len = forwards(run, out / "exports", args.threads)
    medians = time_all(calls, args.rounds, args.repeats, args.warmup)
    results = {
        "run": str(run),
        "exports": exports,
        "stageOutputBytes": sizes,
        "latency": latency_rows(medians),
        "roundMediansMs": {f"{s}/{r}": m for (s, r), m in medians.items()},
        "conditions": {
            "threads": args.threads,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seqLen": seq_len,
            "machine": machine(),
            "versions": versions(),
        },
    }
    text = markdown(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
