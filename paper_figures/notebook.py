"""Helpers that keep the notebooks free of logic: open the inputs, show a manifest figure inline,
show a table, and turn a missing input into one printed line (so a notebook always runs)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

import analysis

from . import style
from .core import Context, Skip
from .manifest import by_name


def context(root=None, n_boot: int = 100) -> Context:
    """Inputs as `make figures` chooses them (results/ + runs/, else the shipped examples)."""
    style.apply()
    inputs = analysis.discover(root)
    print(inputs.describe())
    if inputs.is_empty:
        print("No results found: run `make example-results` (or the pipeline) first.")
    return Context(inputs, Path(tempfile.mkdtemp(prefix="dmas-notebook-")), n_boot=n_boot)


def show(name: str, ctx: Context):
    """Draw the manifest figure `name` inline (or print why it cannot be drawn)."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    entry = by_name()[name]
    mod = entry.module
    try:
        fig = mod.plot(ctx) if hasattr(mod, "plot") else None
    except Skip as s:
        print(f"{name}: {s}")
        return None
    if fig is not None:
        display(fig)
        plt.close(fig)
    return None


def table(what: Callable[[], pd.DataFrame] | str, ctx: Context | None = None, rows: int | None = 30):
    """A DataFrame from `what()` (or the manifest table named `what`), or the reason it is missing."""
    try:
        if isinstance(what, str):
            df = by_name()[what].module.table(ctx)
        else:
            df = what()
    except (Skip, FileNotFoundError) as s:
        print(f"not available: {s}")
        return None
    if isinstance(df, dict):
        df = pd.Series(df, name="value").to_frame()
    return df if rows is None or len(df) <= rows else df.head(rows)
