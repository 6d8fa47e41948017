"""Benchmark scores (each task's headline metric) and validation loss per checkpoint."""

from __future__ import annotations

import pandas as pd

from analysis import scores

from .core import Skip
from .style import human


def table(ctx) -> pd.DataFrame:
    res = ctx.results()
    parts = []
    for kind in ("base", "instruct"):
        w = scores.score_matrix(res, kind=kind)
        if not w.empty:
            parts.append(w.assign(kind=kind))
    if not parts:
        raise Skip("the results store holds no benchmark rows")
    df = pd.concat(parts)
    df = df[["kind", "step", "tokens"] + [c for c in df.columns if c not in ("kind", "step", "tokens")]]
    df["tokens"] = df["tokens"].map(lambda t: "" if pd.isna(t) else human(t))
    df.index.name = "checkpoint"
    return df


def make(ctx) -> None:
    ctx.save_table(table(ctx), caption="Scores per checkpoint (headline metric per task; val_loss in nats/token).",
                   floatfmt=".4f")
