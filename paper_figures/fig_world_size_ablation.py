"""Continuing one checkpoint on 1 and 2 processes (same global batch, and doubled): training loss,
loss difference against the 1-process run, and throughput per run."""

from __future__ import annotations

import numpy as np

from analysis import ablation
from analysis.io import metrics_kind

from . import style
from .core import Skip


def plot(ctx):
    summary, metrics, d = ctx.ablation("world-size")
    train = metrics_kind(metrics, "train")
    if train.empty:
        raise Skip(f"{d}: the world-size runs have no training rows")
    runs = sorted(train["run"].unique())
    if "world_size" in train.columns and train["world_size"].notna().any():
        ws = train.groupby("run")["world_size"].first()
        base = ws.idxmin()
    else:
        base = next((r for r in runs if "1" in r and "double" not in r), runs[0])
    fig, axes = style.figure(ncols=3, height=2.6)
    colors = dict(zip(runs, style.colors(len(runs))))
    for r in runs:
        g = train[train["run"] == r]
        axes[0, 0].plot(g["step"], g["loss"], color=colors[r], lw=1.6 if r == base else 1,
                        ls="-" if r == base else "--", label=r)
        if r != base:
            a = g.set_index("step")["loss"]
            b = train[train["run"] == base].set_index("step")["loss"]
            common = a.index.intersection(b.index)
            if len(common):
                diff = (a.loc[common] - b.loc[common]).abs().clip(lower=1e-12)
                axes[0, 1].plot(common, diff.to_numpy(), color=colors[r], label=f"{r} (max {diff.max():.2g})")
    axes[0, 0].set(xlabel="step", ylabel="training loss", title="loss per run")
    axes[0, 0].legend(fontsize=6)
    axes[0, 1].set_yscale("log")
    axes[0, 1].set(xlabel="step", ylabel=f"|loss - loss of {base}|", title="agreement with 1 process")
    axes[0, 1].legend(fontsize=6)
    tp = [ablation.throughput_by_segment(train[train["run"] == r], segment_col="run") for r in runs]
    med = [t["tokens_per_s_median"].iloc[0] if len(t) else np.nan for t in tp]
    axes[0, 2].bar(np.arange(len(runs)), med, color=[colors[r] for r in runs])
    axes[0, 2].set_xticks(np.arange(len(runs)), runs, rotation=30, fontsize=6)
    axes[0, 2].set(ylabel="tokens/s (median)", title="throughput per run")
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
