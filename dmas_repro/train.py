"""`dmas-repro train`: the training config (`TrainConfig`, presets, YAML + key=value overrides),
the stage registry, and the command line. The loop itself is `dmas_repro.trainer`.

One code path for a laptop CPU and a GPU cluster; only the config differs:

    dmas-repro train                                   # embedded default: tiny preset, bundled data
    dmas-repro train --preset paper --out runs/paper   # the published recipe (FineWeb-Edu)
    torchrun --nproc_per_node 8 -m dmas_repro train --preset paper --out runs/paper

Python API (used by the SFT stage and the ablations; `run`, `Workload`, ... are re-exported
from `dmas_repro.trainer` on first use so `dmas-repro --help` does not import torch):

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

import difflib
import importlib
import importlib.util
import os
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError


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
    fused_adamw: bool | None = None  # None: fused (the fused kernel exists for CUDA and the CPU)
    # resume
    restore_optimizer: bool = True  # False: resume weights, schedule and data position with a fresh AdamW
    stretch_lr_on_resume: bool = False  # the authors' code: schedule length += resumed step at every resume
    # precision and speed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on GPU, float32 on CPU) | float32 | bfloat16 (autocast)
    compile: bool | None = None  # torch.compile (None: on CUDA)
    tf32: bool = True  # TF32 matmuls on CUDA
    ce_chunk_tokens: int | None = None  # fused chunked LM-head CE; None: model.default_ce_chunk_tokens(device); 0: off
    activation_checkpointing: bool = False  # recompute block activations in backward (Transformer attribute)
    parallel: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard per block)
    peak_flops: float = 0.0  # per device, for MFU; 0: known GPU table, else a measured matmul peak
    # loop
    seed: int = 1337
    log_every: int = 1
    val_every: int = 250  # 0: only at the start and the end
    val_batches: int = 20  # validation micro-batches in all (shared among the ranks; the same set at any world size)
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
            from .trainer_checkpoint import milestone_steps

            return set(milestone_steps(self.end_step()))
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
    # The embedded default: sized to pretrain in about 2-3 minutes on an idle 2-core CPU (about
    # 1,000 tokens/s for this model: its 50,304 x 128 LM head is most of the FLOPs) with a clear
    # fall of the validation loss: 128 steps of 1,024 tokens (~131k tokens, a third of an epoch of
    # the bundled corpora); ten milestone checkpoints at the released steps scaled to 128.
    "tiny": dict(
        model="tiny", data_dir="data/bundled", data_source="bundled", prepare_data_if_missing=True,
        seq_len=128, shuffle=True, global_batch_tokens=1024, micro_batch=8,
        lr=3e-3, min_lr=3e-4, warmup_steps=10, total_steps=128, log_every=4, val_every=16,
        val_batches=2, ckpt_every=0, keep_last=1, sample_every=64, sample_count=2, sample_tokens=24,
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
    "sft": "dmas_repro.sft:sft_stage",  # instruction tuning of the run's newest checkpoint into RUN/sft/
}


def stage_function(name: str) -> Callable[[StageContext], None]:
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
    mod, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(mod), fn)


def pretrain_stage(ctx: StageContext):
    cfg = load_config(ctx.preset, ctx.yaml_path, ctx.overrides, device=ctx.device, dtype=ctx.dtype,
                      max_steps=ctx.max_steps)
    if not ctx.restore_optimizer:
        cfg.restore_optimizer = False
    from .trainer import run

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


PLAN_GPUS = ("A6000", "A100", "H100")


def plan(cfg: TrainConfig, mfu: float = 0.4, world_sizes: tuple[int, ...] = (1, 2, 8, 16)) -> dict:
    """What a config costs, without running it: tokens, data on disk, FLOPs, GPU-hours at `mfu`
    of the dense bf16 peak, checkpoint sizes, and the grad accumulation per world size."""
    import torch

    from .model import Transformer
    from .trainer import GPU_PEAK_BF16

    with torch.device("meta"):
        model = Transformer(cfg.model_config())
    seq = cfg.resolved_seq_len()
    steps = cfg.end_step()
    tokens = steps * cfg.global_batch_tokens
    fpt = model.flops_per_token(seq)
    n = model.num_params()
    accum = {}
    for w in world_sizes:
        try:
            accum[w] = cfg.grad_accum(w)
        except UserError:
            accum[w] = None
    return {
        "steps": steps, "tokens_per_step": cfg.global_batch_tokens, "tokens": tokens,
        "train_data_bytes_uint16": 2 * tokens, "params": n, "flops_per_token": fpt, "flops": fpt * tokens,
        "mfu_assumed": mfu,
        "gpu_hours": {g: fpt * tokens / (GPU_PEAK_BF16[g] * mfu) / 3600 for g in PLAN_GPUS},
        "gpu_peak_bf16_flops": {g: GPU_PEAK_BF16[g] for g in PLAN_GPUS},
        "weights_fp32_bytes": 4 * n, "checkpoint_with_optimizer_bytes": 12 * n,
        "grad_accum_by_world_size": accum, "micro_batch": cfg.micro_batch, "seq_len": seq,
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _print_plan(p: dict, preset: str) -> None:
    print(f"plan for preset {preset}: {p['steps']:,} steps x {p['tokens_per_step']:,} tokens = "
          f"{p['tokens']:,} tokens ({p['tokens'] / 1e9:.2f}B)")
    print(f"  training data on disk (uint16)   {_gb(p['train_data_bytes_uint16'])}")
    print(f"  parameters                       {p['params']:,}")
    print(f"  FLOPs/token (6N + attention)     {p['flops_per_token']:.4g}")
    print(f"  total training FLOPs             {p['flops']:.4g}")
    for g, h in p["gpu_hours"].items():
        print(f"  GPU-hours on {g:<6} at {100 * p['mfu_assumed']:.0f}% MFU  {h:,.0f} " if h >= 10 else
              f"  GPU-hours on {g:<6} at {100 * p['mfu_assumed']:.0f}% MFU  {h:.2g} "
              f"(peak {p['gpu_peak_bf16_flops'][g] / 1e12:.0f} TFLOP/s bf16)")
    print(f"  weights fp32 / full checkpoint   {_gb(p['weights_fp32_bytes'])} / "
          f"{_gb(p['checkpoint_with_optimizer_bytes'])}")
    acc = ", ".join(f"{w} GPUs: {a}" if a else f"{w} GPUs: -" for w, a in p["grad_accum_by_world_size"].items())
    print(f"  grad accumulation (micro {p['micro_batch']} x {p['seq_len']})  {acc}")


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
    if args.plan:
        cfg = load_config(preset, args.config, per["pretrain"], max_steps=args.max_steps)
        cfg.model_config()
        _print_plan(plan(cfg, args.mfu), preset)
        return 0
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
        if getattr(result, "interrupted", None):
            return 130
    if int(os.environ.get("RANK", "0")) == 0:
        _summary(run_dir, stages, time.perf_counter() - t0)
    return 0


def _summary(run_dir: Path, stages: list[str], seconds: float) -> None:
    from . import trainer_checkpoint as tc
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
    p.add_argument("--plan", action="store_true",
                   help="print tokens, data size, FLOPs and GPU-hours of the config, and exit")
    p.add_argument("--mfu", type=float, default=0.4, help="with --plan: assumed model FLOPs utilisation")
    p.add_argument("--stages", default=None, help=f"comma list of stages to run (default all: {','.join(STAGES)})")
    p.set_defaults(func=_cmd_train)


# ---------------------------------------------------------------- the loop's API, imported on first use
_LOOP_NAMES = ("run", "Workload", "LoopContext", "BatchSource", "RunResult", "Diverged", "build_pretrain",
               "lm_loss", "batch_to", "peak_flops", "hellaswag_acc_norm", "default_save_weights",
               "default_load_weights")


def __getattr__(name: str):
    if name in _LOOP_NAMES:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
