"""Fluency of the probe outputs against validation loss: repetition rate, distinct-1/2 and the mean
log-probability of the generated tokens, for greedy and sampled outputs."""

from __future__ import annotations

from analysis import probes

from . import style
from .core import Skip


def plot(ctx):
    fl = probes.fluency_vs_loss(ctx.probes(), ctx.results(), mode=None)
    fl = fl[(fl["kind"] == "base")].dropna(subset=["val_loss"])
    if fl.empty:
        raise Skip("no base checkpoint has both probe outputs and a validation loss")
    measures = [m for m in probes.FLUENCY if m in fl.columns and fl[m].notna().any()]
    fig, axes = style.figure(ncols=len(measures), height=2.3)
    keys = sorted({(s, m) for s, m in zip(fl["series"], fl["mode"])})
    colors = dict(zip(keys, style.colors(len(keys))))
    for ax, meas in zip(axes.flat, measures):
        for (s, mode), g in fl.groupby(["series", "mode"]):
            g = g.sort_values("val_loss")
            ax.plot(g["val_loss"], g[meas], "o-", ms=3, color=colors[(s, mode)], label=f"{s} {mode}")
        ax.invert_xaxis()
        ax.set(xlabel="validation loss", title=meas.replace("_", " "))
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
