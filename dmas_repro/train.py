"""Pretraining: `TrainConfig`, the training loop, the stage registry and `dmas-repro train`.

One code path for a laptop CPU and a GPU cluster; only the config differs:

    dmas-repro train                                   # embedded default: tiny preset, bundled data
    dmas-repro train --preset paper --out runs/paper   # the published recipe (FineWeb-Edu)
    torchrun --nproc_per_node 8 -m dmas_repro train --preset paper --out runs/paper

Python API (used by the SFT stage and the ablations):

    cfg = load_config("tiny", yaml_path=None, overrides=["max_steps=20", "model.n_layer=2"])
    result = run(cfg, "runs/x")                       # fresh run (refuses a dir with checkpoints)
    result = run(cfg, "runs/x", resume=True)          # newest complete checkpoint in runs/x
    result = run(cfg, "runs/x", build=my_workload)    # another model / batches / loss (e.g. SFT)

`run` trains from the global step reached so far to `cfg.max_steps` (or `cfg.total_steps`),
writing OUT/metrics.jsonl, OUT/config.json and OUT/checkpoints/step_XXXXXXXX/. A workload
(`Workload`) is the model plus its batch source, loss and evaluation; the loop owns the
optimizer, schedule, accumulation, DDP/FSDP, precision, logging, checkpoints and resume.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from . import distributed as D
from . import optim
from . import trainer_checkpoint as tc
from .errors import UserError
from .runio import MetricsWriter, StopSignal, git_commit


# ---------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Everything that defines a training run. Presets: `PRESETS`; overrides: `key=value`."""

    # model
    model: str = "paper"  # a model preset of dmas_repro.model (paper | tiny)
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"n_layer": 2}
    init_from: str = ""  # start from these weights (checkpoint or HF dir) instead of a random init
    # data
    data_dir: str = "data/fineweb-edu"  # written by `dmas-repro prepare-data`
    data_source: str = "fineweb-edu"  # what `prepare_data_if_missing` prepares into data_dir
    prepare_data_if_missing: bool = False
    seq_len: int = 0  # 0: the model's context length
    shuffle: bool = False  # visit windows in a per-epoch seeded permutation (else in order, like the authors)
    # batch: the global batch never changes; grad accumulation = global / (micro x seq_len x world)
    global_batch_tokens: int = 524_288
    micro_batch: int = 32
    # optimizer and schedule (the authors' recipe)
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 715
    total_steps: int = 43_500  # length of the LR schedule
    max_steps: int = 0  # stop after this global step (0: total_steps); never changes the schedule
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    fused_adamw: bool | None = None  # None: fused on CUDA
    # resume
    restore_optimizer: bool = True  # False: resume weights, schedule and data position with a fresh AdamW
    stretch_lr_on_resume: bool = False  # the authors' code: schedule length += resumed step at every resume
    # precision and speed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on GPU, float32 on CPU) | float32 | bfloat16 (autocast)
    compile: bool | None = None  # torch.compile (None: on CUDA)
    tf32: bool = True  # TF32 matmuls on CUDA
    ce_chunk_tokens: int = 0  # >0: chunked cross-entropy (Transformer.ce_chunk_tokens)
    activation_checkpointing: bool = False  # recompute block activations in backward (Transformer attribute)
    parallel: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard per block)
    peak_flops: float = 0.0  # per device, for MFU; 0: known GPU table, else a measured matmul peak
    # loop
    seed: int = 1337
    log_every: int = 1
    val_every: int = 250  # 0: only at the start and the end
    val_batches: int = 20  # micro-batches per rank per validation
    ckpt_every: int = 1000  # 0: only milestones and the end
    keep_last: int = 2  # newest checkpoints kept with their full state (resume points)
    milestone_optimizer: bool = False  # keep optimizer state in older milestone checkpoints too (2x weights)
    milestones: str = "released"  # released (the ten released steps scaled to the run) | none | "100,200,..."
    sample_every: int = 250  # 0: off
    sample_prompt: str = "Hello, I am a language model,"
    sample_count: int = 4
    sample_tokens: int = 32
    hellaswag_every: int = 0  # 0: off; needs hellaswag_path
    hellaswag_path: str = ""  # jsonl of {"query", "choices", "label"}
    hellaswag_items: int = 0  # 0: all items of the file
    export_hf: bool = True  # write OUT/hf from the final checkpoint when the run reaches its end
    tensorboard: bool = False  # OUT/tensorboard (needs the tensorboard package)
    wandb: bool = False  # Weights & Biases (needs wandb)
    wandb_project: str = "dmas-repro"
    progress: bool | None = None  # progress bar (None: when stderr is a terminal)

    # ------------------------------------------------------------ derived values
    def model_config(self):
        from .model import preset

        try:
            return preset(self.model).with_(**self.model_overrides)
        except TypeError as e:
            raise UserError(f"model overrides {self.model_overrides}: {e}") from None

    def resolved_seq_len(self) -> int:
        return self.seq_len or self.model_config().context_length

    def end_step(self) -> int:
        return self.max_steps or self.total_steps

    def grad_accum(self, world_size: int) -> int:
        per_micro = self.micro_batch * self.resolved_seq_len() * world_size
        if per_micro <= 0 or self.global_batch_tokens % per_micro:
            raise UserError(
                f"micro_batch {self.micro_batch} x seq_len {self.resolved_seq_len()} x world size {world_size} "
                f"= {per_micro} tokens does not divide global_batch_tokens {self.global_batch_tokens}")
        return self.global_batch_tokens // per_micro

    def milestone_steps(self) -> set[int]:
        m = self.milestones.strip()
        if m == "released":
            return set(tc.milestone_steps(self.end_step()))
        if m in ("", "none"):
            return set()
        try:
            return {int(s) for s in m.split(",") if s.strip()}
        except ValueError:
            raise UserError(f"milestones must be 'released', 'none' or a comma list of steps, not {m!r}") from None

    def validate(self, world_size: int = 1) -> None:
        """Every config mistake as one clear error, before any work."""
        mc = self.model_config()
        if self.resolved_seq_len() > mc.context_length:
            raise UserError(f"seq_len {self.seq_len} exceeds the model context {mc.context_length}")
        self.grad_accum(world_size)
        if self.end_step() <= 0 or self.total_steps <= 0:
            raise UserError("total_steps and max_steps must be positive")
        if not (0 <= self.min_lr <= self.lr) or self.warmup_steps < 0:
            raise UserError(f"need 0 <= min_lr <= lr and warmup_steps >= 0 (lr {self.lr}, min_lr {self.min_lr})")
        if self.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16"):
            raise UserError(f"dtype {self.dtype!r}: choose auto, float32 or bfloat16")
        if self.parallel not in ("ddp", "fsdp"):
            raise UserError(f"parallel {self.parallel!r}: choose ddp or fsdp")
        if min(self.log_every, self.val_batches, self.micro_batch) <= 0 or self.keep_last < 0:
            raise UserError("log_every, val_batches and micro_batch must be positive, keep_last >= 0")
        if self.hellaswag_every and not self.hellaswag_path:
            raise UserError("hellaswag_every > 0 needs hellaswag_path (a jsonl of query/choices/label)")
        if self.hellaswag_path and not Path(self.hellaswag_path).is_file():
            raise UserError(f"hellaswag_path {self.hellaswag_path}: no such file")
        for flag, pkg in ((self.tensorboard, "tensorboard"), (self.wandb, "wandb")):
            if flag and importlib.util.find_spec(pkg) is None:
                raise UserError(f"{pkg}=true but the {pkg} package is not installed (pip install {pkg})")
        self.milestone_steps()

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    # The published recipe (../shared/PAPER.md): FineWeb-Edu, 524,288 tokens/step, 43,500 steps.
    "paper": {},
    # The embedded default: sized to pretrain in a few minutes on two CPU cores with a clear
    # fall of the validation loss; milestone checkpoints at the released steps scaled to 300.
    "tiny": dict(
        model="tiny", data_dir="data/bundled", data_source="bundled", prepare_data_if_missing=True,
        seq_len=128, shuffle=True, global_batch_tokens=2048, micro_batch=16,
        lr=3e-3, min_lr=3e-4, warmup_steps=20, total_steps=300, log_every=10, val_every=50,
        val_batches=8, ckpt_every=0, keep_last=1, sample_every=100, sample_count=2, sample_tokens=24,
    ),
}


def _field_types() -> dict[str, object]:
    return typing.get_type_hints(TrainConfig)


def _coerce(key: str, value, hint):
    """A YAML/CLI value as the field's type (int, float, bool, str, dict, or None for Optional)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if value is None:
        if base is str:
            return ""
        raise UserError(f"config key {key}: a value is required")
    ok = True
    if base is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            value = value.lower() in ("true", "yes", "1", "on")
        ok = isinstance(value, bool)
    elif base is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(float(value)) if float(value).is_integer() else value
            except ValueError:
                pass
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                ok = False
        ok = ok and isinstance(value, float)
    elif base is str:
        value = str(value)
    elif base is dict:
        ok = isinstance(value, dict)
    if not ok:
        raise UserError(f"config key {key}: {value!r} is not a {getattr(base, '__name__', base)}")
    return value


def _apply(cfg: TrainConfig, key: str, value, origin: str) -> None:
    hints = _field_types()
    if key.startswith("model."):
        from .model import ModelConfig

        sub = key.split(".", 1)[1]
        mhints = typing.get_type_hints(ModelConfig)
        if sub not in mhints:
            raise UserError(f"{origin}: unknown model key {sub!r}; known: {sorted(mhints)}")
        cfg.model_overrides = {**cfg.model_overrides, sub: _coerce(key, value, mhints[sub])}
        return
    if key not in hints:
        close = difflib.get_close_matches(key, list(hints), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(hints))}"
        raise UserError(f"{origin}: unknown config key {key!r}{hint}")
    setattr(cfg, key, _coerce(key, value, hints[key]))


def load_config(preset: str = "tiny", yaml_path: str | None = None, overrides: list[str] | tuple = (),
                **fields) -> TrainConfig:
    """preset -> YAML file -> `key=value` overrides -> keyword fields; unknown keys are errors."""
    import yaml

    if preset not in PRESETS:
        raise UserError(f"unknown training preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = TrainConfig(**PRESETS[preset])
    if yaml_path:
        p = Path(yaml_path)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"{p}: no such config file") from None
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(doc, dict):
            raise UserError(f"{p}: expected a mapping of config keys")
        for k, v in doc.items():
            if k == "model_overrides" and isinstance(v, dict):
                for mk, mv in v.items():
                    _apply(cfg, f"model.{mk}", mv, str(p))
            else:
                _apply(cfg, str(k), v, str(p))
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        _apply(cfg, k.strip(), yaml.safe_load(v) if v.strip() else "", "override")
    for k, v in fields.items():
        if v is not None:
            _apply(cfg, k, v, "argument")
    return cfg


# ---------------------------------------------------------------- workload (what is trained)
class BatchSource(Protocol):
    """This rank's training micro-batches; the loop calls next_batch() grad_accum times per step and
    reads/writes the state at step boundaries (it goes into every checkpoint)."""

    def next_batch(self): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def lm_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over targets != -100; batch = (inputs, targets)."""
    x, y = batch
    return model(x, y)


def batch_to(batch, device: torch.device):
    nb = device.type == "cuda"
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=nb)
    if isinstance(batch, (tuple, list)):
        return type(batch)(batch_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: batch_to(v, device) for k, v in batch.items()}
    return batch


@dataclass
class Workload:
    """What the loop trains. `model` is the raw (unwrapped) module on its device in float32.

    evaluate(model, ctx) -> {"val_loss": float, ...} (called on every rank, collective inside);
    save_weights(model_or_view, dir) writes the model files of a checkpoint; load_weights(model, dir)
    reads them back before wrapping. `flops_per_token` (0: MFU not reported) and
    `tokens_per_step` feed the metrics.
    """

    model: torch.nn.Module
    train_batches: BatchSource
    tokens_per_step: int
    loss_fn: Callable = lm_loss
    evaluate: Callable | None = None
    save_weights: Callable | None = None
    load_weights: Callable | None = None
    flops_per_token: float = 0.0
    generate_samples: bool = True  # in-loop samples / HellaSwag need a Transformer with generate()
    description: dict = field(default_factory=dict)


@dataclass
class LoopContext:
    """What evaluation and workload builders may need from the loop."""

    cfg: TrainConfig
    dist: D.DistInfo
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum: int
    seq_len: int


def default_save_weights(model, out: Path) -> None:
    from .checkpoint import save_model_files

    save_model_files(model, out)


def default_load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    sd = tc.read_weights(ckpt)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{ckpt}: weights do not match this run's model ({first})") from None


def build_pretrain(ctx: LoopContext) -> Workload:
    """The pretraining workload: a `Transformer` on the prepared token shards."""
    from . import data
    from .loader import TokenBatches, eval_batches
    from .model import Transformer

    cfg, info = ctx.cfg, ctx.dist
    data.read_manifest(cfg.data_dir)  # missing data / bad shards: one clear error before any step
    train_tokens = data.open_split(cfg.data_dir, "train")
    val_tokens = data.open_split(cfg.data_dir, "val")
    torch.manual_seed(cfg.seed)
    with torch.device(ctx.device):
        model = Transformer(cfg.model_config())
    if cfg.init_from:
        from .checkpoint import load_any

        src = load_any(cfg.init_from, device=ctx.device, dtype=torch.float32)
        if src.cfg != model.cfg:
            raise UserError(f"init_from {cfg.init_from}: its architecture differs from model {cfg.model}")
        model.load_state_dict(src.state_dict())
        del src
    model.ce_chunk_tokens = cfg.ce_chunk_tokens
    if cfg.activation_checkpointing:
        if not hasattr(model, "activation_checkpointing"):
            raise UserError("activation_checkpointing: this model version does not support it")
        model.activation_checkpointing = True
    batches = TokenBatches(train_tokens, ctx.seq_len, cfg.micro_batch, ctx.grad_accum, info.rank,
                           info.world_size, cfg.shuffle, cfg.seed)

    @torch.no_grad()
    def evaluate(m: torch.nn.Module, lctx: LoopContext) -> dict:
        total = torch.zeros((), device=lctx.device)
        n = 0
        for batch in eval_batches(val_tokens, lctx.seq_len, cfg.micro_batch, cfg.val_batches, info.rank,
                                  info.world_size):
            with lctx.autocast():
                total += lm_loss(m, batch_to(batch, lctx.device)).float()
            n += 1
        return {"val_loss": D.all_reduce_mean(total / n, info).item()}

    return Workload(model=model, train_batches=batches, tokens_per_step=cfg.global_batch_tokens,
                    evaluate=evaluate, flops_per_token=model.flops_per_token(ctx.seq_len),
                    description={"train_tokens": len(train_tokens), "val_tokens": len(val_tokens),
                                 "params": model.num_params()})


# ---------------------------------------------------------------- speed accounting
GPU_PEAK_BF16 = {  # dense bf16 tensor-core FLOP/s per device
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A6000": 154.8e12, "L40S": 362e12,
    "A40": 149.7e12, "4090": 165.2e12, "3090": 71e12, "V100": 125e12, "A10": 125e12, "L4": 121e12,
}


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> tuple[float, str]:
    """Per-device peak FLOP/s for MFU: a known GPU's bf16 tensor peak, else a measured matmul rate."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAK_BF16.items():
            if key in name:
                return (val if dtype == torch.bfloat16 else val / 2), f"table ({name})"
    n = 1024 if device.type == "cpu" else 8192
    dt = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if time.perf_counter() - t0 > 0.3:
            break
    return 2 * n**3 * reps / (time.perf_counter() - t0), f"measured {n}x{n} {dt} matmul on {device}"


# ---------------------------------------------------------------- in-loop extras (authors' style)
def hellaswag_acc_norm(model, items: list[dict], ctx: LoopContext) -> dict:
    """Completion-style HellaSwag as build-nanogpt computes it: the ending with the lowest mean
    token loss wins. Items are strided over ranks; returns acc_norm over all items."""
    from .tokenizer import gpt2

    tok = gpt2()
    info = ctx.dist
    correct = torch.zeros((), device=ctx.device)
    for it in items[info.rank :: info.world_size]:
        ctx_ids = tok.encode(it["query"])
        losses = []
        for choice in it["choices"]:
            end = tok.encode(" " + choice)
            ids = (ctx_ids + end)[-model.cfg.context_length :]
            x = torch.tensor([ids[:-1]], device=ctx.device)
            y = torch.full_like(x, -100)
            n = min(len(end), len(ids) - 1)
            y[0, -n:] = torch.tensor(ids[-n:], device=ctx.device)
            with torch.no_grad(), ctx.autocast():
                losses.append(model(x, y).float())
        correct += float(int(torch.stack(losses).argmin()) == int(it["label"]))
    if info.enabled:
        torch.distributed.all_reduce(correct)
    return {"acc_norm": correct.item() / max(1, len(items)), "n": len(items)}


def read_hellaswag(path: str, limit: int) -> list[dict]:
    items = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    items.append({"query": d["query"], "choices": list(d["choices"]), "label": int(d["label"])})
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise UserError(f"{path}:{i}: expected a JSON object with query, choices, label") from None
    return items[:limit] if limit else items


# ---------------------------------------------------------------- metric sinks
class Sinks:
    """metrics.jsonl (rank 0) plus TensorBoard / W&B mirrors of the numeric fields when enabled."""

    def __init__(self, cfg: TrainConfig, out: Path, enabled: bool, run_name: str):
        self.jsonl = MetricsWriter(out / "metrics.jsonl", enabled=enabled)
        self.tb = self.wb = None
        if enabled and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        if enabled and cfg.wandb:
            import wandb

            self.wb = wandb.init(project=cfg.wandb_project, name=run_name, config=cfg.to_dict(), resume="allow")

    def write(self, kind: str, **fields) -> dict:
        row = self.jsonl.write(kind, **fields)
        step = fields.get("step")
        nums = {f"{kind}/{k}": v for k, v in fields.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None and step is not None:
            for k, v in nums.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None and step is not None and nums:
            self.wb.log(nums, step=step)
        return row

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


# ---------------------------------------------------------------- the loop
@dataclass
class RunResult:
    out_dir: Path
    step: int
    tokens: int
    checkpoint: Path | None  # newest checkpoint written
    interrupted: str | None  # signal name when stopped by SIGINT/SIGTERM
    first_val_loss: float | None
    last_val_loss: float | None
    resumed_from: int | None


class Diverged(UserError):
    """A NaN/inf loss: the run stops; the last good checkpoint stays."""


def _autocast_factory(device: torch.device, dtype_name: str):
    name = {"fp32": "float32", "bf16": "bfloat16"}.get(dtype_name, dtype_name)
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    if name == "float32":
        return (lambda: contextlib.nullcontext()), torch.float32
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), torch.bfloat16


def _print(info: D.DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


def run(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
        build: Callable[[LoopContext], Workload] = build_pretrain, quiet: bool = False) -> RunResult:
    """Train `cfg` into `out_dir` (see the module docstring). Collective under torchrun.

    resume=True continues from the newest complete checkpoint (weights, optimizer unless
    cfg.restore_optimizer is False, loader position, RNG, schedule); without one it starts fresh.
    """
    out = Path(out_dir)
    info = D.setup(cfg.device)
    try:
        return _run(cfg, out, resume, build, info, quiet)
    finally:
        D.teardown(info)


def _run(cfg: TrainConfig, out: Path, resume: bool, build, info: D.DistInfo, quiet: bool) -> RunResult:
    cfg.validate(info.world_size)
    device = info.device
    log = (lambda m: None) if quiet else (lambda m: _print(info, m))
    grad_accum = cfg.grad_accum(info.world_size)
    seq_len = cfg.resolved_seq_len()
    if device.type == "cuda" and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast, compute_dtype = _autocast_factory(device, cfg.dtype)
    lctx = LoopContext(cfg, info, device, autocast, grad_accum, seq_len)

    # ---- where do we start
    ckpt = tc.newest_checkpoint(out) if info.is_main else None
    ckpt = D.broadcast_object(str(ckpt) if ckpt else None, info)
    if ckpt and not resume:
        raise UserError(f"{out} already holds checkpoints (newest {Path(ckpt).name}); "
                        f"pass --resume to continue it, or choose another --out")
    ckpt = Path(ckpt) if (ckpt and resume) else None
    state = tc.read_trainer_state(ckpt) if ckpt else None
    if state is not None and state.get("step", 0) >= cfg.end_step():
        log(f"{out}: already at step {state['step']} >= max step {cfg.end_step()}; nothing to train")

    # ---- the workload, then its state from the checkpoint (before wrapping)
    if cfg.prepare_data_if_missing and build is build_pretrain:
        _ensure_data(cfg, info)
    wl = build(lctx)
    raw = wl.model
    save_weights = wl.save_weights or default_save_weights
    load_weights = wl.load_weights or default_load_weights
    if ckpt:
        load_weights(raw, ckpt)
    model = raw
    if cfg.compile if cfg.compile is not None else device.type == "cuda":
        model = torch.compile(model)
    model = D.wrap(model, info, cfg.parallel)
    opt = optim.build_adamw(raw, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, cfg.fused_adamw)
    start_step, lr_total, elapsed0, resumed_from = 0, cfg.total_steps, 0.0, None
    optimizer_restored = False
    if ckpt:
        start_step = int(state["step"])
        resumed_from = start_step
        lr_total = int(state.get("lr_total_steps", cfg.total_steps))
        if lr_total != cfg.total_steps and not cfg.stretch_lr_on_resume:
            lr_total = cfg.total_steps  # the configured schedule wins unless the run asks for stretching
        if cfg.stretch_lr_on_resume:
            lr_total = lr_total + start_step
        elapsed0 = float(state.get("elapsed_s", 0.0))
        if cfg.restore_optimizer:
            osd = tc.read_optimizer_state(ckpt)
            if osd is None:
                raise UserError(f"{ckpt}: has no optimizer state; resume with --no-restore-optimizer")
            _load_optimizer(raw, model, opt, osd, cfg, str(ckpt / tc.OPTIMIZER))
            optimizer_restored = True
        wl.train_batches.load_state_dict(state["loader"])
        rngs = tc.read_rng_states(ckpt)
        tc.set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0], device)

    # ---- run files
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    sinks = Sinks(cfg, out, info.is_main, out.name)
    if resumed_from is not None and info.is_main:
        sinks.jsonl.truncate_after(resumed_from)
    milestones = cfg.milestone_steps()
    end = cfg.end_step()
    pk, pk_src = (cfg.peak_flops, "config") if cfg.peak_flops else peak_flops(device, compute_dtype)
    hs_items = read_hellaswag(cfg.hellaswag_path, cfg.hellaswag_items) if cfg.hellaswag_every else []
    sinks.write("event", step=start_step, event="resume" if resumed_from is not None else "start",
                world_size=info.world_size, grad_accum=grad_accum, micro_batch=cfg.micro_batch, seq_len=seq_len,
                device=str(device), dtype=str(compute_dtype).removeprefix("torch."), lr_total_steps=lr_total,
                optimizer_restored=optimizer_restored, peak_flops=pk, peak_flops_source=pk_src,
                git_commit=git_commit(), checkpoint=str(ckpt) if ckpt else None, **wl.description)
    log(f"train: {out} | world {info.world_size} x micro {cfg.micro_batch} x accum {grad_accum} x seq {seq_len}"
        f" = {cfg.global_batch_tokens:,} tokens/step | steps {start_step}->{end} | device {device} "
        f"{str(compute_dtype).removeprefix('torch.')}" + (f" | resumed from {ckpt}" if ckpt else ""))

    # ---- helpers bound to this run
    first_val = last_val = None
    last_ckpt = ckpt

    def validate(step: int) -> None:
        nonlocal first_val, last_val
        if wl.evaluate is None:
            return
        model.eval()
        res = wl.evaluate(model, lctx)
        model.train()
        first_val = res["val_loss"] if first_val is None else first_val
        last_val = res["val_loss"]
        sinks.write("val", step=step, tokens=step * wl.tokens_per_step, **res)
        log(f"step {step:>6} | val_loss {res['val_loss']:.4f}")

    def extras(step: int) -> None:
        if not wl.generate_samples:
            return
        if cfg.sample_every and step % cfg.sample_every == 0:
            from .tokenizer import gpt2

            tok = gpt2()
            prompt = torch.tensor([tok.encode(cfg.sample_prompt)] * cfg.sample_count, device=device)
            with autocast():
                outs = raw.generate(prompt, cfg.sample_tokens, temperature=1.0, top_k=50,
                                    seed=cfg.seed + step + info.rank, stop_token=None)
            for i, o in enumerate(outs):
                sinks.write("sample", step=step, index=i, text=cfg.sample_prompt + tok.decode(o))
        if cfg.hellaswag_every and step % cfg.hellaswag_every == 0:
            model.eval()
            res = hellaswag_acc_norm(raw if not info.enabled or cfg.parallel == "ddp" else model, hs_items, lctx)
            model.train()
            sinks.write("hellaswag", step=step, tokens=step * wl.tokens_per_step, **res)

    nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def check_finite(step: int) -> None:
        if bool(D.all_reduce_max(nonfinite.float(), info).item()):
            msg = (f"loss became NaN/inf at or before step {step}; stopped. The last good checkpoint "
                   f"{last_ckpt or '(none)'} is kept; lower the LR or check the data.")
            sinks.write("event", step=step, event="diverged", message=msg)
            raise Diverged(msg)

    def save(step: int, elapsed: float) -> Path:
        nonlocal last_ckpt
        check_finite(step)
        trainer_state = {
            "step": step, "tokens": step * wl.tokens_per_step, "loader": wl.train_batches.state_dict(),
            "lr_total_steps": lr_total, "world_size": info.world_size, "grad_accum": grad_accum,
            "micro_batch": cfg.micro_batch, "global_batch_tokens": cfg.global_batch_tokens,
            "elapsed_s": elapsed, "git_commit": git_commit(), "optimizer_restored_at_resume": optimizer_restored,
            "resumed_from": resumed_from, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        model_view, osd = _full_states(raw, model, opt, cfg, info)
        rngs = D.gather_objects(tc.rng_state(device), info)
        path = tc.step_dir(out, step)
        if info.is_main:
            path = tc.write(out, step, save_weights=lambda d: save_weights(model_view, d), optimizer_state=osd,
                            rng_states=rngs, config=cfg.to_dict(), trainer_state=trainer_state)
            tc.prune(out, cfg.keep_last, milestones, cfg.milestone_optimizer)
            sinks.write("event", step=step, event="checkpoint", path=str(path))
        D.barrier(info)
        last_ckpt = path
        return path

    # ---- train
    step = start_step
    interrupted = None
    bar = None
    if info.is_main and not quiet and (cfg.progress if cfg.progress is not None else sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(total=end, initial=start_step, unit="step", dynamic_ncols=True, desc="train")
    model.train()
    if step == 0 and step < end:
        validate(0)
    t_run = time.perf_counter()
    t_log, tokens_since, paused = time.perf_counter(), 0, 0.0
    try:
        with StopSignal() as stop:
            while step < end:
                lr = optim.lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, lr_total)
                optim.set_lr(opt, lr)
                loss_sum = torch.zeros((), device=device)
                for micro in range(grad_accum):
                    batch = batch_to(wl.train_batches.next_batch(), device)
                    with D.no_sync(model, micro < grad_accum - 1), autocast():
                        loss = wl.loss_fn(model, batch)
                        (loss / grad_accum).backward()
                    loss_sum += loss.detach().float()
                grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters() if cfg.parallel != "fsdp"
                                                           else model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                tokens_since += wl.tokens_per_step
                step_loss = loss_sum / grad_accum
                nonfinite |= ~torch.isfinite(step_loss)
                elapsed = elapsed0 + time.perf_counter() - t_run
                if step % cfg.log_every == 0 or step == end:
                    check_finite(step)
                    mean_loss = D.all_reduce_mean(step_loss, info).item()
                    gn = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    dt = time.perf_counter() - t_log - paused
                    tps = tokens_since / dt if dt > 0 else 0.0
                    mfu = wl.flops_per_token * tps / (pk * info.world_size) if wl.flops_per_token and pk else None
                    sinks.write("train", step=step, tokens=step * wl.tokens_per_step, loss=mean_loss, lr=lr,
                                grad_norm=gn, tokens_per_s=tps, mfu=mfu, elapsed_s=elapsed)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tps:,.0f}")
                    elif not quiet and info.is_main and (step % (cfg.log_every * 10) == 0 or step == end):
                        _print(info, f"step {step:>6} | loss {mean_loss:.4f} | lr {lr:.2e} | "
                                     f"{tps:,.0f} tok/s | mfu {100 * (mfu or 0):.1f}%")
                    t_log, tokens_since, paused = time.perf_counter(), 0, 0.0
                if bar is not None:
                    bar.update(1)
                t_pause = time.perf_counter()  # evaluation and checkpoints do not count as training time
                if cfg.val_every and step % cfg.val_every == 0 and step != end:
                    validate(step)
                extras(step)
                stop_now = stop.requested is not None
                if info.enabled:
                    stop_now = bool(D.all_reduce_max(torch.tensor(float(stop_now), device=device), info).item())
                if stop_now or step == end or step in milestones or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                    if step == end:
                        validate(step)
                    save(step, elapsed0 + time.perf_counter() - t_run)
                if stop_now:
                    interrupted = stop.requested or "SIGTERM"
                    sinks.write("event", step=step, event="stopped", signal=interrupted)
                    log(f"stopped by {interrupted} at step {step}; checkpoint {last_ckpt}; continue with --resume")
                    break
                paused += time.perf_counter() - t_pause
    finally:
        if bar is not None:
            bar.close()
        sinks.close()
    return RunResult(out, step, step * wl.tokens_per_step, last_ckpt, interrupted, first_val, last_val,
                     resumed_from)


def _ensure_data(cfg: TrainConfig, info: D.DistInfo) -> None:
    from . import data

    if (Path(cfg.data_dir) / data.MANIFEST).is_file():
        return
    if info.is_main:
        _print(info, f"preparing {cfg.data_source} data into {cfg.data_dir} ...")
        data.prepare(data.PrepareConfig(source=cfg.data_source), cfg.data_dir)
    D.barrier(info)


def _full_states(raw, model, opt, cfg: TrainConfig, info: D.DistInfo):
    """(weights holder for save_weights, optimizer state by name) on rank 0; collective for FSDP."""
    if cfg.parallel == "fsdp" and info.enabled:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, opt, options=opts)
        return _StateView(raw.cfg, msd), _fsdp_osd_to_by_name(osd)
    if not info.is_main:
        return None, None
    return raw, tc.optimizer_state_by_name(raw, opt)


class _StateView:
    """Looks like a model to `save_model_files`: a config and a (full) state dict."""

    def __init__(self, cfg, sd):
        self.cfg, self._sd = cfg, sd

    def state_dict(self):
        return self._sd


def _fsdp_osd_to_by_name(osd: dict) -> dict:
    return {"state": osd["state"], "param_groups": osd["param_groups"]}


def _load_optimizer(raw, model, opt, osd: dict, cfg: TrainConfig, source: str) -> None:
    if cfg.parallel == "fsdp" and torch.distributed.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))
        return
    tc.load_optimizer_state_by_name(raw, opt, osd, source)


# ---------------------------------------------------------------- stages
@dataclass
class StageContext:
    """What `dmas-repro train` hands to each stage function `fn(ctx) -> None`.

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


# name -> "module:function"; `dmas-repro train` runs them in this order (default: all).
STAGES: dict[str, str] = {
    "pretrain": "dmas_repro.train:pretrain_stage",
}


def stage_function(name: str) -> Callable[[StageContext], None]:
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
    mod, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(mod), fn)


def pretrain_stage(ctx: StageContext) -> RunResult:
    cfg = load_config(ctx.preset, ctx.yaml_path, ctx.overrides, device=ctx.device, dtype=ctx.dtype,
                      max_steps=ctx.max_steps)
    if not ctx.restore_optimizer:
        cfg.restore_optimizer = False
    result = run(cfg, ctx.run_dir, resume=ctx.resume)
    if result.interrupted:
        return result
    if cfg.export_hf and result.step >= cfg.end_step() and result.checkpoint is not None:
        if int(os.environ.get("RANK", "0")) == 0:
            export_hf(result.checkpoint, ctx.run_dir / "hf")
    return result


def export_hf(ckpt: Path, out: Path) -> Path:
    from . import hf
    from .checkpoint import load_model

    return hf.save_hf(load_model(ckpt), out)


def _split_overrides(items: list[str]) -> dict[str, list[str]]:
    per: dict[str, list[str]] = {name: [] for name in STAGES}
    for it in items:
        key = it.split("=", 1)[0]
        prefix = key.split(".", 1)[0]
        if "." in key and prefix in STAGES:
            per[prefix].append(it.split(".", 1)[1])
        else:
            per["pretrain"].append(it)
    return per


def _default_out(preset: str) -> Path:
    p = Path("runs") / preset
    if p.exists() and any(p.iterdir()):
        return Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return p


def _cmd_train(args) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else list(STAGES)
    for s in stages:
        stage_function(s)  # unknown names fail before any work
    embedded = not (args.preset or args.config or args.overrides or args.out)
    preset = args.preset or "tiny"
    if args.out:
        run_dir = Path(args.out)
    elif args.resume:
        run_dir = Path("runs") / preset
    else:
        run_dir = _default_out(preset)
    per = _split_overrides(args.overrides or [])
    # check the pretraining config before any work (unknown keys, batch arithmetic)
    if "pretrain" in stages:
        load_config(preset, args.config, per["pretrain"], device=args.device, dtype=args.dtype,
                    max_steps=args.max_steps).validate(int(os.environ.get("WORLD_SIZE", "1")))
    t0 = time.perf_counter()
    for name in stages:
        ctx = StageContext(run_dir=run_dir, preset=preset, yaml_path=args.config, overrides=per[name],
                           device=args.device, dtype=args.dtype, max_steps=args.max_steps, resume=args.resume,
                           restore_optimizer=not args.no_restore_optimizer, embedded=embedded)
        result = stage_function(name)(ctx)
        if isinstance(result, RunResult) and result.interrupted:
            return 130
    if int(os.environ.get("RANK", "0")) == 0:
        _summary(run_dir, stages, time.perf_counter() - t0)
    return 0


def _summary(run_dir: Path, stages: list[str], seconds: float) -> None:
    from .runio import read_metrics

    print(f"done in {seconds:.0f} s. Run directory: {run_dir}")
    m = run_dir / "metrics.jsonl"
    if m.is_file():
        vals = [r for r in read_metrics(m) if r.get("kind") == "val" and r.get("val_loss") is not None]
        if vals:
            print(f"  val_loss      {vals[0]['val_loss']:.3f} (step {vals[0]['step']}) -> "
                  f"{vals[-1]['val_loss']:.3f} (step {vals[-1]['step']})")
        print(f"  metrics       {m}")
    cks = tc.list_checkpoints(run_dir)
    if cks:
        print(f"  checkpoints   {run_dir / tc.CHECKPOINTS} ({len(cks)}: steps {', '.join(str(s) for s, _ in cks)})")
    for sub, what in (("hf", "HF export"), ("sft", "SFT stage")):
        if (run_dir / sub).exists():
            print(f"  {what:<13} {run_dir / sub}")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "train", help="pretrain (then later stages); no arguments: the embedded tiny run on bundled data",
        description="Config = preset + optional YAML + key=value overrides (model.KEY=... for the model, "
                    "STAGE.KEY=... for a later stage). Under torchrun it runs data-parallel.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. lr=3e-4 micro_batch=8")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="training preset (default tiny)")
    p.add_argument("--config", default=None, help="YAML file of config keys (applied after the preset)")
    p.add_argument("--out", default=None, help="run directory (default runs/PRESET, dated when it exists)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this global step (schedule unchanged)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default=None, help="auto | float32 | bfloat16")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--no-restore-optimizer", action="store_true",
                   help="with --resume: fresh AdamW state (weights, schedule and data position restored)")
    p.add_argument("--stages", default=None, help=f"comma list of stages to run (default all: {','.join(STAGES)})")
    p.set_defaults(func=_cmd_train)

