"""AdamW with the authors' parameter groups, and the learning-rate schedule.

The schedule is a pure function of the global step and the schedule length: stopping early or
resuming never changes it (unless a run asks for the authors' re-stretch on resume, see
`dmas_repro.train.config.TrainConfig.stretch_lr_on_resume`).
"""

from __future__ import annotations

import inspect
import math

import torch


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """LR of the update with 0-based index `step` (build-nanogpt's get_lr, which the authors used):
    linear warmup to max_lr over `warmup_steps` updates, cosine decay to min_lr at `total_steps`,
    then constant min_lr."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step > total_steps:
        return min_lr
    if total_steps <= warmup_steps:
        return min_lr
    ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (max_lr - min_lr)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on tensors with >= 2 dims (matmuls, embeddings), none on norms/biases.
    Only parameters that require grad (a LoRA model passes just its adapters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8,
                fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW(betas, eps) over `param_groups`; fused by default when the parameters live on CUDA or the CPU."""
    groups = param_groups(model, weight_decay)
    if fused is None:  # the fused kernel exists for CUDA and (torch >= 2.4) the CPU
        fused = all(p.device.type in ("cuda", "cpu") for g in groups for p in g["params"])
    kwargs = {}
    if fused and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
