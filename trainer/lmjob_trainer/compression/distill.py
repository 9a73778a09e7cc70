"""Knowledge distillation: a smaller GPT learns from the previous stage's model.

loss = (1−α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)); the T²
keeps the soft term's gradients on the scale of the hard one when T changes (Hinton et al.).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from lmjob_trainer.compression.lowrank import LowRankLinear

log = logging.getLogger(__name__)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """(1−α)·CE + α·T²·KL(teacher_T ‖ student_T), averaged over tokens."""
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab).float()
    ce = F.cross_entropy(s, targets.reshape(-1), ignore_index=-1)
    if alpha == 0.0:
        return ce
    t = teacher_logits.reshape(-1, vocab).float()
    kl = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl


def dense_state(teacher: nn.Module) -> dict[str, torch.Tensor]:
    """The teacher's weights as a plain GPT of its shape would hold them: low-rank pairs
    multiplied back out (up · down) and quantized weights dequantized. Structurally pruned
    layers keep their smaller shapes (and so will not fit a student of the original width)."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in teacher.state_dict().items():
        plain = tensor if type(tensor) is torch.Tensor else tensor.dequantize()
        state[name] = plain.detach().float()
    for name, module in teacher.named_modules():
        if isinstance(module, LowRankLinear):
            up, down = state.pop(f"{name}.up.weight"), state.pop(f"{name}.down.weight")
            state[f"{name}.weight"] = up @ down
            if f"{name}.up.bias" in state:
                state[f"{name}.bias"] = state.pop(f"{name}.up.bias")
    return state


def apply_teacher_init(student: nn.Module, teacher: nn.Module) -> bool:
    """Start the student from the teacher's weights where shapes allow (DistilBERT's recipe):
    embeddings, final norm, head and evenly spaced blocks, from the teacher's dense-equivalent
    weights (`dense_state`). Only when every shape and head count matches; returns whether it
    did."""
    if len(student.blocks) > len(teacher.blocks):
        return False
    s_state, t_state = student.state_dict(), dense_state(teacher)
    picks = _spaced(len(teacher.blocks), len(student.blocks))
    mapping = {}
    for key in s_state:
        source = key
        if key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            source = f"blocks.{picks[int(idx)]}.{rest}"
        mapping[key] = source
    compatible = all(
        src in t_state and t_state[src].shape == s_state[dst].shape for dst, src in mapping.items()
    )
    heads_match = all(
        getattr(sb.attn, "n_heads", None) == getattr(teacher.blocks[picks[i]].attn, "n_heads", None)
        for i, sb in enumerate(student.blocks)
    )
    if not (compatible and heads_match):
        return False
    student.load_state_dict({dst: t_state[src].clone() for dst, src in mapping.items()})
    log.info("student starts from teacher blocks %s", picks)
    return True


def _spaced(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher block indices, always including the first and last."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


class DistillLoss:
    """`loss_fn` for the training loop: the student's distillation loss against a frozen
    teacher. The teacher is a plain module replicated on every rank (it only runs forward,
    so sharding it would add communication and save little)."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def __call__(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits, _ = self.teacher(inputs)
        student_logits, _ = model(inputs)
        return distillation_loss(
            student_logits, teacher_logits, targets, self.temperature, self.alpha
        )
