"""An own training run overlaid on the released suite at matched token counts: validation loss and
each task's score against tokens, with the rerun interpolated at the released checkpoints' tokens."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import scores
from analysis.io import RELEASED_SERIES

from . import style
from .core import Skip


def plot(ctx):
    res = ctx.results()
    base = res[res["kind"] == "base"]
    series = sorted(base["series"].unique())
    if RELEASED_SERIES not in series or len(series) < 2:
        raise Skip("needs results of the released checkpoints and of an own run in the results store; run "
                   "`dmas-repro eval-all-checkpoints --checkpoints released` (on a GPU) and "
                   "`dmas-repro eval-all-checkpoints --checkpoints runs/NAME` with the same suite")
    sc = scores.scores(base)
    vl = scores.val_loss(base).rename(columns={"val_loss": "value"}).assign(task="val_loss")
    curves = [("val_loss", vl)] + [(t, sc[sc["task"] == t]) for t in sorted(sc["task"].unique())]
    curves = [(t, c) for t, c in curves if c["series"].nunique() >= 2]
    reruns = [s for s in series if s != RELEASED_SERIES]
    ncols = min(3, len(curves))
    nrows = int(np.ceil(len(curves) / ncols))
    fig, axes = style.figure(ncols=ncols, nrows=nrows, height=2.4)
    colors = dict(zip(series, style.colors(len(series))))
    table = []
    for ax, (task, c) in zip(axes.flat, curves):
        ref = c[c["series"] == RELEASED_SERIES]
        for s, g in c.groupby("series"):
            g = g.sort_values("tokens")
            ax.plot(g["tokens"], g["value"], "o-" if s == RELEASED_SERIES else ".-", ms=3, color=colors[s], label=s)
        for s in reruns:
            m = scores.match_at_tokens(c[c["series"] == s], ref)
            if not m.empty:
                ax.plot(m["tokens"], m["rerun"], "x", color=colors[s], ms=6, label=f"{s} at matched tokens")
                table.append(m.assign(rerun_series=s))
        ax.set(title=task, ylabel="value")
        style.tokens_axis(ax)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.matched = pd.concat(table, ignore_index=True) if table else None
    return fig


def make(ctx) -> None:
    fig = plot(ctx)
    matched = fig.matched
    ctx.save_figure(fig)
    if matched is not None:
        ctx.save_table(matched, stem="rerun_overlay_matched", index=False,
                       caption="Own run interpolated (log tokens) at the released checkpoints' token counts")
