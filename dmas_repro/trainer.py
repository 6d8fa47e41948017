"""The training loop, shared by pretraining and the later stages.

`run(cfg, out_dir, resume=False, build=build_pretrain)` trains a `Workload` (model, batch source,
loss, evaluation, weight files) under a `TrainConfig`: AdamW with the authors' groups, the LR as a
pure function of the global step, gradient accumulation with DDP `no_sync` (or FSDP2), bf16
autocast on GPU, clipping, metrics.jsonl rows, validation, in-loop samples / HellaSwag, atomic
checkpoints with the full training state, exact resume (also with another world size or a fresh
optimizer), SIGINT/SIGTERM -> checkpoint and stop, NaN/inf -> clear stop keeping the last good
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from . import distributed as D
from . import optim
from . import trainer_checkpoint as tc
from .errors import UserError
from .runio import MetricsWriter, StopSignal, git_commit
from .train import TrainConfig


# ---------------------------------------------------------------- workload (what is trained)
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

    evaluate(model, ctx) -> {"val_loss": float, ...} (called on every rank, collective inside);
    save_weights(model_or_view, dir) writes the model files of a checkpoint; load_weights(model, dir)
    reads them back before wrapping. `flops_per_token` (0: MFU not reported) and
    `tokens_per_step` feed the metrics.
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
    """What evaluation and workload builders may need from the loop."""

    cfg: TrainConfig
    dist: D.DistInfo
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum: int
    seq_len: int


def default_save_weights(model, out: Path) -> None:
    from .checkpoint import save_model_files

    save_model_files(model, out)


def default_load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    sd = tc.read_weights(ckpt)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{ckpt}: weights do not match this run's model ({first})") from None


def build_pretrain(ctx: LoopContext) -> Workload:
    """The pretraining workload: a `Transformer` on the prepared token shards."""
    from . import data
    from .loader import TokenBatches, eval_batches
    from .model import Transformer

    cfg, info = ctx.cfg, ctx.dist
    data.read_manifest(cfg.data_dir)  # missing data / bad shards: one clear error before any step
    train_tokens = data.open_split(cfg.data_dir, "train")
    val_tokens = data.open_split(cfg.data_dir, "val")
    torch.manual_seed(cfg.seed)
    with torch.device(ctx.device):
        model = Transformer(cfg.model_config())
    if cfg.init_from:
        from .checkpoint import load_any

        src = load_any(cfg.init_from, device=ctx.device, dtype=torch.float32)
        if src.cfg != model.cfg:
            raise UserError(f"init_from {cfg.init_from}: its architecture differs from model {cfg.model}")
        model.load_state_dict(src.state_dict())
        del src
    model.ce_chunk_tokens = cfg.ce_chunk_tokens
    if cfg.activation_checkpointing:
        if not hasattr(model, "activation_checkpointing"):
            raise UserError("activation_checkpointing: this model version does not support it")
        model.activation_checkpointing = True
    batches = TokenBatches(train_tokens, ctx.seq_len, cfg.micro_batch, ctx.grad_accum, info.rank,
                           info.world_size, cfg.shuffle, cfg.seed)

    @torch.no_grad()
    def evaluate(m: torch.nn.Module, lctx: LoopContext) -> dict:
        total = torch.zeros(2, device=lctx.device)  # (sum of micro-batch mean losses, micro-batches), all ranks
        for batch in eval_batches(val_tokens, lctx.seq_len, cfg.micro_batch, cfg.val_batches, info.rank,
                                  info.world_size):
            with lctx.autocast():
                loss = lm_loss(m, batch_to(batch, lctx.device)).float()
            total += torch.stack([loss, torch.ones((), device=lctx.device)])
        total = D.all_reduce_mean(total, info)  # the ratio of the means is the ratio of the sums
        return {"val_loss": (total[0] / total[1]).item()}

    return Workload(model=model, train_batches=batches, tokens_per_step=cfg.global_batch_tokens,
                    evaluate=evaluate, flops_per_token=model.flops_per_token(ctx.seq_len),
                    description={"train_tokens": len(train_tokens), "val_tokens": len(val_tokens),
                                 "params": model.num_params()})


# ---------------------------------------------------------------- speed accounting
GPU_PEAK_BF16 = {  # dense bf16 tensor-core FLOP/s per device
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A6000": 154.8e12, "L40S": 362e12,
    "A40": 149.7e12, "4090": 165.2e12, "3090": 71e12, "V100": 125e12, "A10": 125e12, "L4": 121e12,
}


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> tuple[float, str]:
    """Per-device peak FLOP/s for MFU: a known GPU's bf16 tensor peak, else a measured matmul rate."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAK_BF16.items():
            if key in name:
                return (val if dtype == torch.bfloat16 else val / 2), f"table ({name})"
    n = 1024 if device.type == "cpu" else 8192
    dt = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if time.perf_counter() - t0 > 0.3:
            break
    return 2 * n**3 * reps / (time.perf_counter() - t0), f"measured {n}x{n} {dt} matmul on {device}"


# ---------------------------------------------------------------- in-loop extras (authors' style)
def hellaswag_acc_norm(model, items: list[dict], ctx: LoopContext) -> dict:
    """Completion-style HellaSwag as build-nanogpt computes it: the ending with the lowest mean
    token loss wins. Items are strided over ranks; returns acc_norm over all items."""
    from .tokenizer import gpt2

    tok = gpt2()
    info = ctx.dist
    correct = torch.zeros((), device=ctx.device)
    for it in items[info.rank :: info.world_size]:
        ctx_ids = tok.encode(it["query"])
        losses = []
        for choice in it["choices"]:
            end = tok.encode(" " + choice)
            ids = (ctx_ids + end)[-model.cfg.context_length :]
            x = torch.tensor([ids[:-1]], device=ctx.device)
            y = torch.full_like(x, -100)
            n = min(len(end), len(ids) - 1)
            y[0, -n:] = torch.tensor(ids[-n:], device=ctx.device)
            with torch.no_grad(), ctx.autocast():
                losses.append(model(x, y).float())
        correct += float(int(torch.stack(losses).argmin()) == int(it["label"]))
    if info.enabled:
        torch.distributed.all_reduce(correct)
    return {"acc_norm": correct.item() / max(1, len(items)), "n": len(items)}


def read_hellaswag(path: str, limit: int) -> list[dict]:
    items = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    items.append({"query": d["query"], "choices": list(d["choices"]), "label": int(d["label"])})
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise UserError(f"{path}:{i}: expected a JSON object with query, choices, label") from None
    return items[:limit] if limit else items


# ---------------------------------------------------------------- metric sinks
class Sinks:
    """metrics.jsonl (rank 0) plus TensorBoard / W&B mirrors of the numeric fields when enabled."""

    def __init__(self, cfg: TrainConfig, out: Path, enabled: bool, run_name: str):
        self.jsonl = MetricsWriter(out / "metrics.jsonl", enabled=enabled)
        self.tb = self.wb = None
        if enabled and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        if enabled and cfg.wandb:
            import wandb

            self.wb = wandb.init(project=cfg.wandb_project, name=run_name, config=cfg.to_dict(), resume="allow")

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

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


# ---------------------------------------------------------------- the loop
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


def _autocast_factory(device: torch.device, dtype_name: str):
    name = {"fp32": "float32", "bf16": "bfloat16"}.get(dtype_name, dtype_name)
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    if name == "float32":
        return (lambda: contextlib.nullcontext()), torch.float32
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), torch.bfloat16


def _print(info: D.DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


def run(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
        build: Callable[[LoopContext], Workload] = build_pretrain, quiet: bool = False) -> RunResult:
    """Train `cfg` into `out_dir` (see the module docstring). Collective under torchrun.

    resume=True continues from the newest complete checkpoint (weights, optimizer unless
    cfg.restore_optimizer is False, loader position, RNG, schedule); without one it starts fresh.
    """
    out = Path(out_dir)
    info = D.setup(cfg.device)
    try:
        return _run(cfg, out, resume, build, info, quiet)
    finally:
        D.teardown(info)


def _run(cfg: TrainConfig, out: Path, resume: bool, build, info: D.DistInfo, quiet: bool) -> RunResult:
    cfg.validate(info.world_size)
    device = info.device
    log = (lambda m: None) if quiet else (lambda m: _print(info, m))
    grad_accum = cfg.grad_accum(info.world_size)
    seq_len = cfg.resolved_seq_len()
    if device.type == "cuda" and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast, compute_dtype = _autocast_factory(device, cfg.dtype)
    lctx = LoopContext(cfg, info, device, autocast, grad_accum, seq_len)

    # ---- where do we start
    ckpt = tc.newest_checkpoint(out) if info.is_main else None
    ckpt = D.broadcast_object(str(ckpt) if ckpt else None, info)
    if ckpt and not resume:
        raise UserError(f"{out} already holds checkpoints (newest {Path(ckpt).name}); "
                        f"pass --resume to continue it, or choose another --out")
    ckpt = Path(ckpt) if (ckpt and resume) else None
    state = tc.read_trainer_state(ckpt) if ckpt else None
    if state is not None and state.get("step", 0) >= cfg.end_step():
        log(f"{out}: already at step {state['step']} >= max step {cfg.end_step()}; nothing to train")

    # ---- the workload, then its state from the checkpoint (before wrapping)
    if cfg.prepare_data_if_missing and build is build_pretrain:
        _ensure_data(cfg, info)
    wl = build(lctx)
    raw = wl.model
    save_weights = wl.save_weights or default_save_weights
    load_weights = wl.load_weights or default_load_weights
    if ckpt:
        load_weights(raw, ckpt)
    model = raw
    if cfg.compile if cfg.compile is not None else device.type == "cuda":
        model = torch.compile(model)
    model = D.wrap(model, info, cfg.parallel)
    opt = optim.build_adamw(raw, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, cfg.fused_adamw)
    start_step, lr_total, elapsed0, resumed_from = 0, cfg.total_steps, 0.0, None
    optimizer_restored = False
    if ckpt:
        start_step = int(state["step"])
        resumed_from = start_step
        lr_total = int(state.get("lr_total_steps", cfg.total_steps))
        if lr_total != cfg.total_steps and not cfg.stretch_lr_on_resume:
            lr_total = cfg.total_steps  # the configured schedule wins unless the run asks for stretching
        if cfg.stretch_lr_on_resume:
            lr_total = lr_total + start_step
        elapsed0 = float(state.get("elapsed_s", 0.0))
        if cfg.restore_optimizer:
            osd = tc.read_optimizer_state(ckpt)
            if osd is None:
                raise UserError(f"{ckpt}: has no optimizer state; resume with --no-restore-optimizer")
            _load_optimizer(raw, model, opt, osd, cfg, str(ckpt / tc.OPTIMIZER))
            optimizer_restored = True
        wl.train_batches.load_state_dict(state["loader"])
        rngs = tc.read_rng_states(ckpt)
        tc.set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0], device)

    # ---- run files
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    sinks = Sinks(cfg, out, info.is_main, out.name)
    if resumed_from is not None and info.is_main:
        sinks.jsonl.truncate_after(resumed_from)
    milestones = cfg.milestone_steps()
    end = cfg.end_step()
    commit = git_commit() if info.is_main else None
    pk, pk_src = (cfg.peak_flops, "config") if cfg.peak_flops else peak_flops(device, compute_dtype)
    hs_items = read_hellaswag(cfg.hellaswag_path, cfg.hellaswag_items) if cfg.hellaswag_every else []
    sinks.write("event", step=start_step, event="resume" if resumed_from is not None else "start",
                world_size=info.world_size, grad_accum=grad_accum, micro_batch=cfg.micro_batch, seq_len=seq_len,
                device=str(device), dtype=str(compute_dtype).removeprefix("torch."), lr_total_steps=lr_total,
                optimizer_restored=optimizer_restored, peak_flops=pk, peak_flops_source=pk_src,
                git_commit=commit, checkpoint=str(ckpt) if ckpt else None, **wl.description)
    log(f"train: {out} | world {info.world_size} x micro {cfg.micro_batch} x accum {grad_accum} x seq {seq_len}"
        f" = {cfg.global_batch_tokens:,} tokens/step | steps {start_step}->{end} | device {device} "
        f"{str(compute_dtype).removeprefix('torch.')}" + (f" | resumed from {ckpt}" if ckpt else ""))

    # ---- helpers bound to this run
    first_val = last_val = None
    last_ckpt = ckpt

    def validate(step: int) -> None:
        nonlocal first_val, last_val
        if wl.evaluate is None:
            return
        model.eval()
        res = wl.evaluate(model, lctx)
        model.train()
        first_val = res["val_loss"] if first_val is None else first_val
        last_val = res["val_loss"]
        sinks.write("val", step=step, tokens=step * wl.tokens_per_step, **res)
        log(f"step {step:>6} | val_loss {res['val_loss']:.4f}")

    def extras(step: int) -> None:
        if not wl.generate_samples:
            return
        if cfg.sample_every and step % cfg.sample_every == 0:
            from .tokenizer import gpt2

            tok = gpt2()
            prompt = torch.tensor([tok.encode(cfg.sample_prompt)] * cfg.sample_count, device=device)
            with autocast():
                outs = raw.generate(prompt, cfg.sample_tokens, temperature=1.0, top_k=50,
                                    seed=cfg.seed + step + info.rank, stop_token=None)
            for i, o in enumerate(outs):
                sinks.write("sample", step=step, index=i, text=cfg.sample_prompt + tok.decode(o))
        if cfg.hellaswag_every and step % cfg.hellaswag_every == 0:
            model.eval()
            res = hellaswag_acc_norm(raw if not info.enabled or cfg.parallel == "ddp" else model, hs_items, lctx)
            model.train()
            sinks.write("hellaswag", step=step, tokens=step * wl.tokens_per_step, **res)

    nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def check_finite(step: int) -> None:
        if bool(D.all_reduce_max(nonfinite.float(), info).item()):
            msg = (f"loss became NaN/inf at or before step {step}; stopped. The last good checkpoint "
                   f"{last_ckpt or '(none)'} is kept; lower the LR or check the data.")
            sinks.write("event", step=step, event="diverged", message=msg)
            raise Diverged(msg)

    def save(step: int, elapsed: float) -> Path:
        nonlocal last_ckpt
        check_finite(step)
        trainer_state = {
            "step": step, "tokens": step * wl.tokens_per_step, "loader": wl.train_batches.state_dict(),
            "lr_total_steps": lr_total, "world_size": info.world_size, "grad_accum": grad_accum,
            "micro_batch": cfg.micro_batch, "global_batch_tokens": cfg.global_batch_tokens,
            "elapsed_s": elapsed, "git_commit": commit, "optimizer_restored_at_resume": optimizer_restored,
            "resumed_from": resumed_from, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        model_view, osd = _full_states(raw, model, opt, cfg, info)
        rngs = D.gather_objects(tc.rng_state(device), info)
        path = tc.step_dir(out, step)
        if info.is_main:
            path = tc.write(out, step, save_weights=lambda d: save_weights(model_view, d), optimizer_state=osd,
                            rng_states=rngs, config=cfg.to_dict(), trainer_state=trainer_state)
            tc.prune(out, cfg.keep_last, milestones, cfg.milestone_optimizer)
            sinks.write("event", step=step, event="checkpoint", path=str(path))
        D.barrier(info)
        last_ckpt = path
        return path

    # ---- train
    step = start_step
    interrupted = None
    bar = None
    if info.is_main and not quiet and (cfg.progress if cfg.progress is not None else sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(total=end, initial=start_step, unit="step", dynamic_ncols=True, desc="train")
    model.train()
    if step == 0 and step < end:
        validate(0)
    t_run = time.perf_counter()
    t_log, tokens_since, paused = time.perf_counter(), 0, 0.0
    try:
        with StopSignal() as stop:
            while step < end:
                lr = optim.lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, lr_total)
                optim.set_lr(opt, lr)
                loss_sum = torch.zeros((), device=device)
                for micro in range(grad_accum):
                    batch = batch_to(wl.train_batches.next_batch(), device)
                    with D.no_sync(model, micro < grad_accum - 1), autocast():
                        loss = wl.loss_fn(model, batch)
                        (loss / grad_accum).backward()
                    loss_sum += loss.detach().float()
                grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters() if cfg.parallel != "fsdp"
                                                           else model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                tokens_since += wl.tokens_per_step
                step_loss = loss_sum / grad_accum
                nonfinite |= ~torch.isfinite(step_loss)
                elapsed = elapsed0 + time.perf_counter() - t_run
                if step % cfg.log_every == 0 or step == end:
                    check_finite(step)
                    mean_loss = D.all_reduce_mean(step_loss, info).item()
                    gn = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    dt = time.perf_counter() - t_log - paused
                    tps = tokens_since / dt if dt > 0 else 0.0
                    mfu = wl.flops_per_token * tps / (pk * info.world_size) if wl.flops_per_token and pk else None
                    sinks.write("train", step=step, tokens=step * wl.tokens_per_step, loss=mean_loss, lr=lr,
                                grad_norm=gn, tokens_per_s=tps, mfu=mfu, elapsed_s=elapsed)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tps:,.0f}")
                    elif not quiet and info.is_main and (step % (cfg.log_every * 10) == 0 or step == end):
                        _print(info, f"step {step:>6} | loss {mean_loss:.4f} | lr {lr:.2e} | "
                                     f"{tps:,.0f} tok/s | mfu {100 * (mfu or 0):.1f}%")
                    t_log, tokens_since, paused = time.perf_counter(), 0, 0.0
                if bar is not None:
                    bar.update(1)
                t_pause = time.perf_counter()  # evaluation and checkpoints do not count as training time
                if cfg.val_every and step % cfg.val_every == 0 and step != end:
                    validate(step)
                extras(step)
                stop_now = stop.requested is not None
                if info.enabled:
                    stop_now = bool(D.all_reduce_max(torch.tensor(float(stop_now), device=device), info).item())
                if stop_now or step == end or step in milestones or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                    if step == end:
                        validate(step)
                    save(step, elapsed0 + time.perf_counter() - t_run)
                if stop_now:
                    interrupted = stop.requested or "SIGTERM"
                    sinks.write("event", step=step, event="stopped", signal=interrupted)
                    log(f"stopped by {interrupted} at step {step}; checkpoint {last_ckpt}; continue with --resume")
                    break
                paused += time.perf_counter() - t_pause
    finally:
        if bar is not None:
            bar.close()
        sinks.close()
    return RunResult(out, step, step * wl.tokens_per_step, last_ckpt, interrupted, first_val, last_val,
                     resumed_from)


def _ensure_data(cfg: TrainConfig, info: D.DistInfo) -> None:
    from . import data

    if (Path(cfg.data_dir) / data.MANIFEST).is_file():
        return
    if info.is_main:
        _print(info, f"preparing {cfg.data_source} data into {cfg.data_dir} ...")
        data.prepare(data.PrepareConfig(source=cfg.data_source), cfg.data_dir)
    D.barrier(info)


def _full_states(raw, model, opt, cfg: TrainConfig, info: D.DistInfo):
    """(weights holder for save_weights, optimizer state by name) on rank 0; collective for FSDP."""
    if cfg.parallel == "fsdp" and info.enabled:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, opt, options=opts)
        if not info.is_main:  # full state dicts are gathered on rank 0 only
            return None, None
        return _StateView(raw.cfg, msd), _fsdp_osd_to_by_name(osd)
    if not info.is_main:
        return None, None
    return raw, tc.optimizer_state_by_name(raw, opt)


class _StateView:
    """Looks like a model to `save_model_files`: a config and a (full) state dict."""

    def __init__(self, cfg, sd):
        self.cfg, self._sd = cfg, sd

    def state_dict(self):
        return self._sd


def _fsdp_osd_to_by_name(osd: dict) -> dict:
    return {"state": osd["state"], "param_groups": osd["param_groups"]}


def _load_optimizer(raw, model, opt, osd: dict, cfg: TrainConfig, source: str) -> None:
    if cfg.parallel == "fsdp" and torch.distributed.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))
        return
    tc.load_optimizer_state_by_name(raw, opt, osd, source)
