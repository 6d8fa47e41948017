"""Measures of the training-lesson ablations (`dmas-repro ablate resume|world-size`), computed from
metrics rows: the ablation summaries use them, and `analysis.ablation` re-exports them.

A resumed run is compared with an uninterrupted reference on the steps they share: the excess
loss (resumed - reference) right after the resume is the *spike*; the number of steps until the
excess stays within a tolerance is the *recovery*; the excess at the end is the *final gap*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ResumeSpike:
    resume_step: int
    peak_excess: float  # max(resumed - reference) over the first `window` steps after the resume
    peak_step: int | None  # the step at which that peak happens
    mean_excess: float  # mean excess over the same window
    steps_to_recover: int | None  # steps after the resume until |excess| <= tol from then on
    final_gap: float  # mean excess over the last `final_window` shared steps
    max_abs_diff: float  # max |resumed - reference| over every shared step after the resume
    n_steps: int  # shared steps after the resume

    def to_dict(self) -> dict:
        return asdict(self)


def _loss_by_step(rows, loss_col: str) -> pd.Series:
    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    if "kind" in df.columns:
        df = df[df["kind"] == "train"]
    if df.empty or loss_col not in df.columns:
        raise ValueError(f"no '{loss_col}' values in the training rows")
    s = df.dropna(subset=[loss_col]).groupby("step")[loss_col].last()
    return s.sort_index().astype(float)


def excess_loss(resumed, reference, resume_step: int, loss_col: str = "loss") -> pd.Series:
    """resumed - reference loss, indexed by step, on the steps after `resume_step` that both logged.

    `resumed` and `reference` are metrics rows (list of dicts from metrics.jsonl) or DataFrames
    with `step` and `loss_col` (only `kind == "train"` rows are used when a `kind` column exists).
    """
    a = _loss_by_step(resumed, loss_col)
    b = _loss_by_step(reference, loss_col)
    common = a.index.intersection(b.index)
    common = common[common > resume_step]
    return (a.loc[common] - b.loc[common]).rename("excess")


def resume_spike(
    resumed,
    reference,
    resume_step: int,
    window: int = 50,
    tol: float = 0.02,
    final_window: int = 5,
    loss_col: str = "loss",
) -> ResumeSpike:
    """Spike, recovery and final gap of a resumed run against the uninterrupted reference.

    window: how many steps after the resume count as "right after" for the peak (in steps, not rows).
    tol: the excess (in nats) that counts as recovered; recovery is the first step from which every
        later shared step stays within tol, counted from the resume step (None if never).
    final_window: how many of the last shared logged steps average into the final gap.
    """
    ex = excess_loss(resumed, reference, resume_step, loss_col)
    if ex.empty:
        raise ValueError(f"the runs share no logged steps after step {resume_step}")
    early = ex[ex.index <= resume_step + window]
    if early.empty:
        early = ex.iloc[:1]
    peak_step = int(early.idxmax())
    within = (ex.abs() <= tol).to_numpy()
    # suffix_ok[i]: every step from i to the end is within tolerance
    suffix_ok = np.flip(np.logical_and.accumulate(np.flip(within)))
    recover = None
    if suffix_ok.any():
        first = int(np.argmax(suffix_ok))
        recover = int(ex.index[first]) - resume_step
    return ResumeSpike(
        resume_step=int(resume_step),
        peak_excess=float(early.max()),
        peak_step=peak_step,
        mean_excess=float(early.mean()),
        steps_to_recover=recover,
        final_gap=float(ex.iloc[-final_window:].mean()),
        max_abs_diff=float(ex.abs().max()),
        n_steps=int(len(ex)),
    )


def loss_agreement(a, b, loss_col: str = "loss", after_step: int = -1) -> dict:
    """Largest and mean |loss_a - loss_b| on the steps both runs logged (after `after_step`)."""
    sa, sb = _loss_by_step(a, loss_col), _loss_by_step(b, loss_col)
    common = sa.index.intersection(sb.index)
    common = common[common > after_step]
    if len(common) == 0:
        raise ValueError("the runs share no logged steps")
    d = (sa.loc[common] - sb.loc[common]).abs()
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()), "n_steps": int(len(d))}
