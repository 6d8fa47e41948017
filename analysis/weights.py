"""Weight-space dynamics between consecutive checkpoints, computed from the checkpoint files.

For every parameter tensor W of checkpoint t: its Frobenius norm ||W_t||, the norm of the change
since the previous checkpoint ||W_t - W_(t-1)||, and the relative change ||W_t - W_(t-1)|| / ||W_(t-1)||.
`per_layer` aggregates them per transformer block (embedding and head apart). Tensors are read one
at a time from memory-mapped safetensors, so paper-size checkpoints need no more than two tensors
in memory. Works on our checkpoints (training run dirs, import-hf outputs) and on HF directories
(the released checkpoints), whose names are mapped back to ours.

    python -m analysis.weights runs/tiny --out results/weights/tiny.csv
    python -m analysis.weights DIR1 DIR2 ... --out results/weights/released.csv
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

_STEP = re.compile(r"step[-_]?(\d+(?:\.\d+)?)(k?)", re.I)


def checkpoint_info(path: Path) -> dict:
    """step / tokens of a checkpoint dir: trainer_state.json if present, else parsed from the name."""
    path = Path(path)
    info = {"checkpoint": path.name if path.name not in ("hf",) else str(path.parent.name + "/hf"),
            "step": np.nan, "tokens": np.nan}
    from dmas_repro.train.layout import step_and_tokens

    step, tokens = step_and_tokens(path)
    if step is not None:
        info["step"], info["tokens"] = step, (tokens if tokens is not None else np.nan)
    else:
        m = _STEP.search(path.name)
        if m:
            info["step"] = float(m.group(1)) * (1000 if m.group(2) else 1)
    return info


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of a training run dir that hold a model (`checkpoints/step_*`), in step order."""
    from dmas_repro.train.layout import list_checkpoints

    return [d for _, d in list_checkpoints(run_dir, models_only=True)]


def _hf_to_ours() -> dict[str, str]:
    from dmas_repro.model.hf import name_map

    return {theirs: ours for ours, theirs in name_map(512).items()}


class _Tensors:
    """Lazy access to a checkpoint's tensors under our parameter names."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        from dmas_repro.model.hf import weight_files
        from dmas_repro.model.weights import WEIGHTS, is_model_dir

        path = Path(path)
        files = [path / WEIGHTS] if is_model_dir(path) else weight_files(path)
        rename = {} if is_model_dir(path) else _hf_to_ours()
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {}
        for h in self._handles:
            for k in h.keys():
                self._where[rename.get(k, k)] = (h, k)

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str):
        h, k = self._where[name]
        return h.get_tensor(k).float()


def _group(name: str) -> tuple[int, str, str]:
    """(layer index, group label, module) of a parameter; the embedding is layer -1, the head +inf."""
    m = re.match(r"layers\.(\d+)\.(.+)\.weight$", name)
    if m:
        return int(m.group(1)), f"layer {int(m.group(1))}", m.group(2)
    if name.startswith("tok_embeddings"):
        return -1, "embedding", "tok_embeddings"
    return 10**6, "head", name.removesuffix(".weight")


def _pairs(dirs: list[Path]) -> Iterator[tuple[Path | None, Path]]:
    prev = None
    for d in dirs:
        yield prev, d
        prev = d


def weight_dynamics(checkpoints) -> pd.DataFrame:
    """One row per (checkpoint, parameter): norm, delta_norm and rel_change against the previous
    checkpoint in the given order (NaN for the first). `checkpoints`: a run dir or a list of dirs."""
    import torch

    if isinstance(checkpoints, str | Path):
        dirs = run_checkpoints(Path(checkpoints))
        if not dirs:
            raise FileNotFoundError(f"{checkpoints}: no checkpoints under checkpoints/step_*")
    else:
        dirs = [Path(d) for d in checkpoints]
    rows = []
    prev_t = None
    for prev, cur in _pairs(dirs):
        cur_t = _Tensors(cur)
        info = checkpoint_info(cur)
        for name in sorted(cur_t.names(), key=lambda n: (_group(n)[0], n)):
            w = cur_t.get(name)
            layer, group, module = _group(name)
            row = {**info, "param": name, "layer": layer if layer < 10**6 else np.nan, "group": group,
                   "module": module, "numel": int(w.numel()), "norm": float(torch.linalg.vector_norm(w)),
                   "delta_norm": np.nan, "prev_norm": np.nan, "rel_change": np.nan,
                   "prev_checkpoint": checkpoint_info(prev)["checkpoint"] if prev is not None else None}
            if prev_t is not None and name in prev_t._where:
                p = prev_t.get(name)
                rows_common = min(p.shape[0], w.shape[0])  # vocab padding may differ (50304 vs 50257)
                if p.shape[1:] == w.shape[1:]:
                    d = w[:rows_common] - p[:rows_common]
                    row["delta_norm"] = float(torch.linalg.vector_norm(d))
                    row["prev_norm"] = float(torch.linalg.vector_norm(p[:rows_common]))
                    row["rel_change"] = row["delta_norm"] / max(row["prev_norm"], 1e-12)
            rows.append(row)
        prev_t = cur_t
    return pd.DataFrame(rows)


def _step_gaps(df: pd.DataFrame) -> pd.Series:
    """checkpoint -> steps since the previous checkpoint (in step order; NaN for the first)."""
    steps = df.drop_duplicates("checkpoint").set_index("checkpoint")["step"].sort_values()
    return steps.diff()


def per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate `weight_dynamics` per (checkpoint, group): norms combine as sqrt(sum of squares),
    so rel_change is the relative change of the whole block; rel_change_per_step divides it by the
    number of steps since the previous checkpoint (checkpoints are rarely evenly spaced)."""
    g = df.assign(norm2=df["norm"] ** 2, delta2=df["delta_norm"] ** 2, prev2=df["prev_norm"] ** 2)
    keys = ["checkpoint", "step", "tokens", "group"]
    agg = g.groupby(keys, dropna=False).agg(layer=("layer", "first"), numel=("numel", "sum"), norm2=("norm2", "sum"),
                                            delta2=("delta2", lambda s: s.sum(min_count=1)),
                                            prev2=("prev2", lambda s: s.sum(min_count=1))).reset_index()
    agg["norm"] = np.sqrt(agg.pop("norm2"))
    agg["delta_norm"] = np.sqrt(agg.pop("delta2"))
    agg["rel_change"] = agg["delta_norm"] / np.sqrt(agg.pop("prev2"))
    agg["rel_change_per_step"] = agg["rel_change"] / agg["checkpoint"].map(_step_gaps(df))
    order = agg["layer"].fillna(10**6)
    return agg.assign(_o=order).sort_values(["step", "_o"]).drop(columns="_o").reset_index(drop=True)


def per_module(df: pd.DataFrame) -> pd.DataFrame:
    """Relative change per (checkpoint, module kind) summed over layers (attn.wq, mlp.w_up, ...),
    also per step since the previous checkpoint."""
    g = df.assign(delta2=df["delta_norm"] ** 2, prev2=df["prev_norm"] ** 2)
    agg = g.groupby(["checkpoint", "step", "tokens", "module"], dropna=False)[["delta2", "prev2"]].sum(min_count=1)
    agg["rel_change"] = np.sqrt(agg["delta2"] / agg["prev2"])
    agg = agg.reset_index().drop(columns=["delta2", "prev2"])
    agg["rel_change_per_step"] = agg["rel_change"] / agg["checkpoint"].map(_step_gaps(df))
    return agg.sort_values(["step", "module"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.weights", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="one training run dir, or checkpoint dirs in training order")
    ap.add_argument("--out", required=True, help="CSV to write (one row per checkpoint x parameter)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.paths]
    for p in paths:
        if not p.is_dir():
            print(f"analysis.weights: error: {p}: no such directory", file=sys.stderr)
            return 2
    src = paths[0] if len(paths) == 1 and (paths[0] / "checkpoints").is_dir() else paths
    try:
        df = weight_dynamics(src)
    except (FileNotFoundError, ValueError) as e:
        print(f"analysis.weights: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(f"wrote {out}: {df['checkpoint'].nunique()} checkpoints x {df['param'].nunique()} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
