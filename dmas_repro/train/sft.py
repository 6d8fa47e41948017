"""Instruction tuning (the paper's post-training stage): `dmas-repro sft` and the `sft` stage of
`dmas-repro train`.

Examples are formatted with `dmas_repro.model.chat_format.chat_prompt` (Vicuna 1.1), followed by
` {output}<|endoftext|>`; the loss counts those answer tokens only. The workload runs on the shared
training loop (`dmas_repro.train.loop`); its checkpoints hold merged weights, so every one loads as a
plain model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core import config as C
from ..core.errors import UserError
from ..data.sft_records import ALPACA_CLEANED, BUNDLED  # (neither module imports torch at import time)
from ..model.chat_format import answer_text, chat_prompt
from ..model.lora import ALL_LINEAR, LoraSpec
from . import distributed as D
from . import layout

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- configuration
@dataclass
class SFTConfig:
    """What the SFT stage adds to the training loop's config (`TrainConfig`: lr, micro_batch,
    log/val/checkpoint intervals, device, dtype, ...). Both take `key=value` overrides."""

    data: str = "bundled"  # bundled | a hub dataset id (yahma/alpaca-cleaned) | a .json/.jsonl file
    data_revision: str = ""  # hub dataset revision
    val_size: int = 100  # held-out examples (a seeded split): the validation set, all of it at every evaluation
    max_len: int = 0  # tokens per example (prompt + answer + <|endoftext|>); 0: the base's context length
    overlong: str = "truncate"  # longer examples: truncate (cut the answer's end) | drop
    group_by_length: bool = True  # micro-batches of similar-length examples (less padding), in random order
    method: str = "lora"  # lora | full (full fine-tuning)
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: str = ",".join(ALL_LINEAR)
    batch_size: int = 64  # examples per step, all ranks together (= micro x accum x world; micro: the largest
    # not above the loop's micro_batch that divides batch_size / world)
    epochs: float = 3.0  # sets total_steps (the LR schedule) when total_steps is 0

    def lora_spec(self) -> LoraSpec:
        return LoraSpec(self.lora_r, self.lora_alpha, self.lora_dropout, LoraSpec.parse_targets(self.lora_targets))

    def validate(self) -> None:
        if self.method not in ("lora", "full"):
            raise UserError(f"method {self.method!r}: choose lora or full")
        if self.overlong not in ("truncate", "drop"):
            raise UserError(f"overlong {self.overlong!r}: choose truncate or drop")
        if self.batch_size <= 0 or self.val_size <= 0 or self.epochs <= 0 or self.max_len < 0:
            raise UserError("batch_size, val_size and epochs must be positive, max_len >= 0")
        if self.method == "lora":
            self.lora_spec()

    def to_dict(self) -> dict:
        return asdict(self)


# The paper did not publish its LoRA settings (../shared/PAPER.md): these are this project's
# choice. `paper`: Alpaca-cleaned, LoRA r 16 / alpha 32 / dropout 0.05 on every linear layer,
# 64 examples per step, 3 epochs, cosine LR 2e-4 -> 2e-5 after 60 warmup steps, no weight decay.
# `tiny`: the embedded pipeline's stage, about a minute on 2 CPU cores (bundled 999-record sample).
# It fine-tunes all weights: its 128-step base is close to a unigram model, and LoRA (frozen
# embeddings and LM head) moved the SFT validation loss by 0.015 in 20 steps where full
# fine-tuning moved it by 0.34 (README, "Instruction tuning").
SFT_PRESETS: dict[str, tuple[dict, dict]] = {
    "paper": (
        dict(data=ALPACA_CLEANED, val_size=500, batch_size=64, epochs=3.0),
        dict(lr=2e-4, min_lr=2e-5, warmup_steps=60, total_steps=0, micro_batch=16, weight_decay=0.0,
             log_every=10, val_every=200, ckpt_every=500, keep_last=2, milestones="none",
             sample_every=200, sample_count=1, sample_length=170),
    ),
    "tiny": (
        dict(data=BUNDLED, val_size=64, batch_size=8, epochs=0.4, method="full"),
        dict(lr=2e-3, min_lr=2e-4, warmup_steps=5, total_steps=0, micro_batch=8, weight_decay=0.0,
             log_every=5, val_every=20, ckpt_every=0, keep_last=1, milestones="none",
             sample_every=0, sample_count=1, sample_length=90),
    ),
}
SAMPLE_INSTRUCTION = "Give three tips for staying healthy."  # its chat prompt is 42 tokens (sample_length above)
# Loop keys that the SFT stage sets itself (from the base model and the SFT keys above).
_LOOP_KEYS_SET_BY_SFT = {
    "model": "the model comes from --base", "model_overrides": "the model comes from --base",
    "init_from": "the weights come from --base", "data_dir": "use data=...", "data_source": "use data=...",
    "prepare_data_if_missing": "use data=...", "shuffle": "SFT batches are always shuffled",
    "seq_len": "use max_len=...", "global_batch_tokens": "use batch_size=... (examples per step)",
    "val_tokens": "the validation set is the val_size held-out examples",
}


def load_sft_config(preset: str, overrides: list[str] | tuple = (), **fields):
    """(SFTConfig, TrainConfig): preset, then `key=value` overrides, then keyword fields (None
    skipped). A key goes to SFTConfig if it is one of its fields, else to the loop's TrainConfig."""
    from .config import TrainConfig, _apply

    if preset not in SFT_PRESETS:
        raise UserError(f"unknown SFT preset {preset!r}; choose one of {sorted(SFT_PRESETS)}")
    sft_kw, loop_kw = SFT_PRESETS[preset]
    sc = SFTConfig(**sft_kw)
    tcfg = TrainConfig(**{**loop_kw, "sample_prompt": chat_prompt(SAMPLE_INSTRUCTION)})
    sft_hints = C.hints(SFTConfig)
    items = [(*C.parse_override(it), "override") for it in overrides]
    items += [(k, v, "argument") for k, v in fields.items() if v is not None]
    for k, v, origin in items:
        if k in sft_hints:
            setattr(sc, k, C.coerce(k, v, sft_hints[k]))
        elif k in _LOOP_KEYS_SET_BY_SFT or k.startswith("model."):
            reason = _LOOP_KEYS_SET_BY_SFT.get(k, "the model comes from --base")
            raise UserError(f"{origin}: {k} cannot be set for the SFT stage ({reason})")
        else:
            _apply(tcfg, k, v, origin)
    sc.validate()
    return sc, tcfg


# ---------------------------------------------------------------- data
def prepare_data(sc: SFTConfig, max_len: int, seed: int, cache_dir: str | None = None) -> dict:
    """Load, split and tokenize the instruction data: {"train", "val": TokenizedSet, "stats"}."""
    from ..data import sft_records as sft_data
    from ..model.tokenizer import gpt2

    records = sft_data.load_records(sc.data, revision=sc.data_revision or None, cache_dir=cache_dir)
    train_r, val_r = sft_data.split_records(records, sc.val_size, seed)
    tok = gpt2()
    sets = {}
    for name, rs in (("train", train_r), ("val", val_r)):
        sets[name] = sft_data.tokenize(tok, [chat_prompt(r.instruction, r.input) for r in rs],
                                       [answer_text(r.output) for r in rs], max_len, sc.overlong)
    sets["stats"] = {"records": len(records), "max_len": max_len, "overlong": sc.overlong,
                     **{f"{k}_{s}": v for k in ("train", "val") for s, v in sets[k].stats().items()}}
    if len(sets["val"]) == 0:
        raise UserError(f"{sc.data}: no validation example left after tokenization (all over {max_len} tokens)")
    return sets


# ---------------------------------------------------------------- the workload for the training loop
def base_fingerprint(model) -> str:
    """A cheap hash of a model's weights (names, shapes, a strided sample of values): a LoRA resume
    checks that its base is the one the adapters were trained on."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


SFT_CONFIG = "sft_config.json"
# A LoRA checkpoint's adapters: peft's adapter_model.safetensors + adapter_config.json (`model.lora`),
# the base's fingerprint in the safetensors header under this key.
FINGERPRINT_KEY = "dmas_repro.base_fingerprint"
# Before the peft format: A/B under our module names (`...wq.lora_A.default.weight`), and r, alpha,
# dropout, targets, scaling and the base fingerprint in lora.json. Still resumed (`_load_legacy`).
LEGACY_LORA_ADAPTERS = "lora_adapters.safetensors"
LEGACY_LORA_CONFIG = "lora.json"


def peft_base_ref(base: str, base_dir: Path, revision: str | None) -> tuple[str | None, str | None]:
    """(base_model_name_or_path, revision) for adapter_config.json: the hub id as given, or an HF
    directory's path; None for our own checkpoint files (apply the adapters to their `export-hf`)."""
    from ..model.hf import is_hf_dir

    if not Path(base).expanduser().exists():
        return base, revision
    return (str(Path(base_dir).resolve()), None) if is_hf_dir(base_dir) else (None, None)


def make_workload(sc: SFTConfig, base_dir: Path, sets: dict, fingerprint_box: dict,
                  base_ref: tuple[str | None, str | None] = (None, None)):
    """A `loop.Workload` builder for `loop.run`: the base model (with LoRA adapters, or all of it
    trainable), SFT batches, the masked loss, the answer-token validation loss, and checkpoints
    whose model files hold the merged weights (every SFT checkpoint loads as a plain model) and,
    for LoRA, the adapters in peft's format for the base's HF export."""
    import torch

    from ..data import sft_records as sft_data
    from ..model import lora
    from ..model import weights as checkpoint
    from ..model.weights import WeightsView
    from .workload import Workload, default_load_weights

    spec = sc.lora_spec() if sc.method == "lora" else None

    def build(ctx) -> Workload:
        cfg, info = ctx.cfg, ctx.dist
        torch.manual_seed(cfg.seed)
        model = checkpoint.load_any(base_dir, device=ctx.device, dtype=torch.float32)
        model.ce_chunk_tokens = cfg.ce_chunk_tokens
        fingerprint_box["base"] = base_fingerprint(model)
        flops = model.flops_per_token(sc.max_len)
        if spec is not None:
            lora.apply_lora(model, spec)
            # frozen weights get no weight gradients: forward 2N + input gradients 2N (+ attention)
            n = model.num_params() - model.tok_embeddings.weight.numel()
            flops = flops - 2 * (n - sum(p.numel() for p in model.parameters() if p.requires_grad))
        batches = sft_data.SFTBatches(sets["train"], ctx.micro_batch, cfg.seed, info.rank, info.world_size,
                                      sc.group_by_length)
        ex_per_step = sc.batch_size
        tokens_per_step = round(sets["stats"]["train_tokens"] / len(sets["train"]) * ex_per_step)

        @torch.no_grad()
        def evaluate(m, lctx) -> dict:
            total = torch.zeros(2, device=lctx.device)  # (sum of answer-token losses, answer tokens)
            for x, y, counts in sft_data.eval_batches(sets["val"], lctx.micro_batch, info.rank, info.world_size):
                x, y = x.to(lctx.device), y.to(lctx.device)
                n_tok = (y != sft_data.IGNORE).sum()
                with lctx.autocast():
                    loss = m(x, y).float()
                if counts:
                    total += torch.stack([loss * n_tok, n_tok.float()])
            total = D.all_reduce_mean(total, info)
            return {"val_loss": (total[0] / total[1].clamp(min=1)).item(),
                    "val_loss_tokens": sets["stats"]["val_answer_tokens"]}

        def save_weights(view, d: Path) -> None:
            sd = view.state_dict()
            if spec is None:
                checkpoint.save_model_files(WeightsView(view.cfg, sd), d)
                return
            merged = lora.merge_state_dict(sd, spec.scaling)
            checkpoint.save_model_files(WeightsView(view.cfg, {k: v.contiguous() for k, v in merged.items()}), d)
            # `model` (this rank's, adapted by apply_lora) holds peft's config; `sd` the full tensors
            lora.save_peft_adapters(model, sd, spec, view.cfg.n_layer, d, base_model=base_ref[0],
                                    revision=base_ref[1], metadata={FINGERPRINT_KEY: fingerprint_box["base"]})
            (d / SFT_CONFIG).write_text(json.dumps(sc.to_dict(), indent=2) + "\n")

        def check_base(ckpt: Path, saved: str | None) -> None:
            if saved != fingerprint_box["base"]:
                raise UserError(f"{ckpt}: its adapters were trained on another base model than {base_dir} "
                                f"(fingerprint {saved} != {fingerprint_box['base']})")

        def load_weights(m, ckpt: Path) -> None:
            if spec is None:
                return default_load_weights(m, ckpt)
            if (ckpt / lora.ADAPTER_WEIGHTS).is_file():
                check_base(ckpt, lora.read_peft_metadata(ckpt).get(FINGERPRINT_KEY))
                return lora.load_peft_adapters(m, ckpt, spec, ctx.device)
            if (ckpt / LEGACY_LORA_ADAPTERS).is_file():
                return _load_legacy(m, ckpt, spec, check_base, ctx.device)
            raise UserError(f"{ckpt}: no LoRA adapters ({lora.ADAPTER_WEIGHTS}); was it a method=full run?")

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return Workload(
            model=model, train_batches=batches, tokens_per_step=tokens_per_step, evaluate=evaluate,
            save_weights=save_weights, load_weights=load_weights, flops_per_token=flops,
            description={"stage": "sft", "method": sc.method, "base": str(base_dir), "trainable_params": trainable,
                         "examples_per_step": ex_per_step, "val_loss_tokens": sets["stats"]["val_answer_tokens"],
                         **sets["stats"]},
        )

    return build


def _load_legacy(m, ckpt: Path, spec, check_base, device) -> None:
    """Resume from a checkpoint written before the peft format (lora_adapters.safetensors + lora.json)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..model import lora

    try:
        meta = json.loads((ckpt / LEGACY_LORA_CONFIG).read_text())
        adapters = load_file(str(ckpt / LEGACY_LORA_ADAPTERS), device=str(device))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise UserError(f"{ckpt}: unreadable LoRA adapters of the earlier format ({e})") from None
    check_base(ckpt, meta.get("base_fingerprint"))
    lora.load_legacy_adapters(m, adapters, meta, spec, str(ckpt / LEGACY_LORA_ADAPTERS))
    log.info(f"{ckpt}: adapters read from the earlier format ({LEGACY_LORA_ADAPTERS}); "
             f"new checkpoints hold peft's {lora.ADAPTER_WEIGHTS}")


def export_adapters(ckpt: Path, out: Path) -> Path:
    """The final checkpoint's adapters (peft's two files) as a directory of their own, RUN/adapter/
    (a rerun that reaches the end again replaces it; anything else there is refused)."""
    import shutil

    from ..core.files import atomic_dir
    from ..model import lora

    files = (lora.ADAPTER_WEIGHTS, lora.ADAPTER_CONFIG)

    def own_output(p: Path) -> bool:
        return {e.name for e in p.iterdir()} <= set(files) and all(e.is_file() for e in p.iterdir())

    with atomic_dir(out, replace=own_output, hint="move it away to let the run export its adapters") as tmp:
        for f in files:
            shutil.copyfile(ckpt / f, tmp / f)
    return out


# ---------------------------------------------------------------- the stage
def run_sft(base: str, out: str | os.PathLike, preset: str = "auto", overrides: list[str] | tuple = (), *,
            device: str | None = None, dtype: str | None = None, max_steps: int | None = None,
            resume: bool = False, restore_optimizer: bool = True, data: str | None = None,
            revision: str | None = None, cache_dir: str | None = None):
    """Instruction-tune `base` into `out` (metrics.jsonl, config.json + sft_config.json,
    checkpoints/, and hf/ = the merged model once the run reaches its last step).
    Returns `loop.RunResult`. Collective under torchrun."""
    from ..core.files import atomic_write_text
    from ..core.runtime import git_commit
    from .config import fit_micro_batch, nearest_multiples
    from .loop import run
    from .pretrain import export_hf

    out = Path(out)
    if layout.newest_checkpoint(out) is not None and not resume:
        raise UserError(f"{out} already holds SFT checkpoints; pass --resume to continue, or choose another --out")
    base_dir = layout.model_dir_of(base, revision=revision, cache_dir=cache_dir)  # (a hub id is downloaded once)
    try:
        base_cfg = layout.read_model_config_of(base_dir)
    except UserError as e:
        raise UserError(f"--base {base}: not usable as a DMaS-LLaMa-Lite model: {e}") from None
    if preset == "auto":
        preset = "paper" if (base_cfg.n_layer, base_cfg.dim) == (36, 2048) else "tiny"
    sc, tcfg = load_sft_config(preset, overrides, device=device, dtype=dtype, max_steps=max_steps, data=data)
    if not restore_optimizer:
        tcfg.restore_optimizer = False
    max_len = sc.max_len or base_cfg.context_length
    if max_len > base_cfg.context_length:
        raise UserError(f"max_len {max_len} exceeds the base model's context {base_cfg.context_length}")
    sc.max_len = max_len
    world = D.world_size()
    if tcfg.micro_batch > 0 and fit_micro_batch(sc.batch_size, world, tcfg.micro_batch) is None:
        lo, hi = nearest_multiples(sc.batch_size, world)
        raise UserError(f"batch_size {sc.batch_size} examples per step does not split over {world} ranks: no "
                        f"micro-batch fits. Nearest valid: batch_size={lo}" + (f" or {hi}" if hi != lo else ""))
    sets = prepare_data(sc, max_len, tcfg.seed, cache_dir)
    st = sets["stats"]
    tcfg.model, tcfg.model_overrides = "paper", base_cfg.to_dict()  # the loop's model = the base's architecture
    tcfg.seq_len, tcfg.global_batch_tokens = max_len, sc.batch_size * max_len
    if not tcfg.total_steps:
        tcfg.total_steps = max(1, math.ceil(sc.epochs * st["train_examples"] / sc.batch_size))
    tcfg.validate(world)
    if D.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / SFT_CONFIG, json.dumps(
            {"base": base, "base_dir": str(base_dir), "preset": preset, "sft": sc.to_dict(), "data": st,
             "git_commit": git_commit()}, indent=2) + "\n")
        log.info(f"sft: base {base_dir} | {sc.method}"
                 + (f" r={sc.lora_r} alpha={sc.lora_alpha} on {sc.lora_targets}" if sc.method == "lora" else "")
                 + f" | data {sc.data}: {st['train_examples']} train / {st['val_examples']} val examples, "
                 f"{st['train_truncated'] + st['val_truncated']} truncated and "
                 f"{st['train_dropped'] + st['val_dropped']} dropped at {max_len} tokens ({sc.overlong}) "
                 f"| {tcfg.total_steps} steps of {sc.batch_size} examples")
    base_ref = peft_base_ref(base, base_dir, revision)
    result = run(tcfg, out, resume=resume, build=make_workload(sc, base_dir, sets, {}, base_ref))
    if result.interrupted or result.checkpoint is None or result.step < tcfg.end_step():
        return result
    if tcfg.export_hf and D.rank() == 0:
        hf_dir = export_hf(result.checkpoint, out / layout.HF)
        log.info(f"sft: merged instruct model exported to {hf_dir}")
        if sc.method == "lora":
            ad = export_adapters(result.checkpoint, out / layout.ADAPTER)
            log.info("sft: LoRA adapters (peft format, for the base's HF export"
                     + (f" {base_ref[0]}" if base_ref[0] else "") + f") exported to {ad}")
    return result


def sft_stage(ctx):
    """The `sft` stage of `dmas-repro train`: tune the run's newest checkpoint into RUN/sft/."""
    preset = ctx.preset if ctx.preset in SFT_PRESETS else "auto"
    run_dir = Path(ctx.run_dir)
    if layout.newest_checkpoint(run_dir) is None and not (run_dir / layout.HF).is_dir():
        raise UserError(f"{run_dir}: no pretraining checkpoint to tune (run the pretrain stage first, "
                        "or pass --out RUN_DIR of a finished run)")
    return run_sft(str(ctx.run_dir), Path(ctx.run_dir) / layout.SFT, preset, ctx.overrides, device=ctx.device,
                   dtype=ctx.dtype, max_steps=ctx.max_steps, resume=ctx.resume,
                   restore_optimizer=ctx.restore_optimizer)
