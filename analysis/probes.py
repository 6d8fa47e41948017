"""Qualitative probes across checkpoints: fluency measures against validation loss, the table of
outputs per checkpoint, and base vs instruct differences.

Input: the frame of `analysis.io.load_probes` (one row per checkpoint x prompt x mode x seed with
`output`, `repetition_rate`, `distinct_1`, `distinct_2`, `mean_logprob`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FLUENCY = ["repetition_rate", "distinct_1", "distinct_2", "mean_logprob"]
KEYS = ["series", "kind", "checkpoint", "step", "tokens"]


def fluency_by_checkpoint(probes: pd.DataFrame, mode: str | None = None) -> pd.DataFrame:
    """Mean of each fluency measure per checkpoint (and mode), in training order; `n` outputs."""
    df = probes if mode is None else probes[probes["mode"] == mode]
    keys = [k for k in KEYS + ["mode"] if k in df.columns]
    measures = [m for m in FLUENCY if m in df.columns]
    out = df.groupby(keys, dropna=False)[measures].mean()
    out["n"] = df.groupby(keys, dropna=False).size()
    sort = [c for c in ("series", "kind", "mode", "tokens", "step") if c in keys]
    return out.reset_index().sort_values(sort).reset_index(drop=True)


def fluency_vs_loss(probes: pd.DataFrame, results: pd.DataFrame, mode: str | None = "greedy") -> pd.DataFrame:
    """`fluency_by_checkpoint` joined with each checkpoint's validation loss (from the results store)."""
    from .scores import val_loss

    fl = fluency_by_checkpoint(probes, mode)
    vl = val_loss(results)[["checkpoint", "val_loss"]]
    return fl.merge(vl, on="checkpoint", how="left")


def fluency_correlations(fl: pd.DataFrame, x: str = "val_loss") -> pd.DataFrame:
    """Spearman correlation of each fluency measure with validation loss (base checkpoints)."""
    from scipy import stats

    fl = fl[fl["kind"] == "base"] if "kind" in fl.columns else fl
    fl = fl.dropna(subset=[x])
    out = []
    for m in [m for m in FLUENCY if m in fl.columns]:
        g = fl.dropna(subset=[m])
        if len(g) >= 3 and g[m].nunique() > 1 and g[x].nunique() > 1:
            rho, p = stats.spearmanr(g[x], g[m])
        else:
            rho, p = np.nan, np.nan
        out.append({"measure": m, "n": len(g), "spearman_rho": float(rho), "spearman_p": float(p)})
    return pd.DataFrame(out)


def output_table(probes: pd.DataFrame, mode: str = "greedy", prompt_ids=None, max_chars: int = 120,
                 seed: int | None = None) -> pd.DataFrame:
    """Qualitative outputs: one row per checkpoint (training order, instruct last), one column per
    prompt, cells = the output cut to `max_chars` (whitespace collapsed)."""
    df = probes[probes["mode"] == mode] if "mode" in probes.columns else probes
    if seed is not None and "seed" in df.columns:
        df = df[df["seed"] == seed]
    if prompt_ids is not None:
        df = df[df["prompt_id"].isin(list(prompt_ids))]
    if df.empty:
        return pd.DataFrame()
    df = df.drop_duplicates(subset=["checkpoint", "prompt_id"], keep="first").copy()
    df["text"] = df["output"].fillna("").map(lambda s: _shorten(s, max_chars))
    order = df.drop_duplicates("checkpoint").assign(instruct=lambda d: d["kind"].eq("instruct"))
    order = order.sort_values([c for c in ("instruct", "tokens", "step") if c in order.columns])["checkpoint"]
    wide = df.pivot(index="checkpoint", columns="prompt_id", values="text").reindex(list(order))
    wide.columns.name = None
    return wide


def _shorten(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1].rstrip() + "\u2026"


def instruct_deltas(probes: pd.DataFrame) -> pd.DataFrame:
    """Fluency of each instruct checkpoint minus its base (the last base checkpoint of the same
    series, see `scores.instruct_bases`), per mode and measure."""
    from .scores import instruct_bases

    fl = fluency_by_checkpoint(probes)
    bases = instruct_bases(fl)
    out = []
    for _, r in fl[fl["kind"] == "instruct"].iterrows():
        b = fl[(fl["checkpoint"] == bases.get(r["checkpoint"])) & (fl["mode"] == r["mode"])]
        if b.empty:
            continue
        b = b.iloc[0]
        for m in FLUENCY:
            if m in fl.columns:
                out.append({"series": r["series"], "mode": r["mode"], "instruct": r["checkpoint"],
                            "base": b["checkpoint"], "measure": m, "base_value": b[m],
                            "instruct_value": r[m], "delta": r[m] - b[m]})
    return pd.DataFrame(out)


def prompt_outputs(probes: pd.DataFrame, prompt_id: str, mode: str = "greedy", seed: int | None = None) -> pd.DataFrame:
    """Every checkpoint's full output for one prompt (training order, instruct last), with its measures."""
    df = probes[(probes["prompt_id"] == prompt_id) & (probes["mode"] == mode)]
    if seed is not None and "seed" in df.columns:
        df = df[df["seed"] == seed]
    df = df.drop_duplicates(subset=["checkpoint"]).assign(instruct=lambda d: d["kind"].eq("instruct"))
    df = df.sort_values([c for c in ("instruct", "tokens", "step") if c in df.columns])
    cols = [c for c in ["checkpoint", "kind", "tokens", "output", *FLUENCY] if c in df.columns]
    return df[cols].reset_index(drop=True)
