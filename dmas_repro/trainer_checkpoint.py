"""Full training state on disk: OUT/checkpoints/step_XXXXXXXX/.

    model.safetensors, model_config.json   the weights (`checkpoint.save_model_files`): every training
                                           checkpoint is also a model directory for `checkpoint.load_model`
    optimizer.pt                           AdamW state keyed by parameter name (portable across DDP / FSDP /
                                           world sizes); absent when the run saves no optimizer
    rng.pt                                 python / numpy / torch CPU / CUDA RNG states, one entry per rank
    config.json                            the resolved training config
    trainer_state.json                     step, tokens, loader position, schedule length, world size,
                                           git commit, elapsed time

A checkpoint directory is written under a temporary name, fsynced and renamed (`runio.atomic_dir`),
so a kill at any moment leaves the previous ones intact and never a partial `step_*`. Retention
keeps the newest `keep_last` (full state) plus the milestone steps (weights, trainer state and RNG;
their optimizer state only with `milestone_optimizer`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .checkpoint import MODEL_CONFIG, WEIGHTS
from .errors import UserError
from .runio import atomic_dir

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
CONFIG = "config.json"
REQUIRED = (TRAINER_STATE, WEIGHTS, MODEL_CONFIG, RNG, CONFIG)
STEP_RE = re.compile(r"^step_(\d{8})$")
# The steps of the ten released DMaS-LLaMa-Lite checkpoints, out of 43,500.
RELEASED_STEPS = (2700, 3300, 5100, 7500, 15700, 20000, 23900, 35000, 40500, 43500)
RELEASED_TOTAL = 43500


def step_dir(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step_{step:08d}"


def milestone_steps(run_steps: int, released: tuple[int, ...] = RELEASED_STEPS) -> list[int]:
    """The released steps scaled to a run of `run_steps` updates (at least step 1; duplicates merged)."""
    return sorted({max(1, round(s * run_steps / RELEASED_TOTAL)) for s in released})


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, dir) of complete checkpoints, oldest first. Temporary `.step_*.tmp-*` dirs are ignored."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and all((p / f).is_file() for f in REQUIRED):
            found.append((int(m.group(1)), p))
    return sorted(found)


def newest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def read_trainer_state(ckpt: str | os.PathLike) -> dict:
    f = Path(ckpt) / TRAINER_STATE
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise UserError(f"{f}: missing (not a complete training checkpoint)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: corrupt ({e})") from None


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
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
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
