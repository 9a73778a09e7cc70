"""lmjob's GPT decoder: the architecture only, no parallelism, no training loop.

The interface is pinned (the compression stages code against it): `GPT(spec, vocab_size)`,
`forward(idx, targets=None) -> (logits, loss)`, and the attributes `tok_emb`, `pos_emb`,
`blocks[i].{ln1, attn.{qkv, proj, n_heads}, ln2, mlp.{fc, proj}}`, `ln_f`, `head`.

Layout of `attn.qkv` (out_features = 3·hidden): rows are grouped per head, so rows
`[h·3·d, (h+1)·3·d)` hold head h's query, key and value (d = head_dim rows each, in that
order); `Attention.head_rows(h)` gives the slice. A contiguous block of rows is therefore a
set of whole heads: what tensor-parallel column sharding needs, and what head pruning
removes. The forward pass infers the number of heads from `qkv.out_features`, so a model
whose heads were pruned (or a tensor-parallel shard holding some of them) runs unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmjob_api.training import ModelSpec
from lmjob_trainer.causal_lm import generate, lm_loss


class Attention(nn.Module):
    """Causal multi-head self-attention with a fused, per-head-grouped qkv projection."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        assert hidden % n_heads == 0, "validated by the API: model.hidden % model.heads == 0"
        self.n_heads = n_heads
        self.head_dim = hidden // n_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def head_rows(self, head: int) -> slice:
        """Rows of `qkv.weight` (and `qkv.bias`) that belong to one head: its q, k, v."""
        size = 3 * self.head_dim
        return slice(head * size, (head + 1) * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # -1 heads: a tensor-parallel shard or a head-pruned layer holds fewer than n_heads.
        qkv = self.qkv(x).view(b, t, -1, 3, self.head_dim)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # (b, heads, t, d)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).reshape(b, t, -1)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: hidden → 4·hidden → GELU → hidden."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.proj = nn.Linear(4 * hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, n_heads, dropout)
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = MLP(hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder with learned positions and the head tied to the token embedding."""

    def __init__(self, spec: ModelSpec, vocab_size: int) -> None:
        super().__init__()
        self.spec = spec
        self.vocab_size = vocab_size
        self.seq_len = spec.seq_len
        self.tok_emb = nn.Embedding(vocab_size, spec.hidden)
        self.pos_emb = nn.Embedding(spec.seq_len, spec.hidden)
        self.drop = nn.Dropout(spec.dropout)
        self.blocks = nn.ModuleList(
            Block(spec.hidden, spec.heads, spec.dropout) for _ in range(spec.layers)
        )
        self.ln_f = nn.LayerNorm(spec.hidden)
        self.head = nn.Linear(spec.hidden, vocab_size, bias=False)
        # Weight tying (GPT-2): one matrix serves as embedding and output projection.
        self.head.weight = self.tok_emb.weight
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 initialisation; residual projections scaled by 1/sqrt(2·layers)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        residual_std = 0.02 / math.sqrt(2 * len(self.blocks))
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = idx.shape[1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than model.seqLen {self.seq_len}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, None if targets is None else lm_loss(logits, targets)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Sample `max_new_tokens` continuations of `idx` (batch, time); returns the grown batch."""
        return generate(self, idx, max_new_tokens, temperature, top_k, self.seq_len)


def build_model(spec: ModelSpec, vocab_size: int) -> nn.Module:
    """The network `spec` describes, on CPU in fp32: lmjob's GPT or a local Hugging Face model."""
    if spec.architecture == "hf":
        from lmjob_trainer.hf_model import HFCausalLM

        assert spec.path is not None, "validated by the API: model.path is set for hf"
        return HFCausalLM.from_local(spec.path)
    return GPT(spec, vocab_size)


def count_params(model: nn.Module, *, exclude_embeddings: bool = False) -> int:
    """Parameters of `model` (shared ones once); optionally without the embedding tables."""
    params = {id(p): p for p in model.parameters()}
    if exclude_embeddings:
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                params.pop(id(m.weight), None)
    return sum(p.numel() for p in params.values())
