"""Loaders for everything the pipeline writes, and the choice of inputs.

- `load_metrics` / `load_runs`: `runs/NAME/metrics.jsonl` (training, validation, in-loop HellaSwag rows).
- `load_results`: the long-form `results.csv` / `results.parquet` of `dmas-repro eval-all-checkpoints`.
- `load_items`: per-item records `items/<checkpoint>/<task>.jsonl`.
- `load_probes`: `probes.jsonl`.
- `discover`: `results/` and `runs/` of a working directory when present, else the shipped
  example results in `examples/` (made by `make example-results`).

Every loader returns a pandas DataFrame and raises `FileNotFoundError` with the path when its
input is missing (the figure builder turns that into a "skipped: run ..." message), and
`BadInput` (a `UserError`: one line naming the file, what is wrong and what to do) when an input
exists but cannot be read: not UTF-8, not JSON/CSV, a missing column, text where a number belongs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dmas_repro.core.errors import UserError

PathLike = str | os.PathLike

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = "examples"


class BadInput(UserError):
    """An input file that exists but cannot be read; the message names it and what to do."""


def _text(f: Path, what: str, todo: str) -> str:
    try:
        return f.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{f}: not a {what} (not UTF-8 text at byte {e.start}); {todo}") from None
    except OSError as e:
        raise BadInput(f"{f}: cannot read it ({e.strerror}); {todo}") from None


def _numeric(df: pd.DataFrame, cols, f: Path, todo: str, first_line: int = 1) -> pd.DataFrame:
    """Columns that must hold numbers (or nothing): text there is a corrupt file, not a NaN."""
    for c in cols:
        if c in df.columns:
            num = pd.to_numeric(df[c], errors="coerce")
            bad = num.isna() & df[c].notna()
            if bad.any():
                i = int(bad.to_numpy().nonzero()[0][0])
                raise BadInput(f"{f}: {c} is {df[c].iloc[i]!r}, not a number (row {i + first_line}); {todo}")
            df[c] = num
    return df


# ---------------------------------------------------------------- metrics.jsonl
METRIC_NUMBERS = ("step", "tokens", "loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s",
                  "acc_norm")


def load_metrics(path: PathLike, run: str | None = None) -> pd.DataFrame:
    """All complete rows of one metrics.jsonl (a run dir or the file itself), with a `run` column.
    A torn last line (a kill during a write) is skipped; any other unreadable line is `BadInput`."""
    p = Path(path)
    f = p / "metrics.jsonl" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no metrics file")
    from dmas_repro.train.layout import read_metrics

    todo = "restore the file or move its run directory out of the runs directory, then rerun"
    try:
        rows = read_metrics(f, strict=True)
    except UserError as e:
        raise BadInput(f"{e}; {todo}") from None
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame({"kind": pd.Series(dtype=str), "step": pd.Series(dtype=int)})
    df = _numeric(df, METRIC_NUMBERS, f, todo)
    df["run"] = run if run is not None else (p.name if p.is_dir() else p.parent.name)
    return df


def metrics_kind(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of one kind ("train", "val", "hellaswag", "sample", "event"), last row per step kept.

    A resumed run may have logged a step twice (before and after the resume): the later row wins.
    """
    if df.empty or "kind" not in df.columns:
        return df.iloc[0:0]
    out = df[df["kind"] == kind].dropna(axis=1, how="all")
    if "step" in out.columns and kind != "sample" and kind != "event":
        keys = ["run", "step"] if "run" in out.columns else ["step"]
        out = out.drop_duplicates(subset=keys, keep="last").sort_values(keys)
    return out.reset_index(drop=True)


def find_runs(root: PathLike) -> list[Path]:
    """Run directories (holding metrics.jsonl) under `root`, SFT stages included, ablation runs excluded."""
    root = Path(root)
    if not root.is_dir():
        return []
    ablations = find_ablations(root)
    runs = []
    for f in sorted(root.rglob("metrics.jsonl")):
        d = f.parent
        if any(part.startswith(".") for part in d.relative_to(root).parts):
            continue  # temporary / partial directories
        if any(a == d or a in d.parents for a in ablations):
            continue
        runs.append(d)
    return runs


def load_runs(root_or_dirs: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """metrics.jsonl of several runs in one frame; `run` is the path relative to the runs root."""
    if isinstance(root_or_dirs, str | os.PathLike):
        root = Path(root_or_dirs)
        dirs = find_runs(root)
        names = [str(d.relative_to(root)) for d in dirs]
    else:
        dirs = [Path(d) for d in root_or_dirs]
        names = [d.name if d.name != "sft" else f"{d.parent.name}/sft" for d in dirs]
    if not dirs:
        raise FileNotFoundError(f"{root_or_dirs}: no run directories with metrics.jsonl")
    return pd.concat([load_metrics(d, run=n) for d, n in zip(dirs, names)], ignore_index=True)


def read_run_config(run_dir: PathLike) -> dict:
    f = Path(run_dir) / "config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


# ---------------------------------------------------------------- results store
def normalise_metric(name: str) -> str:
    """lm-eval reports metrics as 'acc,none'; keep the metric name only."""
    return str(name).split(",")[0]


RELEASED_SERIES = "DMaS-LLaMa-Lite"


def series_of(checkpoint: str) -> str:
    """The family a checkpoint belongs to: one training run, or the released suite.

    Works on the store's labels and on paths / hub ids: 'step-2.7k', 'step-43.5k-instruct' and
    'McGill-DMaS/DMaS-LLaMa-Lite-step-2.7k' -> 'DMaS-LLaMa-Lite'; 'tiny-step_00000120',
    'tiny-sft-hf' and 'runs/tiny/checkpoints/step_00000120' -> 'tiny'. Instruct variants keep
    their base's series (the `kind` column tells them apart).
    """
    orig = str(checkpoint).rstrip("/")
    c = re.sub(r"-instruct$", "", orig)
    c = re.sub(r"[-_/]?step[-_]?\d+(\.\d+)?k?$", "", c)
    for _ in range(3):
        c = re.sub(r"[-/](hf|checkpoints|sft)$", "", c)
    c = c.split("/")[-1].split("--")[-1]
    if not c:
        return RELEASED_SERIES if re.match(r"step-\d", orig) else orig
    return c


def kind_of(checkpoint: str) -> str:
    """'instruct' for instruction-tuned checkpoints by their label (…-instruct, …-sft-…), else 'base'
    (the rule of `dmas_repro.train.layout.kind_of`)."""
    from dmas_repro.train.layout import kind_of as layout_kind

    return layout_kind(checkpoint)


RESULTS_TODO = ("rerun the same `dmas-repro eval-all-checkpoints` command (it rebuilds results.csv from the "
                "store's units/), or move the file away")


def _read_table(p: Path) -> pd.DataFrame:
    if p.is_dir():
        csv, pq = p / "results.csv", p / "results.parquet"
        if csv.is_file():
            p = csv
        elif pq.is_file():
            p = pq
        else:
            raise FileNotFoundError(f"{p}: no results.csv or results.parquet")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such results file")
    try:
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        import io

        return pd.read_csv(io.StringIO(_text(p, "results table", RESULTS_TODO)))
    except BadInput:
        raise
    except Exception as e:  # pandas/pyarrow parse errors have no common base class
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BadInput(f"{p}: unreadable results table ({type(e).__name__}: {first}); {RESULTS_TODO}") from None


def load_results(paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """One long-form frame from one or more results stores (directories or results.csv/.parquet).

    Adds `suite` (the store's directory name) and `series` (see `series_of`) when absent, strips
    lm-eval's filter suffix from `metric`, and drops exact duplicate rows.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    frames = []
    for p in map(Path, paths):
        df = _read_table(p)
        f = p / ("results.csv" if (p / "results.csv").is_file() else "results.parquet") if p.is_dir() else p
        missing = {"checkpoint", "task", "metric", "value"} - set(df.columns)
        if missing:
            raise BadInput(f"{f}: not a results table (no column {', '.join(sorted(missing))}); {RESULTS_TODO}")
        df = _numeric(df, ("step", "tokens", "value", "stderr", "n"), f, RESULTS_TODO, first_line=2)
        if "suite" not in df.columns:
            df["suite"] = (p if p.is_dir() else p.parent).name
        frames.append(df)
    if not frames:
        raise FileNotFoundError("no results stores given")
    df = pd.concat(frames, ignore_index=True)
    if "series" in df.columns and df["series"].isna().any():  # a store without the column beside one with it
        df["series"] = df["series"].fillna(df["checkpoint"].map(series_of))
    df["metric"] = df["metric"].map(normalise_metric)
    if "kind" not in df.columns:
        df["kind"] = "base"
    df["kind"] = df["kind"].fillna("base")
    if "series" not in df.columns:
        df["series"] = df["checkpoint"].map(series_of)
    return df.drop_duplicates().reset_index(drop=True)


def load_items(path: PathLike, tasks: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-item rows from a results store's `items/<checkpoint>/<task>.jsonl` (or an items dir).

    Checkpoint names may contain '/', so the checkpoint is read from each row, not from the path.
    """
    p = Path(path)
    d = p / "items" if (p / "items").is_dir() else p
    if not d.is_dir():
        raise FileNotFoundError(f"{p}: no items/ directory")
    want = set(tasks) if tasks is not None else None
    rows = []
    for f in sorted(d.rglob("*.jsonl")):
        if want is not None and f.stem not in want:
            continue
        for ln in _text(f, "per-item record file", RESULTS_TODO.replace("results.csv", "items/")).splitlines():
            if ln.strip():
                try:
                    row = json.loads(ln)
                except json.JSONDecodeError:
                    continue  # a torn last line
                if isinstance(row, dict) and "checkpoint" in row:
                    rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{d}: no per-item records")
    df = pd.DataFrame(rows)
    if "kind" not in df.columns:  # item records carry no kind: from the label (set_kinds can correct it)
        df["kind"] = df["checkpoint"].map(kind_of)
    if "series" not in df.columns:
        df["series"] = df["checkpoint"].map(series_of)
    return df


def set_kinds(df: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Take each checkpoint's kind (base/instruct) from the results table where it lists it."""
    kinds = results.drop_duplicates("checkpoint").set_index("checkpoint")["kind"]
    df = df.copy()
    df["kind"] = df["checkpoint"].map(kinds).fillna(df["kind"]).astype(str)
    return df


def load_probes(path: PathLike) -> pd.DataFrame:
    """Rows of a `probes.jsonl` (a results store directory or the file)."""
    p = Path(path)
    f = p / "probes.jsonl" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no probes file")
    rows = []
    for ln in _text(f, "probes file", RESULTS_TODO.replace("results.csv", "probes.jsonl")).splitlines():
        if ln.strip():
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "checkpoint" in row:
                rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{f}: empty probes file")
    df = pd.DataFrame(rows)
    if "kind" not in df.columns:
        df["kind"] = df["checkpoint"].map(kind_of)
    if "series" not in df.columns:
        df["series"] = df["checkpoint"].map(series_of)
    return df


# ---------------------------------------------------------------- ablations
def find_ablations(root: PathLike) -> list[Path]:
    """Directories under `root` holding an ablation `summary.json`."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(f.parent for f in root.rglob("summary.json") if not any(
        part.startswith(".") for part in f.parent.relative_to(root).parts))


def load_ablation(path: PathLike) -> tuple[dict, pd.DataFrame]:
    """An ablation directory: its summary.json and the metrics of every run under it (`run` column)."""
    d = Path(path)
    f = d / "summary.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no ablation summary")
    summary = read_summary(f)
    runs = []
    for m in sorted(d.rglob("metrics.jsonl")):
        runs.append(load_metrics(m, run=str(m.parent.relative_to(d)) if m.parent != d else d.name))
    metrics = pd.concat(runs, ignore_index=True) if runs else pd.DataFrame()
    return summary, metrics


def read_summary(f: Path) -> dict:
    """An ablation's summary.json (`BadInput` when it is not a JSON object)."""
    todo = "rerun the ablation into a new --out, or move its directory out of the runs directory"
    try:
        summary = json.loads(_text(f, "summary file", todo))
    except json.JSONDecodeError as e:
        raise BadInput(f"{f}: not valid JSON ({e}); {todo}") from None
    if not isinstance(summary, dict):
        raise BadInput(f"{f}: not an ablation summary (a JSON object); {todo}")
    return summary


def read_weights_table(f: Path) -> pd.DataFrame:
    """A weight-dynamics CSV of `python -m analysis.weights` (`BadInput` when unreadable)."""
    import io

    todo = "recompute it with `python -m analysis.weights RUN --out FILE`, or move it away"
    try:
        return pd.read_csv(io.StringIO(_text(f, "weight-dynamics table", todo)))
    except Exception as e:  # noqa: BLE001 - pandas parse errors have no common base class
        if isinstance(e, BadInput):
            raise
        raise BadInput(f"{f}: unreadable weight-dynamics table ({type(e).__name__}); {todo}") from None


def ablation_kind(summary: dict) -> str:
    """'resume' or 'world-size' from the summary's fields (or its explicit `ablation` field)."""
    kind = summary.get("ablation") or summary.get("kind")
    if kind in ("resume", "world-size", "world_size"):
        return kind.replace("_", "-")
    if any(k.startswith("spike") for k in summary):
        return "resume"
    return "world-size"


# ---------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """Where the analysis reads from. `source` says whether these are real or shipped example results."""

    root: Path
    results: list[Path] = field(default_factory=list)  # results stores (dirs with results.csv/.parquet)
    runs_root: Path | None = None
    runs: list[Path] = field(default_factory=list)  # run dirs with metrics.jsonl (not ablations)
    ablations: list[Path] = field(default_factory=list)  # dirs with summary.json
    weights: list[Path] = field(default_factory=list)  # weight-dynamics CSVs (analysis.weights)
    source: str = ""
    # reference stores of other suites (`dmas-repro import-reference`): found beside the results stores,
    # else the one shipped in examples/results/reference (analysis.reference)
    reference: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        return (f"inputs from {self.source}: {len(self.results)} results store(s), {len(self.runs)} run(s), "
                f"{len(self.ablations)} ablation(s), {len(self.weights)} weight-dynamics table(s)"
                + (f", {len(self.reference)} reference store(s)" if self.reference else ""))

    @property
    def is_empty(self) -> bool:
        return not (self.results or self.runs or self.ablations or self.weights)


def find_results(root: PathLike) -> list[Path]:
    """Results stores under `root`: directories holding results.csv or results.parquet."""
    root = Path(root)
    if not root.is_dir():
        return []
    if (root / "results.csv").is_file() or (root / "results.parquet").is_file():
        return [root]
    found = {f.parent for pat in ("results.csv", "results.parquet") for f in root.rglob(pat)}
    return sorted(d for d in found if not any(p.startswith(".") for p in d.relative_to(root).parts))


REFERENCE_MANIFEST = "reference.json"  # marks a store written by `dmas-repro import-reference`


def is_reference_store(d: PathLike) -> bool:
    return (Path(d) / REFERENCE_MANIFEST).is_file()


def shipped_reference() -> list[Path]:
    """The reference store shipped with the repository, when present."""
    d = REPO_ROOT / EXAMPLES / "results" / "reference"
    return [d] if is_reference_store(d) and find_results(d) else []


def _weights_tables(*dirs: Path | None) -> list[Path]:
    out = []
    for d in dirs:
        if d is not None and (d / "weights").is_dir():
            out += sorted((d / "weights").glob("*.csv"))
    return out


def discover(root: PathLike | None = None, results: PathLike | None = None, runs: PathLike | None = None) -> Inputs:
    """Choose the inputs: explicit `results`/`runs` dirs; else `ROOT/results` and `ROOT/runs` when
    either exists; else the shipped example results `ROOT/examples/{results,runs}`.

    ROOT defaults to $DMAS_REPRO_ROOT, else the current directory when it holds results/, runs/ or
    examples/, else the repository this package lives in (so notebooks can run from `notebooks/`).
    """
    if root is None and os.environ.get("DMAS_REPRO_ROOT"):
        root = os.environ["DMAS_REPRO_ROOT"]
    if root is None:
        cwd = Path.cwd()
        root = cwd if any((cwd / d).is_dir() for d in ("results", "runs", EXAMPLES)) else REPO_ROOT
    root = Path(root).resolve()
    if results is not None or runs is not None:
        res_dir = Path(results) if results is not None else None
        run_dir = Path(runs) if runs is not None else None
        source = ", ".join(str(p) for p in (res_dir, run_dir) if p is not None)
    elif (root / "results").is_dir() or (root / "runs").is_dir():
        res_dir, run_dir, source = root / "results", root / "runs", f"{root}/results and {root}/runs"
    else:
        base = root / EXAMPLES
        res_dir, run_dir = base / "results", base / "runs"
        source = f"the shipped example results ({base}; made by `make example-results`)"
    inp = Inputs(root=root, source=source, runs_root=run_dir if run_dir is not None and run_dir.is_dir() else None)
    if res_dir is not None:
        stores = [d for d in find_results(res_dir) if d.parent.name != "weights"]
        inp.results = [d for d in stores if not is_reference_store(d)]
        inp.reference = [d for d in stores if is_reference_store(d)]
    if not inp.reference:
        inp.reference = shipped_reference()
    if run_dir is not None:
        inp.runs = find_runs(run_dir)
        inp.ablations = find_ablations(run_dir)
    inp.weights = _weights_tables(res_dir)
    return inp
