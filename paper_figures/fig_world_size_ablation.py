"""Continuing one checkpoint on 1 and 2 processes (same global batch, and doubled): training loss,
loss difference against the 1-process continuation, and throughput per run."""

from __future__ import annotations

import numpy as np

from analysis import ablation
from analysis.io import metrics_kind

from . import style
from .core import Skip


def _world_sizes(summary: dict, metrics) -> dict:
    """run -> world size, from the summary's segments, else from each run's start/resume event."""
    seg = {s["run"]: s.get("world_size") for s in summary.get("segments", []) if "run" in s}
    if seg:
        return seg
    ev = metrics_kind(metrics, "event")
    if "world_size" not in ev.columns:
        return {}
    return ev.dropna(subset=["world_size"]).groupby("run")["world_size"].last().to_dict()


def plot(ctx):
    summary, metrics, d = ctx.ablation("world-size")
    train = metrics_kind(metrics, "train")
    if train.empty:
        raise Skip(f"{d}: the world-size runs have no training rows")
    runs = sorted(train["run"].unique())
    ws = _world_sizes(summary, metrics)
    start = summary.get("start_step")
    cont = [r for r in runs if start is None or train[train["run"] == r]["step"].max() > start]
    cont = [r for r in cont if train[train["run"] == r]["step"].min() > (start or -1)] or cont
    ones = [r for r in cont if ws.get(r) == 1] or [r for r in cont if "1" in r and "double" not in r] or cont
    base = ones[0]
    label = {r: r.replace("world_size_", "ws ").replace("_double_batch", " 2x batch") for r in runs}
    fig, axes = style.figure(ncols=3, height=2.6)
    colors = dict(zip(runs, style.colors(len(runs))))
    b = train[train["run"] == base].set_index("step")["loss"]
    lo = (start or 0) - (train["step"].max() - (start or 0)) // 2  # show the end of the base run only
    for r in runs:
        g = train[(train["run"] == r) & (train["step"] >= lo)]
        dashed = r != base and r in cont
        axes[0, 0].plot(g["step"], g["loss"], color=colors[r], lw=1 if dashed else 1.6, ls="--" if dashed else "-",
                        label=label[r])
        if dashed:
            a = g.set_index("step")["loss"]
            common = a.index.intersection(b.index)
            if len(common):  # equal losses are drawn at the 1e-9 floor of the log axis
                raw = (a.loc[common] - b.loc[common]).abs()
                shown = "0 (identical)" if raw.max() == 0 else f"{raw.max():.2g}"
                axes[0, 1].plot(common, raw.clip(lower=1e-9).to_numpy(), color=colors[r],
                                label=f"{label[r]}: max {shown}")
    if start is not None:
        axes[0, 0].axvline(start, color="k", lw=0.6, ls=":")
    axes[0, 0].set(xlabel="step", ylabel="training loss", title="loss per run")
    axes[0, 0].legend(fontsize=6, loc="upper right")
    axes[0, 1].set_yscale("log")
    axes[0, 1].set(xlabel="step", ylabel=f"|loss - {label[base]} loss|", title="agreement with 1 process")
    axes[0, 1].legend(fontsize=6)
    tp = [ablation.throughput_by_segment(train[train["run"] == r], segment_col="run") for r in runs]
    med = [t["tokens_per_s_median"].iloc[0] if len(t) else np.nan for t in tp]
    x = np.arange(len(runs))
    axes[0, 2].bar(x, med, color=[colors[r] for r in runs])
    axes[0, 2].set_xticks(x, [label[r] for r in runs], rotation=30, ha="right", fontsize=6)
    axes[0, 2].set(ylabel="tokens/s (median)", title="throughput per run")
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
