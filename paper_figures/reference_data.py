"""What the reference figures share: the curves of DMaS beside the reference families (cached per build),
their fitted transitions, and one colour per series (a hue per family, darker for larger runs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from analysis import reference

from .core import Skip

# Bootstrap resamples per reference curve: at most this many (fewer with --n-boot). A refit of a 160-checkpoint
# curve costs ~20 ms and the figures fit ~120 curves; with the item counts of these tasks (300-10,000)
# the intervals are narrow, and `analysis.reference.fit_transitions(n_boot=...)` gives more.
MAX_BOOT = 20
FAMILY_PALETTE = {"olmo-ladder": "Blues", "pythia": "Oranges", reference.DMAS_FAMILY: "Greys"}
NO_PYTHIA_LOSS = "Pythia: its published evaluations hold no validation loss"


def dmas_results(ctx) -> pd.DataFrame | None:
    """The DMaS results store, or None when there is none (the reference families are drawn alone)."""
    try:
        return ctx.results()
    except Skip:
        return None


def curves(ctx) -> pd.DataFrame:
    """Reference and DMaS curves (analysis.reference.curves), standard splits only."""
    ref = ctx.reference()
    res = dmas_results(ctx)

    def build():
        cv = reference.curves(ref, res)
        return cv[~cv["task"].str.endswith(reference.SPLIT_SUFFIXES)].reset_index(drop=True)

    return ctx._cached("reference:curves", build)


def tasks(cv: pd.DataFrame) -> list[str]:
    """The compared tasks present in the curves (`analysis.reference.COMPARE_TASKS` order)."""
    have = set(cv["standard_task"])
    return [t for t in reference.COMPARE_TASKS if t in have]


def transitions(ctx, x: str) -> pd.DataFrame:
    """Fitted transitions of every series that has `x`, for the compared tasks (cached per build)."""
    cv = curves(ctx)

    def build():
        sub = cv[cv["standard_task"].isin(tasks(cv))]
        if x == "tokens":  # against tokens only where no loss is available (Pythia's evaluations)
            sub = sub[sub["val_loss"].isna() & sub["gold_bpb"].isna()]
        else:
            sub = sub.dropna(subset=[x])
        return reference.fit_transitions(sub, x, n_boot=boots(ctx))

    return ctx._cached(f"reference:transitions:{x}", build)


def boots(ctx) -> int:
    return min(ctx.n_boot, MAX_BOOT)


def series_order(cv: pd.DataFrame) -> list[str]:
    """DMaS first, then each family by model size and tokens."""
    info = cv.groupby("series").agg(family=("family", "first"), tokens=("tokens", "max"))
    fam_rank = {reference.DMAS_FAMILY: 0, "olmo-ladder": 1, "pythia": 2}
    return sorted(info.index, key=lambda s: (fam_rank.get(info.loc[s, "family"], 3), _size(s), info.loc[s, "tokens"]))


def _size(series: str) -> float:
    import re

    m = re.search(r"(\d+(?:\.\d+)?)([MB])", series, re.I)
    if not m:
        return 0.0
    return float(m.group(1)) * (1e3 if m.group(2).upper() == "B" else 1.0)


def colors(cv: pd.DataFrame) -> dict[str, tuple]:
    """One colour per series: the family's palette, darker for later series of that family."""
    out = {}
    order = series_order(cv)
    fam = cv.drop_duplicates("series").set_index("series")["family"]
    for family, pal in FAMILY_PALETTE.items():
        members = [s for s in order if fam.get(s) == family]
        if not members:
            continue
        shades = sns.color_palette(pal, len(members) + 2)[2:] if family != reference.DMAS_FAMILY else \
            [(0.0, 0.0, 0.0)] + list(sns.color_palette("Greys", len(members) + 1)[1:-1])
        out.update(dict(zip(members, shades)))
    for s in order:
        out.setdefault(s, (0.5, 0.5, 0.5))
    return out


def label(cv: pd.DataFrame, series: str) -> str:
    g = cv[cv["series"] == series]
    shots = g["num_fewshot"].dropna()
    return f"{series} ({int(shots.iloc[0])}-shot)" if len(shots) else series


def fit_curve(row: pd.Series, xs: np.ndarray) -> np.ndarray:
    from analysis.transitions import SigmoidFit

    fit = SigmoidFit(row["fit_floor"], row["fit_ceiling"], row["fit_midpoint"], row["fit_slope"], row["fit_rmse"],
                     int(row["fit_n_points"]))
    return fit.predict(xs)
