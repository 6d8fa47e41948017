"""Our own model files: `model.safetensors` (our parameter names, full padded vocab) and
`model_config.json`. A training checkpoint directory holds these plus the trainer's state
(written by `dmas_repro.train.checkpointer`), so every checkpoint is also a loadable model directory.
`load_any` reads either these or a Hugging Face directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..core.errors import UserError
from .transformer import ModelConfig, Transformer

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"


class WeightsView:
    """Looks like a model to `save_model_files`: a config and a state dict (e.g. the full state
    dict an FSDP run gathers on rank 0, or merged LoRA weights)."""

    def __init__(self, cfg: ModelConfig, sd: dict):
        self.cfg, self._sd = cfg, sd

    def state_dict(self) -> dict:
        return self._sd


def save_model_files(model: Transformer | WeightsView, out_dir: str | os.PathLike) -> None:
    """Write weights and config into an existing directory (callers make it atomic)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    (out_dir / MODEL_CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")


def is_model_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / WEIGHTS).is_file() and (p / MODEL_CONFIG).is_file()


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    f = Path(path) / MODEL_CONFIG
    if not f.is_file():
        raise UserError(f"{f}: missing (not a dmas-repro checkpoint directory)")
    try:
        return ModelConfig.from_dict(json.loads(f.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: not valid JSON ({e})") from None


def load_model(path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None) -> Transformer:
    """Load a model saved by `save_model_files` (a training checkpoint or an import-hf output).

    The parameters are allocated once, in `dtype` on `device`, and filled by reading the file into
    them (`safetensors_io`): peak memory is the model plus at most one tensor."""
    from .hf import empty_model
    from .safetensors_io import SafetensorsReader

    path = Path(path)
    cfg = read_model_config(path)
    f = path / WEIGHTS
    if not f.is_file():
        raise UserError(f"{f}: missing")
    model = empty_model(cfg, dtype, device)
    params = dict(model.named_parameters())
    with SafetensorsReader(f) as st:
        names = st.keys()
        unexpected = sorted(set(names) - set(params))
        missing = sorted(set(params) - set(names))
        if unexpected or missing:
            what = (f"missing {missing[:3]}" if missing else "") + ("; " if missing and unexpected else "") + (
                f"unexpected {unexpected[:3]}" if unexpected else "")
            raise UserError(f"{f}: weights do not match {MODEL_CONFIG} ({what})")
        for name in names:
            if st.entries[name].shape != tuple(params[name].shape):
                raise UserError(f"{f}: weights do not match {MODEL_CONFIG} (tensor {name} has shape "
                                f"{list(st.entries[name].shape)}, the config gives {list(params[name].shape)})")
            st.read_into(name, params[name])
    return model


def export_hf(src: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype | None = torch.float32,
              overwrite: bool = False) -> Path:
    """`hf.save_hf(load_model(src), ...)` without loading the model: our model files (a training
    checkpoint or an import-hf output) converted to an HF directory one tensor at a time (renamed,
    vocab rows sliced, cast), so memory stays at one tensor whatever the model's size. The files are
    byte for byte those `hf.save_hf` writes; `overwrite` as there."""
    from . import hf
    from .safetensors_io import SafetensorsReader
    from .transformer import GPT2_VOCAB

    src = Path(src)
    cfg = read_model_config(src)
    names = hf.name_map(cfg.n_layer)
    with SafetensorsReader(src / WEIGHTS) as st:
        if set(st.keys()) != set(names):
            raise UserError(f"{src / WEIGHTS}: tensors do not match the model config "
                            f"({len(st.keys())} tensors, the config has {len(names)})")
        ours_of = {v: k for k, v in names.items()}
        shapes = {}
        for ours, theirs in names.items():
            shape = st.entries[ours].shape
            shapes[theirs] = (min(shape[0], GPT2_VOCAB), *shape[1:]) if ours in hf.VOCAB_ROWS else shape
        out_dtype = dtype or st.entries[next(iter(names))].dtype

        def tensor(name):
            t = st.read(ours_of[name])[: shapes[name][0]] if ours_of[name] in hf.VOCAB_ROWS else st.read(ours_of[name])
            return t.to(out_dtype).contiguous()

        return hf.write_hf_dir(cfg, shapes, out_dtype, tensor, out_dir, overwrite=overwrite)


def _is_hf_config(f: Path) -> bool:
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError):
        return True  # not ours to judge: the HF reader names what is wrong with it
    return not isinstance(d, dict) or any(k in d for k in ("model_type", "architectures", "hidden_size"))


def load_any(path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None) -> Transformer:
    """A model from either our checkpoint directory or a Hugging Face directory."""
    from . import hf

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if (p / MODEL_CONFIG).is_file():
        return load_model(p, device, dtype)
    if (p / "config.json").is_file():
        if not _is_hf_config(p / "config.json"):
            raise UserError(f"{p}: its config.json is not a Hugging Face model config (no model_type, "
                            "architectures or hidden_size): a training run directory? Pass one of its checkpoints "
                            "(checkpoints/step_*) or its hf/ export")
        return hf.from_hf(p, dtype=dtype, device=device)
    raise UserError(f"{p}: neither a dmas-repro checkpoint ({MODEL_CONFIG}) nor a Hugging Face directory")
