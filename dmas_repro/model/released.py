"""The released DMaS-LLaMa-Lite checkpoints (assets/released_checkpoints.csv): one table, read here.

Evaluation sources (`dmas_repro.eval.sources`) turn its rows into checkpoints to fetch; the training
loop scales `released_steps()` to a run's length for its milestone checkpoints.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

from ..core.errors import UserError

REGISTRY = Path(__file__).resolve().parents[1] / "assets" / "released_checkpoints.csv"
KINDS = ("base", "instruct")


@functools.lru_cache(maxsize=1)
def _rows() -> tuple[dict, ...]:
    lines = [ln for ln in REGISTRY.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    out = []
    for r in csv.DictReader(lines):
        if r["kind"] not in KINDS:
            raise UserError(f"{REGISTRY}: kind {r['kind']!r} of {r['repo_id']} is not one of {KINDS}")
        out.append({"repo_id": r["repo_id"], "label": r["label"], "step": int(r["step"]), "tokens": int(r["tokens"]),
                    "kind": r["kind"], "revision": r["revision"] or None})
    return tuple(out)


def rows() -> list[dict]:
    """The released checkpoints in training order (base first, then the instruct model)."""
    return [dict(r) for r in _rows()]


def released_steps() -> tuple[int, ...]:
    """The optimizer steps of the released base checkpoints (2,700 ... 43,500)."""
    return tuple(r["step"] for r in _rows() if r["kind"] == "base")
