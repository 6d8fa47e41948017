"""Base vs instruct: each task's score, the validation loss and the probes' fluency of the instruct
model against its base (the last base checkpoint of the same series)."""

from __future__ import annotations

import numpy as np

from analysis import probes, scores

from . import style
from .core import RUN_EVAL, Skip


def _bars(ax, labels, base, inst, colors, deltas=True):
    x = np.arange(len(labels))
    ax.bar(x - 0.2, base, 0.4, color=colors[0], label="base")
    ax.bar(x + 0.2, inst, 0.4, color=colors[1], label="instruct")
    if deltas:
        for xi, b, i in zip(x, base, inst):
            ax.annotate(f"{i - b:+.3g}", (xi, max(b, i, 0)), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, labels, fontsize=6, rotation=20)
    ax.axhline(0, color="k", lw=0.5)


def plot(ctx):
    res = ctx.results()
    d = scores.base_vs_instruct(res)
    if d.empty:
        raise Skip("no instruct checkpoint in the results store; run `dmas-repro train` (its sft stage), "
                   f"then {RUN_EVAL}")
    bench = d[[r.task != scores.VAL_TASK and scores.primary_metric(res, r.task) == r.metric for r in d.itertuples()]]
    vl = d[(d["task"] == scores.VAL_TASK) & (d["metric"] == scores.VAL_METRIC)]
    try:
        fl = probes.instruct_deltas(ctx.probes())
    except Skip:
        fl = None
    panels = [p for p, ok in (("bench", not bench.empty), ("val", not vl.empty), ("fluency", fl is not None and
                                                                                    not fl.empty)) if ok]
    fig, axes = style.figure(ncols=len(panels), height=2.6,
                             gridspec_kw={"width_ratios": [3 if p != "val" else 1 for p in panels]})
    c = style.colors(2)
    pair = f"instruct {', '.join(d['instruct'].unique())} vs base {', '.join(d['base'].unique())}"
    for ax, p in zip(axes.flat, panels):
        if p == "bench":
            _bars(ax, [f"{r.task}\n{r.metric}" for r in bench.itertuples()], bench["base_value"],
                  bench["instruct_value"], c)
            ax.set(title="benchmarks", ylabel="score")
            ax.legend(fontsize=6, loc="lower right")
        elif p == "val":
            _bars(ax, ["val loss"], vl["base_value"], vl["instruct_value"], c)
            ax.set(title="validation loss", ylabel="nats/token")
        else:
            g = fl[fl["mode"] == "greedy"] if (fl["mode"] == "greedy").any() else fl
            g = g.groupby("measure")[["base_value", "instruct_value"]].mean()
            _bars(ax, [m.replace("_", " ") for m in g.index], g["base_value"], g["instruct_value"], c)
            ax.set(title="probe fluency (greedy)", ylabel="mean over prompts")
    fig.suptitle(pair, fontsize=8)
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
