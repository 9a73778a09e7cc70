"""llama.cpp runs lmjob's GGUF exports: logits and greedy generation against lmjob's model.

    pip install llama-cpp-python     # builds llama.cpp from source (about 30 min on 2 cores)
    python benchmarks/gguf_llama_cpp.py --run runs/shakespeare-cpu [--out runs/bench-llama]

For every finished stage of the run it exports GGUF (F32; the int8 stage also as its
default Q8_0) with `lmjob_trainer.export.export_checkpoint`, loads the file in llama.cpp
(through llama-cpp-python, on the CPU), feeds token ids directly (no tokenizer, no BOS), and
compares with the model as lmjob runs it:

- the largest |Δlogit| over every position of a prompt from the validation text;
- greedy generation of 50 tokens from that prompt: tokens equal, and the first divergence.

llama.cpp computes GELU with the tanh approximation (through an f16 table) where lmjob uses
the exact erf form, so logits differ by about 1e-3 even for F32 files; what matters for
deployment is that generation agrees. Prints a markdown table (RESULTS.md, "GGUF in
llama.cpp") and writes it with the raw numbers under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

NEW_TOKENS = 50
PROMPT_TOKENS = 12


def _prompt(run: Path, length: int) -> list[int]:
    """`length` byte tokens from the start of a line of the run's training text."""
    import yaml

    config = yaml.safe_load((run / "trainer.yaml").read_text())
    source = Path(config["training"]["data"]["source"])
    if not source.is_file():  # a run copied from elsewhere: the example's own text
        source = Path(__file__).resolve().parents[1] / "examples/data/tinyshakespeare.txt"
    text = source.read_bytes()
    start = text.index(b"\n", len(text) * 97 // 100) + 1  # in the validation split
    return list(text[start : start + length])


@torch.no_grad()
def _lmjob_greedy(model: torch.nn.Module, ids: list[int], steps: int) -> tuple[list[int], Any]:
    tokens = torch.tensor([ids])
    first_logits = model(tokens)[0][0].numpy()
    for _ in range(steps):
        logits, _ = model(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[0, len(ids) :].tolist(), first_logits


TOKENIZER_PROBE = "ROMEO:\nBut soft, what light \u2014 \u00e9!  \t\n"


def _llama_greedy(path: Path, ids: list[int], steps: int, ctx: int) -> tuple[list[int], Any, bool]:
    """(greedy tokens, logits of the prompt, whether llama.cpp's own tokenizer gives the
    byte ids lmjob uses and decodes them back)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=ctx, logits_all=True, verbose=False, n_threads=1)
    probe = TOKENIZER_PROBE.encode()
    tokens = llm.tokenize(probe, add_bos=False, special=False)
    tokenizer_agrees = tokens == list(probe) and llm.detokenize(tokens) == probe
    llm.eval(ids)
    first = np.array(llm.scores[: len(ids)], dtype=np.float32)
    out: list[int] = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out, first, tokenizer_agrees


def measure(run: Path, out: Path) -> list[dict[str, Any]]:
    from lmjob_trainer.compression import load_stage
    from lmjob_trainer.export import export_checkpoint

    stages = ["train", *(p.name for p in sorted(run.iterdir()) if (p / "final").is_dir())]
    order = {"train": 0, "prune": 1, "lowrank": 2, "int8": 3, "student": 4}
    stages.sort(key=lambda s: order.get(s, 9))
    rows = []
    for stage in stages:
        model = load_stage(run, stage).eval()
        ctx = model.seq_len
        ids = _prompt(run, PROMPT_TOKENS)
        ours, our_logits = _lmjob_greedy(model, ids, min(NEW_TOKENS, ctx - len(ids)))
        for qtype in ("f32", "q8_0") if stage == "int8" else ("f32",):
            folder = out / f"{stage}-{qtype}"
            shutil.rmtree(folder, ignore_errors=True)
            export_checkpoint(run, "gguf", folder, stage=stage, gguf_type=qtype)
            theirs, their_logits, tokenizer = _llama_greedy(
                folder / "model.gguf", ids, len(ours), ctx
            )
            vocab = our_logits.shape[-1]
            diff = float(np.abs(their_logits[:, :vocab] - our_logits).max())
            same = next(
                (i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None
            )
            rows.append(
                {
                    "stage": stage,
                    "gguf": qtype.upper(),
                    "max_abs_logit_diff": diff,
                    "tokens": len(ours),
                    "equal_tokens": sum(a == b for a, b in zip(ours, theirs, strict=True)),
                    "first_divergence": same,
                    "tokenizer_agrees": tokenizer,
                    "lmjob_text": bytes(t for t in ours if t < 256).decode(errors="replace"),
                    "llama_text": bytes(t for t in theirs if t < 256).decode(errors="replace"),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | GGUF | max \\|Δlogit\\| vs lmjob | greedy tokens equal | first divergence "
        "| llama.cpp tokenizer = byte ids |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        div = "-" if r["first_divergence"] is None else str(r["first_divergence"])
        lines.append(
            f"| {r['stage']} | {r['gguf']} | {r['max_abs_logit_diff']:.2g} "
            f"| {r['equal_tokens']} / {r['tokens']} | {div} "
            f"| {'yes' if r['tokenizer_agrees'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/shakespeare-cpu"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-llama"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = measure(args.run, args.out)
    text = table(rows)
    print(text)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
