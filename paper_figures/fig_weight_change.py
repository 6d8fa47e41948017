"""Relative weight change ||W_t - W_(t-1)|| / ||W_(t-1)|| per layer between consecutive checkpoints,
divided by the steps between them, and per module kind (summed over layers)."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm

from analysis import weights

from . import style
from .core import Skip


def plot(ctx):
    df = ctx.weights()
    run = df.groupby("run")["checkpoint"].nunique().idxmax()
    df = df[df["run"] == run]
    layer = weights.per_layer(df).dropna(subset=["rel_change"])
    if layer.empty:
        raise Skip(f"weight table of {run} has fewer than two checkpoints")
    groups = list(dict.fromkeys(layer.sort_values("layer", na_position="last")["group"]))
    cks = layer.drop_duplicates("checkpoint").sort_values("step")
    piv = layer.pivot_table(index="group", columns="checkpoint", values="rel_change_per_step").reindex(
        index=groups, columns=list(cks["checkpoint"]))
    fig, axes = style.figure(ncols=2, height=3.2, gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0, 0]
    vals = piv.to_numpy()
    pos = vals[np.isfinite(vals) & (vals > 0)]
    norm = LogNorm(vmin=pos.min(), vmax=pos.max()) if len(pos) and pos.max() > pos.min() else None
    im = ax.imshow(vals, aspect="auto", cmap="viridis", interpolation="nearest", norm=norm)
    fig.colorbar(im, ax=ax, label="relative change per step")
    labels = [style.human(v) if np.isfinite(v) else c for v, c in zip(cks["tokens"].astype(float), cks["checkpoint"])]
    ax.set_xticks(np.arange(len(labels)), labels, rotation=60, fontsize=6)
    ax.set_yticks(np.arange(len(groups)), groups, fontsize=6)
    ax.set(xlabel="checkpoint (tokens seen; change since the previous one)", title=f"{run}: change per block")
    ax.grid(False)
    ax = axes[0, 1]
    mod = weights.per_module(df).dropna(subset=["rel_change"])
    mods = sorted(mod["module"].unique())
    for c, m in zip(style.colors(len(mods)), mods):
        g = mod[mod["module"] == m].sort_values("step")
        ax.plot(g["tokens"] if g["tokens"].notna().all() else g["step"], g["rel_change_per_step"], "o-", ms=2,
                color=c, label=m)
    ax.set_yscale("log")
    ax.set(ylabel="relative change per step", title="per module kind")
    style.tokens_axis(ax, log=False)
    ax.legend(fontsize=5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
