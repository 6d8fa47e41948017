"""The checkpointer: full training state on disk, RUN/checkpoints/step_XXXXXXXX/ (names in `layout`).

    model.safetensors, model_config.json   the weights (`model.weights.save_model_files`): every training
                                           checkpoint is also a model directory for `model.weights.load_model`
    optimizer.safetensors                  AdamW state keyed by parameter name (portable across DDP / FSDP /
                                           world sizes): its tensors, and in the header's JSON the param
                                           groups and non-tensor values; absent when the run saves no optimizer
    rng.safetensors                        torch CPU / CUDA generator states (tensors) and python / numpy
                                           states (JSON in the header), one entry per rank
    config.json                            the resolved training config
    trainer_state.json                     step, tokens, loader position, schedule length, world size,
                                           git commit, elapsed time

Nothing here unpickles: a checkpoint can come from a shared path or from someone else, and a
pickle runs code when loaded. Checkpoints written before this format (`optimizer.pt`, `rng.pt`)
still resume: they are read with `torch.load(weights_only=True)` and an explicit allow-list (the
numpy array type of the numpy RNG state); a file holding anything else is refused with one line.

A checkpoint directory is written under a temporary name, fsynced and renamed (`core.files.atomic_dir`),
so a kill at any moment leaves the previous ones intact and never a partial `step_*`; a full disk is
one line (`DiskFull`) and the earlier checkpoints stay. Retention keeps the newest `keep_last` (full
state) plus the milestone steps (weights, trainer state and RNG; their optimizer state only with
`milestone_optimizer`).
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
from ..core.files import DiskFull, atomic_dir, disk_full
from .layout import (
    CKPT_CONFIG,
    LEGACY_OPTIMIZER,
    LEGACY_RNG,
    OPTIMIZER,
    RNG,
    TRAINER_STATE,
    list_checkpoints,
    step_dir,
)

_FORMAT = "dmas-repro/1"


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


# ---------------------------------------------------------------- optimizer and RNG files (no pickle)
def _json(obj, what: str) -> str:
    try:
        return json.dumps(obj, allow_nan=True)
    except TypeError as e:
        raise TypeError(f"{what}: a value that is neither a tensor nor JSON ({e})") from None


def save_optimizer_state(osd: dict, path: str | os.PathLike) -> None:
    """Optimizer state by parameter name (`optimizer_state_by_name`, or FSDP's full state dict) as
    one safetensors file: every tensor under `NAME:KEY`, everything else (param groups, scalars)
    as JSON in the header."""
    from safetensors.torch import save_file

    tensors, state = {}, {}
    for name, entry in osd["state"].items():
        state[name] = {}
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                key = f"{name}:{k}"
                tensors[key] = v.detach().cpu().contiguous()
                state[name][k] = {"tensor": key}
            else:
                state[name][k] = {"value": v}
    meta = {"format": _FORMAT, "state": _json(state, "optimizer state"),
            "param_groups": _json(osd["param_groups"], "optimizer param groups")}
    save_file(tensors, str(path), metadata=meta)


def load_optimizer_file(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as st:
            meta = st.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise UserError(f"{path}: not a dmas-repro optimizer state (header format {meta.get('format')!r})")
            state = {}
            for name, entry in json.loads(meta["state"]).items():
                state[name] = {k: st.get_tensor(v["tensor"]) if "tensor" in v else v["value"]
                               for k, v in entry.items()}
            return {"state": state, "param_groups": json.loads(meta["param_groups"])}
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: unreadable optimizer state ({type(e).__name__}: {e}); resume with "
                        "--no-restore-optimizer, or move this checkpoint directory away to resume from an earlier "
                        "one") from None


def save_rng_states(states: list[dict], path: str | os.PathLike) -> None:
    """One RNG state per rank (`rng_state`): generator states as uint8 tensors, the python and numpy
    Mersenne Twister states as JSON in the header."""
    from safetensors.torch import save_file

    tensors, host = {}, []
    for r, s in enumerate(states):
        version, mt, gauss = s["python"]
        kind, keys, pos, has_gauss, cached = s["numpy"]
        host.append({"python": [version, list(mt), gauss],
                     "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]})
        tensors[f"{r}.torch"] = s["torch"].detach().cpu().clone()  # (clones: ranks may share one state)
        if "cuda" in s:
            tensors[f"{r}.cuda"] = s["cuda"].detach().cpu().clone()
    save_file(tensors, str(path), metadata={"format": _FORMAT, "host": _json(host, "RNG state")})


def load_rng_file(path: Path) -> list[dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as st:
            meta = st.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise UserError(f"{path}: not a dmas-repro RNG state (header format {meta.get('format')!r})")
            names = set(st.keys())
            out = []
            for r, h in enumerate(json.loads(meta["host"])):
                version, mt, gauss = h["python"]
                kind, keys, pos, has_gauss, cached = h["numpy"]
                s = {"python": (int(version), tuple(int(x) for x in mt), gauss),
                     "numpy": (str(kind), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
                     "torch": st.get_tensor(f"{r}.torch")}
                if f"{r}.cuda" in names:
                    s["cuda"] = st.get_tensor(f"{r}.cuda")
                out.append(s)
            return out
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: unreadable RNG state ({type(e).__name__}: {e})") from None


def _numpy_array_globals() -> list:
    """What a pickled numpy array needs and nothing more: its reconstructor, ndarray and dtype."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _load_legacy(path: Path, what: str):
    """An old-format `.pt` file through torch's restricted unpickler (tensors, numbers, strings,
    containers, and numpy arrays): a file holding anything else is refused before it can run."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_array_globals()):
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: not the user's business
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        said = next((ln for ln in lines if ln.startswith(("Unsupported", "Trying to load unsupported"))),
                    next((ln for ln in lines if "WeightsUnpickler error" in ln), type(e).__name__))
        raise UserError(f"{path}: refused: this old-format {what} file holds more than tensors and numbers "
                        f"({said[:120]}), and unpickling it could run code; "
                        + ("resume with --no-restore-optimizer, or " if what == "optimizer" else "")
                        + "move this checkpoint directory away to resume from an earlier one") from None
    except Exception as e:
        raise UserError(f"{path}: unreadable {what} state ({type(e).__name__}: {e})") from None


def _check_legacy_rng(states, path: Path) -> list[dict]:
    ok = isinstance(states, list) and all(
        isinstance(s, dict) and {"python", "numpy", "torch"} <= set(s) and isinstance(s["torch"], torch.Tensor)
        for s in states)
    if not ok:
        raise UserError(f"{path}: unreadable RNG state (not a list of per-rank python/numpy/torch states)")
    return states


def _check_legacy_optimizer(osd, path: Path) -> dict:
    if not (isinstance(osd, dict) and isinstance(osd.get("state"), dict) and isinstance(osd.get("param_groups"), list)):
        raise UserError(f"{path}: unreadable optimizer state (not an optimizer state by parameter name)")
    return osd


# ---------------------------------------------------------------- write / read
def _is_checkpoint(p: Path) -> bool:
    """An earlier (possibly incomplete) checkpoint of this run at the same step: files only, one of
    them ours. The checkpointer may replace it; anything else in its place is refused."""
    from ..model.weights import MODEL_CONFIG, WEIGHTS

    entries = list(p.iterdir())
    return (all(e.is_file() for e in entries)
            and any(e.name in (TRAINER_STATE, WEIGHTS, MODEL_CONFIG, OPTIMIZER, RNG, LEGACY_RNG) for e in entries))


def write(out_dir: str | os.PathLike, step: int, *, save_weights, optimizer_state: dict | None,
          rng_states: list[dict], config: dict, trainer_state: dict) -> Path:
    """Write one checkpoint atomically (rank 0 only). `save_weights(dir)` writes the model files.
    A full disk raises `DiskFull` (the partial copy is removed; earlier checkpoints stay)."""
    final = step_dir(out_dir, step)
    try:
        with atomic_dir(final, replace=_is_checkpoint, hint="move it away to let the run write its checkpoint") as tmp:
            save_weights(tmp)
            if optimizer_state is not None:
                save_optimizer_state(optimizer_state, tmp / OPTIMIZER)
            save_rng_states(rng_states, tmp / RNG)
            (tmp / CKPT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            # written last: a directory holding it has everything else
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
    except DiskFull:
        done = list_checkpoints(out_dir)
        kept = (f"the run's earlier checkpoints are kept (newest: {done[-1][1].name})" if done
                else "the run has no earlier checkpoint")
        raise disk_full(final, kept=kept, then="continue with --resume") from None
    return final


def read_optimizer_state(ckpt: str | os.PathLike) -> dict | None:
    """The optimizer state by parameter name, or None when the checkpoint holds none."""
    ckpt = Path(ckpt)
    if (ckpt / OPTIMIZER).is_file():
        return load_optimizer_file(ckpt / OPTIMIZER)
    if (ckpt / LEGACY_OPTIMIZER).is_file():
        f = ckpt / LEGACY_OPTIMIZER
        return _check_legacy_optimizer(_load_legacy(f, "optimizer"), f)
    return None


def read_rng_states(ckpt: str | os.PathLike) -> list[dict]:
    ckpt = Path(ckpt)
    if (ckpt / RNG).is_file() or not (ckpt / LEGACY_RNG).is_file():
        return load_rng_file(ckpt / RNG)
    f = ckpt / LEGACY_RNG
    return _check_legacy_rng(_load_legacy(f, "RNG"), f)


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
            (p / LEGACY_OPTIMIZER).unlink(missing_ok=True)
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
    if len(osd["param_groups"]) == len(opt.param_groups):  # JSON has lists where the groups hold tuples (betas)
        osd = {**osd, "param_groups": [
            {k: tuple(v) if isinstance(v, list) and isinstance(cur.get(k), tuple) else v for k, v in g.items()}
            for g, cur in zip(osd["param_groups"], opt.param_groups)]}
    if parallel == "fsdp" and torch.distributed.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))
        return
    load_optimizer_state_by_name(raw, opt, osd, source)
