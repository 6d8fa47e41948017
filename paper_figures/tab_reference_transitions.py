"""Where each task leaves chance, per run of every family: the sigmoid transition against the family's own
validation loss (OLMo ladder: C4; DMaS: its held-out split), against the gold answer's bits per byte, and,
for Pythia (no loss in its published evaluations), against tokens; with bootstrap 95% intervals, the first
checkpoint from which accuracy stays significantly above chance, and the order of emergence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import reference

from . import reference_data as rd
from .core import Skip


def table(ctx) -> pd.DataFrame:
    parts = []
    for x in ("val_loss", "gold_bpb", "tokens"):
        tr = rd.transitions(ctx, x)
        if tr.empty:
            continue
        order = reference.emergence(tr)[["series", "task", "rank"]]
        tr = tr.merge(order, on=["series", "task"], how="left")
        t = pd.DataFrame({
            "series": tr["series"], "task": tr["task"], "shots": tr["num_fewshot"],
            "against": "tokens (no loss in the evaluations)" if x == "tokens" else tr["x_def"],
            "n_items": tr["n_items"], "chance": tr["chance"], "ceiling": tr["fit_ceiling"],
            "transition": tr["transition_tokens"] if x == "tokens" else tr["transition_loss"],
            "low": tr["transition_tokens_low"] if x == "tokens" else tr["transition_low"],
            "high": tr["transition_tokens_high"] if x == "tokens" else tr["transition_high"],
            "x_range": [f"{a:.3g}-{b:.3g}" if x != "tokens" else f"{10 ** -b:.3g}-{10 ** -a:.3g}"
                        for a, b in zip(tr["x_min"], tr["x_max"])],
            "first_above_chance_tokens": tr["first_above_chance_tokens"],
            "emergence_rank": tr["rank"]})
        parts.append(t)
    if not parts:
        raise Skip("no reference or DMaS curve with 3+ checkpoints and an item count")
    df = pd.concat(parts, ignore_index=True)
    df["emergence_rank"] = df["emergence_rank"].astype(float)
    df = df.sort_values(["against", "series", "emergence_rank", "task"], na_position="last", kind="stable")
    return df.replace({np.inf: np.nan}).set_index(["against", "series", "task"])


def make(ctx) -> None:
    ctx.save_table(table(ctx), floatfmt=".4g",
                   caption="Transition (loss, bits per byte or tokens at which the fitted sigmoid leaves chance by "
                           f"the margin n items can detect; NaN: never) with a 95% interval from {rd.boots(ctx)} "
                           "parametric bootstrap resamples; emergence rank per series and x (1 = leaves chance "
                           "first)")
