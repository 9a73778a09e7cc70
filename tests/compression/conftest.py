"""Fixtures of the compression tests: a tiny GPT trained briefly on real Shakespeare text.

The transforms are judged on a trained model because a random one has isotropic
activations and no structure to lose: activation-aware SVD and magnitude pruning only show
their character on weights that learned something.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
# Import this checkout's packages (a git worktree), not whichever one is pip-installed.
for sub in ("api", "trainer"):
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))

from lmjob_api.training import ModelSpec  # noqa: E402
from lmjob_trainer.model import GPT  # noqa: E402

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
if not SHAKESPEARE.exists():
    SHAKESPEARE = REPO / "examples" / "data" / "tinyshakespeare.txt"

# One thread: on a small shared machine two processes × two threads oversubscribe the cores and
# run ~10× slower than one thread each.
torch.set_num_threads(1)

TINY = ModelSpec(layers=2, heads=4, hidden=64, seq_len=64)
VOCAB = 256


@dataclass
class Corpus:
    """Byte tokens of the text, cut 90/10 into train and validation."""

    train: torch.Tensor
    val: torch.Tensor

    def batch(
        self, split: str, size: int, seq_len: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.train if split == "train" else self.val
        starts = torch.randint(0, data.numel() - seq_len - 1, (size,), generator=gen)
        windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    tokens = torch.frombuffer(bytearray(SHAKESPEARE.read_bytes()), dtype=torch.uint8).long()
    cut = int(tokens.numel() * 0.9)
    return Corpus(tokens[:cut], tokens[cut:])


def eval_loss(model: torch.nn.Module, corpus: Corpus, batches: int = 8) -> float:
    """Mean validation loss over a fixed set of batches (same seed every call)."""
    gen = torch.Generator().manual_seed(1234)
    model.eval()
    losses = []
    with torch.no_grad():
        for _ in range(batches):
            x, y = corpus.batch("val", 16, TINY.seq_len, gen)
            losses.append(model(x, y)[1].item())
    return sum(losses) / len(losses)


def finetune(
    model: torch.nn.Module, corpus: Corpus, steps: int, lr: float = 2e-3, seed: int = 0
) -> None:
    """Plain AdamW steps on training batches."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        x, y = corpus.batch("train", 16, TINY.seq_len, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.fixture(scope="session")
def trained_state(corpus: Corpus) -> dict[str, torch.Tensor]:
    """State dict of TINY after 800 steps on Shakespeare (about 30 s on one core): past the
    bigram plateau (eval loss ≈ 2.1), where low-rank methods start to differ as they do on LMs."""
    torch.manual_seed(0)
    model = GPT(TINY, VOCAB)
    finetune(model, corpus, steps=800, lr=3e-3)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained(trained_state: dict[str, torch.Tensor]) -> GPT:
    """A fresh copy of the trained tiny GPT (tests may change it freely)."""
    model = GPT(TINY, VOCAB)
    model.load_state_dict(trained_state)
    return model.eval()
