"""Paired tests between neighbouring checkpoints, per task: is a change real? The paired bootstrap of
the mean change, and the test that fits the per-item values (McNemar for 0/1, Wilcoxon signed-rank for
continuous scores such as truthfulqa_mc2)."""

from __future__ import annotations

import pandas as pd

from analysis import items

from .core import Skip


def table(ctx) -> pd.DataFrame:
    it = ctx.items()
    it = it[it["kind"] == "base"]
    out = []
    for (series, task), g in it.groupby(["series", "task"]):
        if g["checkpoint"].nunique() >= 2:
            out.append(items.neighbour_tests(g, task, series=series, n_boot=max(ctx.n_boot, 1000)).assign(
                series=series))
    if not out:
        raise Skip("per-item records of fewer than 2 checkpoints")
    df = pd.concat(out, ignore_index=True)
    cols = ["series", "task", "before", "after", "tokens_before", "tokens_after", "delta", "ci_low", "ci_high",
            "p_bootstrap", "test", "p_test", "gained", "lost", "n", "significant"]
    return df[[c for c in cols if c in df.columns]]


def make(ctx) -> None:
    ctx.save_table(table(ctx), index=False, floatfmt=".3g",
                   caption="Change in the per-item score between neighbouring checkpoints (paired over items, 95% CI; "
                            "test: McNemar for 0/1 items, Wilcoxon for continuous scores).")
