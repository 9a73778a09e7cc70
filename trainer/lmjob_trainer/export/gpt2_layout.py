"""lmjob's GPT in GPT-2's layout: the one mapping the `hf` and `gguf` writers share.

The blocks are the same (learned positions, pre-norm LayerNorm with eps 1e-5, exact-erf
GELU MLP of width 4·hidden, biases everywhere but the tied head). Two differences of layout:
- our fused `qkv` groups rows per head ([q_h; k_h; v_h] for each head h, so that
  tensor-parallel shards and head pruning take whole heads); GPT-2's `c_attn` holds all
  queries, then all keys, then all values: the rows are regrouped;
- GPT-2's `Conv1D` stores weights as (in, out), the transpose of `nn.Linear`'s (out, in);
  that transpose belongs to the Hugging Face writer alone (GGUF stores Linear's layout).
"""

from __future__ import annotations

import torch

from lmjob_trainer.model import GPT


def qkv_by_kind(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows (or bias entries) grouped per head → grouped q-all, k-all, v-all."""
    rest = t.shape[1:]
    head_dim = t.shape[0] // (3 * n_heads)
    return t.reshape(n_heads, 3, head_dim, *rest).transpose(0, 1).reshape(t.shape)


def qkv_by_head(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `qkv_by_kind`."""
    rest = t.shape[1:]
    head_dim = t.shape[0] // (3 * n_heads)
    return t.reshape(3, n_heads, head_dim, *rest).transpose(0, 1).reshape(t.shape)


def gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Every tensor of a dense GPT under GPT-2's names, in nn.Linear's (out, in) layout,
    fp32, contiguous. The head is tied to `wte` and not listed (as GPT-2 saves it)."""
    out = {
        "wte.weight": model.tok_emb.weight,
        "wpe.weight": model.pos_emb.weight,
        "ln_f.weight": model.ln_f.weight,
        "ln_f.bias": model.ln_f.bias,
    }
    for i, block in enumerate(model.blocks):
        heads = block.attn.n_heads
        p = f"h.{i}."
        out |= {
            p + "ln_1.weight": block.ln1.weight,
            p + "ln_1.bias": block.ln1.bias,
            p + "attn.c_attn.weight": qkv_by_kind(block.attn.qkv.weight, heads),
            p + "attn.c_attn.bias": qkv_by_kind(block.attn.qkv.bias, heads),
            p + "attn.c_proj.weight": block.attn.proj.weight,
            p + "attn.c_proj.bias": block.attn.proj.bias,
            p + "ln_2.weight": block.ln2.weight,
            p + "ln_2.bias": block.ln2.bias,
            p + "mlp.c_fc.weight": block.mlp.fc.weight,
            p + "mlp.c_fc.bias": block.mlp.fc.bias,
            p + "mlp.c_proj.weight": block.mlp.proj.weight,
            p + "mlp.c_proj.bias": block.mlp.proj.bias,
        }
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def gpt_state_from_gpt2(tensors: dict[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    """The inverse of `gpt2_tensors`, as a GPT state dict (used to check a written file)."""
    names = {
        "wte.weight": "tok_emb.weight",
        "wpe.weight": "pos_emb.weight",
        "ln_f.weight": "ln_f.weight",
        "ln_f.bias": "ln_f.bias",
    }
    parts = {
        "ln_1": "ln1",
        "attn.c_attn": "attn.qkv",
        "attn.c_proj": "attn.proj",
        "ln_2": "ln2",
        "mlp.c_fc": "mlp.fc",
        "mlp.c_proj": "mlp.proj",
    }
    state = {}
    for name, t in tensors.items():
        if name in names:
            state[names[name]] = t
            continue
        _, i, rest = name.split(".", 2)
        module, _, kind = rest.rpartition(".")
        if module == "attn.c_attn":
            t = qkv_by_head(t, n_heads)
        state[f"blocks.{i}.{parts[module]}.{kind}"] = t
    state["head.weight"] = state["tok_emb.weight"]
    return state
