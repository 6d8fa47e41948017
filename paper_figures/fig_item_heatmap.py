"""Per-item learning heat-map: which items each checkpoint solves (rows sorted by when they are first
reliably solved), and how many items are learned and forgotten at each checkpoint. Continuous per-item
scores (truthfulqa_mc2) are drawn as a graded map; "solved" is then a score above the item's chance."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap

from analysis import items

from . import style


def plot(ctx):
    it = ctx.items()
    it = it[it["kind"] == "base"]
    # the task with the most items (and the series with the most checkpoints of it)
    task = it.groupby("task")["doc_id"].nunique().idxmax()
    t = it[it["task"] == task]
    series = t.groupby("series")["checkpoint"].nunique().idxmax()
    m, info = items.item_matrix(it, task, series=series)
    tr = items.item_trajectories(m)
    order = tr.assign(f=tr["first_solved_index"].where(tr["first_solved_index"] >= 0, len(m.columns)))
    order = order.sort_values(["f", "n_correct"], ascending=[True, False]).index
    ev = items.learning_events(tr, m.columns)
    fig, axes = style.figure(ncols=2, height=3.4, gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0, 0]
    c = style.colors(2)
    binary = items.is_binary(m.to_numpy().ravel())
    cmap = ListedColormap(["#f2f2f2", c[0]]) if binary else "Blues"
    img = ax.imshow(m.loc[order].to_numpy(), aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=1)
    if not binary:
        fig.colorbar(img, ax=ax, fraction=0.04, pad=0.02, label="per-item score")
    labels = [style.human(v) for v in info["tokens"]] if "tokens" in info.columns else list(m.columns)
    ax.set_xticks(np.arange(len(m.columns)), labels, rotation=60, fontsize=6)
    ax.set(xlabel="checkpoint (tokens seen)", ylabel=f"{len(m)} items, by first reliably solved",
           title=f"{task} ({series}): " + ("solved items (dark)" if binary else "per-item scores"))
    ax.set_yticks([])
    ax.grid(False)
    ax = axes[0, 1]
    x = np.arange(len(ev))
    ax.bar(x, ev["learned"], color=c[0], label="first reliably solved")
    ax.bar(x, -ev["forgotten"], color=c[1], label="forgotten")
    ax.plot(x, m.sum(axis=0).to_numpy(), "k.-", lw=0.8, ms=3, label="solved (all)" if binary else "sum of scores")
    ax.set_xticks(x, labels, rotation=60, fontsize=6)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="checkpoint (tokens seen)", ylabel="items", title="items learned and forgotten")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
