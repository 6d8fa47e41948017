"""The training-lesson ablations (`dmas-repro ablate resume|world-size`): the resume spike,
recovery and final gap and the loss agreement (computed by `dmas_repro.train.ablation_measures`,
which the ablation summaries use), and throughput per segment (a run, or the stretch between two
resume points).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmas_repro.train.ablation_measures import ResumeSpike, excess_loss, loss_agreement, resume_spike

__all__ = ["ResumeSpike", "excess_loss", "loss_agreement", "resume_spike", "throughput_by_segment"]


def throughput_by_segment(rows, boundaries=(), segment_col: str | None = None, skip_first: int = 1) -> pd.DataFrame:
    """tokens/s per segment of a run: median, mean, and the number of logged steps used.

    Segments are given either by `segment_col` (a column of the rows, e.g. "world_size") or by
    `boundaries` (resume steps: segment k holds the steps in (b_{k-1}, b_k]). The first
    `skip_first` rows of every segment are dropped (warm-up, compilation, process start).
    """
    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    if "kind" in df.columns:
        df = df[df["kind"] == "train"]
    df = df.dropna(subset=["tokens_per_s"]).sort_values("step")
    if segment_col is None:
        edges = sorted(int(b) for b in boundaries)
        df["segment"] = np.searchsorted(np.asarray(edges), df["step"].to_numpy(), side="left")
        segment_col = "segment"
    out = []
    for seg, g in df.groupby(segment_col, sort=True):
        g = g.iloc[skip_first:] if len(g) > skip_first else g
        out.append({
            segment_col: seg,
            "first_step": int(g["step"].min()),
            "last_step": int(g["step"].max()),
            "n": int(len(g)),
            "tokens_per_s_median": float(g["tokens_per_s"].median()),
            "tokens_per_s_mean": float(g["tokens_per_s"].mean()),
        })
    return pd.DataFrame(out)
