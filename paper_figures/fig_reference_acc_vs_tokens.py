"""DMaS beside other open suites' training trajectories: accuracy against tokens seen (log scale), one
panel per task; the reference families' published numbers (OLMo ladder 5-shot, Pythia 0-shot) and DMaS as
this project measures it. Dotted verticals: the ten released DMaS checkpoints."""

from __future__ import annotations

import numpy as np

from analysis import reference

from . import reference_data as rd
from . import style
from .core import Skip


def plot(ctx):
    cv = rd.curves(ctx)
    tasks = rd.tasks(cv)
    if not tasks:
        raise Skip("the reference store holds none of the compared tasks " + ", ".join(reference.COMPARE_TASKS))
    cv = cv[cv["standard_task"].isin(tasks) & (cv["tokens"] > 0)]
    colors = rd.colors(cv)
    ncols = min(4, len(tasks))
    nrows = int(np.ceil(len(tasks) / ncols))
    fig, axes = style.figure(ncols=ncols, nrows=nrows, height=2.2)
    marks = reference.dmas_token_counts()["tokens"]
    handles = {}
    for ax, task in zip(axes.flat, tasks):
        for t in marks:
            ax.axvline(t, color="0.8", ls=":", lw=0.6, zorder=0)
        g_task = cv[cv["standard_task"] == task]
        for s in rd.series_order(g_task):
            g = g_task[g_task["series"] == s].sort_values("tokens")
            dmas = g["family"].iloc[0] == reference.DMAS_FAMILY
            (h,) = ax.plot(g["tokens"], g["value"], "o-" if dmas else "-", ms=2.5, lw=1.6 if dmas else 1.0,
                           color=colors[s], zorder=3 if dmas else 2)
            handles.setdefault(s, (h, rd.label(cv, s)))
        ch = reference.chance(task)
        if np.isfinite(ch):
            ax.axhline(ch, color="grey", ls="--", lw=0.8)
        ax.set(title=task, ylabel="/".join(sorted(g_task["metric"].unique())))
        style.tokens_axis(ax)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    order = [s for s in rd.series_order(cv) if s in handles]
    fig.legend([handles[s][0] for s in order], [handles[s][1] for s in order], loc="lower center",
               ncol=min(4, len(order)), fontsize=6, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06 + 0.025 * ((len(order) - 1) // 4), 1, 1))
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
