"""Reference trajectories (OLMo ladder, Pythia) beside DMaS: the same analysis on other open suites.

Input: a reference store written by `dmas-repro import-reference` (`load`), and a DMaS results store
(`analysis.load_results`). Everything is a tidy frame of *curves*: one row per (series,
checkpoint, task) with the task's headline accuracy (`value`) and the x it is plotted or fitted
against:

- `tokens`: tokens seen;
- `val_loss`: the family's **own** validation loss: OLMo-ladder's C4 cross-entropy
  (`FAMILY_VAL_CORPUS`), DMaS's loss on its own held-out split. The published Pythia evaluations hold
  no validation loss, so Pythia has no `val_loss` (its transitions are taken against tokens). Losses
  of different corpora and tokenizers are not one scale: `x_def` names each one and matched-loss
  comparisons only pair curves with the same `x_def`;
- `gold_bpb`: the task's gold answer in bits per UTF-8 byte (OLMo's `downstream_bpb`; our
  harness's `gold_nll_per_byte` / ln 2): tokenizer-free, but OLMo scored it 5-shot and our suites
  0-shot.

Functions: `curves` (both sides), `fit_transitions` (sigmoid of accuracy against x with the floor at
chance and the transition where it leaves chance by what n items can detect, as
`analysis.transitions`), `emergence` (order in which tasks leave chance), `at_tokens` /
`matched_tokens` (reference values at DMaS's token counts, linear in log tokens; beyond a run's
checkpoints its end value, flagged as extrapolated), `at_matched_x` / `matched_summary` (curves
compared at equal loss or bpb).

Item counts: the store's `n` (the importer recovers it exactly, `dmas_repro.eval.reference`), else
from lm-eval's stderr (se^2 = p (1 - p) / (n - 1)); a curve with neither gets no transition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from dmas_repro.eval.suites import base_task, headline_metric

from .io import RELEASED_SERIES, load_results, series_of
from .scores import VAL_METRIC, VAL_TASK
from .scores import chance as known_chance
from .scores import val_loss as store_val_loss
from .transitions import emergence_order, parametric_transition

FAMILY_VAL_CORPUS = {"olmo-ladder": "c4_en"}  # the validation loss each family is plotted against
DMAS_FAMILY = "dmas"
ACCURACY = ("acc", "acc_norm")
# Tasks compared across suites in the figures (those DMaS's paper suite has and a reference family too).
COMPARE_TASKS = ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "boolq", "openbookqa",
                 "lambada_openai"]
# Random-guess accuracy of tasks that `scores.CHANCE` does not list (1 / number of choices).
EXTRA_CHANCE = {"commonsense_qa": 0.2, "social_iqa": 1 / 3, "sciq": 0.25, "logiqa": 0.25, "wsc": 0.5}
SPLIT_SUFFIXES = ("_validation", "_test")
LN2 = math.log(2)


def task_of(task: str) -> str:
    """The standard task a row stands for: local variants ('hellaswag_dev') and other splits
    ('arc_easy_validation') map to lm-eval's task."""
    t = str(task)
    for s in SPLIT_SUFFIXES:
        t = t.removesuffix(s)
    return base_task(t)


def chance(task: str) -> float:
    t = task_of(task)
    c = known_chance(t)
    if np.isfinite(c):
        return float(c)
    if t in EXTRA_CHANCE:
        return EXTRA_CHANCE[t]
    return 0.25 if t.startswith("mmlu_") else np.nan


# ---------------------------------------------------------------- loading
def load(paths) -> pd.DataFrame:
    """Reference stores (directories or results files) as one frame (`analysis.load_results`)."""
    df = load_results(paths)
    for c in ("family", "series", "run", "model_size", "corpus", "split"):
        if c not in df.columns:
            df[c] = None
    df["series"] = df["series"].fillna(df["checkpoint"].map(series_of))
    return df


def dmas_side(results: pd.DataFrame) -> pd.DataFrame:
    """The DMaS rows to show: the released suite's base checkpoints when the results hold them, else every
    base series (e.g. the tiny run of the shipped examples)."""
    base = results[results["kind"] == "base"]
    if (base["series"] == RELEASED_SERIES).any():
        return base[base["series"] == RELEASED_SERIES]
    return base


# ---------------------------------------------------------------- curves
def _accuracy_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Per (series, task): the headline metric among acc / acc_norm (eval.suites.headline_metric)."""
    out = []
    for (_, task), g in df[df["metric"].isin(ACCURACY)].groupby(["series", "task"], sort=False):
        m = headline_metric(task_of(task), g["metric"].unique())
        out.append(g[g["metric"] == m])
    return pd.concat(out, ignore_index=True) if out else df.iloc[0:0]


def reference_curves(ref: pd.DataFrame) -> pd.DataFrame:
    """Curves of a reference store: headline accuracy with tokens, own val_loss and gold_bpb."""
    acc = _accuracy_rows(ref[ref["task"] != VAL_TASK])
    vl = ref[(ref["task"] == VAL_TASK) & (ref["metric"] == VAL_METRIC)]
    picks = []
    for fam, g in vl.groupby("family"):
        corpus = FAMILY_VAL_CORPUS.get(fam)
        if corpus is None and g["corpus"].nunique() == 1:
            corpus = g["corpus"].iloc[0]
        picks.append(g[g["corpus"] == corpus].assign(x_def=f"{fam} {corpus} loss"))
    vl = pd.concat(picks) if picks else pd.DataFrame(columns=["checkpoint", "value", "x_def"])
    vl = vl.drop_duplicates("checkpoint").set_index("checkpoint")
    bpb = ref[ref["metric"] == "gold_bpb"].drop_duplicates(["checkpoint", "task"])
    bpb = bpb.set_index(["checkpoint", "task"])["value"]
    out = acc.assign(val_loss=acc["checkpoint"].map(vl["value"]).astype(float),
                     loss_def=acc["checkpoint"].map(vl["x_def"]),
                     gold_bpb=[bpb.get((c, t), np.nan) for c, t in zip(acc["checkpoint"], acc["task"])])
    return _tidy(out)


def dmas_curves(results: pd.DataFrame) -> pd.DataFrame:
    """Curves of a DMaS results store (base checkpoints; `dmas_side` picks which series): headline accuracy,
    tokens, the store's validation loss and gold_nll_per_byte / ln 2."""
    side = dmas_side(results)
    if side.empty:
        return _tidy(pd.DataFrame())
    acc = _accuracy_rows(side[side["task"] != VAL_TASK])
    if "group" in acc.columns:  # a group's row stands for its subtasks (mmlu)
        acc = acc[acc["group"].isna() | (acc["task"] == acc["group"])]
    vl = store_val_loss(side).set_index("checkpoint")["val_loss"]
    nll = side[side["metric"] == "gold_nll_per_byte"].drop_duplicates(["checkpoint", "task"])
    nll = nll.set_index(["checkpoint", "task"])["value"]
    out = acc.assign(family=DMAS_FAMILY, val_loss=acc["checkpoint"].map(vl).astype(float),
                     loss_def=lambda d: d["series"] + " validation loss",
                     gold_bpb=[nll.get((c, t), np.nan) / LN2 for c, t in zip(acc["checkpoint"], acc["task"])])
    return _tidy(out)


CURVE_COLUMNS = ["family", "series", "kind", "checkpoint", "step", "tokens", "task", "standard_task", "metric",
                 "value", "stderr", "n", "num_fewshot", "val_loss", "loss_def", "gold_bpb"]


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in CURVE_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df["standard_task"] = df["task"].map(task_of) if len(df) else df["task"]
    for c in ("step", "tokens", "value", "stderr", "n", "num_fewshot", "val_loss", "gold_bpb"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df[CURVE_COLUMNS].sort_values(["family", "series", "task", "tokens"], kind="stable").reset_index(drop=True)


def curves(ref: pd.DataFrame | None = None, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Reference and DMaS curves in one frame (either may be None)."""
    parts = ([reference_curves(ref)] if ref is not None else []) + ([dmas_curves(results)] if results is not None
                                                                     else [])
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else _tidy(pd.DataFrame())


# ---------------------------------------------------------------- transitions
def items_from_stderr(value, stderr) -> int | None:
    """Items behind accuracies with lm-eval's stderr: n = p (1 - p) / se^2 + 1 (median over checkpoints)."""
    p, se = np.asarray(value, float), np.asarray(stderr, float)
    ok = np.isfinite(p) & np.isfinite(se) & (se > 0) & (p > 0) & (p < 1)
    if not ok.any():
        return None
    return int(round(float(np.median(p[ok] * (1 - p[ok]) / se[ok] ** 2 + 1))))


X_CHOICES = ("val_loss", "gold_bpb", "tokens")


def fit_transitions(cv: pd.DataFrame, x: str = "val_loss", n_boot: int = 200, seed: int = 0,
                    alpha: float = 0.05, tasks: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (series, task): sigmoid of accuracy against `x` (floor = chance) and the transition,
    as `analysis.parametric_transition` computes them.

    x: 'val_loss' (the family's own loss), 'gold_bpb' or 'tokens' (fitted against -log10 tokens, so that
    x falls as training goes on like a loss; `transition_tokens` converts back). Columns as
    `transitions.task_transitions` (transition_loss etc. in x's units) plus family, x, x_def, n_source.
    """
    if x not in X_CHOICES:
        raise ValueError(f"x must be one of {X_CHOICES}")
    want = set(tasks) if tasks is not None else None
    out = []
    for (series, task), g in cv.groupby(["series", "task"], sort=True):
        if want is not None and task not in want and task_of(task) not in want:
            continue
        level = chance(task)
        if not np.isfinite(level):
            continue
        g = g.sort_values(["tokens", "step"])
        xs = -np.log10(g["tokens"].where(g["tokens"] > 0)) if x == "tokens" else g[x]
        ok = np.isfinite(xs.to_numpy(float)) & np.isfinite(g["value"].to_numpy(float))
        g, xs = g[ok], xs[ok].to_numpy(float)
        if len(g) < 3 or np.ptp(xs) == 0:
            continue
        acc = g["value"].to_numpy(float)
        n, n_source = (int(g["n"].median()), "store") if g["n"].notna().any() else (None, "")
        if n is None:
            n, n_source = items_from_stderr(g["value"], g["stderr"]), "stderr"
        if n is None:
            continue  # no item count: the significance margin is undefined
        try:
            r = parametric_transition(xs, acc, n, level, n_boot, seed, alpha)
        except ValueError:
            continue
        i = r.pop("first_above_chance_index")
        row = {"family": g["family"].iloc[0], "series": series, "task": task, "metric": g["metric"].iloc[0],
               "x": x, "x_def": {"val_loss": g["loss_def"].iloc[0], "gold_bpb": "gold answer bits per byte",
                                 "tokens": "-log10 tokens"}[x],
               "n_points": len(g), "n_source": n_source, "num_fewshot": g["num_fewshot"].iloc[0],
               "x_min": float(xs.min()), "x_max": float(xs.max()), **r,
               "first_above_chance_checkpoint": g["checkpoint"].iloc[i] if i >= 0 else None,
               "first_above_chance_tokens": float(g["tokens"].iloc[i]) if i >= 0 else np.nan}
        if x == "tokens":  # back from -log10 tokens: a lower x is later in training
            row.update(transition_tokens=10 ** -row["transition_loss"], midpoint_tokens=10 ** -row["midpoint"],
                       transition_tokens_low=10 ** -row["transition_high"],
                       transition_tokens_high=10 ** -row["transition_low"])
        out.append(row)
    return pd.DataFrame(out)


def emergence(tr: pd.DataFrame) -> pd.DataFrame:
    """Tasks in the order they leave chance per series (`emergence_order`)."""
    return emergence_order(tr)


# ---------------------------------------------------------------- matched tokens
def dmas_token_counts() -> pd.DataFrame:
    """The ten released DMaS-LLaMa-Lite base checkpoints: label, step, tokens (model.released)."""
    from dmas_repro.model.released import rows

    return pd.DataFrame([{"checkpoint": r["label"], "step": r["step"], "tokens": r["tokens"]}
                         for r in rows() if r["kind"] == "base"])


def at_tokens(curve: pd.DataFrame, tokens) -> pd.DataFrame:
    """One curve (rows of one series and task) at the given token counts: linear in log10 tokens between
    its checkpoints. Outside them the value is the end checkpoint's (a noisy end segment extended would
    run off anywhere), with `extrapolated` set and `nearest_tokens` saying how far the run reaches."""
    g = curve[curve["tokens"] > 0].sort_values("tokens").drop_duplicates("tokens")
    t = np.asarray(list(tokens), float)
    if len(g) < 2:
        return pd.DataFrame({"tokens": t, "value": np.nan, "extrapolated": True, "nearest_tokens": np.nan})
    lx, y = np.log10(g["tokens"].to_numpy(float)), g["value"].to_numpy(float)
    lt = np.log10(t)
    val = np.interp(lt, lx, y)  # np.interp holds the end values outside [lx[0], lx[-1]]
    nearest = g["tokens"].to_numpy(float)[np.abs(lx[None, :] - lt[:, None]).argmin(axis=1)]
    return pd.DataFrame({"tokens": t, "value": val, "extrapolated": (lt < lx[0]) | (lt > lx[-1]),
                         "nearest_tokens": nearest})


def matched_tokens(cv: pd.DataFrame, targets: pd.DataFrame | None = None, tasks: Iterable[str] | None = None,
                   dmas: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every reference series' accuracy at the DMaS token counts (default: the ten released checkpoints),
    long form: checkpoint, tokens, task, series, value, extrapolated, nearest_tokens, num_fewshot, and the
    DMaS value measured at that checkpoint where `dmas` curves have it."""
    targets = dmas_token_counts() if targets is None else targets
    ref = cv[cv["family"] != DMAS_FAMILY]
    if tasks is not None:
        keep = set(tasks)
        ref = ref[ref["task"].isin(keep)]
    out = []
    for (series, task), g in ref.groupby(["series", "task"], sort=True):
        r = at_tokens(g, targets["tokens"])
        r.insert(0, "checkpoint", targets["checkpoint"].to_numpy())
        out.append(r.assign(task=task, series=series, family=g["family"].iloc[0],
                            num_fewshot=g["num_fewshot"].iloc[0], metric=g["metric"].iloc[0]))
    cols = ["checkpoint", "tokens", "task", "family", "series", "metric", "num_fewshot", "value", "extrapolated",
            "nearest_tokens", "dmas_value"]
    if not out:
        return pd.DataFrame(columns=cols)
    df = pd.concat(out, ignore_index=True)
    df["dmas_value"] = np.nan
    if dmas is not None and len(dmas):
        d = dmas.drop_duplicates(["checkpoint", "standard_task"]).set_index(["checkpoint", "standard_task"])["value"]
        df["dmas_value"] = [d.get((c, task_of(t)), np.nan) for c, t in zip(df["checkpoint"], df["task"])]
    return df[cols]


def matched_tokens_wide(m: pd.DataFrame) -> pd.DataFrame:
    """`matched_tokens` as a table to read: one row per (task, DMaS checkpoint), one column per series
    (values to 3 decimals, '*' marking extrapolation), DMaS's own value first where measured."""
    if m.empty:
        return pd.DataFrame()
    cell = m["value"].map(lambda v: "" if not np.isfinite(v) else f"{v:.3f}") + np.where(m["extrapolated"], "*", "")
    w = m.assign(cell=cell).pivot_table(index=["task", "checkpoint", "tokens"], columns="series", values="cell",
                                        aggfunc="first")
    d = m.drop_duplicates(["task", "checkpoint"]).set_index(["task", "checkpoint", "tokens"])["dmas_value"]
    w.insert(0, "DMaS (measured)", d.reindex(w.index).map(lambda v: f"{v:.3f}" if np.isfinite(v) else "-"))
    w.columns.name = None
    order = {c: i for i, c in enumerate(dmas_token_counts()["checkpoint"])}
    idx = sorted(w.index, key=lambda k: (k[0], order.get(k[1], 99), k[2]))
    return w.reindex(idx).fillna("")


# ---------------------------------------------------------------- matched loss / bpb
def at_matched_x(cv: pd.DataFrame, x: str = "val_loss", against: str | None = None) -> pd.DataFrame:
    """Curves compared at equal `x` ('val_loss' within one loss definition, or 'gold_bpb'): for each task and
    each pair (series, reference series `against`; default: in each definition, the series spanning the
    widest x range), the series' accuracy interpolated (linear in x) at the reference's checkpoints inside
    its own x range, and the difference series - reference."""
    if x not in ("val_loss", "gold_bpb"):
        raise ValueError("x must be val_loss or gold_bpb")
    d = cv.dropna(subset=[x, "value"]).copy()
    d["x_def"] = d["loss_def"] if x == "val_loss" else "gold answer bits per byte"
    cols = ["task", "x", "x_def", "series", "reference", "checkpoint", x, "value", "reference_value", "difference"]
    out = []
    for (xdef, task), g in d.groupby(["x_def", "standard_task"]):
        g = g[~g["task"].str.endswith(SPLIT_SUFFIXES)] if (~g["task"].str.endswith(SPLIT_SUFFIXES)).any() else g
        span = g.groupby("series")[x].agg(lambda v: v.max() - v.min())
        ref = against if against is not None else (span.idxmax() if len(span) else None)
        gb = g[g["series"] == ref]
        if gb.empty:
            continue
        for a, ga in g[g["series"] != ref].groupby("series"):
            ga = ga.sort_values(x)
            if len(ga) < 2:
                continue
            xa, ya = ga[x].to_numpy(float), ga["value"].to_numpy(float)
            inside = gb[(gb[x] >= xa[0]) & (gb[x] <= xa[-1])]
            if inside.empty:
                continue
            y = np.interp(inside[x].to_numpy(float), xa, ya)
            out.append(pd.DataFrame({"task": task, "x": x, "x_def": xdef, "series": a, "reference": ref,
                                     "checkpoint": inside["checkpoint"].to_numpy(), x: inside[x].to_numpy(float),
                                     "value": y, "reference_value": inside["value"].to_numpy(float),
                                     "difference": y - inside["value"].to_numpy(float)}))
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def matched_summary(m: pd.DataFrame) -> pd.DataFrame:
    """Per (x_def, task, series, reference): points compared, mean and max |difference|, mean difference."""
    if m.empty:
        return pd.DataFrame(columns=["x_def", "task", "series", "reference", "n_points", "mean_difference",
                                     "mean_abs_difference", "max_abs_difference"])
    g = m.groupby(["x_def", "task", "series", "reference"])["difference"]
    return pd.DataFrame({"n_points": g.size(), "mean_difference": g.mean(),
                         "mean_abs_difference": g.apply(lambda v: v.abs().mean()),
                         "max_abs_difference": g.apply(lambda v: v.abs().max())}).reset_index()
