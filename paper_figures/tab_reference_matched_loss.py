"""Runs compared at equal loss: within each loss definition (OLMo ladder's C4 loss; DMaS's own loss) every
run against the run spanning the widest range, and across families at equal gold-answer bits per byte; the
accuracy difference (run - reference run) over the reference's checkpoints inside the run's range. Small
differences here beside large ones at matched tokens (reference_matched_tokens) say that loss, rather than
tokens or model size, sets accuracy."""

from __future__ import annotations

import pandas as pd

from analysis import reference

from . import reference_data as rd
from .core import Skip


def table(ctx) -> pd.DataFrame:
    cv = rd.curves(ctx)
    cv = cv[cv["standard_task"].isin(rd.tasks(cv))]
    parts = [reference.matched_summary(reference.at_matched_x(cv, x)) for x in ("val_loss", "gold_bpb")]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise Skip("no two runs share a loss definition over an overlapping range")
    return pd.concat(parts, ignore_index=True).set_index(["x_def", "task", "series"])


def make(ctx) -> None:
    ctx.save_table(table(ctx), floatfmt=".4g",
                   caption="Accuracy differences at matched loss (run minus the reference run; interpolated "
                           "linearly in loss at the reference's checkpoints)")
