"""`dmas-repro import-reference`: published training trajectories of other open model suites, read
into the standard results store so that the analysis treats them as it treats DMaS results.

Two formats (any file of them, not only the ones bundled with the project):

- **olmo-ladder**: AI2's model-ladder CSVs (Bhagia et al. 2024, allenai/OLMo-ladder), one row per
  checkpoint (`_step`): validation cross-entropy on several corpora and, per task, the gold answer's
  bits per byte, 5-shot rank-classification accuracy and two soft scores. tokens = `_step` x
  `batch_size_in_tokens` (checked against `throughput/total_tokens` when the file has it).
  The run is named by the file (`1B-1xC.csv`: run `1B-1xC`, model size `1B`).
- **pythia**: EleutherAI's lm-evaluation-harness (v0.3) result JSONs of the Pythia checkpoints
  (`results[task][metric]` with `metric_stderr`; `config.model_args` names the model and its
  `revision=stepN`), 2,097,152 tokens per step.

The mapping from their names to lm-eval's task and metric names is the one table below
(`OLMO_COLUMNS`, `OLMO_TASKS`, `PYTHIA_TASKS`, `PYTHIA_METRICS`; README "Reference
trajectories" shows it). Whatever a file holds that the table does not map is reported (printed
and kept in `DIR/reference.json`), never dropped silently. Every file is read and checked before
anything is written; a malformed file is one `UserError` naming it, and the store is then left as
it was. The store is replaced atomically (`core.files.atomic_dir`): a kill leaves the old or the
new one. Importing into an existing reference store replaces the runs it imports again and keeps
the others (two families can share one store).

Item counts (`n`) are in neither format; they are recovered exactly: for OLMo-ladder as the smallest
count that makes every accuracy of a task's column a whole number of items (`items_behind`: 10,042 for
HellaSwag validation, 2,376 for ARC-Easy test, ...), for Pythia from lm-eval's stderr
(se^2 = p (1 - p) / (n - 1), `items_from_stderr`). The task's other metrics (bpb, soft scores,
perplexity) share its n.

Store layout (`--out DIR`): `results.csv` and `results.parquet` with the columns of
`eval.store.COLUMNS` (kind `reference`) plus `REFERENCE_COLUMNS`, `reference.json` (the source
files with their sha256, what was not mapped, the licences, the mapping itself) and `licenses/`
(the LICENSE found beside each format's inputs: the data's licence travels with it).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..core.files import atomic_dir, file_sha256
from .store import COLUMNS, INT_COLUMNS, KEY

log = logging.getLogger(__name__)

FORMATS = ("olmo-ladder", "pythia")
KIND = "reference"
MANIFEST = "reference.json"
STORE_FORMAT = "dmas-repro reference store 1"
# beyond the store's own columns (which already name a validation-loss row's corpus)
REFERENCE_COLUMNS = [c for c in ("series", "family", "model_size", "run", "corpus", "split", "source_sha256")
                     if c not in COLUMNS]
REFERENCE_KEY = KEY + ["corpus"]  # one validation-loss row per corpus
PYTHIA_TOKENS_PER_STEP = 2_097_152  # 1,024 sequences x 2,048 tokens (Pythia paper, every size)


@dataclass(frozen=True)
class Rule:
    """One column pattern of an OLMo-ladder CSV and what it becomes."""

    pattern: str
    role: str  # "key" (step/tokens), "check" (compared, not stored), "row" (a metric row)
    task: str | None = None  # fixed task ("val_loss"), else from the (?P<task>) group via OLMO_TASKS
    metric: str | None = None
    meaning: str = ""


# OLMo-ladder columns -> rows. `task` groups name OLMo's `<task>_<split>` keys (OLMO_TASKS).
OLMO_COLUMNS = [
    Rule(r"_step", "key", meaning="checkpoint step"),
    Rule(r"batch_size_in_tokens", "key", meaning="tokens = step x batch_size_in_tokens"),
    Rule(r"throughput/total_tokens", "check", meaning="must equal step x batch_size_in_tokens"),
    Rule(r"eval/(?P<corpus>.+)-validation/CrossEntropyLoss", "row", task="val_loss", metric="loss",
         meaning="mean next-token cross-entropy (nats) on the corpus's validation split; corpus column"),
    Rule(r"eval/downstream_bpb/(?P<task>.+)_rc_(?P<shots>\d+)shot_bpb", "row", metric="gold_bpb",
         meaning="bits per UTF-8 byte of the gold answer given the few-shot prompt (OLMo's bpb; our "
                 "harness's gold_nll_per_byte / ln 2)"),
    Rule(r"eval/downstream/(?P<task>.+)_rc_(?P<shots>\d+)shot_len_norm", "row", metric="acc_norm",
         meaning="rank classification, log-likelihood per character of the choice (lm-eval's acc_norm)"),
    Rule(r"eval/downstream/(?P<task>.+)_rc_(?P<shots>\d+)shot_acc", "row", metric="acc",
         meaning="rank classification by total log-likelihood (lm-eval's acc)"),
    Rule(r"eval/downstream_soft/(?P<task>.+)_rc_(?P<shots>\d+)shot_soft", "row", metric="soft",
         meaning="OLMo-ladder's soft score (not an lm-eval metric; by its values the probability mass on "
                 "the gold choice among the choices)"),
    Rule(r"eval/downstream_soft_log/(?P<task>.+)_rc_(?P<shots>\d+)shot_soft_log", "row", metric="soft_log",
         meaning="OLMo-ladder's log soft score (not an lm-eval metric; by its values the log of `soft`)"),
]
# OLMo's `<task>_<split>` -> (lm-eval task, split scored). lm-eval's own task scores LM_EVAL_SPLIT[task];
# the other split of the same task is stored as `<task>_<split>` (e.g. arc_easy_validation).
OLMO_TASKS = {
    "hellaswag_val": ("hellaswag", "validation"),
    "arc_easy_val": ("arc_easy", "validation"), "arc_easy_test": ("arc_easy", "test"),
    "arc_challenge_val": ("arc_challenge", "validation"), "arc_challenge_test": ("arc_challenge", "test"),
    "boolq_val": ("boolq", "validation"),
    "csqa_val": ("commonsense_qa", "validation"),
    "openbookqa_val": ("openbookqa", "validation"), "openbookqa_test": ("openbookqa", "test"),
    "piqa_val": ("piqa", "validation"),
    "socialiqa_val": ("social_iqa", "validation"),
    "winogrande_val": ("winogrande", "validation"),
    **{f"mmlu_{c}_{s}": (f"mmlu_{c}", {"val": "validation", "test": "test"}[s])
       for c in ("stem", "humanities", "social_sciences", "other") for s in ("val", "test")},
}
# The split lm-eval 0.4 scores for each task (its YAML's test_split, else validation_split).
LM_EVAL_SPLIT = {
    "hellaswag": "validation", "arc_easy": "test", "arc_challenge": "test", "boolq": "validation",
    "commonsense_qa": "validation", "openbookqa": "test", "piqa": "validation", "social_iqa": "validation",
    "winogrande": "validation", "mmlu_stem": "test", "mmlu_humanities": "test", "mmlu_social_sciences": "test",
    "mmlu_other": "test",
}
# Pythia (lm-eval v0.3 names) -> lm-eval 0.4 names: (pattern, task template, group).
PYTHIA_TASKS = [
    (r"hendrycksTest-(?P<name>[a-z_]+)", "mmlu_{name}", "mmlu"),
    (r"(?P<name>crows_pairs_[a-z_]+|crows_pairs)", "{name}", None),
    (r"(?P<name>lambada_openai|piqa|arc_easy|arc_challenge|winogrande|sciq|logiqa|wsc)", "{name}", None),
]
PYTHIA_METRICS = {"acc": "acc", "acc_norm": "acc_norm", "ppl": "perplexity",
                  "likelihood_difference": "likelihood_diff", "pct_stereotype": "pct_stereotype"}


def task_name(lm_eval_task: str, split: str) -> str:
    """lm-eval's task name when `split` is the one lm-eval scores, else `<task>_<split>`."""
    return lm_eval_task if LM_EVAL_SPLIT.get(lm_eval_task) == split else f"{lm_eval_task}_{split}"


def mapping_table() -> list[dict]:
    """The mapping as rows (family, source name, task, metric, what it is): README and reference.json."""
    rows = [{"family": "olmo-ladder", "source": r.pattern, "task": r.task or "<task>", "metric": r.metric or "-",
             "role": r.role, "meaning": r.meaning} for r in OLMO_COLUMNS]
    rows += [{"family": "olmo-ladder", "source": f"<task> = {k}", "task": task_name(*v), "metric": "",
              "role": "task", "meaning": f"lm-eval {v[0]}, {v[1]} split"} for k, v in OLMO_TASKS.items()]
    rows += [{"family": "pythia", "source": p, "task": t, "metric": "", "role": "task",
              "meaning": f"group {g}" if g else ""} for p, t, g in PYTHIA_TASKS]
    rows += [{"family": "pythia", "source": k, "task": "", "metric": v, "role": "metric",
              "meaning": "stderr from <metric>_stderr"} for k, v in PYTHIA_METRICS.items()]
    return rows


# ---------------------------------------------------------------- reading one file
@dataclass
class Parsed:
    rows: list[dict]
    not_mapped: list[str]  # columns / task.metric names the table does not map
    series: str
    source: dict


def _num(v, where: str) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        try:
            v = float(str(v).strip())
        except ValueError:
            raise UserError(f"{where}: {v!r} is not a number") from None
    v = float(v)
    return v if math.isfinite(v) else None


def items_behind(values, n_max: int = 50_000) -> int | None:
    """The number of items behind a column of accuracies of the same items: the smallest n that makes every
    value a whole number of items (the files keep float32 fractions; 1e-6 relative precision is far finer
    than 1/n). None when no n up to `n_max` fits (not accuracies, or too few distinct values to tell)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    v = np.unique(v)
    if len(v) < 3 or (v < 0).any() or (v > 1).any():
        return None
    best = None
    for lo in range(1, n_max + 1, 5000):  # in blocks: the smallest fitting n, without an n_max x len(v) matrix
        n = np.arange(lo, min(lo + 5000, n_max + 1))[:, None]
        c = v[None, :] * n
        ok = (np.abs(c - np.round(c)) <= 2e-3 + n * 2e-7).all(axis=1)
        if ok.any():
            best = int(n[ok][0, 0])
            break
    return best


def items_from_stderr(p: float | None, se: float | None) -> int | None:
    """Items behind one lm-eval accuracy and its stderr: se^2 = p (1 - p) / (n - 1)."""
    if p is None or se is None or not (0 < p < 1) or se <= 0:
        return None
    n = p * (1 - p) / se**2 + 1
    return int(round(n)) if abs(n - round(n)) < 0.01 else None


def _base_row(path: Path, sha: str, **kw) -> dict:
    return {"kind": KIND, "source": path.name, "source_sha256": sha, "n": None, "limit": None, "model_sha": None,
            "task_hash": None, "dtype": None, "device": None, "batch_size": None, "finished_at": None,
            "stderr": None, "group": None, "corpus": None, "split": None, **kw}


_SIZE = re.compile(r"^(\d+(?:\.\d+)?[MBmb])\b")


def parse_olmo_ladder(path: Path) -> Parsed:
    """One OLMo-ladder CSV (one row per checkpoint) -> long-form rows."""
    import pandas as pd

    sha = file_sha256(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not an OLMo-ladder CSV ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    for col in ("_step", "batch_size_in_tokens"):
        if col not in df.columns:
            raise UserError(f"{path}: not an OLMo-ladder CSV (no {col!r} column)")
    if df.empty:
        raise UserError(f"{path}: no rows")
    steps = pd.to_numeric(df["_step"], errors="coerce")
    batch = pd.to_numeric(df["batch_size_in_tokens"], errors="coerce")
    bad = steps.isna() | batch.isna() | (steps != steps.round()) | (steps < 0) | (batch <= 0)
    if bad.any():
        i = int(bad.idxmax())
        raise UserError(f"{path}: row {i + 2}: _step {df['_step'][i]!r} / batch_size_in_tokens "
                        f"{df['batch_size_in_tokens'][i]!r} are not a step and a positive batch size")
    if steps.duplicated().any():
        raise UserError(f"{path}: step {int(steps[steps.duplicated()].iloc[0])} appears twice")
    steps, batch = steps.astype("int64"), batch.astype("int64")
    tokens = steps * batch
    if "throughput/total_tokens" in df.columns:
        total = pd.to_numeric(df["throughput/total_tokens"], errors="coerce")
        off = total.notna() & ((total - tokens).abs() > 0.5)
        if off.any():
            i = int(off.idxmax())
            raise UserError(f"{path}: step {steps[i]}: throughput/total_tokens {total[i]:.0f} != step x "
                            f"batch_size_in_tokens {tokens[i]}")
    run = path.stem
    m = _SIZE.match(run)
    size = m.group(1).upper() if m else None
    series = f"OLMo-ladder-{run}"
    base = {"family": "olmo-ladder", "model_size": size, "run": run, "series": series,
            "harness_version": "OLMo in-loop evaluation", "task_version": None}
    step_list, token_list = [int(x) for x in steps], [int(x) for x in tokens]
    rows, not_mapped = [], []
    compiled = [(re.compile(r.pattern + r"\Z"), r) for r in OLMO_COLUMNS]
    acc_rx = re.compile(r"eval/downstream/(?P<task>.+)_rc_\d+shot_(len_norm|acc)\Z")
    items = {}  # OLMo task key -> items, recovered from its accuracy column (the same items for every metric)
    for col in df.columns:
        if (m := acc_rx.match(col)) and m.group("task") not in items:
            items[m.group("task")] = items_behind(pd.to_numeric(df[col], errors="coerce").tolist())
    for col in df.columns:
        hit = next(((m, r) for rx, r in compiled if (m := rx.match(col))), None)
        if hit is None:
            not_mapped.append(col)
            continue
        m, rule = hit
        if rule.role != "row":
            continue
        g = m.groupdict()
        n = None
        if rule.task:
            task, split, shots, group = rule.task, None, None, None
        else:
            n = items.get(g["task"])
            if g["task"] not in OLMO_TASKS:
                not_mapped.append(col)
                continue
            lm_task, split = OLMO_TASKS[g["task"]]
            task, shots = task_name(lm_task, split), int(g["shots"])
            group = "mmlu" if lm_task.startswith("mmlu_") else None
        for st, tok, raw in zip(step_list, token_list, df[col].tolist()):
            v = _num(raw, f"{path}: column {col!r}, step {st}")
            if v is None:
                continue  # no measurement at this step
            rows.append(_base_row(path, sha, **base, checkpoint=f"olmo-ladder-{run}-step{st}", step=st, tokens=tok,
                                  task=task, metric=rule.metric, value=v, num_fewshot=shots, group=group,
                                  corpus=g.get("corpus"), split=split, n=n))
    if not rows:
        raise UserError(f"{path}: no column of the OLMo-ladder table (eval/...) with a value")
    return Parsed(rows, not_mapped, series, {"file": path.name, "sha256": sha, "format": "olmo-ladder",
                                             "series": series, "checkpoints": int(len(df))})


_STEP_FILE = re.compile(r"step(\d+)(?:\D|$)")
_PYTHIA_MODEL = re.compile(r"pythia(?:-v[\d.]+)?-(?P<size>\d+(?:\.\d+)?[mb])(?P<rest>(?:-[a-z0-9]+)*)$", re.I)


def _model_args(s) -> dict:
    if isinstance(s, dict):
        return {str(k): str(v) for k, v in s.items()}
    out = {}
    for part in str(s or "").split(","):
        k, _, v = part.partition("=")
        if k.strip():
            out[k.strip()] = v.strip()
    return out


def parse_pythia(path: Path) -> Parsed:
    """One lm-eval (v0.3) result JSON of a Pythia checkpoint -> long-form rows."""
    sha = file_sha256(path)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict) or not isinstance(doc.get("config"), dict):
        raise UserError(f"{path}: not an lm-eval result file (needs 'results' and 'config' objects)")
    cfg = doc["config"]
    args = _model_args(cfg.get("model_args"))
    model = args.get("pretrained", "")
    m = _PYTHIA_MODEL.search(model.split("/")[-1])
    if not m:
        raise UserError(f"{path}: config.model_args names {model!r}, not a Pythia model (pythia-<size>)")
    size = m.group("size").lower() + m.group("rest").lower()
    rev = args.get("revision", "")
    fm = _STEP_FILE.search(path.stem)
    rm = re.fullmatch(r"step(\d+)", rev)
    if rm is None and fm is None:
        raise UserError(f"{path}: neither config.model_args (revision=stepN) nor the file name gives the step")
    step = int(rm.group(1) if rm else fm.group(1))
    if rm and fm and int(fm.group(1)) != step:
        raise UserError(f"{path}: the file name says step {fm.group(1)} but config.model_args says {rev}")
    shots = cfg.get("num_fewshot")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int)):
        raise UserError(f"{path}: config.num_fewshot {shots!r} is not an integer")
    versions = doc.get("versions") or {}
    series = f"Pythia-{size[:-1]}{size[-1].upper()}" if not m.group("rest") else f"Pythia-{size}"
    base = {"family": "pythia", "model_size": m.group("size").upper(), "run": size, "series": series,
            "harness_version": "lm-eval 0.3", "num_fewshot": shots,
            "batch_size": None if cfg.get("batch_size") is None else str(cfg.get("batch_size")),
            "device": cfg.get("device"), "limit": _num(cfg.get("limit"), f"{path}: config.limit")}
    checkpoint = f"pythia-{size}-step{step}"
    rows, not_mapped = [], []
    for t, metrics in doc["results"].items():
        hit = next(((re.fullmatch(p, t), tpl, g) for p, tpl, g in PYTHIA_TASKS if re.fullmatch(p, t)), None)
        if hit is None:
            not_mapped.append(t)
            continue
        if not isinstance(metrics, dict):
            raise UserError(f"{path}: results[{t!r}] is not an object of metrics")
        m2, tpl, group = hit
        task = tpl.format(**m2.groupdict())
        n = None
        for k in ("acc", "pct_stereotype"):
            if n is None and k in metrics:
                n = items_from_stderr(_num(metrics[k], f"{path}: results[{t!r}][{k!r}]"),
                                      _num(metrics.get(f"{k}_stderr"), f"{path}: results[{t!r}][{k + '_stderr'!r}]"))
        for k, v in metrics.items():
            if k.endswith("_stderr"):
                if k[: -len("_stderr")] not in metrics:
                    not_mapped.append(f"{t}.{k}")
                continue
            if k not in PYTHIA_METRICS:
                not_mapped.append(f"{t}.{k}")
                continue
            value = _num(v, f"{path}: results[{t!r}][{k!r}]")
            if value is None:
                continue
            stderr = _num(metrics.get(f"{k}_stderr"), f"{path}: results[{t!r}][{k + '_stderr'!r}]")
            rows.append(_base_row(path, sha, **base, checkpoint=checkpoint, step=step,
                                  tokens=step * PYTHIA_TOKENS_PER_STEP, task=task, metric=PYTHIA_METRICS[k],
                                  value=value, stderr=stderr, group=group, n=n,
                                  task_version=None if versions.get(t) is None else str(versions.get(t))))
    if not rows:
        raise UserError(f"{path}: no task of the Pythia table in results")
    return Parsed(rows, not_mapped, series, {"file": path.name, "sha256": sha, "format": "pythia",
                                             "series": series, "checkpoints": 1, "revision": rev or None,
                                             "model": model})


PARSERS = {"olmo-ladder": parse_olmo_ladder, "pythia": parse_pythia}
SUFFIX = {"olmo-ladder": ".csv", "pythia": ".json"}


# ---------------------------------------------------------------- the store
def expand(fmt: str, paths: list[str]) -> list[Path]:
    """Files named, and every *.csv / *.json under directories named (sorted), without repeats."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob(f"*{SUFFIX[fmt]}") if f.is_file())
            if not found:
                raise UserError(f"{p}: no {SUFFIX[fmt]} file below it")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{p}: no such file or directory")
    seen, unique = set(), []
    for f in out:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def find_license(paths: list[str]) -> Path | None:
    """A LICENSE file beside the inputs (in a directory named, or the directory of a file named, or one
    above): the data's licence travels with the store."""
    for p in map(Path, paths):
        base = p if p.is_dir() else p.parent
        for d in (base, base.parent):
            found = sorted(f for f in d.glob("LICENSE*") if f.is_file())
            if found:
                return found[0]
    return None


def _existing(out: Path):
    """The rows and manifest of an existing reference store at `out` (None, {} when there is none)."""
    import pandas as pd

    if not out.exists():
        return None, {}
    if not out.is_dir():
        raise UserError(f"--out {out}: not a directory")
    man = out / MANIFEST
    if not man.is_file():
        if any(out.iterdir()):
            raise UserError(f"--out {out}: a non-empty directory that is not a reference store (no {MANIFEST}); "
                            "choose a new or empty directory")
        return None, {}
    try:
        manifest = json.loads(man.read_text())
        df = pd.read_parquet(out / "results.parquet")
    except (json.JSONDecodeError, OSError, ValueError) as e:
        raise UserError(f"{out}: unreadable reference store ({e}); move it away") from None
    if manifest.get("format") != STORE_FORMAT:
        raise UserError(f"{out}/{MANIFEST}: format {manifest.get('format')!r}, expected {STORE_FORMAT!r}")
    return df, manifest


def _is_store(d: Path) -> bool | str:
    """True when `d` holds only what import-reference writes (the store it merges into and replaces);
    otherwise the names of the other entries."""
    own = {MANIFEST, "results.csv", "results.parquet", "licenses"}
    foreign = sorted(x.name for x in d.iterdir() if x.name not in own)
    if (d / MANIFEST).is_file() and not foreign:
        return True
    return ", ".join(foreign[:3]) or f"no {MANIFEST}"


def table(rows: list[dict]):
    """Rows -> the store's DataFrame: COLUMNS + REFERENCE_COLUMNS, typed as eval.store types them."""
    import pandas as pd

    from .store import FLOAT_COLUMNS

    cols = COLUMNS + REFERENCE_COLUMNS
    df = pd.DataFrame(rows, columns=cols)
    df = df.astype({**{c: "Int64" for c in INT_COLUMNS}, **{c: "Float64" for c in FLOAT_COLUMNS}})
    df = df.astype({c: "string" for c in cols if c not in INT_COLUMNS + FLOAT_COLUMNS})
    return df.sort_values(["family", "series", "step", "task", "metric"], kind="stable").reset_index(drop=True)


def import_reference(fmt: str, paths: list[str], out: str, csv: bool = True) -> dict:
    """Read every file (all or nothing), merge into the reference store at `out`, write it atomically.
    `csv` False: results.parquet only (a full OLMo-ladder + Pythia import is ~21 MB of CSV, 0.6 MB of
    parquet). Returns the report: files, rows, checkpoints, series, not_mapped ({name: [files]})."""
    import pandas as pd

    if fmt not in PARSERS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    files = expand(fmt, paths)
    if not files:
        raise UserError("no input files")
    out = Path(out)
    old, manifest = _existing(out)  # refuse a bad --out before reading anything
    parsed = [PARSERS[fmt](f) for f in files]
    rows = [r for p in parsed for r in p.rows]
    new = table(rows)
    dup = new.duplicated(subset=REFERENCE_KEY, keep=False)
    if dup.any():
        r = new[dup].iloc[0]
        srcs = sorted(set(new[dup & (new["checkpoint"] == r["checkpoint"])]["source"]))
        raise UserError(f"two inputs give {r['checkpoint']} {r['task']} {r['metric']}: {', '.join(srcs)}")
    series = sorted(set(new["series"]))
    if old is not None and len(old):
        old = old[~old["series"].isin(series)]
        merged = table(pd.concat([old.astype(object), new.astype(object)], ignore_index=True).to_dict("records"))
    else:
        merged = new
    not_mapped: dict[str, list[str]] = {}
    for p in parsed:
        for name in p.not_mapped:
            not_mapped.setdefault(name, []).append(p.source["file"])
    sources = [s for s in manifest.get("sources", []) if s.get("series") not in series]
    sources += [p.source for p in parsed]
    prev_nm = {k: v for k, v in (manifest.get("not_mapped") or {}).items() if k != fmt}
    licenses = {k: v for k, v in (manifest.get("licenses") or {}).items() if k != fmt}
    texts = {k: (out / v["file"]).read_bytes() for k, v in licenses.items() if (out / v["file"]).is_file()}
    lic = find_license(paths)
    if lic is not None:
        texts[fmt] = lic.read_bytes()
        licenses[fmt] = {"file": f"licenses/{fmt}-{lic.name}", "source": lic.name,
                         "sha256": file_sha256(lic)}
    else:
        log.warning(f"no LICENSE file beside the {fmt} inputs: record the data's licence with the store yourself")
    doc = {
        "format": STORE_FORMAT,
        "about": "published per-checkpoint results of other open model suites, imported by "
                 "`dmas-repro import-reference`; see dmas_repro/eval/reference.py",
        "sources": sorted(sources, key=lambda s: (s.get("format", ""), s.get("series", ""), s.get("file", ""))),
        "not_mapped": {**prev_nm, fmt: {k: sorted(v) for k, v in sorted(not_mapped.items())}} if not_mapped
        else prev_nm,
        "licenses": dict(sorted(licenses.items())),
        "mapping": mapping_table(),
    }
    with atomic_dir(out, replace=_is_store, hint="choose a new directory or move it away") as tmp:
        if csv:
            merged.to_csv(tmp / "results.csv", index=False)
        merged.to_parquet(tmp / "results.parquet", index=False)
        for k, data in texts.items():
            (tmp / licenses[k]["file"]).parent.mkdir(exist_ok=True)
            (tmp / licenses[k]["file"]).write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")
    return {"files": len(files), "rows": len(new), "checkpoints": int(new["checkpoint"].nunique()),
            "series": series, "not_mapped": not_mapped, "store_rows": len(merged), "out": str(out)}


def run(fmt: str, paths: list[str], out: str, csv: bool = True) -> int:
    """The command: import, then print what was imported and what was not mapped."""
    rep = import_reference(fmt, paths, out, csv=csv)
    print(f"imported {rep['rows']:,} rows ({rep['checkpoints']} checkpoints of {len(rep['series'])} run(s): "
          f"{', '.join(rep['series'])}) from {rep['files']} file(s) into {rep['out']} "
          f"({rep['store_rows']:,} rows in the store)")
    if rep["not_mapped"]:
        nm = rep["not_mapped"]
        every = [k for k, v in nm.items() if len(v) == rep["files"]]
        some = {k: v for k, v in nm.items() if len(v) != rep["files"]}
        if every:
            log.warning(f"not mapped (in every file; listed in {out}/{MANIFEST}): {', '.join(every)}")
        for k, v in some.items():
            log.warning(f"not mapped: {k} (in {len(v)} file(s): {', '.join(v[:3])}{' ...' if len(v) > 3 else ''})")
    return 0
