"""Accuracy of every reference run at the ten released DMaS checkpoints' token counts, interpolated linearly
in log tokens between its checkpoints ('*': outside them, the value of its nearest end checkpoint), beside
DMaS's own measurement where the results hold the released checkpoints. Also written in long, numeric form
(reference_matched_tokens_long.csv)."""

from __future__ import annotations

import pandas as pd

from analysis import reference

from . import reference_data as rd
from .core import Skip


def table(ctx) -> pd.DataFrame:
    return _tables(ctx)[0]


def _tables(ctx):
    cv = rd.curves(ctx)
    tasks = rd.tasks(cv)
    dmas = cv[cv["family"] == reference.DMAS_FAMILY]
    long = reference.matched_tokens(cv, tasks=tasks, dmas=dmas)
    if long.empty:
        raise Skip("no reference run of the compared tasks with two or more checkpoints")
    return reference.matched_tokens_wide(long), long


def make(ctx) -> None:
    wide, long = _tables(ctx)
    shots = long.drop_duplicates("series").set_index("series")["num_fewshot"].dropna().astype(int)
    ctx.save_table(wide, caption="Accuracy at the released DMaS checkpoints' tokens, interpolated in log tokens "
                   "(* outside the run's checkpoints: its end value); few-shot: "
                   + ", ".join(f"{s} {k}" for s, k in shots.items()))
    ctx.save_table(long, stem="reference_matched_tokens_long", index=False, floatfmt=".6g",
                   caption="The same, long form: value, extrapolated flag, nearest checkpoint's tokens")
