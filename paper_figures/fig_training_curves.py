"""Training and validation loss against tokens seen, with the learning-rate schedule (and the SFT stage)."""

from __future__ import annotations

from analysis import training

from . import style
from .core import Skip


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
    runs = sorted(train["run"].unique())
    for c, run in zip(style.colors(len(runs)), runs):
        t = train[train["run"] == run]
        ax.plot(t["tokens"], t["loss"], color=c, alpha=0.25, lw=0.8)
        ax.plot(t["tokens"], t["loss_smooth"], color=c, label=f"{run} train (EMA)")
        v = val[val["run"] == run] if not val.empty else val
        if not v.empty:
            ax.plot(v["tokens"], v["val_loss"], "o--", color=c, ms=3, lw=1, label=f"{run} validation")
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
        st, sv = sft["train"], sft["val"]
        for c, run in zip(style.colors(st["run"].nunique()), sorted(st["run"].unique())):
            t = st[st["run"] == run]
            ax_s.plot(t["step"], t["loss"], color=c, alpha=0.3, lw=0.8)
            ax_s.plot(t["step"], t["loss_smooth"], color=c, label=f"{run} train (EMA)")
            v = sv[sv["run"] == run] if not sv.empty else sv
            if not v.empty:
                ax_s.plot(v["step"], v["val_loss"], "o--", color=c, ms=3, lw=1, label=f"{run} validation")
        ax_s.set(xlabel="SFT step", ylabel="loss on answer tokens", title="instruction tuning")
        ax_s.legend()
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
