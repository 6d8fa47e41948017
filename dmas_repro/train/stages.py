"""The stages of `dmas-repro train`, in order: `pretrain` then `sft` (instruction tuning of the
run's newest checkpoint into RUN/sft/). To add a stage, write `fn(ctx: StageContext)` and register
it in `STAGES`; `STAGE.KEY=VALUE` overrides on the command line reach it as `KEY=VALUE`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from . import distributed as D
from . import layout
from .config import load_config
from .loop import run
from .pretrain import export_hf
from .sft import sft_stage

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What `dmas-repro train` hands to each stage function `fn(ctx)`.

    run_dir: the run directory (pretraining writes here; later stages read it and write a subdir).
    overrides: this stage's `key=value` items (`sft.lr=1e-4` on the command line reaches the sft stage
    as `lr=1e-4`; unprefixed items go to `pretrain`). embedded: the no-argument default run.
    """

    run_dir: Path
    preset: str = "tiny"
    yaml_path: str | None = None
    overrides: list[str] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    max_steps: int | None = None
    resume: bool = False
    restore_optimizer: bool = True
    embedded: bool = False


def pretrain_stage(ctx: StageContext):
    """The `pretrain` stage: train the preset (+ YAML + overrides) into RUN, then export RUN/hf."""
    cfg = load_config(ctx.preset, ctx.yaml_path, ctx.overrides, device=ctx.device, dtype=ctx.dtype,
                      max_steps=ctx.max_steps)
    if not ctx.restore_optimizer:
        cfg.restore_optimizer = False
    result = run(cfg, ctx.run_dir, resume=ctx.resume)
    if result.interrupted:
        return result
    if cfg.export_hf and result.step >= cfg.end_step() and result.checkpoint is not None:
        if D.rank() == 0:
            export_hf(result.checkpoint, ctx.run_dir / layout.HF)
    return result


STAGES: dict[str, Callable[[StageContext], object]] = {
    "pretrain": pretrain_stage,
    "sft": sft_stage,
}


def stage_names(spec: str | None) -> list[str]:
    """The stages of a comma list (default: all, in order); unknown names fail before any work."""
    names = [s.strip() for s in spec.split(",") if s.strip()] if spec else list(STAGES)
    for s in names:
        if s not in STAGES:
            raise UserError(f"unknown stage {s!r}; choose from {', '.join(STAGES)}")
    return names


def split_overrides(items: list[str]) -> dict[str, list[str]]:
    """`STAGE.KEY=VALUE` items to their stage (prefix removed); the others to `pretrain`."""
    per: dict[str, list[str]] = {name: [] for name in STAGES}
    for it in items:
        key = it.split("=", 1)[0]
        prefix = key.split(".", 1)[0]
        if "." in key and prefix in STAGES:
            per[prefix].append(it.split(".", 1)[1])
        else:
            per["pretrain"].append(it)
    return per


def default_out(preset: str) -> Path:
    """runs/PRESET, or runs/PRESET-<time> when that one already holds something."""
    p = Path("runs") / preset
    if p.exists() and any(p.iterdir()):
        return Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return p


def _device_of(names: list[str], base: StageContext, overrides: dict[str, list[str]]) -> str | None:
    """The device the stages will train on (--device, else the pretraining config's, else a
    `device=` override of a later stage), for the process group that spans them."""
    if base.device:
        return base.device
    if "pretrain" in names:
        return load_config(base.preset, base.yaml_path, overrides["pretrain"]).device
    found = [it.split("=", 1)[1] for n in names for it in overrides.get(n, []) if it.split("=", 1)[0] == "device"]
    return found[-1] if found else None


def run_stages(names: list[str], base: StageContext, overrides: dict[str, list[str]]) -> int:
    """Run the stages in order; 130 when one was stopped by a signal, else 0 (summary on rank 0).

    Under torchrun one process group spans all the stages (each stage's loop joins it: a default
    group cannot be created again once destroyed), and every rank takes rank 0's run directory
    (each resolved the default on its own clock; a dated name may straddle a second)."""
    t0 = time.perf_counter()
    info = D.setup(_device_of(names, base, overrides)) if D.world_size() > 1 else None
    try:
        if info is not None:
            base = StageContext(**{**base.__dict__, "run_dir": Path(D.broadcast_object(str(base.run_dir), info))})
        for name in names:
            ctx = StageContext(**{**base.__dict__, "overrides": overrides[name]})
            result = STAGES[name](ctx)
            if getattr(result, "interrupted", None):
                return 130
            if info is not None:
                D.barrier(info)  # rank 0's export of this stage is done before the next stage reads the run
    finally:
        if info is not None:
            D.teardown(info)
    if D.rank() == 0:
        summary(base.run_dir, time.perf_counter() - t0)
    return 0


def summary(run_dir: Path, seconds: float) -> None:
    """What a finished `dmas-repro train` made, on stdout."""
    print(f"done in {seconds:.0f} s. Run directory: {run_dir}")
    m = run_dir / layout.METRICS
    if m.is_file():
        vals = [r for r in layout.read_metrics(m) if r.get("kind") == "val" and r.get("val_loss") is not None]
        if vals:
            print(f"  val_loss      {vals[0]['val_loss']:.3f} (step {vals[0]['step']}) -> "
                  f"{vals[-1]['val_loss']:.3f} (step {vals[-1]['step']})")
        print(f"  metrics       {m}")
    cks = layout.list_checkpoints(run_dir)
    if cks:
        print(f"  checkpoints   {run_dir / layout.CHECKPOINTS} ({len(cks)}: steps "
              f"{', '.join(str(s) for s, _ in cks)})")
    for sub, what in ((layout.HF, "HF export"), (layout.SFT, "SFT stage")):
        if (run_dir / sub).exists():
            print(f"  {what:<13} {run_dir / sub}")
