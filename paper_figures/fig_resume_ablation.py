"""Resuming from one checkpoint with the full state vs a fresh AdamW (and the authors' re-stretched LR):
training loss around the resume and the excess loss over the uninterrupted reference."""

from __future__ import annotations

from analysis import ablation
from analysis.io import metrics_kind

from . import style
from .core import Skip


def resume_step(summary: dict, train, reference: str) -> int:
    for k in ("resume_step", "S", "start_step", "step"):
        if isinstance(summary.get(k), int | float):
            return int(summary[k])
    others = train[train["run"] != reference]
    return int(others["step"].min()) - 1


def plot(ctx):
    summary, metrics, d = ctx.ablation("resume")
    train = metrics_kind(metrics, "train")
    runs = sorted(train["run"].unique()) if not train.empty else []
    ref = next((r for r in runs if "reference" in r or r.endswith("ref")), None)
    if ref is None:
        raise Skip(f"{d}: no reference run (a run dir named 'reference') with training rows")
    S = resume_step(summary, train, ref)
    variants = [r for r in runs if r != ref]
    fig, axes = style.figure(ncols=2, height=3.3)
    pal = style.colors(10)
    colors = dict(zip([ref] + variants, [pal[0], pal[2], pal[1], pal[4], pal[3], pal[5]]))
    lo = max(0, S - (train["step"].max() - S) // 3)
    ax = axes[0, 0]
    for r in [ref] + variants:
        g = train[(train["run"] == r) & (train["step"] >= lo)]
        ax.plot(g["step"], g["loss"], color=colors[r], lw=1.8 if r == ref else 1, label=r,
                ls="-" if r == ref else "--")
    ax.axvline(S, color="k", lw=0.6, ls=":")
    ax.set(xlabel="step", ylabel="training loss", title=f"resumed at step {S}")
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    for r in variants:
        ex = ablation.excess_loss(train[train["run"] == r], train[train["run"] == ref], S)
        if ex.empty:
            continue
        # the same window / tolerance as the ablation's summary.json
        kw = {k: summary[k] for k in ("window", "tol", "final_window") if isinstance(summary.get(k), int | float)}
        sp = ablation.resume_spike(train[train["run"] == r], train[train["run"] == ref], S, **kw)
        rec = f"within {kw.get('tol', 0.02):g} after {sp.steps_to_recover} steps" if sp.steps_to_recover \
            else "not back within tolerance"
        ax.plot(ex.index, ex.to_numpy(), color=colors[r], label=f"{r}: peak {sp.peak_excess:+.3f}, {rec}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="step", ylabel="loss - reference loss", title="excess loss after the resume")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
