"""What the training loop trains: a `Workload` (model, batch source, loss, evaluation, weight files)
and the `LoopContext` a workload builder and its evaluation receive."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..core.errors import UserError
from . import distributed as D
from .config import TrainConfig


class BatchSource(Protocol):
    """This rank's training micro-batches; the loop calls next_batch() grad_accum times per step and
    reads/writes the state at step boundaries (it goes into every checkpoint)."""

    def next_batch(self): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def lm_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over targets != -100; batch = (inputs, targets)."""
    x, y = batch
    return model(x, y)


def batch_to(batch, device: torch.device):
    nb = device.type == "cuda"
    if isinstance(batch, torch.Tensor):
        if nb and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()  # a copy from pageable memory would not be asynchronous
        return batch.to(device, non_blocking=nb)
    if isinstance(batch, (tuple, list)):
        return type(batch)(batch_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: batch_to(v, device) for k, v in batch.items()}
    return batch


@dataclass
class Workload:
    """What the loop trains. `model` is the raw (unwrapped) module on its device in float32.

    evaluate(model, ctx) -> {"val_loss": float, ...} (called on every rank, collective inside: every
    rank must run the same number of forwards, FSDP gathers weights in each);
    save_weights(model_or_view, dir) writes the model files of a checkpoint; load_weights(model, dir)
    reads them back before wrapping. `flops_per_token` (0: MFU not reported) and
    `tokens_per_step` feed the metrics. `description` goes into the start event; its `val_loss_tokens`
    (the target tokens the validation loss averages over) also into the start line.
    """

    model: torch.nn.Module
    train_batches: BatchSource
    tokens_per_step: int
    loss_fn: Callable = lm_loss
    evaluate: Callable | None = None
    save_weights: Callable | None = None
    load_weights: Callable | None = None
    flops_per_token: float = 0.0
    generate_samples: bool = True  # in-loop samples / HellaSwag need a Transformer with generate()
    description: dict = field(default_factory=dict)


@dataclass
class LoopContext:
    """What evaluation and workload builders may need from the loop. `micro_batch` and `grad_accum`
    are the derived ones (`TrainConfig.batch_layout`), not necessarily cfg.micro_batch."""

    cfg: TrainConfig
    dist: D.DistInfo
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum: int
    seq_len: int
    micro_batch: int


def default_save_weights(model, out: Path) -> None:
    from ..model.weights import save_model_files

    save_model_files(model, out)


def default_load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    from .checkpointer import read_weights

    sd = read_weights(ckpt)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{ckpt}: weights do not match this run's model ({first})") from None
