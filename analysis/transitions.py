"""Loss -> capability transitions: logistic fits of accuracy against validation loss, the loss at
which a task leaves chance by a significant margin, bootstrap confidence intervals over items, and
the order in which tasks emerge.

The model (accuracy rises as loss falls):

    acc(L) = floor + (ceiling - floor) / (1 + exp(slope * (L - midpoint))),   slope > 0

with `floor` fixed at the task's chance level. The *transition loss* is where the fitted curve
reaches floor + margin, the margin being what n items need to tell accuracy from chance at level
alpha (one-sided normal approximation of the binomial): margin = z_(1-alpha) * sqrt(c (1 - c) / n).
For a continuous per-item score in [0, 1] (truthfulqa_mc2) "accuracy" is the mean score, c (1 - c)
bounds its per-item variance (so the margin is conservative), and the per-checkpoint test against
chance is a one-sample t-test of the items' score minus their own chance level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats


@dataclass(frozen=True)
class SigmoidFit:
    floor: float
    ceiling: float
    midpoint: float  # the loss at half-way between floor and ceiling
    slope: float  # per nat of loss; larger = sharper transition
    rmse: float
    n_points: int

    def predict(self, loss) -> np.ndarray:
        return _sigmoid(np.asarray(loss, float), self.ceiling, self.midpoint, self.slope, self.floor)

    def loss_at(self, acc: float) -> float:
        """The loss at which the curve reaches `acc` (NaN if it never does)."""
        span = self.ceiling - self.floor
        if not (0 < acc - self.floor < span):
            return float("nan")
        return float(self.midpoint + np.log(span / (acc - self.floor) - 1.0) / self.slope)

    def to_dict(self) -> dict:
        return asdict(self)


def _sigmoid(x, ceiling, midpoint, slope, floor):
    return floor + (ceiling - floor) * 0.5 * (1.0 - np.tanh(0.5 * slope * (x - midpoint)))


def fit_sigmoid(loss, acc, floor: float, sigma=None, start: SigmoidFit | None = None) -> SigmoidFit:
    """Least-squares logistic fit of accuracy against loss with the floor fixed at chance.

    sigma: optional per-point standard errors (weights). Several starting points are tried and the
    best fit kept, or only `start` (a previous fit, as in a bootstrap refit). Needs at least 3 points.
    """
    x, y = np.asarray(loss, float), np.asarray(acc, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    s = None if sigma is None else np.maximum(np.asarray(sigma, float)[ok], 1e-4)
    if len(x) < 3:
        raise ValueError("a sigmoid fit needs at least 3 checkpoints")
    lo, hi = float(x.min()), float(x.max())
    span = max(hi - lo, 1e-3)
    w = np.ones_like(y) if s is None else 1.0 / s
    bounds = ([floor, lo - 2 * span, 1e-3], [1.0, hi + 2 * span, 50.0 / span])

    def resid(p):
        return (_sigmoid(x, p[0], p[1], p[2], floor) - y) * w

    def jac(p):
        c, m, k = p
        sg = 0.5 * (1.0 - np.tanh(0.5 * k * (x - m)))
        ds = sg * (1.0 - sg)
        return np.stack([sg, (c - floor) * k * ds, -(c - floor) * (x - m) * ds], axis=1) * w[:, None]

    if start is not None:
        inits = [[start.ceiling, start.midpoint, start.slope]]
    else:
        inits = [[y.max(), m0, k0] for m0 in np.linspace(lo, hi, 5) for k0 in (2.0 / span, 10.0 / span)]
    best = None
    for p0 in inits:
        # a flat curve leaves midpoint and slope unidentified: take the best point found in 200 evaluations
        r = optimize.least_squares(resid, np.clip(p0, bounds[0], bounds[1]), jac=jac, bounds=bounds, max_nfev=200)
        sse = float(np.sum((_sigmoid(x, *r.x, floor) - y) ** 2))
        if np.all(np.isfinite(r.x)) and (best is None or sse < best[0]):
            best = (sse, r.x)
    if best is None:
        raise ValueError("the sigmoid fit did not converge")
    sse, (c, m, k) = best
    return SigmoidFit(floor=float(floor), ceiling=float(c), midpoint=float(m), slope=float(k),
                      rmse=float(np.sqrt(sse / len(x))), n_points=int(len(x)))


def significance_margin(chance: float, n: int, alpha: float = 0.05) -> float:
    """Accuracy above chance that n items can tell apart from guessing (one-sided, level alpha)."""
    var = max(chance * (1 - chance), 1.0 / max(n, 1))
    return float(stats.norm.ppf(1 - alpha) * np.sqrt(var / max(n, 1)))


def transition_loss(fit: SigmoidFit, n: int, alpha: float = 0.05) -> float:
    """The loss at which the fitted curve leaves chance by the significance margin (NaN if never)."""
    return fit.loss_at(fit.floor + significance_margin(fit.floor, n, alpha))


def first_above_chance(acc, n, chance: float, alpha: float = 0.05, values=None, item_chance=None) -> int:
    """Index of the first checkpoint (in training order) from which accuracy is significantly above
    chance (exact one-sided binomial test, Bonferroni-corrected over the checkpoints so a task at
    chance is misplaced with probability <= alpha) at it and every later checkpoint; -1 if none.

    values: the [items, checkpoints] per-item values, when they are continuous: then each checkpoint
    is tested with a one-sided one-sample t-test of value - item_chance (per item; default `chance`)."""
    acc = np.asarray(acc, float)
    n = np.broadcast_to(np.asarray(n, int), acc.shape)
    level = alpha / max(len(acc), 1)
    if values is not None:
        v = np.asarray(values, float)
        c = np.full(len(v), chance) if item_chance is None else np.asarray(item_chance, float)
        diff = v - c[:, None]
        sig = np.array([bool(stats.ttest_1samp(diff[:, j], 0.0, alternative="greater").pvalue < level)
                        if np.ptp(diff[:, j]) > 0 else bool(diff[0, j] > 0) for j in range(v.shape[1])])
    else:
        sig = np.array([
            stats.binomtest(int(round(a * k)), int(k), chance, alternative="greater").pvalue < level
            if k > 0 and np.isfinite(a) and 0 < chance < 1 else (np.isfinite(a) and a > chance)
            for a, k in zip(acc, n)
        ])
    suffix = np.flip(np.logical_and.accumulate(np.flip(sig)))
    return int(np.argmax(suffix)) if suffix.any() else -1


def _summarise(loss, acc, n: int, chance: float, resampled, alpha: float, ci: float, values=None,
               item_chance=None) -> dict:
    """Fit the observed accuracies, refit every resampled accuracy vector, report percentile CIs.

    A fit that never leaves chance by the margin has no transition: its midpoint and slope are not
    identified, so no intervals are computed for it (NaN)."""
    fit = fit_sigmoid(loss, acc, chance)
    mids, trans = [], []
    if not np.isfinite(transition_loss(fit, n, alpha)):
        resampled = ()
    for a in resampled:
        try:
            f = fit_sigmoid(loss, a, chance, start=fit)
        except ValueError:
            continue
        mids.append(f.midpoint)
        trans.append(transition_loss(f, n, alpha))
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    mids, trans = np.asarray(mids), np.asarray(trans)
    ft = trans[np.isfinite(trans)]
    first = first_above_chance(acc, n, chance, alpha, values, item_chance)
    quant = lambda v, i: float(np.quantile(v, q[i])) if len(v) else np.nan
    return {
        **{f"fit_{k}": v for k, v in fit.to_dict().items()},
        "chance": float(chance),
        "n_items": int(n),
        "midpoint": fit.midpoint,
        "midpoint_low": quant(mids, 0),
        "midpoint_high": quant(mids, 1),
        "transition_loss": transition_loss(fit, n, alpha),
        "transition_low": quant(ft, 0),
        "transition_high": quant(ft, 1),
        "boot_with_transition": float(len(ft) / len(trans)) if len(trans) else 0.0,
        "first_above_chance_index": first,
        "first_above_chance_loss": float(np.asarray(loss, float)[first]) if first >= 0 else np.nan,
    }


def bootstrap_transition(correct: np.ndarray, loss, chance: float, n_boot: int = 200, seed: int = 0,
                         alpha: float = 0.05, ci: float = 0.95, item_chance=None) -> dict:
    """Sigmoid midpoint and transition loss with percentile CIs from resampling items.

    correct: [items, checkpoints] matrix of per-item values (0/1, or a continuous score such as
    truthfulqa_mc2's); loss: the checkpoints' validation losses; item_chance: each item's chance
    level (for continuous values; default `chance` for all). The same resampled items are used at
    every checkpoint (items are the unit of sampling). Also reports the discrete transition: the
    first checkpoint from which accuracy stays significantly above chance.
    """
    from .items import is_binary

    correct = np.asarray(correct, float)
    n_items = correct.shape[0]
    rng = np.random.default_rng(seed)
    resampled = (correct[rng.integers(0, n_items, n_items)].mean(axis=0) for _ in range(n_boot))
    continuous = not is_binary(correct)
    return _summarise(loss, correct.mean(axis=0), n_items, chance, resampled, alpha, ci,
                      correct if continuous else None, item_chance if continuous else None)


def parametric_transition(loss, acc, n, chance: float, n_boot: int = 200, seed: int = 0,
                          alpha: float = 0.05, ci: float = 0.95) -> dict:
    """As `bootstrap_transition` when only aggregate accuracies are stored (no per-item records):
    each checkpoint's accuracy is resampled as Binomial(n, acc) / n."""
    acc = np.asarray(acc, float)
    n = int(np.nanmedian(np.asarray(n, float)))
    rng = np.random.default_rng(seed)
    resampled = (rng.binomial(n, np.clip(acc, 0, 1)) / n for _ in range(n_boot))
    return _summarise(loss, acc, n, chance, resampled, alpha, ci)


def task_transitions(results: pd.DataFrame, items: pd.DataFrame | None = None, n_boot: int = 200,
                     seed: int = 0, alpha: float = 0.05, chance: dict | None = None) -> pd.DataFrame:
    """One row per (series, task) of base checkpoints: sigmoid fit, transition loss with CIs.

    Uses per-item records (bootstrap over items) where they exist for the task, else the aggregate
    accuracies (parametric bootstrap). Chance levels come from the items (`items.chance_level`:
    their recorded chance, e.g. true answers / answers for truthfulqa_mc2), else from `chance`
    (task -> level), else `scores.CHANCE`; tasks with no known chance level or fewer than 3
    checkpoints with a validation loss are skipped.
    """
    from .items import chance_level, item_chance, item_matrix
    from .scores import chance as chance_of
    from .scores import scores

    sc = scores(results)
    sc = sc[(sc["kind"] == "base") & sc["val_loss"].notna()]
    out = []
    for (series, task), g in sc.groupby(["series", "task"]):
        g = g.sort_values(["tokens", "step"])
        if len(g) < 3:
            continue
        row = {"series": series, "task": task, "metric": g["metric"].iloc[0]}
        have_items = items is not None and not items[(items["task"] == task)].empty
        try:
            if have_items:
                m, info = item_matrix(items, task, series=series)
                loss = g.set_index("checkpoint")["val_loss"].reindex(m.columns)
                keep = loss.notna().to_numpy()
                if keep.sum() < 3:
                    raise KeyError(task)
                ic = item_chance(items, task)
                r = bootstrap_transition(m.to_numpy()[:, keep], loss.to_numpy()[keep],
                                         chance_level(items, task), n_boot, seed, alpha,
                                         item_chance=None if ic is None else ic.reindex(m.index).to_numpy())
                cks = list(np.asarray(m.columns)[keep])
                r["source"] = "items"
            else:
                raise KeyError(task)
        except (KeyError, ValueError):
            level = (chance or {}).get(task, chance_of(task))
            if not np.isfinite(level):
                continue
            n = g["n"] if "n" in g.columns and g["n"].notna().all() else 1000
            r = parametric_transition(g["val_loss"], g["value"], n, level, n_boot, seed, alpha)
            cks = list(g["checkpoint"])
            r["source"] = "aggregate"
        i = r.pop("first_above_chance_index")
        tok = g.set_index("checkpoint")["tokens"]
        r["first_above_chance_checkpoint"] = cks[i] if i >= 0 else None
        r["first_above_chance_tokens"] = float(tok.get(cks[i], np.nan)) if i >= 0 else np.nan
        row.update(r)
        out.append(row)
    return pd.DataFrame(out)


def emergence_order(transitions: pd.DataFrame) -> pd.DataFrame:
    """Tasks in the order they leave chance during training: highest transition loss first (the
    loss falls as training goes on); tasks that never leave chance come last."""
    cols = ["series", "rank", "task", "transition_loss", "transition_low", "transition_high",
            "first_above_chance_checkpoint", "first_above_chance_tokens", "emerged"]
    if transitions.empty:
        return pd.DataFrame(columns=cols)
    t = transitions.copy()
    t["emerged"] = t["transition_loss"].notna()
    t = t.sort_values(["series", "emerged", "transition_loss"], ascending=[True, False, False])
    t["rank"] = t.groupby("series").cumcount() + 1
    t.loc[~t["emerged"], "rank"] = np.nan
    return t[[c for c in cols if c in t.columns]].reset_index(drop=True)
