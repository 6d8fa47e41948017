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
    """Load a model saved by `save_model_files` (a training checkpoint or an import-hf output)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_model_config(path)
    f = path / WEIGHTS
    try:
        sd = load_file(str(f), device=str(device))
    except FileNotFoundError:
        raise UserError(f"{f}: missing") from None
    except SafetensorError as e:
        raise UserError(f"{f}: corrupt or truncated safetensors file ({e})") from None
    with torch.device("meta"):
        model = Transformer(cfg)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{f}: weights do not match {MODEL_CONFIG} ({first})") from None
    model = model.to(device)
    return model.to(dtype) if dtype is not None else model


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
