"""Benchmark scores against validation loss and tokens seen; correlations; base vs instruct; reruns.

All functions take the long-form results frame of `analysis.io.load_results` (one row per
checkpoint x task x metric) and return tidy DataFrames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from dmas_repro.eval.suites import HEADLINE_METRIC as PRIMARY_METRIC  # noqa: F401 (re-exported)
from dmas_repro.eval.suites import base_task, headline_metric

VAL_TASK = "val_loss"
VAL_METRIC = "loss"

# Chance levels fixed by a task's definition: the expected headline score of a model that gives
# every choice the same probability, where every item has the same number of choices and one gold
# (lambada: an open vocabulary, 0). Per-item records give every task's level exactly
# (`items.chance_level`); these are used without them. ARC has a few items with 3 or 5 choices
# (1/4 is then approximate), and truthfulqa_mc2 has none: its level, the mean over items of
# true answers / answers, comes from the items only (see `items.chance_levels`, the README table).
CHANCE = {
    "hellaswag": 1 / 4, "arc_easy": 1 / 4, "arc_challenge": 1 / 4, "piqa": 1 / 2, "openbookqa": 1 / 4,
    "winogrande": 1 / 2, "boolq": 1 / 2, "lambada_openai": 0.0, "mmlu": 1 / 4,
}
CHANCE_RULE = {
    "hellaswag": "4 endings per item", "arc_easy": "1/choices per item (most have 4; a few 3 or 5)",
    "arc_challenge": "1/choices per item (most have 4; a few 3 or 5)", "piqa": "2 solutions",
    "openbookqa": "4 choices", "winogrande": "2 options", "boolq": "yes/no", "lambada_openai":
    "open vocabulary (greedy match of the last word)", "mmlu": "4 choices (A-D)",
    "truthfulqa_mc2": "mean over items of true answers / answers (what a uniform model scores)",
}

KEYS = ["series", "kind", "checkpoint", "step", "tokens"]


def chance(task: str) -> float:
    """The fixed chance level of a known task (`CHANCE`; NaN when the task has none, as
    truthfulqa_mc2, or is unknown: per-item records give it exactly, `items.chance_level`)."""
    return CHANCE.get(base_task(task), np.nan)


def _keys(df: pd.DataFrame) -> list[str]:
    return [k for k in KEYS if k in df.columns]


def primary_metric(results: pd.DataFrame, task: str) -> str | None:
    """The metric to report for `task` (`dmas_repro.eval.suites.headline_metric`)."""
    return headline_metric(task, results.loc[results["task"] == task, "metric"])


def benchmark_tasks(results: pd.DataFrame) -> list[str]:
    """Tasks with an accuracy-type metric (everything but validation loss)."""
    tasks = sorted(set(results["task"]) - {VAL_TASK})
    return [t for t in tasks if primary_metric(results, t) is not None]


def val_loss(results: pd.DataFrame) -> pd.DataFrame:
    """Validation loss per checkpoint: the task='val_loss', metric='loss' rows."""
    v = results[(results["task"] == VAL_TASK) & (results["metric"] == VAL_METRIC)]
    return v[_keys(v) + ["value"]].rename(columns={"value": "val_loss"}).drop_duplicates(subset=["checkpoint"])


def val_loss_from_metrics(metrics: pd.DataFrame, steps) -> pd.Series:
    """Validation loss of a run at the given steps, from metrics.jsonl 'val' rows (nearest logged step)."""
    v = metrics[metrics["kind"] == "val"].dropna(subset=["val_loss"]).sort_values("step")
    if v.empty:
        return pd.Series(np.nan, index=list(steps))
    idx = np.searchsorted(v["step"].to_numpy(), np.asarray(list(steps)), side="left").clip(0, len(v) - 1)
    return pd.Series(v["val_loss"].to_numpy()[idx], index=list(steps))


def scores(results: pd.DataFrame, metric: str | None = None, tasks=None, with_loss: bool = True) -> pd.DataFrame:
    """One row per (checkpoint, task): the task's primary metric (or `metric`) with its stderr,
    tokens seen and, when `with_loss`, the checkpoint's validation loss. Sorted by series and step."""
    tasks = benchmark_tasks(results) if tasks is None else list(tasks)
    out = []
    for t in tasks:
        m = metric or primary_metric(results, t)
        rows = results[(results["task"] == t) & (results["metric"] == m)].copy()
        rows["metric"] = m
        out.append(rows)
    cols = _keys(results) + ["task", "metric", "value"] + [c for c in ("stderr", "n") if c in results.columns]
    df = pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)
    if with_loss:
        vl = val_loss(results)[["checkpoint", "val_loss"]]
        df = df.merge(vl, on="checkpoint", how="left")
    sort = [c for c in ("series", "kind", "task", "step") if c in df.columns]
    return df.sort_values(sort).reset_index(drop=True)


def score_matrix(results: pd.DataFrame, kind: str = "base", index: str = "checkpoint") -> pd.DataFrame:
    """Wide table: one row per checkpoint (ordered by tokens), one column per task's primary metric,
    plus val_loss and tokens. The benchmark-scores-per-checkpoint table of the paper."""
    s = scores(results)
    s = s[s["kind"] == kind] if "kind" in s.columns else s
    if s.empty:
        return pd.DataFrame()
    s = s.assign(col=s["task"] + " (" + s["metric"] + ")")
    wide = s.pivot_table(index=index, columns="col", values="value", aggfunc="first")
    info = s.groupby(index)[["tokens", "step", "val_loss"]].first()
    vl = val_loss(results).set_index("checkpoint")["val_loss"] if index == "checkpoint" else None
    if vl is not None:
        info["val_loss"] = info["val_loss"].fillna(vl.reindex(info.index))
    wide = info.join(wide).sort_values(["tokens", "step"])
    wide.columns.name = None
    return wide


def loss_correlations(sc: pd.DataFrame, x: str = "val_loss") -> pd.DataFrame:
    """Spearman and Pearson correlation of each task's score with `x` ('val_loss' or 'tokens'),
    with two-sided p-values; one row per (series, kind, task). Fewer than 3 points -> NaN."""
    out = []
    group = [c for c in ("series", "kind", "task") if c in sc.columns]
    for key, g in sc.dropna(subset=[x, "value"]).groupby(group):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(group, key))
        row["n"] = len(g)
        if len(g) >= 3 and g[x].nunique() > 1 and g["value"].nunique() > 1:
            rho, p_s = stats.spearmanr(g[x], g["value"])
            r, p_p = stats.pearsonr(g[x], g["value"])
        else:
            rho = p_s = r = p_p = np.nan
        row.update(spearman_rho=float(rho), spearman_p=float(p_s), pearson_r=float(r), pearson_p=float(p_p))
        out.append(row)
    return pd.DataFrame(out)


def instruct_bases(results: pd.DataFrame) -> dict[str, str]:
    """instruct checkpoint -> the base checkpoint it was tuned from: the last base checkpoint (most
    tokens) of the same series, else of any series. Instruction tuning starts from the final
    pretraining checkpoint (the released instruct model from step-43.5k; `dmas-repro train`'s sft
    stage from the run's final checkpoint); its own step counts SFT steps, so steps are not compared."""
    base = results[results["kind"] == "base"]
    order = [c for c in ("tokens", "step") if c in base.columns]
    out = {}
    for ck, series in results.loc[results["kind"] == "instruct", ["checkpoint", "series"]].drop_duplicates().values:
        b = base[base["series"] == series]
        b = b if not b.empty else base
        if not b.empty:
            out[ck] = b.sort_values(order, na_position="first")["checkpoint"].iloc[-1]
    return out


def base_vs_instruct(results: pd.DataFrame) -> pd.DataFrame:
    """Each instruct checkpoint against its base (see `instruct_bases`): one row per (instruct
    checkpoint, task, metric) that both have, with base, instruct and delta = instruct - base.
    Validation loss and every benchmark metric are included."""
    cols = ["series", "instruct", "base", "task", "metric", "base_value", "instruct_value", "delta"]
    out = []
    for ck, bck in instruct_bases(results).items():
        g = results[results["checkpoint"] == ck]
        b = results[results["checkpoint"] == bck].drop_duplicates(subset=["task", "metric"])
        m = g.merge(b[["task", "metric", "value"]], on=["task", "metric"], suffixes=("", "_base"))
        for _, r in m.iterrows():
            out.append({"series": r["series"], "instruct": ck, "base": bck, "task": r["task"], "metric": r["metric"],
                        "base_value": float(r["value_base"]), "instruct_value": float(r["value"]),
                        "delta": float(r["value"]) - float(r["value_base"])})
    return pd.DataFrame(out, columns=cols)


def match_at_tokens(rerun: pd.DataFrame, reference: pd.DataFrame, by: str = "tokens", value: str = "value",
                    log_x: bool = True) -> pd.DataFrame:
    """Overlay a rerun on a reference suite at matched token counts.

    Both frames hold one curve per task (columns `task`, `by`, `value`). For every reference point
    inside the rerun's range, the rerun's value is interpolated (linearly in log tokens when `log_x`)
    and the difference rerun - reference is reported. With by='fraction' the x axis is tokens divided
    by each series' final token count, which compares runs of different lengths.
    """
    def prep(df):
        df = df.dropna(subset=["tokens", value]).copy()
        if by == "fraction":
            df["fraction"] = df["tokens"] / df["tokens"].max()
        return df

    rerun, reference = prep(rerun), prep(reference)
    out = []
    for task, ref in reference.groupby("task"):
        rr = rerun[rerun["task"] == task].groupby(by)[value].mean().sort_index()
        if len(rr) < 2:
            continue
        xs = rr.index.to_numpy(float)
        tx = np.log(xs) if log_x else xs
        for _, r in ref.iterrows():
            x = float(r[by])
            if x < xs[0] or x > xs[-1] or x <= 0:
                continue
            y = float(np.interp(np.log(x) if log_x else x, tx, rr.to_numpy(float)))
            out.append({"task": task, by: x, "reference": float(r[value]), "rerun": y,
                        "difference": y - float(r[value])})
    return pd.DataFrame(out, columns=["task", by, "reference", "rerun", "difference"])
