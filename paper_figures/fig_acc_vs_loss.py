"""Accuracy against validation loss per task, with the fitted sigmoid and the transition loss
(where the task leaves chance by a significant margin; shaded: bootstrap 95% CI over items)."""

from __future__ import annotations

import numpy as np

from analysis import scores, transitions

from . import style
from .core import Skip


def items_or_none(ctx):
    try:
        return ctx.items()
    except Skip:
        return None


def plot(ctx):
    res = ctx.results()
    sc = scores.scores(res)
    sc = sc[(sc["kind"] == "base") & sc["val_loss"].notna()]
    if sc.empty:
        raise Skip("no checkpoint has both a benchmark score and a validation loss in the results store")
    tr = transitions.task_transitions(res, items_or_none(ctx), n_boot=ctx.n_boot)
    tasks = sorted(sc["task"].unique())
    ncols = min(3, len(tasks))
    nrows = int(np.ceil(len(tasks) / ncols))
    fig, axes = style.figure(ncols=ncols, nrows=nrows, height=2.5)
    series = sorted(sc["series"].unique())
    colors = dict(zip(series, style.colors(len(series))))
    nll = res[(res["metric"] == "gold_nll_per_byte") & (res["kind"] == "base")]
    vl = scores.val_loss(res).set_index("checkpoint")["val_loss"]
    for ax, task in zip(axes.flat, tasks):
        for s, g in sc[sc["task"] == task].groupby("series"):
            ax.errorbar(g["val_loss"], g["value"], yerr=g.get("stderr"), fmt="o", ms=3, capsize=2,
                        color=colors[s], label=s)
            row = tr[(tr["series"] == s) & (tr["task"] == task)] if not tr.empty else tr
            if row.empty:
                continue
            r = row.iloc[0]
            fit = transitions.SigmoidFit(r["fit_floor"], r["fit_ceiling"], r["fit_midpoint"], r["fit_slope"],
                                         r["fit_rmse"], int(r["fit_n_points"]))
            xs = np.linspace(g["val_loss"].min(), g["val_loss"].max(), 200)
            ax.plot(xs, fit.predict(xs), "-", color=colors[s], lw=1, alpha=0.8)
            if np.isfinite(r["transition_loss"]):
                ax.axvline(r["transition_loss"], color=colors[s], ls="--", lw=1,
                           label=f"transition {r['transition_loss']:.2f}")
                if np.isfinite(r["transition_low"]):
                    ax.axvspan(r["transition_low"], r["transition_high"], color=colors[s], alpha=0.12, lw=0)
            ax.axhline(r["chance"], color="grey", ls=":", lw=1)
        t_nll = nll[nll["task"] == task].assign(val_loss=lambda d: d["checkpoint"].map(vl)).dropna(
            subset=["val_loss"])
        if not t_nll.empty:
            ax2 = ax.twinx()
            ax2.plot(t_nll["val_loss"], t_nll["value"], "s", color="0.5", ms=2)
            ax2.set_ylabel("gold NLL / byte (grey)", fontsize=7)
            ax2.grid(False)
        ax.invert_xaxis()  # training moves to the right: loss falls
        ax.set(xlabel="validation loss (training goes right)", ylabel=sc[sc["task"] == task]["metric"].iloc[0],
               title=task)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
