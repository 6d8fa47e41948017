"""Per task: the transition loss (where it leaves chance significantly; bootstrap 95% CI), the sigmoid
midpoint, Spearman/Pearson correlation of score with validation loss, and the order of emergence."""

from __future__ import annotations

import pandas as pd

from analysis import scores, transitions

from .core import Skip
from .fig_acc_vs_loss import items_or_none


def table(ctx) -> pd.DataFrame:
    res = ctx.results()
    tr = transitions.task_transitions(res, items_or_none(ctx), n_boot=ctx.n_boot)
    sc = scores.scores(res)
    corr = scores.loss_correlations(sc[sc["kind"] == "base"])
    if tr.empty and corr.empty:
        raise Skip("fewer than 3 base checkpoints with a benchmark score and a validation loss")
    order = transitions.emergence_order(tr) if not tr.empty else None
    df = corr.drop(columns=[c for c in ("kind",) if c in corr.columns])
    if not tr.empty:
        cols = ["series", "task", "chance", "n_items", "source", "midpoint", "midpoint_low", "midpoint_high",
                "transition_loss", "transition_low", "transition_high", "first_above_chance_checkpoint"]
        df = df.merge(tr[cols], on=["series", "task"], how="left")
        df = df.merge(order[["series", "task", "rank"]].rename(columns={"rank": "emergence_rank"}),
                      on=["series", "task"], how="left")
    return df.set_index(["series", "task"])


def make(ctx) -> None:
    ctx.save_table(table(ctx), floatfmt=".3g",
                   caption="Transition loss (NaN: never leaves chance), correlations of score with validation loss.")
