"""LoRA adapters on our `Transformer`, through `peft`.

`apply_lora` injects adapters into the named linear layers in place: the model stays a
`Transformer` (same forward, same loss, same `generate`), its own weights are frozen and only
the adapters require grad. Under peft's naming an adapted layer `X` holds `X.base_layer.weight`
(W), `X.lora_A.default.weight` (A, r x in) and `X.lora_B.default.weight` (B, out x r).

`merge_state_dict` folds W + (alpha / r) * (B @ A) into plain `Transformer` names, the same
computation as peft's `merge_and_unload`, from a state dict alone: so it also works on the
full state dict an FSDP run gathers, and it never modifies the model being trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: `dmas-repro --help` stays fast
    import torch

    from .transformer import Transformer

ADAPTER = "default"
# Every linear projection of every block (attention q/k/v/o and the SwiGLU gate/up/down).
ALL_LINEAR = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
_A, _B, _BASE = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight", ".base_layer.weight"


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


def is_adapted(sd_or_model) -> bool:
    keys = sd_or_model.state_dict().keys() if hasattr(sd_or_model, "state_dict") else sd_or_model.keys()
    return any(k.endswith(_A) for k in keys)


def adapter_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors (A and B of every adapted layer) of a state dict."""
    return {k: v for k, v in sd.items() if ".lora_" in k}


def load_adapters(model: torch.nn.Module, adapters: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved adapter tensors into an adapted model (same r and targets required)."""
    own = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    if set(own) != set(adapters) or any(own[k].shape != adapters[k].shape for k in own):
        raise UserError(f"{source}: its adapters do not match this run's LoRA config "
                        f"({len(adapters)} tensors saved, {len(own)} expected; lora_r and lora_targets "
                        "must be unchanged to resume)")
    model.load_state_dict(adapters, strict=False)


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
