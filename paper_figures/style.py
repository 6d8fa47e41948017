"""The one look of every figure: seaborn's paper context, colour-blind palette, shared axis formats."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.ticker import FuncFormatter

WIDTH = 7.0  # inches: a two-column paper's text width
PALETTE = "colorblind"


def apply() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.0)
    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 160, "axes.titlesize": 9,
        "axes.labelsize": 9, "legend.fontsize": 7, "legend.frameon": False, "xtick.labelsize": 8,
        "ytick.labelsize": 8, "lines.linewidth": 1.4, "pdf.fonttype": 42, "svg.hashsalt": "dmas-repro",
    })


def colors(n: int) -> list:
    return sns.color_palette(PALETTE if n <= 10 else "tab20", n)


def human(x: float, _pos=None) -> str:
    """1.4e9 -> '1.4B', 250000 -> '250K'."""
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


TOKENS = FuncFormatter(human)


def figure(ncols: int = 1, nrows: int = 1, height: float = 2.4, width: float = WIDTH, **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False, **kw)
    return fig, axes


def tokens_axis(ax, log: bool = True) -> None:
    if log:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(TOKENS)
    ax.set_xlabel("tokens seen")
