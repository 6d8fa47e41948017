"""LoRA adapters on our `Transformer`, through `peft`.

`apply_lora` injects adapters into the named linear layers in place: the model stays a
`Transformer` (same forward, same loss, same `generate`), its own weights are frozen and only
the adapters require grad. Under peft's naming an adapted layer `X` holds `X.base_layer.weight`
(W), `X.lora_A.default.weight` (A, r x in) and `X.lora_B.default.weight` (B, out x r).

`merge_state_dict` folds W + (alpha / r) * (B @ A) into plain `Transformer` names, the same
computation as peft's `merge_and_unload`, from a state dict alone: so it also works on the
full state dict an FSDP run gathers, and it never modifies the model being trained.

Saved adapters are peft's own format: `adapter_model.safetensors` + `adapter_config.json` in a
directory, keyed as `PeftModel.save_pretrained` keys a transformers `LlamaForCausalLM`
(`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, target modules q_proj ...
down_proj; our names are translated through `model.hf.name_map`, the one name table). So
`PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(BASE_HF_DIR), ADAPTER_DIR)` applies
them with plain peft + transformers, and `save_peft_adapters` / `load_peft_adapters` read them
back into our `Transformer` (peft's `get_peft_model_state_dict` / `set_peft_model_state_dict`).
Adapters never touch the embeddings or the LM head (`ALL_LINEAR`), so the 50,257- vs 50,304-row
vocabulary of a base does not enter the adapter file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: `dmas-repro --help` stays fast
    import torch
    from peft import LoraConfig

    from .transformer import Transformer

ADAPTER = "default"
# Every linear projection of every block (attention q/k/v/o and the SwiGLU gate/up/down).
ALL_LINEAR = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
_A, _B, _BASE = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight", ".base_layer.weight"
# peft's file names (peft.utils.SAFETENSORS_WEIGHTS_NAME / CONFIG_NAME; a test checks them) and the
# prefix `PeftModel.save_pretrained` gives every key (PeftModel.base_model = LoraModel, .model = the model).
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ALL_LINEAR

    def __post_init__(self):
        if self.r <= 0:
            raise UserError(f"lora_r must be positive, not {self.r}")
        if self.alpha <= 0:
            raise UserError(f"lora_alpha must be positive, not {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"lora_dropout must be in [0, 1), not {self.dropout}")
        unknown = sorted(set(self.targets) - set(ALL_LINEAR))
        if unknown or not self.targets:
            raise UserError(f"lora_targets {','.join(self.targets)}: choose from {','.join(ALL_LINEAR)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @classmethod
    def parse_targets(cls, s: str) -> tuple[str, ...]:
        return tuple(t.strip() for t in s.split(",") if t.strip())


def apply_lora(model: Transformer, spec: LoraSpec):
    """Freeze `model` and add adapters in place (B = 0: outputs unchanged). Returns peft's wrapper;
    `model` itself is the adapted module to train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                     target_modules=list(spec.targets), bias="none")
    return get_peft_model(model, cfg, adapter_name=ADAPTER)


def hf_module_names() -> dict[str, str]:
    """Our adapted layer name -> transformers' (wq -> q_proj, ..., w_down -> down_proj), from `hf.name_map`."""
    from .hf import name_map

    return {ours.split(".")[-2]: theirs.split(".")[-2] for ours, theirs in name_map(1).items()
            if ours.startswith("layers.0.") and ours.split(".")[-2] in ALL_LINEAR}


def _file_owners(n_layer: int) -> dict[str, str]:
    """Our adapted module (layers.0.attn.wq) -> its key stem in a peft file of the HF model
    (base_model.model.model.layers.0.self_attn.q_proj). Only linear projections: never the vocab rows."""
    from .hf import VOCAB_ROWS, name_map

    return {ours.removesuffix(".weight"): PEFT_PREFIX + theirs.removesuffix(".weight")
            for ours, theirs in name_map(n_layer).items()
            if ours not in VOCAB_ROWS and ours.split(".")[-2] in ALL_LINEAR}


def peft_config(spec: LoraSpec, base_model: str | None = None, revision: str | None = None) -> LoraConfig:
    """The `LoraConfig` of these adapters on a transformers `LlamaForCausalLM` (HF module names)."""
    from peft import LoraConfig

    hf_names = hf_module_names()
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                      target_modules=sorted(hf_names[t] for t in spec.targets), task_type="CAUSAL_LM",
                      base_model_name_or_path=base_model, revision=revision, inference_mode=True)


def save_peft_adapters(model: torch.nn.Module, sd: dict[str, torch.Tensor], spec: LoraSpec, n_layer: int,
                       out_dir: str | Path, *, base_model: str | None = None, revision: str | None = None,
                       metadata: dict[str, str] | None = None) -> None:
    """Write the adapters of `sd` (a state dict of `model`, adapted by `apply_lora`; e.g. the full
    state dict an FSDP run gathers on rank 0) into `out_dir` in peft's format for the HF model.
    `metadata` goes into the safetensors header next to peft's {"format": "pt"}."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    adapters = get_peft_model_state_dict(model, state_dict=sd, adapter_name=ADAPTER, save_embedding_layers=False)
    owners = _file_owners(n_layer)
    out = {}
    for k, v in adapters.items():
        owner, sep, rest = k.partition(".lora_")
        if not sep or owner not in owners:  # (LoraSpec admits linear projections only)
            raise ValueError(f"adapter tensor {k!r} is not on a linear projection of the model")
        out[f"{owners[owner]}.lora_{rest}"] = v.detach().to("cpu").contiguous()
    out_dir = Path(out_dir)
    save_file(out, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt", **(metadata or {})})
    peft_config(spec, base_model, revision).save_pretrained(str(out_dir))


def _check_config(cfg, spec: LoraSpec, source: str) -> None:
    hf_names = hf_module_names()
    saved = {"lora_r": cfg.r, "lora_alpha": float(cfg.lora_alpha),
             "lora_targets": sorted(cfg.target_modules or ())}
    want = {"lora_r": spec.r, "lora_alpha": float(spec.alpha),
            "lora_targets": sorted(hf_names[t] for t in spec.targets)}
    diff = [f"{k} {saved[k]} saved, {want[k]} now" for k in want if saved[k] != want[k]]
    if getattr(cfg, "peft_type", None) != "LORA" or diff:
        raise UserError(f"{source}: its adapters do not match this run's LoRA config ("
                        + ("; ".join(diff) or f"peft_type {cfg.peft_type}, not LORA")
                        + "); lora_r, lora_alpha and lora_targets must be unchanged to resume")


def read_peft_metadata(adapter_dir: str | Path) -> dict[str, str]:
    """The safetensors header metadata of a saved adapter file."""
    from safetensors import SafetensorError, safe_open

    f = Path(adapter_dir) / ADAPTER_WEIGHTS
    try:
        with safe_open(str(f), framework="pt") as st:
            return dict(st.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise UserError(f"{f}: unreadable adapters ({e})") from None


def load_peft_adapters(model: torch.nn.Module, adapter_dir: str | Path, spec: LoraSpec, device=None) -> None:
    """Read adapters saved by `save_peft_adapters` (or by peft for the HF model) into `model`, a
    `Transformer` adapted by `apply_lora` with the same r, alpha and targets."""
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    adapter_dir = Path(adapter_dir)
    try:
        cfg = LoraConfig.from_pretrained(str(adapter_dir))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{adapter_dir / ADAPTER_CONFIG}: unreadable peft adapter config ({e})") from None
    _check_config(cfg, spec, str(adapter_dir))
    try:
        saved = load_peft_weights(str(adapter_dir), device=str(device or "cpu"))
    except Exception as e:  # safetensors' and peft's own errors: a damaged or missing file
        raise UserError(f"{adapter_dir / ADAPTER_WEIGHTS}: unreadable adapters ({type(e).__name__}: {e})") from None
    ours = {v: k for k, v in _file_owners(model.cfg.n_layer).items()}
    renamed = {}
    for k, v in saved.items():
        owner, sep, rest = k.partition(".lora_")
        if not sep or owner not in ours:
            raise UserError(f"{adapter_dir / ADAPTER_WEIGHTS}: unexpected tensor {k!r} for this model's adapters")
        renamed[f"{ours[owner]}.lora_{rest}"] = v
    _set_adapters(model, renamed, str(adapter_dir / ADAPTER_WEIGHTS))


def load_legacy_adapters(model: torch.nn.Module, adapters: dict[str, torch.Tensor], meta: dict, spec: LoraSpec,
                         source: str) -> None:
    """Adapters written before the peft format (`lora_adapters.safetensors`: the adapted model's own
    state-dict names, `...wq.lora_A.default.weight`; `lora.json`: r, alpha, targets, ...)."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(peft_type="LORA", r=meta.get("r"), lora_alpha=meta.get("alpha"),
                          target_modules=[hf_module_names().get(t, t) for t in meta.get("targets", ())])
    _check_config(cfg, spec, source)
    _set_adapters(model, {k.replace(f".{ADAPTER}.", "."): v for k, v in adapters.items()}, source)


def _set_adapters(model: torch.nn.Module, adapters: dict[str, torch.Tensor], source: str) -> None:
    """peft's `set_peft_model_state_dict` (it puts the adapter name back), every adapter tensor required."""
    from peft import set_peft_model_state_dict

    own = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    want = {k.replace(".weight", f".{ADAPTER}.weight"): v for k, v in adapters.items()}
    if set(own) != set(want) or any(own[k].shape != want[k].shape for k in own):
        raise UserError(f"{source}: its adapters do not match this run's LoRA config ({len(adapters)} tensors "
                        f"saved, {len(own)} expected; lora_r and lora_targets must be unchanged to resume)")
    result = set_peft_model_state_dict(model, adapters, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise UserError(f"{source}: adapters not loaded (missing {missing[:3]}, "
                        f"unexpected {result.unexpected_keys[:3]})")


def is_adapted(sd_or_model) -> bool:
    keys = sd_or_model.state_dict().keys() if hasattr(sd_or_model, "state_dict") else sd_or_model.keys()
    return any(k.endswith(_A) for k in keys)


def merge_state_dict(sd: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Plain `Transformer` names; every adapted weight replaced by W + scaling * (B @ A)."""
    import torch

    out = {}
    with torch.no_grad():
        for name, t in sd.items():
            if ".lora_" in name:
                continue
            if name.endswith(_BASE):
                owner = name[: -len(_BASE)]
                a, b = sd[owner + _A], sd[owner + _B]
                delta = (b.to(a.device) @ a) * scaling
                t = t + delta.to(t.dtype)
                name = owner + ".weight"
            elif ".base_layer." in name:  # (no biases in this architecture, kept for completeness)
                name = name.replace(".base_layer.", ".")
            out[name] = t
    return out


def merged_model(model: torch.nn.Module, scaling: float) -> Transformer:
    """A new plain `Transformer` with the adapters folded in; `model` is left as it is."""
    import torch

    from .transformer import Transformer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, Transformer):
        raise TypeError(f"expected a (LoRA-adapted) Transformer, got {type(base).__name__}")
    sd = merge_state_dict(base.state_dict(), scaling)
    with torch.device("meta"):
        plain = Transformer(base.cfg)
    plain.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True, assign=True)
    plain.ce_chunk_tokens = base.ce_chunk_tokens
    return plain.eval()
