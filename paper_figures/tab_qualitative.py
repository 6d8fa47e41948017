"""Greedy probe outputs across checkpoints: the move from incoherent to fluent text, and the instruct model."""

from __future__ import annotations

import pandas as pd

from analysis import probes

from .core import Skip


def table(ctx, max_chars: int = 110) -> pd.DataFrame:
    pr = ctx.probes()
    mode = "greedy" if (pr["mode"] == "greedy").any() else pr["mode"].iloc[0]
    # one prompt per category (knowledge, reasoning, continuation, ...) that every base checkpoint answered
    base = pr[(pr["kind"] == "base") & (pr["mode"] == mode)]
    n_ck = base["checkpoint"].nunique()
    full = base.groupby("prompt_id")["checkpoint"].nunique()
    full = base[base["prompt_id"].isin(full[full == n_ck].index)]
    ids = list(full.drop_duplicates("category")["prompt_id"])[:4] if "category" in full.columns else []
    ids = ids or list(dict.fromkeys(full["prompt_id"]))[:3]
    inst = pr[(pr["kind"] == "instruct") & (pr["mode"] == mode)]
    ids += [p for p in dict.fromkeys(inst["prompt_id"]) if p not in ids][:1]
    tab = probes.output_table(pr, mode=mode, prompt_ids=ids, max_chars=max_chars)
    if tab.empty:
        raise Skip("no probe outputs to tabulate")
    prompts = pr.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
    tab.columns = [f"{p}: {' '.join(str(prompts.get(p, '')).split())[:40]}" for p in tab.columns]
    tab.index.name = "checkpoint"
    return tab.fillna("")


def make(ctx) -> None:
    ctx.save_table(table(ctx), caption="Greedy probe outputs per checkpoint (training order; instruct last).")
