"""Accuracy against each family's own validation loss, one panel per task: OLMo-ladder runs against their
C4 loss, DMaS against its held-out loss (corpora and tokenizers differ, so the x positions of different
families are not one scale), with fitted sigmoids (floor = chance) and transition losses (ticks). Pythia's
published evaluations hold no validation loss."""

from __future__ import annotations

import textwrap

import numpy as np

from analysis import reference

from . import reference_data as rd
from . import style
from .core import Skip

X = "val_loss"
XLABEL = "own validation loss, nats/token (training goes right)"
NOTE = rd.NO_PYTHIA_LOSS + "; each family's loss is on its own corpus and tokenizer"


def plot(ctx, x: str = X, xlabel: str = XLABEL, note: str = NOTE):
    cv = rd.curves(ctx)
    tasks = rd.tasks(cv)
    cv = cv[cv["standard_task"].isin(tasks)].dropna(subset=[x])
    tasks = [t for t in tasks if (cv["standard_task"] == t).any()]
    if not tasks:
        raise Skip(f"no curve of the compared tasks has a {x}")
    tr = rd.transitions(ctx, x)
    colors = rd.colors(cv)
    ncols = min(4, len(tasks))
    nrows = int(np.ceil(len(tasks) / ncols))
    fig, axes = style.figure(ncols=ncols, nrows=nrows, height=2.3)
    handles = {}
    for ax, task in zip(axes.flat, tasks):
        g_task = cv[cv["standard_task"] == task]
        for s in rd.series_order(g_task):
            g = g_task[g_task["series"] == s].sort_values(x)
            dmas = g["family"].iloc[0] == reference.DMAS_FAMILY
            h = ax.scatter(g[x], g["value"], s=6 if dmas else 3, color=colors[s], zorder=3 if dmas else 2)
            handles.setdefault(s, (h, rd.label(cv, s)))
            row = tr[(tr["series"] == s) & (tr["task"] == g["task"].iloc[0])] if len(tr) else tr
            if row.empty:
                continue
            r = row.iloc[0]
            xs = np.linspace(g[x].min(), g[x].max(), 200)
            ax.plot(xs, rd.fit_curve(r, xs), "-", color=colors[s], lw=0.9, alpha=0.9)
            if np.isfinite(r["transition_loss"]):
                ax.plot([r["transition_loss"]], [r["chance"]], "|", color=colors[s], ms=9, mew=1.5, zorder=4)
        ch = reference.chance(task)
        if np.isfinite(ch):
            ax.axhline(ch, color="grey", ls="--", lw=0.8)
        ax.invert_xaxis()
        ax.set(title=task, ylabel="/".join(sorted(g_task["metric"].unique())))
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    order = [s for s in rd.series_order(cv) if s in handles]
    fig.legend([handles[s][0] for s in order], [handles[s][1] for s in order], loc="lower center",
               ncol=min(4, len(order)), fontsize=6, markerscale=2, bbox_to_anchor=(0.5, 0.0))
    fig.supxlabel(xlabel, fontsize=8, y=0.07 + 0.025 * ((len(order) - 1) // 4))
    text = note + "; ticks on the chance line: transition (the fit leaves chance by what n items can detect)"
    fig.text(0.5, 0.995, "\n".join(textwrap.wrap(text, 140)), ha="center", va="top", fontsize=6.5, color="0.3")
    fig.tight_layout(rect=(0, 0.09 + 0.025 * ((len(order) - 1) // 4), 1, 0.95))
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
