"""The layout of a training run directory: the one place that names and finds its files.

    RUN/config.json                    the resolved training config
    RUN/metrics.jsonl                  one JSON row per event: train, val, sample, hellaswag, event
    RUN/checkpoints/step_XXXXXXXX/     one checkpoint (contents: `dmas_repro.train.checkpointer`)
    RUN/hf/                            the final checkpoint as a transformers LlamaForCausalLM directory
    RUN/sft/                           the instruction-tuning stage: a run directory of its own
    RUN/sft/adapter/                   a LoRA stage's final adapters in peft's format (for the base's HF export)

Everything that reads a run (evaluation sources, chat, the SFT stage, analysis, figures) goes
through these functions, so the rules are the same everywhere: a checkpoint is "complete" when its
directory has every file the checkpointer writes (the trainer state is written last), temporary
`.step_*.tmp-*` directories are ignored, and a torn last line of metrics.jsonl is skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from ..core.errors import UserError
from ..core.files import atomic_write_text

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
HF = "hf"
SFT = "sft"
ADAPTER = "adapter"  # in an SFT run: the final LoRA adapters, peft format
TENSORBOARD = "tensorboard"
# inside a checkpoint directory
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.safetensors"  # tensors; param groups and scalars as JSON in its header
RNG = "rng.safetensors"  # torch/CUDA generator states; python/numpy states as JSON in its header
CKPT_CONFIG = "config.json"
# The pickled files of checkpoints written before the safetensors format: read only through
# `torch.load(weights_only=True)` with an explicit allow-list (`dmas_repro.train.checkpointer`).
LEGACY_OPTIMIZER = "optimizer.pt"
LEGACY_RNG = "rng.pt"
STEP_RE = re.compile(r"^step_(\d{8})$")


def _model_files() -> tuple[str, str]:
    from ..model.weights import MODEL_CONFIG, WEIGHTS

    return WEIGHTS, MODEL_CONFIG


def required_files() -> tuple[str, ...]:
    """The files every complete checkpoint holds besides its RNG state (`RNG`, or `LEGACY_RNG` in
    an old checkpoint); the optimizer state is optional."""
    return (TRAINER_STATE, *_model_files(), CKPT_CONFIG)


def is_complete(ckpt: str | os.PathLike) -> bool:
    """A checkpoint directory holding the full training state (a resume point)."""
    p = Path(ckpt)
    return all((p / f).is_file() for f in required_files()) and any((p / f).is_file() for f in (RNG, LEGACY_RNG))


def has_optimizer(ckpt: str | os.PathLike) -> bool:
    return any((Path(ckpt) / f).is_file() for f in (OPTIMIZER, LEGACY_OPTIMIZER))


# ---------------------------------------------------------------- checkpoints
def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike, models_only: bool = False) -> list[tuple[int, Path]]:
    """(step, dir) of the complete checkpoints of a run, oldest first: with the full training state
    (resume points), or with `models_only` every one that holds a loadable model (weights and
    model config: what evaluation and analysis read)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if not (m and p.is_dir()):
            continue
        if all((p / f).is_file() for f in _model_files()) if models_only else is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def newest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_trainer_state(ckpt: str | os.PathLike) -> dict:
    f = Path(ckpt) / TRAINER_STATE
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise UserError(f"{f}: missing (not a complete training checkpoint)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: corrupt ({e})") from None


def step_and_tokens(model_dir: str | os.PathLike) -> tuple[int | None, int | None]:
    """(step, tokens) of a checkpoint or export that records them (trainer_state.json), else (None, None)."""
    f = Path(model_dir) / TRAINER_STATE
    if not f.is_file():
        return None, None
    st = read_trainer_state(model_dir)
    step, tokens = st.get("step"), st.get("tokens")
    return (int(step) if step is not None else None), (int(tokens) if tokens is not None else None)


# ---------------------------------------------------------------- run directories
def is_model_dir(p: Path) -> bool:
    """Our model files or a Hugging Face model directory."""
    from ..model.hf import is_hf_dir
    from ..model.weights import is_model_dir as ours

    return ours(p) or is_hf_dir(p)


def is_run_dir(p: str | os.PathLike) -> bool:
    """A training run directory: metrics, checkpoints/, an hf/ export or an sft/ stage, and no weights of its own."""
    from ..model.hf import is_hf_dir

    p = Path(p)
    if not p.is_dir() or (p / _model_files()[0]).exists():
        return False
    return ((p / METRICS).is_file() or (p / CHECKPOINTS).is_dir() or is_hf_dir(p / HF) or (p / SFT).is_dir())


def kind_of(name: str) -> str:
    """'instruct' for an instruction-tuned checkpoint by its name or path (…instruct…, an `sft`
    component such as runs/x/sft or x-sft-step_…), else 'base'."""
    return "instruct" if re.search(r"instruct|(^|[-_/])sft($|[-_/])", str(name), re.IGNORECASE) else "base"


def stages(run_dir: str | os.PathLike) -> list[tuple[Path, str, str]]:
    """(stage directory, kind, label prefix) of a run: the run itself (base), then its SFT stage (instruct)."""
    run = Path(run_dir)
    return [(run, "base", run.name), (run / SFT, "instruct", f"{run.name}-sft")]


def stage_models(stage_dir: Path) -> list[Path]:
    """The model directories of one stage: every checkpoint holding a model, else the final hf/ export."""
    from ..model.hf import is_hf_dir

    found = [p for _, p in list_checkpoints(stage_dir, models_only=True)]
    if not found and is_hf_dir(stage_dir / HF):
        found = [stage_dir / HF]
    return found


def label_of(model_dir: str | os.PathLike) -> tuple[str, str]:
    """(label, kind) of a model directory; inside a run, '<run>-step_…', '<run>-hf', '<run>-sft-step_…'."""
    p = Path(model_dir).resolve()
    name, kind = p.name, kind_of(p.name)
    if name == HF or STEP_RE.match(name):
        up = p.parent.parent if p.parent.name == CHECKPOINTS else p.parent
        if up.name == SFT:
            name, kind = f"{up.parent.name}-sft-{name}", "instruct"
        else:
            name = f"{up.name}-{name}"
    return name, kind


def names_local_path(source: str) -> bool:
    """A string that can only mean a local path: absolute, ./ ../ ~, more than owner/name, or
    under a directory that exists here (runs/tiny when runs/ exists)."""
    from ..model.hub import looks_like_repo_id

    parts = Path(source).parts
    return (source.startswith(("/", ".", "~")) or not looks_like_repo_id(source)
            or (len(parts) > 1 and Path(parts[0]).is_dir()))


def model_dir_of(source: str, prefer_sft: bool = False, revision: str | None = None,
                 cache_dir: str | None = None) -> Path:
    """A loadable model directory for: a hub id (downloaded), an HF directory, one of our
    checkpoint directories, or a training run directory. A run directory gives its newest
    complete checkpoint (else its `hf/` export); with `prefer_sft` its `sft/` stage comes
    first (`sft/hf`, then the newest SFT checkpoint)."""
    from ..model import hub

    p = Path(source).expanduser()
    if not p.exists():
        if names_local_path(source):
            raise UserError(f"{source}: no such directory (relative to {Path.cwd()})")
        try:
            return hub.resolve(source, revision=revision, cache_dir=cache_dir)
        except UserError as e:
            why = str(e).removeprefix(f"{source}: ")
            raise UserError(f"{source}: no such local directory (relative to {Path.cwd()}), and as a Hugging Face "
                            f"hub id: {why}") from None
    if not p.is_dir():
        raise UserError(f"{p}: not a directory")
    if is_model_dir(p):
        return p
    if is_run_dir(p):
        candidates = [p / SFT / HF, newest_checkpoint(p / SFT)] if prefer_sft else []
        candidates += [newest_checkpoint(p), p / HF]
        for c in candidates:
            if c is not None and is_model_dir(c):
                return c
        raise UserError(f"{p}: a run directory without a complete checkpoint or hf/ export (has it trained?)")
    if (p / "config.json").is_file():
        return p  # an HF directory without weights: load_any names what is missing
    raise UserError(f"{p}: not a model directory (model_config.json or config.json + safetensors) "
                    "nor a training run directory")


def read_model_config_of(d: Path):
    """The ModelConfig of our model directory or an HF directory."""
    from ..model import hf, weights

    if (d / weights.MODEL_CONFIG).is_file():
        return weights.read_model_config(d)
    return hf.read_config(d)


def load_model_from(source: str, device="cpu", dtype=None, prefer_sft: bool = False, revision: str | None = None,
                    cache_dir: str | None = None):
    """(model, directory) for any source `model_dir_of` accepts; a model of another architecture
    is refused with one error that names the source and what differs."""
    from ..model import weights

    d = model_dir_of(source, prefer_sft=prefer_sft, revision=revision, cache_dir=cache_dir)
    try:
        return weights.load_any(d, device=device, dtype=dtype), d
    except UserError as e:
        raise UserError(f"{source}: not usable as a DMaS-LLaMa-Lite model: {e}") from None


def write_config(run_dir: Path, config: dict) -> None:
    """RUN/config.json: the resolved training config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


# ---------------------------------------------------------------- metrics.jsonl
def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    """Append one JSON object per line to RUN/metrics.jsonl, flushed at every row.

    Rows carry a `kind` ("train", "val", "event", ...) plus the stage's fields.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._f = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", buffering=1)

    def write(self, kind: str, **fields) -> dict:
        row = {"kind": kind, **{k: _clean(v) for k, v in fields.items()}}
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        return row

    def truncate_after(self, step: int) -> None:
        """Drop rows with step > `step` (from an attempt that was resumed from an earlier checkpoint)."""
        if not self.path.exists():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step_of(ln) <= step]
        if self._f is not None:
            self._f.close()
        atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        if self.enabled:
            self._f = open(self.path, "a", buffering=1)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", -1))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
        return 1 << 62  # unreadable (torn) line: dropped


def read_metrics(path: str | os.PathLike, strict: bool = False) -> list[dict]:
    """All complete rows of a metrics.jsonl (or of RUN/metrics.jsonl for a run directory); a torn
    last line from a kill is skipped. `strict` (analysis, figures): any other line that is not a
    JSON object with a `kind`, or a file that is not UTF-8, is a `UserError` naming the line."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        raise UserError(f"{path}: no metrics file (has the run started?)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if strict:
            raise UserError(f"{path}: not a metrics file (not UTF-8 text at byte {e.start})") from None
        text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    rows = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            if strict and i < len(lines) - 1:
                raise UserError(f"{path}: line {i + 1} is not JSON") from None
            continue
        if isinstance(row, dict) and (not strict or isinstance(row.get("kind"), str)):
            rows.append(row)
        elif strict:
            raise UserError(f"{path}: line {i + 1} is not a metrics row (a JSON object with a kind)")
    return rows
