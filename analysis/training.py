"""Training dynamics from metrics.jsonl: loss curves, learning-rate schedule, throughput, and the
validation loss at a given number of tokens."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .io import metrics_kind


def ema(values, alpha: float = 0.1) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard smooths a curve): pandas'
    `ewm(alpha=alpha, adjust=True).mean()`."""
    return pd.Series(np.asarray(values, float)).ewm(alpha=alpha, adjust=True).mean().to_numpy()


def auto_alpha(n: int) -> float:
    """EMA weight that smooths over about a tenth of a curve of n logged points (0.02 .. 0.5)."""
    return float(np.clip(10.0 / max(n, 1), 0.02, 0.5))


def curves(metrics: pd.DataFrame, smooth: float | str | None = "auto") -> dict[str, pd.DataFrame]:
    """Per-run frames: 'train' (step, tokens, loss, loss_smooth, lr, grad_norm, tokens_per_s, mfu),
    'val' (step, tokens, val_loss) and 'hellaswag' (step, tokens, acc_norm) when logged.
    smooth: EMA weight of loss_smooth ("auto": `auto_alpha` of each run's length; None: no smoothing)."""
    out = {}
    train = metrics_kind(metrics, "train")
    if not train.empty and smooth:
        train = train.copy()
        groups = train.groupby("run", sort=False) if "run" in train.columns else [(None, train)]
        parts = [pd.Series(ema(g["loss"], auto_alpha(len(g)) if smooth == "auto" else smooth), index=g.index)
                 for _, g in groups]
        train["loss_smooth"] = pd.concat(parts)
    out["train"] = train
    out["val"] = metrics_kind(metrics, "val")
    out["hellaswag"] = metrics_kind(metrics, "hellaswag")
    return out


def summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: steps, tokens, first/last/best validation loss, its drop, median tokens/s, MFU."""
    c = curves(metrics, smooth=None)
    out = []
    for run in sorted(metrics["run"].unique()):
        t, v = c["train"], c["val"]
        t = t[t["run"] == run] if not t.empty else t
        v = v[v["run"] == run] if not v.empty else v
        row = {"run": run}
        if not t.empty:
            row.update(steps=int(t["step"].max()), tokens=float(t["tokens"].max()) if "tokens" in t else np.nan,
                       final_train_loss=float(t["loss"].iloc[-1]),
                       tokens_per_s=float(t["tokens_per_s"].median()) if "tokens_per_s" in t else np.nan,
                       mfu=float(t["mfu"].median()) if "mfu" in t else np.nan)
        if not v.empty:
            row.update(first_val_loss=float(v["val_loss"].iloc[0]), final_val_loss=float(v["val_loss"].iloc[-1]),
                       best_val_loss=float(v["val_loss"].min()),
                       val_loss_drop=float(v["val_loss"].iloc[0] - v["val_loss"].iloc[-1]))
        out.append(row)
    return pd.DataFrame(out)


def value_at(curve: pd.DataFrame, x: str, y: str, at) -> np.ndarray:
    """Linear interpolation of `y` against `x` of one curve at the points `at` (NaN outside its range)."""
    c = curve.dropna(subset=[x, y]).sort_values(x)
    return np.interp(np.asarray(at, float), c[x].to_numpy(float), c[y].to_numpy(float), left=np.nan, right=np.nan)


def samples(metrics: pd.DataFrame) -> pd.DataFrame:
    """The in-loop text samples ('sample' rows: run, step, text), in step order; empty if none were logged."""
    cols = ["run", "step", "text"]
    s = metrics_kind(metrics, "sample")
    if s.empty or "text" not in s.columns:
        return pd.DataFrame(columns=cols)
    return s[[c for c in cols if c in s.columns]].sort_values(["run", "step"], kind="stable").reset_index(drop=True)
