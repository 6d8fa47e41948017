"""The training configuration: `TrainConfig` (every key of a run), the presets, and
`load_config` (preset -> YAML file -> `key=value` overrides -> keyword fields).

    cfg = load_config("tiny", yaml_path=None, overrides=["max_steps=20", "model.n_layer=2"])

`model.KEY=VALUE` overrides a field of the model preset (`dmas_repro.model.transformer.ModelConfig`).
An unknown key is an error naming the closest ones.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core import config as C
from ..core.errors import UserError
from ..core.runtime import DTYPES

HELLASWAG_FORMATS = ("lm-eval", "authors")


@dataclass(frozen=True)
class BatchLayout:
    """One optimizer step's batch: `world_size` ranks x `grad_accum` micro-steps x `micro_batch`
    sequences (SFT: examples) = `global_batch`; `requested` is the micro_batch asked for."""

    global_batch: int
    world_size: int
    micro_batch: int
    grad_accum: int
    requested: int

    def describe(self, unit: str = "sequences") -> str:
        per_rank = self.global_batch // self.world_size
        note = "" if self.micro_batch == self.requested else (
            f" (micro_batch {self.requested} requested: {self.micro_batch} is the largest not above it that "
            f"divides {per_rank} {unit} per rank)")
        return f"world {self.world_size} x micro {self.micro_batch} x accum {self.grad_accum}{note}"


def fit_micro_batch(global_batch: int, world_size: int, requested: int) -> BatchLayout | None:
    """The largest micro-batch <= `requested` that divides each rank's share of `global_batch`, and
    the accumulation that makes up the rest; None when `global_batch` does not split over the ranks."""
    if min(global_batch, world_size, requested) <= 0 or global_batch % world_size:
        return None
    per_rank = global_batch // world_size
    micro = max(m for m in range(1, min(requested, per_rank) + 1) if per_rank % m == 0)
    return BatchLayout(global_batch, world_size, micro, per_rank // micro, requested)


def nearest_multiples(value: int, unit: int) -> tuple[int, int]:
    """The positive multiples of `unit` nearest to `value` from below and above (equal when one)."""
    lo = max(unit, value // unit * unit)
    hi = max(unit, -(-value // unit) * unit)
    return lo, hi


def _divisors_text(n: int, limit: int = 6) -> str:
    ds = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(str(d) for d in ds[:limit]) + (", ..." if len(ds) > limit else "")


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
    # batch: the global batch never changes. micro_batch is the largest micro-batch per rank: the loop
    # uses the largest value not above it that divides this rank's share (global_batch_tokens / seq_len
    # / world size sequences), and accumulates the rest (`batch_layout`); lower it for memory.
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
    # The authors' train.py on a resume from step S: `max_steps = args.max_steps + S` (from the command
    # line's value, once per resume, never compounding), the cosine runs to that length and the loop
    # goes on to it. true: the schedule length is total_steps + S at every resume from S, and the run
    # ends there unless max_steps is set. False (default): the schedule never changes on a resume.
    stretch_lr_on_resume: bool = False
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
    # The validation set, fixed in tokens: the first val_tokens tokens of the val split as windows of
    # seq_len (chosen once; the same for any micro-batch, world size and resume). Default: the authors'
    # 20 micro-batches of 32 x 1024 tokens on one process (their set grew with the world size).
    val_tokens: int = 655_360
    ckpt_every: int = 1000  # 0: only milestones and the end
    keep_last: int = 2  # newest checkpoints kept with their full state (resume points)
    milestone_optimizer: bool = False  # keep optimizer state in older milestone checkpoints too (2x weights)
    milestones: str = "released"  # released (the ten released steps scaled to the run) | none | "100,200,..."
    sample_every: int = 250  # 0: off
    sample_prompt: str = "Hello, I am a language model,"
    sample_count: int = 4
    sample_length: int = 32  # tokens per sample, the prompt included (the authors' generate_max_length)
    sample_seed: int = 42  # the authors' completion(): a generator seeded 42 + rank at every sampling
    hellaswag_every: int = 0  # 0: off; needs hellaswag_path
    hellaswag_path: str = ""  # jsonl: {"query", "choices", "label"} (lm-eval) or HellaSwag's raw fields (authors)
    hellaswag_items: int = 0  # 0: all items of the file
    # lm-eval: context `query` = lm-eval's hellaswag preprocessing ("Activity: ctx_a Ctx_b"), endings
    # `choices`; authors: their hellaswag.py, the raw `ctx` (no activity label) and raw `endings`. Both:
    # each ending prefixed by a space, the lowest mean per-token loss wins (completion-style acc_norm).
    hellaswag_format: str = "lm-eval"
    export_hf: bool = True  # write OUT/hf from the final checkpoint when the run reaches its end
    tensorboard: bool = False  # OUT/tensorboard (needs the tensorboard package)
    wandb: bool = False  # Weights & Biases (needs wandb)
    wandb_project: str = "dmas-repro"
    progress: bool | None = None  # progress bar (None: when stderr is a terminal)

    # ------------------------------------------------------------ derived values
    def model_config(self):
        from ..model.transformer import preset

        try:
            return preset(self.model).with_(**self.model_overrides)
        except TypeError as e:
            raise UserError(f"model overrides {self.model_overrides}: {e}") from None

    def resolved_seq_len(self) -> int:
        return self.seq_len or self.model_config().context_length

    def end_step(self) -> int:
        return self.max_steps or self.total_steps

    def batch_layout(self, world_size: int) -> BatchLayout:
        """The micro-batch and gradient accumulation of one optimizer step on `world_size` ranks; a
        UserError naming the nearest valid settings when the global batch does not split over them."""
        if self.micro_batch <= 0:
            raise UserError(f"micro_batch {self.micro_batch}: must be positive (the largest micro-batch per rank)")
        seq = self.resolved_seq_len()
        unit = seq * world_size
        if self.global_batch_tokens <= 0 or self.global_batch_tokens % unit:
            lo, hi = nearest_multiples(self.global_batch_tokens, unit)
            fits = ""
            if self.global_batch_tokens > 0 and self.global_batch_tokens % seq == 0:
                n_seq = self.global_batch_tokens // seq
                fits = f", or a world size dividing its {n_seq:,} sequences ({_divisors_text(n_seq)})"
            raise UserError(
                f"global_batch_tokens {self.global_batch_tokens:,} does not split into sequences of seq_len {seq} "
                f"over {world_size} rank(s) (a multiple of {unit:,} tokens): no micro-batch fits. Nearest valid: "
                f"global_batch_tokens={lo}" + (f" or {hi}" if hi != lo else "") + fits)
        return fit_micro_batch(self.global_batch_tokens // seq, world_size, self.micro_batch)

    def grad_accum(self, world_size: int) -> int:
        return self.batch_layout(world_size).grad_accum

    def milestone_steps(self) -> set[int]:
        m = self.milestones.strip()
        if m == "released":
            from .checkpointer import milestone_steps

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
        if self.seq_len < 0:
            raise UserError(f"seq_len {self.seq_len}: must be positive (0: the model's context length)")
        if self.resolved_seq_len() > mc.context_length:
            raise UserError(f"seq_len {self.seq_len} exceeds the model context {mc.context_length}")
        if min(self.log_every, self.val_tokens) <= 0 or self.keep_last < 0:
            raise UserError("log_every and val_tokens must be positive, keep_last >= 0")
        self.batch_layout(world_size)
        if self.end_step() <= 0 or self.total_steps <= 0:
            raise UserError("total_steps and max_steps must be positive")
        if not (0 <= self.min_lr <= self.lr) or self.warmup_steps < 0:
            raise UserError(f"need 0 <= min_lr <= lr and warmup_steps >= 0 (lr {self.lr}, min_lr {self.min_lr})")
        if self.dtype != "auto" and DTYPES.get(self.dtype) not in ("float32", "bfloat16"):
            raise UserError(f"dtype {self.dtype!r}: choose auto, float32 or bfloat16")
        if self.parallel not in ("ddp", "fsdp"):
            raise UserError(f"parallel {self.parallel!r}: choose ddp or fsdp")
        if self.sample_every and (self.sample_count <= 0 or self.sample_length <= 0):
            raise UserError("sample_count and sample_length must be positive (or sample_every=0)")
        if self.hellaswag_format not in HELLASWAG_FORMATS:
            raise UserError(f"hellaswag_format {self.hellaswag_format!r}: choose {' or '.join(HELLASWAG_FORMATS)}")
        if self.hellaswag_every and not self.hellaswag_path:
            raise UserError("hellaswag_every > 0 needs hellaswag_path (a jsonl of HellaSwag items)")
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
        val_tokens=2048, ckpt_every=0, keep_last=1, sample_every=64, sample_count=2,
    ),
}


def _apply(cfg: TrainConfig, key: str, value, origin: str) -> None:
    """One key: `model.KEY` goes into `model_overrides` (typed by ModelConfig), others into the config."""
    if key.startswith("model."):
        from ..model.transformer import ModelConfig

        sub = key.split(".", 1)[1]
        mhints = C.hints(ModelConfig)
        if sub not in mhints:
            raise C.unknown_key(sub, mhints, origin, "model key")
        cfg.model_overrides = {**cfg.model_overrides, sub: C.coerce(key, value, mhints[sub])}
        return
    C.set_key(cfg, key, value, origin)


def load_config(preset: str = "tiny", yaml_path: str | None = None, overrides: list[str] | tuple = (),
                **fields) -> TrainConfig:
    """preset -> YAML file -> `key=value` overrides -> keyword fields; unknown keys are errors."""
    if preset not in PRESETS:
        raise UserError(f"unknown training preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = TrainConfig(**PRESETS[preset])
    if yaml_path:
        for k, v in C.read_yaml(yaml_path).items():
            if k == "model_overrides" and isinstance(v, dict):
                for mk, mv in v.items():
                    _apply(cfg, f"model.{mk}", mv, str(yaml_path))
            else:
                _apply(cfg, str(k), v, str(yaml_path))
    apply_overrides(cfg, overrides)
    for k, v in fields.items():
        if v is not None:
            _apply(cfg, k, v, "argument")
    return cfg


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple) -> TrainConfig:
    """`key=value` items (values parsed as YAML) applied to `cfg` in place."""
    for item in overrides:
        k, v = C.parse_override(item)
        _apply(cfg, k, v, "override")
    return cfg


def with_changes(cfg: TrainConfig, **changes) -> TrainConfig:
    """A copy of `cfg` with fields changed, each typed and checked like an override."""
    import dataclasses

    out = dataclasses.replace(cfg)
    for k, v in changes.items():
        _apply(out, k, v, "setting")
    return out
