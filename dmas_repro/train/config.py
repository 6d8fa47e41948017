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
        from ..model.transformer import preset

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
        if self.resolved_seq_len() > mc.context_length:
            raise UserError(f"seq_len {self.seq_len} exceeds the model context {mc.context_length}")
        self.grad_accum(world_size)
        if self.end_step() <= 0 or self.total_steps <= 0:
            raise UserError("total_steps and max_steps must be positive")
        if not (0 <= self.min_lr <= self.lr) or self.warmup_steps < 0:
            raise UserError(f"need 0 <= min_lr <= lr and warmup_steps >= 0 (lr {self.lr}, min_lr {self.min_lr})")
        if self.dtype != "auto" and DTYPES.get(self.dtype) not in ("float32", "bfloat16"):
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
