"""Greedy probe outputs across checkpoints: the move from incoherent to fluent text, and the instruct model."""

from __future__ import annotations

import pandas as pd

from analysis import probes

from .core import Skip


def _shown(prompt, n: int = 40) -> str:
    """The prompt as a column title: the user's message of a chat-formatted prompt, first n characters."""
    text = str(prompt)
    if "USER:" in text:
        text = text.split("USER:", 1)[1].rsplit("ASSISTANT:", 1)[0]
    return " ".join(text.split())[:n]


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
    # the base model's prompt names the column ("base" sorts first); an instruct-only prompt is shown
    # without the chat template around it
    prompts = pr.sort_values("kind", kind="stable").drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
    tab.columns = [f"{p}: {_shown(prompts.get(p, ''))}" for p in tab.columns]
    tab.index.name = "checkpoint"
    return tab.fillna("")


def make(ctx) -> None:
    ctx.save_table(table(ctx), caption="Greedy probe outputs per checkpoint (training order; instruct last).")
