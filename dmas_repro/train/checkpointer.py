"""The checkpointer: full training state on disk, RUN/checkpoints/step_XXXXXXXX/ (names in `layout`).

    model.safetensors, model_config.json   the weights (`model.weights.save_model_files`): every training
                                           checkpoint is also a model directory for `model.weights.load_model`
    optimizer.pt                           AdamW state keyed by parameter name (portable across DDP / FSDP /
                                           world sizes); absent when the run saves no optimizer
    rng.pt                                 python / numpy / torch CPU / CUDA RNG states, one entry per rank
    config.json                            the resolved training config
    trainer_state.json                     step, tokens, loader position, schedule length, world size,
                                           git commit, elapsed time

A checkpoint directory is written under a temporary name, fsynced and renamed (`core.files.atomic_dir`),
so a kill at any moment leaves the previous ones intact and never a partial `step_*`. Retention
keeps the newest `keep_last` (full state) plus the milestone steps (weights, trainer state and RNG;
their optimizer state only with `milestone_optimizer`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.files import atomic_dir
from .layout import CKPT_CONFIG, OPTIMIZER, RNG, TRAINER_STATE, list_checkpoints, step_dir


def milestone_steps(run_steps: int, released: tuple[int, ...] | None = None) -> list[int]:
    """The released steps (out of the release's last step, 43,500) scaled to a run of `run_steps`
    updates (at least step 1; duplicates merged)."""
    from ..model.released import released_steps

    released = released or released_steps()
    total = max(released)
    return sorted({max(1, round(s * run_steps / total)) for s in released})


# ---------------------------------------------------------------- RNG
def rng_state(device: torch.device | None = None) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------- optimizer state by parameter name
def optimizer_state_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with parameter names instead of positions (portable across wrappers)."""
    sd = optimizer.state_dict()
    names = {id(p): n for n, p in model.named_parameters()}
    pid_name = {}
    for g, sg in zip(optimizer.param_groups, sd["param_groups"]):
        for p, pid in zip(g["params"], sg["params"]):
            pid_name[pid] = names[id(p)]
    return {
        "state": {pid_name[k]: v for k, v in sd["state"].items()},
        "param_groups": [{**sg, "params": [pid_name[i] for i in sg["params"]]} for sg in sd["param_groups"]],
    }


def load_optimizer_state_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                                 source: str = OPTIMIZER) -> None:
    current = optimizer.state_dict()
    names = {id(p): n for n, p in model.named_parameters()}
    name_pid = {}
    for g, sg in zip(optimizer.param_groups, current["param_groups"]):
        for p, pid in zip(g["params"], sg["params"]):
            name_pid[names[id(p)]] = pid
    saved_names = [n for g in state["param_groups"] for n in g["params"]]
    if sorted(saved_names) != sorted(name_pid) or len(state["param_groups"]) != len(current["param_groups"]):
        missing = sorted(set(name_pid) - set(saved_names))[:3]
        extra = sorted(set(saved_names) - set(name_pid))[:3]
        raise UserError(f"{source}: optimizer state does not match the model's trainable parameters "
                        f"(missing {missing}, unexpected {extra})")
    sd = {
        "state": {name_pid[n]: v for n, v in state["state"].items()},
        "param_groups": [{**g, "params": [name_pid[n] for n in g["params"]]} for g in state["param_groups"]],
    }
    optimizer.load_state_dict(sd)


# ---------------------------------------------------------------- write / read
def write(out_dir: str | os.PathLike, step: int, *, save_weights, optimizer_state: dict | None,
          rng_states: list[dict], config: dict, trainer_state: dict) -> Path:
    """Write one checkpoint atomically (rank 0 only). `save_weights(dir)` writes the model files."""
    final = step_dir(out_dir, step)
    with atomic_dir(final) as tmp:
        save_weights(tmp)
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER)
        torch.save(rng_states, tmp / RNG)
        (tmp / CKPT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        # written last: a directory holding it has everything else
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
    return final


def read_optimizer_state(ckpt: str | os.PathLike) -> dict | None:
    f = Path(ckpt) / OPTIMIZER
    if not f.is_file():
        return None
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{f}: unreadable optimizer state ({type(e).__name__}: {e})") from None


def read_rng_states(ckpt: str | os.PathLike) -> list[dict]:
    f = Path(ckpt) / RNG
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{f}: unreadable RNG state ({type(e).__name__}: {e})") from None


def read_weights(ckpt: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..model.weights import WEIGHTS

    f = Path(ckpt) / WEIGHTS
    try:
        return load_file(str(f))
    except (FileNotFoundError, SafetensorError) as e:
        raise UserError(f"{f}: missing or corrupt weights ({e})") from None


def prune(out_dir: str | os.PathLike, keep_last: int, milestones: set[int],
          milestone_optimizer: bool = False) -> list[Path]:
    """Delete checkpoints that are neither among the newest `keep_last` nor milestones; return them.
    Milestones older than the newest `keep_last` also lose their optimizer state unless
    `milestone_optimizer` (it is 2x the weights; the newest checkpoints always keep theirs)."""
    found = list_checkpoints(out_dir)
    newest = {s for s, _ in found[-keep_last:]} if keep_last > 0 else set()
    removed = []
    for s, p in found:
        if s in newest:
            continue
        if s not in milestones:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif not milestone_optimizer:
            (p / OPTIMIZER).unlink(missing_ok=True)
    return removed


# ---------------------------------------------------------------- state across wrappers (DDP, FSDP2)
def full_states(raw, model, opt, parallel: str, info):
    """(weights holder for `save_weights`, optimizer state by name) on rank 0, (None, None) elsewhere;
    collective for FSDP (the full state dicts are gathered on rank 0, on the CPU)."""
    if parallel == "fsdp" and info.enabled:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        from ..model.weights import WeightsView

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, opt, options=opts)
        if not info.is_main:
            return None, None
        return WeightsView(raw.cfg, msd), {"state": osd["state"], "param_groups": osd["param_groups"]}
    if not info.is_main:
        return None, None
    return raw, optimizer_state_by_name(raw, opt)


def load_optimizer(raw, model, opt, osd: dict, parallel: str, source: str) -> None:
    """Restore optimizer state saved by name (into FSDP2's sharded state, or by name elsewhere)."""
    if parallel == "fsdp" and torch.distributed.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))
        return
    load_optimizer_state_by_name(raw, opt, osd, source)
