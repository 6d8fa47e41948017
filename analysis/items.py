"""Per-item analysis: which benchmark items a checkpoint solves, when each item is first reliably
solved, which are forgotten later, and whether a change between two checkpoints is real.

Input: the per-item frame of `analysis.io.load_items` (one row per checkpoint x task x item with
`doc_id`, `acc`, `acc_norm`, `loglikelihoods`, `gold`, ...).
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


def item_matrix(items: pd.DataFrame, task: str, correct: str | None = None, series: str | None = None,
                kind: str | None = "base") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items x checkpoints matrix of correctness (0/1) for one task, checkpoints in training order.

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
    m = m[list(info.index)].dropna().astype(int)
    m.columns.name = None
    return m, info


def chance_level(items: pd.DataFrame, task: str) -> float:
    """Expected accuracy of random guessing: mean over items of 1 / number of choices."""
    df = items[items["task"] == task]
    if "loglikelihoods" in df.columns:
        k = df.drop_duplicates(subset=["doc_id"])["loglikelihoods"].map(len)
        if len(k) and (k > 0).all():
            return float((1.0 / k).mean())
    from .scores import chance

    return chance(task)


def _first_run(ok: np.ndarray, start: int, window: int) -> int:
    """First index j >= start with ok[j : j + window] all true (the window is cut at the end), else -1."""
    n = len(ok)
    for j in range(start, n):
        if ok[j:min(j + window, n)].all():
            return j
    return -1


def item_trajectories(matrix: pd.DataFrame, window: int = 2) -> pd.DataFrame:
    """When each item is first reliably solved, and whether it is forgotten later.

    Reliably solved at checkpoint j: correct at j and at the next window-1 checkpoints (a window
    reaching past the last checkpoint is cut there). Forgotten at m > j: wrong at m and at the next
    window-1 checkpoints. One row per item: first_solved / forgotten_at (checkpoint name or None),
    their column indices (-1 for never), ever_correct, final_correct, n_correct.
    """
    cols = list(matrix.columns)
    out = []
    for doc, row in zip(matrix.index, matrix.to_numpy(dtype=bool)):
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


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Is mean(b) - mean(a) real? Paired bootstrap over items (same items resampled for both).

    a, b: per-item scores (0/1 correctness, or continuous) of two checkpoints on the same items.
    Returns delta, its percentile CI, a two-sided bootstrap p-value (resampled deltas centred on
    their mean form the null) and, for 0/1 scores, McNemar's exact p-value on the discordant pairs.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired_bootstrap needs two equal-length, non-empty 1-D score vectors")
    d = b - a
    n = len(d)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    delta = float(d.mean())
    p = (1 + np.sum(np.abs(boots - boots.mean()) >= abs(delta) - 1e-12)) / (n_boot + 1)
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    out = {"delta": delta, "ci_low": float(lo), "ci_high": float(hi), "p_bootstrap": float(min(1.0, p)), "n": n}
    if set(np.unique(a)) <= {0, 1} and set(np.unique(b)) <= {0, 1}:
        gained, lost = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
        out.update(gained=gained, lost=lost,
                   p_mcnemar=float(stats.binomtest(min(gained, lost), gained + lost).pvalue)
                   if gained + lost else 1.0)
    return out


def neighbour_tests(items: pd.DataFrame, task: str, series: str | None = None, kind: str | None = "base",
                    n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Paired bootstrap between each pair of neighbouring checkpoints (in training order) on one task."""
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
    """Per row: log-likelihood of the gold choice minus the best other choice (> 0 means solved)."""
    def margin(r):
        ll = np.asarray(r["loglikelihoods"], float)
        g = int(r["gold"])
        others = np.delete(ll, g)
        return float(ll[g] - others.max()) if len(others) else np.nan

    return items.apply(margin, axis=1)
