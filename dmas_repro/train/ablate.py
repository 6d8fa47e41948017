"""The paper's two training lessons, rerun at small scale: `dmas-repro ablate resume|world-size`.

    dmas-repro ablate resume [--preset tiny] [--out DIR]
        An uninterrupted reference trains 0 -> E and saves a checkpoint at step S. Three runs continue
        from that checkpoint to E: (a) `full_state` (weights, AdamW moments, schedule, data position,
        RNG), (b) `weights_only` (weights, schedule, data position; a fresh AdamW: what the authors'
        script did), (c) `weights_only_stretched_lr` (as (b), plus the authors' re-stretched cosine:
        schedule length += S). DIR/summary.json holds the loss spike of each over the reference, the
        steps to recover and the final gap (measures: `dmas_repro.train.ablation_measures`).

    dmas-repro ablate world-size [--out DIR]
        A 1-process base run trains 0 -> S; from its checkpoint S -> E on 1 process, on 2 processes with
        the same global batch (gloo on CPU, NCCL on GPU), and on 2 processes with the global batch
        doubled. DIR/summary.json holds the loss agreement with the 1-process run and tokens/s per segment.

Every run goes through the training loop (`dmas_repro.train.loop.run`); only configs differ. Layout:
DIR/<run>/{config.json, metrics.jsonl, checkpoints/} and DIR/summary.json. A rerun into the same DIR
continues unfinished work (the reference by exact resume; a variant from S again) and refuses a
finished one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.config import opt
from ..core.errors import UserError
from ..core.files import atomic_dir, atomic_write_text
from ..core.runtime import load_average, machine_info
from . import distributed as D
from . import layout
from .ablation_measures import excess_loss, loss_agreement, resume_spike
from .config import PRESETS, apply_overrides, load_config, with_changes

log = logging.getLogger(__name__)

SUMMARY = "summary.json"

# What each continuation restores besides the weights, schedule and data position.
RESUME_VARIANTS: dict[str, dict] = {
    "full_state": dict(restore_optimizer=True, stretch_lr_on_resume=False),
    "weights_only": dict(restore_optimizer=False, stretch_lr_on_resume=False),
    "weights_only_stretched_lr": dict(restore_optimizer=False, stretch_lr_on_resume=True),
}

# Config of every ablation run, applied on top of the training preset (before user overrides):
# a loss row every step, no in-loop samples, validation only at the start and the end.
COMMON_OVERRIDES = dict(log_every=1, val_every=0, sample_every=0, hellaswag_every=0, ckpt_every=0)

# Per training preset: the batch of each ablation. tiny: half the preset's 2048 tokens/step, so each
# command fits in about 10 minutes on two CPU cores; for world-size a micro-batch that two processes
# can share (1 process: 2 accumulation steps, 2 processes: 1 each).
RESUME_PRESET_OVERRIDES: dict[str, dict] = {
    "tiny": dict(global_batch_tokens=1024, micro_batch=8, val_tokens=4096),
}
WORLD_SIZE_PRESET_OVERRIDES: dict[str, dict] = {
    "tiny": dict(global_batch_tokens=1024, micro_batch=4, val_tokens=2048),
}


# ---------------------------------------------------------------- configuration
@dataclass
class ResumeAblation:
    """`ablate resume`: resume step S, end step E (= schedule length), and how the spike is measured."""

    preset: str = opt("tiny", "training preset", choices=sorted(PRESETS))
    resume_step: int = opt(60, "S: the step the reference checkpoints and every variant continues from")
    end_step: int = opt(90, "E: every run stops here; also the reference's cosine length")
    warmup_steps: int = opt(10, "LR warmup steps")
    overrides: list[str] = opt(help="training config overrides KEY=VALUE (e.g. model.n_layer=2), applied last",
                               factory=list, cli=False)
    device: str | None = opt(None, "auto | cpu | cuda")
    window: int = opt(20, "steps after S in which the spike (peak excess loss) is measured")
    tol: float = opt(0.05, "excess loss (nats) that counts as recovered")
    final_window: int = opt(5, "logged steps averaged into the final gap")

    def validate(self) -> None:
        if not 0 < self.resume_step < self.end_step:
            raise UserError(f"need 0 < resume step ({self.resume_step}) < end step ({self.end_step})")
        if self.window <= 0 or self.final_window <= 0 or self.tol < 0:
            raise UserError("window and final_window must be positive, tol >= 0")


@dataclass
class WorldSizeAblation:
    """`ablate world-size`: base run 0 -> S on 1 process, then S -> E on 1 and 2 processes."""

    preset: str = opt("tiny", "training preset", choices=sorted(PRESETS))
    start_step: int = opt(10, "S: the base run's checkpoint every continuation starts from")
    end_step: int = opt(30, "E: where every continuation stops")
    warmup_steps: int = opt(5, "LR warmup steps")
    total_steps: int = opt(60, "schedule length (beyond E: the LR is still high across the segments)")
    overrides: list[str] = opt(help="training config overrides KEY=VALUE", factory=list, cli=False)
    device: str | None = opt(None, "auto | cpu | cuda (GPU: one process per GPU, NCCL)")
    processes: int = opt(2, "the larger world size")
    tolerance: float = opt(1e-5, "|loss(2 processes) - loss(1 process)| allowed with the same global batch")
    threads_per_process: int = opt(0, "CPU only; 0: cores // processes (1-process runs keep torch's default)")

    def validate(self) -> None:
        if not 0 < self.start_step < self.end_step:
            raise UserError(f"need 0 < start step ({self.start_step}) < end step ({self.end_step})")
        if self.processes < 2:
            raise UserError("processes must be at least 2")


def _train_config(preset: str, fixed: dict, overrides: list[str], device: str | None, structural: dict):
    """preset -> ablation defaults (`fixed`) -> user overrides -> what the ablation must control."""
    if preset not in PRESETS:
        raise UserError(f"unknown training preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = apply_overrides(with_changes(load_config(preset), **COMMON_OVERRIDES, **fixed), overrides)
    if device is not None:
        cfg = with_changes(cfg, device=device)
    return with_changes(cfg, **structural)


def resume_config(ab: ResumeAblation):
    """The reference run's TrainConfig (the variants differ only in the resume flags)."""
    ab.validate()
    # keep_last: the checkpoint at S keeps its optimizer state even if a stop adds checkpoints after it
    fixed = {**RESUME_PRESET_OVERRIDES.get(ab.preset, {}), "total_steps": ab.end_step, "warmup_steps": ab.warmup_steps}
    return _train_config(ab.preset, fixed, ab.overrides,
                         ab.device, dict(max_steps=ab.end_step, milestones=str(ab.resume_step), keep_last=10,
                                         restore_optimizer=True, stretch_lr_on_resume=False))


def world_size_config(ab: WorldSizeAblation):
    """The base run's TrainConfig; continuations change only the global batch and the world size."""
    ab.validate()
    fixed = {**WORLD_SIZE_PRESET_OVERRIDES.get(ab.preset, {}), "total_steps": ab.total_steps,
             "warmup_steps": ab.warmup_steps}
    cfg = _train_config(ab.preset, fixed, ab.overrides,
                        ab.device, dict(max_steps=ab.start_step, milestones=str(ab.start_step), keep_last=10,
                                        restore_optimizer=True, stretch_lr_on_resume=False))
    for world in (1, ab.processes):
        cfg.validate(world)
    return cfg


# ---------------------------------------------------------------- running the engine
def _refuse_nested() -> None:
    if D.world_size() > 1:
        raise UserError("run `dmas-repro ablate` as one plain process (not under torchrun): "
                        "it starts the processes it needs itself")


def _refuse_finished(out: Path) -> None:
    if (out / SUMMARY).is_file():
        raise UserError(f"{out} already holds a finished ablation ({SUMMARY}); choose another --out")


def _clear_if_unstarted(run_dir: Path) -> None:
    """A run dir without any checkpoint (killed before its first one) starts again from nothing."""
    if run_dir.exists() and layout.newest_checkpoint(run_dir) is None:
        shutil.rmtree(run_dir)


def _finished(run_dir: Path, end: int) -> bool:
    ck = layout.newest_checkpoint(run_dir)
    return ck is not None and int(layout.read_trainer_state(ck).get("step", -1)) >= end


def _seed(ckpt: Path, run_dir: Path) -> None:
    """A fresh run dir whose only checkpoint is a copy of `ckpt` (the engine resumes from it)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    with atomic_dir(layout.step_dir(run_dir, int(layout.read_trainer_state(ckpt)["step"]))) as tmp:
        for f in ckpt.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def _checkpoint_at(run_dir: Path, step: int, need_optimizer: bool = True) -> Path:
    ck = layout.step_dir(run_dir, step)
    if not layout.is_complete(ck):
        raise UserError(f"{ck}: missing or incomplete; rerun into a new --out")
    if need_optimizer and not layout.has_optimizer(ck):
        raise UserError(f"{ck}: has no optimizer state; rerun into a new --out")
    return ck


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, cfg, out: str, world: int, port: int, threads: int, verbosity: int) -> None:
    """One process of a multi-process run (torch.multiprocessing spawn): torchrun's environment, then the loop."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    from ..core import logs
    from .loop import run

    logs.setup(verbosity)
    if threads > 0:
        torch.set_num_threads(threads)
    run(cfg, out, resume=True)


def launch(cfg, out: Path, world: int = 1, threads: int = 0) -> str | None:
    """Run (or continue) `cfg` into `out` on `world` processes; returns the stop signal's name, if stopped."""
    from ..core import logs
    from .loop import run

    if world == 1:
        return run(cfg, out, resume=True).interrupted
    import torch.multiprocessing as mp

    verbosity = -1 if logs.quiet() else 0
    try:
        mp.start_processes(_worker, args=(cfg, str(out), world, _free_port(), threads, verbosity), nprocs=world,
                           join=True, start_method="spawn")
    except mp.ProcessRaisedException as e:
        last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1]
        raise UserError(f"{out}: a process of the {world}-process run failed: {last}") from None
    except mp.ProcessExitedException as e:
        raise UserError(f"{out}: a process of the {world}-process run exited ({e})") from None
    events = [r for r in layout.read_metrics(out) if r.get("kind") == "event"]
    return next((r.get("signal") for r in reversed(events) if r.get("event") == "stopped"), None)


def _machine(device: str | None) -> dict:
    from ..core.runtime import resolve_device

    info = machine_info(resolve_device(device))
    info["load_avg_1m_at_start"] = info.pop("load_avg_1m")
    return info


def _train_rows(run_dir: Path) -> list[dict]:
    rows = layout.read_metrics(run_dir)
    last = {r["step"]: r for r in rows if r.get("kind") == "train"}  # a resumed step: the later row
    return [last[s] for s in sorted(last)]


def _last(run_dir: Path, kind: str, key: str):
    vals = [r[key] for r in layout.read_metrics(run_dir) if r.get("kind") == kind and key in r]
    return vals[-1] if vals else None


def _median_tps(rows: list[dict], skip_first: int = 1) -> float | None:
    import statistics

    tps = [r["tokens_per_s"] for r in rows[skip_first:] if r.get("tokens_per_s")]
    return float(statistics.median(tps)) if tps else None


def _write_summary(out: Path, summary: dict) -> Path:
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return out / SUMMARY


def _finish(out: Path, summary: dict, machine: dict, wall: dict, t_all: float, cfg) -> dict:
    """Add the machine (load at the end), wall times and training config; write summary.json."""
    summary["machine"] = {**machine, "load_avg_1m_at_end": load_average()}
    summary["wall_s"] = {**{k: round(v, 1) for k, v in wall.items()}, "total": round(time.perf_counter() - t_all, 1)}
    summary["train_config"] = cfg.to_dict()
    _write_summary(out, summary)
    return summary


# ---------------------------------------------------------------- ablate resume
def run_resume(ab: ResumeAblation, out: str | os.PathLike) -> dict | None:
    """Run the resume ablation into `out`; returns the summary (None when stopped by a signal)."""
    _refuse_nested()
    out = Path(out)
    _refuse_finished(out)
    cfg = resume_config(ab)
    cfg.validate(1)
    machine = _machine(ab.device)
    S, E = ab.resume_step, ab.end_step
    t_all, wall = time.perf_counter(), {}

    ref_dir = out / "reference"
    if not _finished(ref_dir, E):
        log.info(f"ablate resume: reference 0 -> {E} (checkpoint at {S}) in {ref_dir}")
        _clear_if_unstarted(ref_dir)
        t0 = time.perf_counter()
        if launch(cfg, ref_dir):
            return None
        wall["reference"] = time.perf_counter() - t0
    ckpt = _checkpoint_at(ref_dir, S)
    for name, flags in RESUME_VARIANTS.items():
        d = out / name
        if _finished(d, E):
            continue
        log.info(f"ablate resume: {name} {S} -> {E} in {d}")
        _seed(ckpt, d)  # an unfinished variant starts again from S: it must reset AdamW only there
        t0 = time.perf_counter()
        if launch(with_changes(cfg, milestones="", keep_last=1, **flags), d):
            return None
        wall[name] = time.perf_counter() - t0
    return _finish(out, summarize_resume(out, ab), machine, wall, t_all, cfg)


def summarize_resume(out: Path, ab: ResumeAblation) -> dict:
    """The summary of a finished resume ablation (spikes, recovery, final gaps) from its metrics."""
    S, E = ab.resume_step, ab.end_step
    ref = _train_rows(out / "reference")
    ref_val = _last(out / "reference", "val", "val_loss")
    s = {"ablation": "resume", "preset": ab.preset, "resume_step": S, "end_step": E, "window": ab.window,
         "tol": ab.tol, "final_window": ab.final_window, "overrides": list(ab.overrides),
         "reference": {"final_loss": ref[-1]["loss"], "final_val_loss": ref_val, "tokens_per_s_median":
                       _median_tps(ref), "loss_at_resume": next((r["loss"] for r in ref if r["step"] == S), None)}}
    variants = {}
    for name in RESUME_VARIANTS:
        d = out / name
        rows = _train_rows(d)
        sp = resume_spike(rows, ref, S, window=ab.window, tol=ab.tol, final_window=ab.final_window)
        ex = excess_loss(rows, ref, S)
        val = _last(d, "val", "val_loss")
        lr_total = next((r.get("lr_total_steps") for r in layout.read_metrics(d)
                         if r.get("kind") == "event" and r.get("event") == "resume"), None)
        variants[name] = {**sp.to_dict(), "identical_to_reference": bool(len(ex) == E - S and (ex == 0).all()),
                          "final_loss": rows[-1]["loss"], "final_val_loss": val,
                          "final_val_gap": (val - ref_val) if val is not None and ref_val is not None else None,
                          "lr_total_steps": lr_total, "tokens_per_s_median": _median_tps(rows)}
        s[f"spike_{name}"] = sp.peak_excess
        s[f"recover_steps_{name}"] = sp.steps_to_recover
        s[f"final_gap_{name}"] = sp.final_gap
    s["full_state_equals_reference"] = variants["full_state"]["identical_to_reference"]
    s["variants"] = variants
    return s


# ---------------------------------------------------------------- ablate world-size
WORLD_SIZE_RUNS = ("world_size_1", "world_size_{n}", "world_size_{n}_double_batch")


def run_world_size(ab: WorldSizeAblation, out: str | os.PathLike) -> dict | None:
    """Run the world-size ablation into `out`; returns the summary (None when stopped by a signal)."""
    _refuse_nested()
    out = Path(out)
    _refuse_finished(out)
    cfg = world_size_config(ab)
    machine = _machine(ab.device)
    if machine["device"].startswith("cuda") and machine.get("gpu_count", 0) < ab.processes:
        raise UserError(f"the world-size ablation needs {ab.processes} GPUs (found {machine.get('gpu_count')}); "
                        f"pass --device cpu to run it on CPU processes (gloo)")
    threads = ab.threads_per_process or max(1, (os.cpu_count() or 1) // ab.processes)
    if not machine["device"].startswith("cpu"):
        threads = 0
    S, E, n = ab.start_step, ab.end_step, ab.processes
    t_all, wall = time.perf_counter(), {}

    base_dir = out / "base"
    if not _finished(base_dir, S):
        log.info(f"ablate world-size: base 0 -> {S} on 1 process in {base_dir}")
        _clear_if_unstarted(base_dir)
        t0 = time.perf_counter()
        if launch(cfg, base_dir):
            return None
        wall["base"] = time.perf_counter() - t0
    ckpt = _checkpoint_at(base_dir, S)
    cont = with_changes(cfg, max_steps=E, milestones="", keep_last=1)
    plan = [("world_size_1", 1, cont),
            (f"world_size_{n}", n, cont),
            (f"world_size_{n}_double_batch", n,
             with_changes(cont, global_batch_tokens=2 * cfg.global_batch_tokens))]
    for name, world, c in plan:
        d = out / name
        if _finished(d, E):
            continue
        log.info(f"ablate world-size: {name} {S} -> {E} on {world} process(es) in {d}")
        _seed(ckpt, d)
        t0 = time.perf_counter()
        if launch(c, d, world=world, threads=threads if world > 1 else 0):
            return None
        wall[name] = time.perf_counter() - t0
    summary = {**summarize_world_size(out, ab), "threads_per_process": threads or None}
    return _finish(out, summary, machine, wall, t_all, cfg)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(a - b)


def summarize_world_size(out: Path, ab: WorldSizeAblation) -> dict:
    """Loss agreement with the 1-process continuation and tokens/s per segment, from the metrics."""
    n = ab.processes
    one, same, double = "world_size_1", f"world_size_{n}", f"world_size_{n}_double_batch"
    segments = []
    for name in ("base", one, same, double):
        d = out / name
        rows = _train_rows(d)
        ev = next((r for r in reversed(layout.read_metrics(d)) if r.get("kind") == "event"
                   and r.get("event") in ("start", "resume")), {})
        tps = _median_tps(rows)
        segments.append({"run": name, "world_size": ev.get("world_size"), "micro_batch": ev.get("micro_batch"),
                         "grad_accum": ev.get("grad_accum"), "device": ev.get("device"),
                         "global_batch_tokens": json.loads((d / layout.CONFIG).read_text())["global_batch_tokens"],
                         "first_step": rows[0]["step"], "last_step": rows[-1]["step"],
                         "tokens_per_s_median": tps, "final_loss": rows[-1]["loss"],
                         "final_val_loss": _last(d, "val", "val_loss")})
    by = {s["run"]: s for s in segments}
    agree = loss_agreement(_train_rows(out / same), _train_rows(out / one), after_step=ab.start_step)
    dbl = loss_agreement(_train_rows(out / double), _train_rows(out / one), after_step=ab.start_step)
    t1, tn = by[one]["tokens_per_s_median"], by[same]["tokens_per_s_median"]
    return {"ablation": "world-size", "preset": ab.preset, "start_step": ab.start_step, "end_step": ab.end_step,
            "processes": n, "tolerance": ab.tolerance, "overrides": list(ab.overrides),
            "same_batch_max_abs_diff": agree["max_abs_diff"], "same_batch_mean_abs_diff": agree["mean_abs_diff"],
            "same_batch_steps_compared": agree["n_steps"],
            "same_batch_within_tolerance": bool(agree["max_abs_diff"] <= ab.tolerance),
            "same_batch_final_val_diff": _diff(by[same]["final_val_loss"], by[one]["final_val_loss"]),
            "double_batch_max_abs_diff": dbl["max_abs_diff"], "double_batch_mean_abs_diff": dbl["mean_abs_diff"],
            f"speedup_{n}_vs_1": (tn / t1) if t1 and tn else None,
            "segments": segments}
