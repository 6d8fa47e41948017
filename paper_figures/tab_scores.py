"""Benchmark scores (each task's headline metric) and validation loss per checkpoint."""

from __future__ import annotations

import pandas as pd

from analysis import scores

from .core import Skip


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
    df["tokens"] = df["tokens"].map(lambda t: f"{t / 1e9:.3g}B" if t >= 1e8 else f"{t / 1e6:.3g}M")
    df.index.name = "checkpoint"
    return df


def make(ctx) -> None:
    ctx.save_table(table(ctx), caption="Scores per checkpoint (headline metric per task; val_loss in nats/token).",
                   floatfmt=".4f")
