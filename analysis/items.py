"""Per-item analysis: which benchmark items a checkpoint solves, when each item is first reliably
solved, which are forgotten later, and whether a change between two checkpoints is real.

Input: the per-item frame of `analysis.io.load_items` (one row per checkpoint x task x item with
`doc_id`, `acc`, `acc_norm`, `loglikelihoods`, `gold`, `chance`, ...).

Per-item values keep their type: 0/1 correctness for most tasks, a continuous score in [0, 1] for
truthfulqa_mc2 (the probability mass on the true answers). An item counts as solved when its value
is above a threshold (0.5: correct, or most of the mass on true answers), neighbouring
checkpoints are compared with a paired bootstrap of the mean (both types) plus McNemar's exact test
(0/1 values) or the Wilcoxon signed-rank test (continuous values), and chance levels come from the
items themselves (`chance_level`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def correct_column(items: pd.DataFrame, task: str) -> str:
    """acc_norm where the task's headline metric is length-normalised (see scores.PRIMARY_METRIC)."""
    from .scores import PRIMARY_METRIC, base_task

    want = PRIMARY_METRIC.get(base_task(task), "acc_norm")
    if want in items.columns and items.loc[items["task"] == task, want].notna().any():
        return want
    return "acc" if "acc" in items.columns else "acc_norm"


def checkpoint_order(items: pd.DataFrame) -> pd.DataFrame:
    """Checkpoints with their step and tokens, in training order (tokens, then step)."""
    cols = [c for c in ("checkpoint", "step", "tokens") if c in items.columns]
    info = items[cols].drop_duplicates(subset=["checkpoint"]).set_index("checkpoint")
    sort = [c for c in ("tokens", "step") if c in info.columns]
    return info.sort_values(sort) if sort else info


def is_binary(values) -> bool:
    """Whether per-item values are 0/1 correctness (else a continuous score)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return bool(np.isin(v, (0.0, 1.0)).all())


def item_matrix(items: pd.DataFrame, task: str, correct: str | None = None, series: str | None = None,
                kind: str | None = "base") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items x checkpoints matrix of per-item values for one task, checkpoints in training order:
    int 0/1 correctness, or floats where the task's per-item value is continuous (truthfulqa_mc2).

    Returns (matrix indexed by doc_id with one column per checkpoint, checkpoint info with step/tokens).
    Items missing at some checkpoint are dropped so every column covers the same items.
    """
    df = items[items["task"] == task]
    if kind is not None and "kind" in df.columns:
        df = df[df["kind"] == kind]
    if series is not None and "series" in df.columns:
        df = df[df["series"] == series]
    if df.empty:
        raise ValueError(f"no per-item records for task {task!r}")
    correct = correct or correct_column(df, task)
    info = checkpoint_order(df)
    m = df.pivot_table(index="doc_id", columns="checkpoint", values=correct, aggfunc="first")
    m = m[list(info.index)].dropna().astype(float)
    if is_binary(m.to_numpy()):
        m = m.astype(int)
    m.columns.name = None
    return m, info


def item_chance(items: pd.DataFrame, task: str) -> pd.Series | None:
    """Each item's chance level (doc_id -> expected value of a model that gives every choice the same
    probability), from the records' `chance` (|golds| / choices; truthfulqa_mc2: true answers /
    answers; lambada: 0), else 1 / the number of log-likelihoods for records that predate it; None
    when neither is recorded."""
    df = items[items["task"] == task].drop_duplicates(subset=["doc_id"]).set_index("doc_id")
    if "chance" in df.columns and df["chance"].notna().all() and len(df):
        return df["chance"].astype(float)
    if "loglikelihoods" in df.columns and len(df):
        k = df["loglikelihoods"].map(lambda v: len(v) if isinstance(v, (list, tuple, np.ndarray)) else 0)
        if (k > 1).all():
            return 1.0 / k
    return None


def chance_level(items: pd.DataFrame, task: str) -> float:
    """A task's chance level: the mean over its items of `item_chance` (for truthfulqa_mc2 the mean of
    true answers / answers, what a uniform model scores), else the task's fixed level
    (`scores.chance`; NaN when unknown)."""
    c = item_chance(items, task)
    if c is not None:
        return float(c.mean())
    from .scores import chance

    return chance(task)


def chance_levels(items: pd.DataFrame | None = None, tasks=None) -> pd.DataFrame:
    """One row per task: its chance level and where it comes from ("items": the mean of the
    per-item records' chance, `chance_level`; "task": the fixed `scores.CHANCE`), with the rule
    behind it (`scores.CHANCE_RULE`). Default tasks: those of the rules and those in `items`."""
    from .scores import CHANCE_RULE, base_task, chance

    have = set(items["task"]) if items is not None and len(items) else set()
    tasks = sorted(set(CHANCE_RULE) | have) if tasks is None else list(tasks)
    out = []
    for t in tasks:
        from_items = t in have and item_chance(items, t) is not None
        out.append({"task": t, "chance": chance_level(items, t) if from_items else chance(t),
                    "source": "items" if from_items else "task",
                    "n_items": int(items.loc[items["task"] == t, "doc_id"].nunique()) if t in have else None,
                    "rule": CHANCE_RULE.get(base_task(t), "")})
    return pd.DataFrame(out)


def _first_run(ok: np.ndarray, start: int, window: int) -> int:
    """First index j >= start with ok[j : j + window] all true (the window is cut at the end), else -1."""
    n = len(ok)
    for j in range(start, n):
        if ok[j:min(j + window, n)].all():
            return j
    return -1


def item_trajectories(matrix: pd.DataFrame, window: int = 2, threshold=0.5) -> pd.DataFrame:
    """When each item is first reliably solved, and whether it is forgotten later.

    An item is solved at a checkpoint when its value is above `threshold` (a number, or one per item
    indexed by doc_id): for 0/1 values that is "correct"; for truthfulqa_mc2's continuous score,
    0.5 means most of the probability mass on the true answers (pass `item_chance(...)` to ask
    "above chance" instead). Reliably solved at checkpoint j: solved at j and at the next window-1
    checkpoints (a window reaching past the last checkpoint is cut there). Forgotten at m > j:
    unsolved at m and at the next window-1 checkpoints. One row per item: first_solved /
    forgotten_at (checkpoint name or None), their column indices (-1 for never), ever_correct,
    final_correct, n_correct (checkpoints where solved), and the values themselves, unthresholded:
    first_value, final_value, max_value.
    """
    cols = list(matrix.columns)
    values = matrix.to_numpy(dtype=float)
    thr = (threshold.reindex(matrix.index).to_numpy(float)[:, None] if isinstance(threshold, pd.Series)
           else np.asarray(threshold, float))
    solved = values > thr
    out = []
    for doc, row, v in zip(matrix.index, solved, values):
        j = _first_run(row, 0, window)
        m = _first_run(~row, j + 1, window) if j >= 0 else -1
        out.append({
            "doc_id": doc,
            "first_solved": cols[j] if j >= 0 else None,
            "first_solved_index": j,
            "forgotten_at": cols[m] if m >= 0 else None,
            "forgotten_index": m,
            "ever_correct": bool(row.any()),
            "final_correct": bool(row[-1]),
            "n_correct": int(row.sum()),
            "first_value": float(v[0]),
            "final_value": float(v[-1]),
            "max_value": float(v.max()),
        })
    return pd.DataFrame(out).set_index("doc_id")


def learning_events(traj: pd.DataFrame, checkpoints) -> pd.DataFrame:
    """Per checkpoint: how many items become reliably solved there, and how many are forgotten there."""
    checkpoints = list(checkpoints)
    learned = traj["first_solved"].value_counts()
    forgotten = traj["forgotten_at"].value_counts()
    return pd.DataFrame({
        "checkpoint": checkpoints,
        "learned": [int(learned.get(c, 0)) for c in checkpoints],
        "forgotten": [int(forgotten.get(c, 0)) for c in checkpoints],
    })


def _mean_difference(x, y, axis=-1):
    return np.mean(y - x, axis=axis)


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Is mean(b) - mean(a) real? Paired tests over items (the same items at two checkpoints).

    a, b: per-item values (0/1 correctness, or continuous) of two checkpoints on the same items.
    Returns delta = mean(b - a); its percentile CI and a two-sided p-value from the paired bootstrap
    (`scipy.stats.bootstrap(paired=True)`; the resampled deltas centred on their mean form the null);
    and the rank/count test that fits the values (`test`, `p_test`): for 0/1 values McNemar's exact
    test on the discordant pairs (also as `p_mcnemar`, with `gained` and `lost`), for continuous
    values the Wilcoxon signed-rank test (also as `p_wilcoxon`). No difference at all gives p = 1.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired_bootstrap needs two equal-length, non-empty 1-D score vectors")
    d = b - a
    delta = float(d.mean())
    res = stats.bootstrap((a, b), _mean_difference, paired=True, vectorized=True, n_resamples=n_boot,
                          confidence_level=ci, method="percentile", rng=np.random.default_rng(seed))
    boots = res.bootstrap_distribution
    p = (1 + np.sum(np.abs(boots - boots.mean()) >= abs(delta) - 1e-12)) / (n_boot + 1)
    out = {"delta": delta, "ci_low": float(res.confidence_interval.low), "ci_high": float(res.confidence_interval.high),
           "p_bootstrap": float(min(1.0, p)), "n": len(d)}
    if is_binary(a) and is_binary(b):
        gained, lost = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
        p_test = float(stats.binomtest(min(gained, lost), gained + lost).pvalue) if gained + lost else 1.0
        out.update(gained=gained, lost=lost, p_mcnemar=p_test, test="mcnemar", p_test=p_test)
    else:
        p_test = float(stats.wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
        out.update(p_wilcoxon=p_test, test="wilcoxon", p_test=p_test)
    return out


def neighbour_tests(items: pd.DataFrame, task: str, series: str | None = None, kind: str | None = "base",
                    n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """`paired_bootstrap` between each pair of neighbouring checkpoints (in training order) on one
    task, on its per-item values as they are (0/1, or continuous); significant: p_bootstrap < alpha."""
    m, info = item_matrix(items, task, series=series, kind=kind)
    cols = list(m.columns)
    out = []
    for i in range(1, len(cols)):
        r = paired_bootstrap(m[cols[i - 1]], m[cols[i]], n_boot=n_boot, seed=seed + i)
        r.update(task=task, before=cols[i - 1], after=cols[i])
        for c in ("step", "tokens"):
            if c in info.columns:
                r[f"{c}_before"], r[f"{c}_after"] = info.loc[cols[i - 1], c], info.loc[cols[i], c]
        r["significant"] = r["p_bootstrap"] < alpha
        out.append(r)
    return pd.DataFrame(out)


def gold_margin(items: pd.DataFrame) -> pd.Series:
    """Per row: log-likelihood of the gold choice minus the best other choice (> 0 means solved); NaN
    for items without one gold (several golds, or one continuation)."""
    def margin(r):
        ll = np.asarray(r["loglikelihoods"], float)
        if pd.isna(r["gold"]):
            return np.nan
        g = int(r["gold"])
        others = np.delete(ll, g)
        return float(ll[g] - others.max()) if len(others) else np.nan

    return items.apply(margin, axis=1)
