"""The training loop, shared by pretraining and the later stages.

`run(cfg, out_dir, resume=False, build=build_pretrain)` trains a `Workload` (model, batch source,
loss, evaluation, weight files) under a `TrainConfig`. The loop itself is short: AdamW with the
authors' groups, the LR as a pure function of the global step, gradient accumulation with DDP
`no_sync` (or FSDP2), bf16 autocast on GPU, clipping. Everything around it is a callback
(`dmas_repro.train.callbacks`): metric rows and progress, validation, in-loop samples and
HellaSwag, Ctrl-C / SIGTERM, checkpoints. A NaN/inf loss stops the run with one clear error and
keeps the last good checkpoint; a resume restores weights, optimizer, loader position, RNG and
schedule, also with another world size or a fresh optimizer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import runtime
from ..core.errors import UserError
from ..core.signals import StopSignal
from . import checkpointer as ckpt_io
from . import distributed as D
from . import layout, optim
from .callbacks import default_callbacks
from .config import TrainConfig
from .workload import LoopContext, Workload, batch_to, default_load_weights, default_save_weights, lm_loss

__all__ = ["Diverged", "LoopContext", "RunResult", "Trainer", "Workload", "batch_to", "lm_loss", "run"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out_dir: Path
    step: int
    tokens: int
    checkpoint: Path | None  # newest checkpoint written
    interrupted: str | None  # signal name when stopped by SIGINT/SIGTERM
    first_val_loss: float | None
    last_val_loss: float | None
    resumed_from: int | None


class Diverged(UserError):
    """A NaN/inf loss: the run stops; the last good checkpoint stays."""


# ---------------------------------------------------------------- the trainer's state
class Trainer:
    """The state of one run that callbacks read: config, distributed info, the workload, the raw and
    wrapped model, the optimizer, the step, the schedule length, the metric sinks, and the speed
    accounting (`paused()` excludes evaluation and checkpoints from training time)."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool, build, info: D.DistInfo):
        cfg.validate(info.world_size)
        self.cfg, self.out, self.dist = cfg, out, info
        device = self.device = info.device
        self.batch = cfg.batch_layout(info.world_size)
        self.grad_accum, self.micro_batch = self.batch.grad_accum, self.batch.micro_batch
        self.seq_len = cfg.resolved_seq_len()
        if device.type == "cuda" and cfg.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.autocast, self.compute_dtype = runtime.autocast(device, cfg.dtype)
        self.ctx = LoopContext(cfg, info, device, self.autocast, self.grad_accum, self.seq_len, self.micro_batch)

        # ---- where do we start
        found = layout.newest_checkpoint(out) if info.is_main else None
        found = D.broadcast_object(str(found) if found else None, info)
        if found and not resume:
            raise UserError(f"{out} already holds checkpoints (newest {Path(found).name}); "
                            f"pass --resume to continue it, or choose another --out")
        self.resumed_ckpt = Path(found) if (found and resume) else None
        state = layout.read_trainer_state(self.resumed_ckpt) if self.resumed_ckpt else None
        if state is not None and state.get("step", 0) >= cfg.end_step() and not cfg.stretch_lr_on_resume:
            log.info(f"{out}: already at step {state['step']} >= max step {cfg.end_step()}; nothing to train")

        # ---- the workload, then its state from the checkpoint (before wrapping)
        wl = self.workload = build(self.ctx)
        self.raw = wl.model
        self.save_weights = wl.save_weights or default_save_weights
        load_weights = wl.load_weights or default_load_weights
        if self.resumed_ckpt:
            load_weights(self.raw, self.resumed_ckpt)
        model = self.raw
        if cfg.compile if cfg.compile is not None else device.type == "cuda":
            model = torch.compile(model)
        self.model = D.wrap(model, info, cfg.parallel)
        self.opt = optim.build_adamw(self.raw, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps,
                                     cfg.fused_adamw)
        self.step, self.lr_total, self.elapsed0, self.resumed_from = 0, cfg.total_steps, 0.0, None
        self.optimizer_restored = False
        if self.resumed_ckpt:
            self._restore(state)
        self.end = cfg.max_steps or self.lr_total  # = cfg.end_step() unless a resume stretched the schedule
        self.commit = runtime.git_commit() if info.is_main else None
        self.peak, self.peak_source = ((cfg.peak_flops, "config") if cfg.peak_flops
                                       else runtime.peak_flops(device, self.compute_dtype))
        self.sinks = None  # set by the MetricSinks callback
        self.signals: StopSignal | None = None  # set while the loop runs
        self.stop_requested: str | None = None  # set by the StopOnSignal callback, on every rank alike
        self.last_ckpt = self.resumed_ckpt
        self.first_val = self.last_val = None
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._t_run = time.perf_counter()
        self._paused = 0.0

    def _restore(self, state: dict) -> None:
        cfg, ckpt = self.cfg, self.resumed_ckpt
        self.step = self.resumed_from = int(state["step"])
        # The configured schedule, whatever the checkpoint's was; with stretch_lr_on_resume the authors'
        # `max_steps = args.max_steps + start_step`: from the configured length, once per resume.
        self.lr_total = cfg.total_steps + (self.step if cfg.stretch_lr_on_resume else 0)
        self.elapsed0 = float(state.get("elapsed_s", 0.0))
        if cfg.restore_optimizer:
            osd = ckpt_io.read_optimizer_state(ckpt)
            if osd is None:
                raise UserError(f"{ckpt}: has no optimizer state; resume with --no-restore-optimizer")
            ckpt_io.load_optimizer(self.raw, self.model, self.opt, osd, cfg.parallel, str(ckpt / layout.OPTIMIZER))
            self.optimizer_restored = True
        self.workload.train_batches.load_state_dict(state["loader"])
        rngs = ckpt_io.read_rng_states(ckpt)
        ckpt_io.set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0], self.device)

    # ---------------------------------------------------------------- helpers for callbacks
    @property
    def elapsed(self) -> float:
        """Training seconds of the whole run (earlier attempts included)."""
        return self.elapsed0 + time.perf_counter() - self._t_run

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside does not count as training time (tokens/s, MFU)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t0

    def take_paused(self) -> float:
        p, self._paused = self._paused, 0.0
        return p

    def check_finite(self) -> None:
        """Stop with one clear error when a loss since the last check was NaN/inf (collective)."""
        if bool(D.all_reduce_max(self._nonfinite.float(), self.dist).item()):
            msg = (f"loss became NaN/inf at or before step {self.step}; stopped. The last good checkpoint "
                   f"{self.last_ckpt or '(none)'} is kept; lower the LR or check the data.")
            self.sinks.write("event", step=self.step, event="diverged", message=msg)
            raise Diverged(msg)

    def tokens(self, step: int | None = None) -> int:
        return (self.step if step is None else step) * self.workload.tokens_per_step

    # ---------------------------------------------------------------- one optimizer step
    def train_step(self) -> dict:
        cfg, wl, device = self.cfg, self.workload, self.device
        lr = optim.lr_at(self.step, cfg.lr, cfg.min_lr, cfg.warmup_steps, self.lr_total)
        optim.set_lr(self.opt, lr)
        loss_sum = torch.zeros((), device=device)
        for micro in range(self.grad_accum):
            batch = batch_to(wl.train_batches.next_batch(), device)
            with D.no_sync(self.model, micro < self.grad_accum - 1), self.autocast():
                loss = wl.loss_fn(self.model, batch)
                (loss / self.grad_accum).backward()
            loss_sum += loss.detach().float()
        params = self.raw.parameters() if cfg.parallel != "fsdp" else self.model.parameters()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        step_loss = loss_sum / self.grad_accum
        self._nonfinite |= ~torch.isfinite(step_loss)
        return {"lr": lr, "loss": step_loss, "grad_norm": grad_norm}


# ---------------------------------------------------------------- the loop
def run(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
        build: Callable[[LoopContext], Workload] | None = None, callbacks=None) -> RunResult:
    """Train `cfg` into `out_dir` (see the module docstring). Collective under torchrun.

    resume=True continues from the newest complete checkpoint (weights, optimizer unless
    cfg.restore_optimizer is False, loader position, RNG, schedule); without one it starts fresh.
    `build` makes the workload (default: pretraining); `callbacks` replaces the default set.
    """
    if build is None:
        from .pretrain import build_pretrain as build
    info = D.setup(cfg.device)
    try:
        tr = Trainer(cfg, Path(out_dir), resume, build, info)
        hooks = callbacks if callbacks is not None else default_callbacks(cfg)
        return _loop(tr, hooks)
    finally:
        D.teardown(info)


def _loop(tr: Trainer, hooks: list) -> RunResult:
    try:
        for h in hooks:
            h.on_start(tr)
        tr._t_run = time.perf_counter()
        with StopSignal() as tr.signals:
            while tr.step < tr.end:
                out = tr.train_step()
                for h in hooks:
                    h.on_step(tr, out)
                if tr.stop_requested:
                    tr.sinks.write("event", step=tr.step, event="stopped", signal=tr.stop_requested)
                    log.info(f"stopped by {tr.stop_requested} at step {tr.step}; checkpoint {tr.last_ckpt}; "
                             "continue with --resume")
                    break
    finally:
        for h in reversed(hooks):
            h.close(tr)
    return RunResult(tr.out, tr.step, tr.tokens(), tr.last_ckpt, tr.stop_requested, tr.first_val, tr.last_val,
                     tr.resumed_from)
