"""The training loop's side concerns as small hook objects (in the manner of OLMo-core's callbacks).

Each callback sees the `Trainer` (`dmas_repro.train.loop`, which callbacks never import) at three
points: `on_start` (state restored, before the first step), `on_step` (after every optimizer step,
in list order) and `close` (always, in reverse order). `default_callbacks(cfg)` is the set every run uses, in this
order: metric sinks, speed and train rows, periodic validation, samples, HellaSwag, the stop
signal, the final validation, checkpoints. To add a concern, write a callback and add it there.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from ..core.errors import UserError
from . import distributed as D
from . import layout
from .config import TrainConfig

log = logging.getLogger("dmas_repro.train.loop")


class Callback:
    def on_start(self, tr) -> None:
        pass

    def on_step(self, tr, out: dict) -> None:
        pass

    def close(self, tr) -> None:
        pass


# ---------------------------------------------------------------- metric sinks
class MetricSinks(Callback):
    """metrics.jsonl (rank 0) plus TensorBoard / W&B mirrors of the numeric fields when enabled.
    Writes config.json and the start (or resume) event; `tr.sinks.write(kind, **fields)` for the others."""

    def on_start(self, tr) -> None:
        cfg, out, info = tr.cfg, tr.out, tr.dist
        if info.is_main:
            layout.write_config(out, cfg.to_dict())
        self.jsonl = layout.MetricsWriter(out / layout.METRICS, enabled=info.is_main)
        self.tb = self.wb = None
        if info.is_main and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / layout.TENSORBOARD))
        if info.is_main and cfg.wandb:
            import wandb

            self.wb = wandb.init(project=cfg.wandb_project, name=out.name, config=cfg.to_dict(), resume="allow")
        tr.sinks = self
        if tr.resumed_from is not None and info.is_main:
            self.jsonl.truncate_after(tr.resumed_from)
        wl = tr.workload
        self.write("event", step=tr.step, event="resume" if tr.resumed_from is not None else "start",
                   world_size=info.world_size, grad_accum=tr.grad_accum, micro_batch=tr.micro_batch,
                   micro_batch_requested=cfg.micro_batch, seq_len=tr.seq_len, device=str(tr.device),
                   dtype=str(tr.compute_dtype).removeprefix("torch."), end_step=tr.end,
                   lr_total_steps=tr.lr_total, optimizer_restored=tr.optimizer_restored, peak_flops=tr.peak,
                   peak_flops_source=tr.peak_source, git_commit=tr.commit,
                   checkpoint=str(tr.resumed_ckpt) if tr.resumed_ckpt else None, **wl.description)
        unit = "examples" if wl.description.get("stage") == "sft" else "sequences"
        val = wl.description.get("val_loss_tokens")
        log.info(f"train: {out} | {tr.batch.describe(unit)} x seq {tr.seq_len} = {cfg.global_batch_tokens:,} "
                 f"tokens/step | " + (f"val {val:,} tokens | " if val else "") + f"steps {tr.step}->{tr.end}"
                 + (f" (schedule {tr.lr_total})" if tr.lr_total != tr.end else "")
                 + f" | device {tr.device} {str(tr.compute_dtype).removeprefix('torch.')}"
                 + (f" | resumed from {tr.resumed_ckpt}" if tr.resumed_ckpt else ""))

    def write(self, kind: str, **fields) -> dict:
        row = self.jsonl.write(kind, **fields)
        step = fields.get("step")
        nums = {f"{kind}/{k}": v for k, v in fields.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None and step is not None:
            for k, v in nums.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None and step is not None and nums:
            self.wb.log(nums, step=step)
        return row

    def close(self, tr) -> None:
        if getattr(self, "jsonl", None) is None:
            return
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


# ---------------------------------------------------------------- train rows, speed, progress
class TrainRows(Callback):
    """Every `log_every` steps: the mean loss over ranks, LR, grad norm, tokens/s and MFU (training
    time only: evaluation and checkpoints are excluded) as a `train` row; a progress bar on a
    terminal, else a line every 10 rows."""

    def on_start(self, tr) -> None:
        cfg = tr.cfg
        self.bar = None
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        if tr.dist.is_main and show and log.isEnabledFor(logging.INFO):
            from tqdm import tqdm

            self.bar = tqdm(total=tr.end, initial=tr.step, unit="step", dynamic_ncols=True, desc="train")
        self.t_log, self.tokens_since = time.perf_counter(), 0

    def on_step(self, tr, out: dict) -> None:
        cfg, wl, step = tr.cfg, tr.workload, tr.step
        self.tokens_since += wl.tokens_per_step
        if step % cfg.log_every == 0 or step == tr.end:
            tr.check_finite()
            mean_loss = D.all_reduce_mean(out["loss"], tr.dist).item()
            gn = out["grad_norm"]
            gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
            if tr.device.type == "cuda":
                torch.cuda.synchronize(tr.device)
            dt = time.perf_counter() - self.t_log - tr.take_paused()
            tps = self.tokens_since / dt if dt > 0 else 0.0
            mfu = wl.flops_per_token * tps / (tr.peak * tr.dist.world_size) if wl.flops_per_token and tr.peak else None
            tr.sinks.write("train", step=step, tokens=tr.tokens(), loss=mean_loss, lr=out["lr"], grad_norm=gn,
                           tokens_per_s=tps, mfu=mfu, elapsed_s=tr.elapsed)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tps:,.0f}")
            elif step % (cfg.log_every * 10) == 0 or step == tr.end:
                log.info(f"step {step:>6} | loss {mean_loss:.4f} | lr {out['lr']:.2e} | {tps:,.0f} tok/s | "
                         f"mfu {100 * (mfu or 0):.1f}%")
            self.t_log, self.tokens_since = time.perf_counter(), 0
        if self.bar is not None:
            self.bar.update(1)

    def close(self, tr) -> None:
        if getattr(self, "bar", None) is not None:
            self.bar.close()


# ---------------------------------------------------------------- validation
class Validation(Callback):
    """The workload's validation loss at step 0, every `val_every` steps (periodic=True), or at
    the last step (final=True, just before the last checkpoint)."""

    def __init__(self, every: int = 0, final: bool = False):
        self.every, self.final = every, final

    def on_start(self, tr) -> None:
        if not self.final and tr.step == 0 and tr.step < tr.end:
            self.validate(tr)

    def on_step(self, tr, out: dict) -> None:
        if self.final:
            if tr.step == tr.end:
                self.validate(tr)
        elif self.every and tr.step % self.every == 0 and tr.step != tr.end:
            self.validate(tr)

    @staticmethod
    def validate(tr) -> None:
        wl = tr.workload
        if wl.evaluate is None:
            return
        with tr.paused():
            tr.model.eval()
            res = wl.evaluate(tr.model, tr.ctx)
            tr.model.train()
        tr.first_val = res["val_loss"] if tr.first_val is None else tr.first_val
        tr.last_val = res["val_loss"]
        tr.sinks.write("val", step=tr.step, tokens=tr.tokens(), **res)
        log.info(f"step {tr.step:>6} | val_loss {res['val_loss']:.4f}")


# ---------------------------------------------------------------- in-loop extras
class Samples(Callback):
    """Every `sample_every` steps: `sample_count` sampled texts of `sample_length` tokens, the prompt
    `sample_prompt` included (the authors' completion(): top-k 50, generator seeded sample_seed + rank).
    Every rank samples (FSDP gathers weights in each forward); rank 0's texts are written."""

    def on_start(self, tr) -> None:
        from .in_loop import prompt_tokens

        cfg = tr.cfg
        if tr.workload.generate_samples and cfg.sample_every:
            n = len(prompt_tokens(cfg.sample_prompt))
            if n >= cfg.sample_length:
                from ..core.errors import UserError

                raise UserError(f"sample_length {cfg.sample_length} includes the prompt, which is {n} tokens: "
                                f"set sample_length > {n} (or sample_every=0)")

    def on_step(self, tr, out: dict) -> None:
        cfg = tr.cfg
        if not (tr.workload.generate_samples and cfg.sample_every and tr.step % cfg.sample_every == 0):
            return
        from .in_loop import sample_texts

        with tr.paused():
            tr.model.eval()
            texts = sample_texts(tr.raw, cfg.sample_prompt, cfg.sample_count, cfg.sample_length,
                                 cfg.sample_seed + tr.dist.rank, tr.device, tr.autocast)
            tr.model.train()
        for i, text in enumerate(texts):
            tr.sinks.write("sample", step=tr.step, index=i, text=text)


class HellaSwag(Callback):
    """Every `hellaswag_every` steps: completion-style acc_norm on `hellaswag_path` (`hellaswag_format`:
    lm-eval's context or the authors'); items are shared among the ranks, padded to the same count."""

    def on_start(self, tr) -> None:
        from .in_loop import read_hellaswag

        cfg = tr.cfg
        self.items = (read_hellaswag(cfg.hellaswag_path, cfg.hellaswag_items, cfg.hellaswag_format)
                      if cfg.hellaswag_every else [])

    def on_step(self, tr, out: dict) -> None:
        cfg = tr.cfg
        if not (tr.workload.generate_samples and cfg.hellaswag_every and tr.step % cfg.hellaswag_every == 0):
            return
        from .in_loop import hellaswag_acc_norm

        with tr.paused():
            tr.model.eval()
            m = tr.raw if not tr.dist.enabled or cfg.parallel == "ddp" else tr.model
            res = hellaswag_acc_norm(m, self.items, tr.ctx)
            tr.model.train()
        tr.sinks.write("hellaswag", step=tr.step, tokens=tr.tokens(), format=cfg.hellaswag_format, **res)


# ---------------------------------------------------------------- stop signal and checkpoints
class StopOnSignal(Callback):
    """Ctrl-C / SIGTERM on any rank stops every rank after this step (a checkpoint is written first)."""

    def on_step(self, tr, out: dict) -> None:
        requested = tr.signals.requested if tr.signals is not None else None
        stop_now = requested is not None
        if tr.dist.enabled:
            flag = torch.tensor(float(stop_now), device=tr.device)
            stop_now = bool(D.all_reduce_max(flag, tr.dist).item())
        tr.stop_requested = (requested or "SIGTERM") if stop_now else None


class Checkpoints(Callback):
    """A checkpoint at the last step, at milestones, every `ckpt_every` steps and when stopping; then
    retention (`keep_last` full states plus the milestones)."""

    def on_start(self, tr) -> None:
        self.milestones = tr.cfg.milestone_steps()

    def on_step(self, tr, out: dict) -> None:
        cfg, step = tr.cfg, tr.step
        if tr.stop_requested or step == tr.end or step in self.milestones or (cfg.ckpt_every and
                                                                              step % cfg.ckpt_every == 0):
            with tr.paused():
                self.save(tr)

    def save(self, tr):
        from . import checkpointer as ckpt_io

        cfg, info, wl, step = tr.cfg, tr.dist, tr.workload, tr.step
        tr.check_finite()
        trainer_state = {
            "step": step, "tokens": tr.tokens(), "loader": wl.train_batches.state_dict(),
            "lr_total_steps": tr.lr_total, "world_size": info.world_size, "grad_accum": tr.grad_accum,
            "micro_batch": tr.micro_batch, "global_batch_tokens": cfg.global_batch_tokens,
            "elapsed_s": tr.elapsed, "git_commit": tr.commit, "optimizer_restored_at_resume": tr.optimizer_restored,
            "resumed_from": tr.resumed_from, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        model_view, osd = ckpt_io.full_states(tr.raw, tr.model, tr.opt, cfg.parallel, info)
        rngs = D.gather_objects(ckpt_io.rng_state(tr.device), info)
        path = layout.step_dir(tr.out, step)
        failed = None
        if info.is_main:
            try:
                path = ckpt_io.write(tr.out, step, save_weights=lambda d: tr.save_weights(model_view, d),
                                     optimizer_state=osd, rng_states=rngs, config=cfg.to_dict(),
                                     trainer_state=trainer_state)
            except UserError as e:  # e.g. a full disk: every rank stops with it (none waits forever)
                failed = e
            else:
                ckpt_io.prune(tr.out, cfg.keep_last, self.milestones, cfg.milestone_optimizer)
                tr.sinks.write("event", step=step, event="checkpoint", path=str(path))
        message = D.broadcast_object(str(failed) if failed else None, info)
        if failed is not None:
            raise failed
        if message is not None:
            raise UserError(message)
        D.barrier(info)
        tr.last_ckpt = path
        return path


def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    return [MetricSinks(), TrainRows(), Validation(every=cfg.val_every), Samples(), HellaSwag(), StopOnSignal(),
            Validation(final=True), Checkpoints()]
