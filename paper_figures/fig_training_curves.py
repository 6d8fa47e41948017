"""Training and validation loss against tokens seen, with the learning-rate schedule (and the SFT stage)."""

from __future__ import annotations

from analysis import training

from . import style
from .core import Skip


def _losses(ax, train, val, x: str) -> list:
    """Each run's raw and smoothed training loss and its validation points against column x;
    returns (colour, run, training rows) per run."""
    runs = sorted(train["run"].unique())
    out = []
    for c, run in zip(style.colors(len(runs)), runs):
        t = train[train["run"] == run]
        ax.plot(t[x], t["loss"], color=c, alpha=0.25, lw=0.8)
        ax.plot(t[x], t["loss_smooth"], color=c, label=f"{run} train (EMA)")
        v = val[val["run"] == run] if not val.empty else val
        if not v.empty:
            ax.plot(v[x], v["val_loss"], "o--", color=c, ms=3, lw=1, label=f"{run} validation")
        out.append((c, run, t))
    return out


def plot(ctx):
    pre = training.curves(ctx.runs(sft=False))
    try:
        sft = training.curves(ctx.runs(sft=True))
    except Skip:
        sft = None
    train, val = pre["train"], pre["val"]
    if train.empty:
        raise Skip("the training runs have no 'train' rows in metrics.jsonl yet")
    ncols = 3 if sft is not None and not sft["train"].empty else 2
    fig, axes = style.figure(ncols=ncols, height=2.6)
    ax, ax_lr = axes[0, 0], axes[0, 1]
    for c, run, t in _losses(ax, train, val, "tokens"):
        if "lr" in t.columns:
            ax_lr.plot(t["tokens"], t["lr"], color=c, label=run)
    ax.set(ylabel="loss (nats/token)", title="pretraining loss")
    style.tokens_axis(ax, log=False)
    ax.legend()
    ax_lr.set(ylabel="learning rate", title="learning-rate schedule")
    style.tokens_axis(ax_lr, log=False)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if ncols == 3:
        ax_s = axes[0, 2]
        _losses(ax_s, sft["train"], sft["val"], "step")
        ax_s.set(xlabel="SFT step", ylabel="loss on answer tokens", title="instruction tuning")
        ax_s.legend()
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
