"""Benchmark scores and validation loss against tokens seen, one panel per task."""

from __future__ import annotations

import numpy as np

from analysis import items as item_analysis
from analysis import scores

from . import style
from .core import Skip


def plot(ctx):
    res = ctx.results()
    sc = scores.scores(res)
    vl = scores.val_loss(res)
    tasks = sorted(sc["task"].unique())
    nll = res[res["metric"] == "gold_nll_per_byte"]
    panels = [("val_loss", None)] * (not vl.empty) + [("task", t) for t in tasks]
    if not panels:
        raise Skip("the results store holds no benchmark or validation-loss rows")
    ncols = min(3, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = style.figure(ncols=ncols, nrows=nrows, height=2.3)
    series = sorted(res["series"].unique())
    colors = dict(zip(series, style.colors(len(series))))
    final_tokens = res[res["kind"] == "base"].groupby("series")["tokens"].max()
    try:  # chance levels from the per-item records where they exist (truthfulqa_mc2's is the items' mean)
        per_item = ctx.items()
    except Skip:
        per_item = None
    for ax, (what, task) in zip(axes.flat, panels):
        if what == "val_loss":
            for s, g in vl.groupby("series"):
                g = g[g["kind"] == "base"].sort_values("tokens")
                ax.plot(g["tokens"], g["val_loss"], "o-", color=colors[s], ms=3, label=s)
            ax.set(ylabel="validation loss", title="validation loss")
        else:
            g_all = sc[sc["task"] == task]
            for s, g in g_all.groupby("series"):
                b = g[g["kind"] == "base"].sort_values("tokens")
                err = b["stderr"] if "stderr" in b.columns else None
                ax.errorbar(b["tokens"], b["value"], yerr=err, fmt="o-", color=colors[s], ms=3, capsize=2,
                            label=s)
                inst = g[g["kind"] == "instruct"]
                if not inst.empty:  # tuned from the last base checkpoint: drawn at its token count
                    ax.scatter([final_tokens.get(s, np.nan)] * len(inst), inst["value"], marker="*", s=60,
                               color=colors[s], edgecolor="k", lw=0.5, zorder=5, label=f"{s} instruct")
            ch = item_analysis.chance_level(per_item, task) if per_item is not None and len(per_item) else \
                scores.chance(task)
            if np.isfinite(ch):
                ax.axhline(ch, color="grey", ls=":", lw=1, label="chance")
            ax.set(ylabel=g_all["metric"].iloc[0], title=task)
            t_nll = nll[(nll["task"] == task) & (nll["kind"] == "base")].sort_values("tokens")
            if not t_nll.empty:
                ax2 = ax.twinx()
                ax2.plot(t_nll["tokens"], t_nll["value"], "s:", color="0.45", ms=2, lw=0.8)
                ax2.set_ylabel("gold NLL / byte (grey)", fontsize=7)
                ax2.grid(False)
        style.tokens_axis(ax)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
