"""The released DMaS-LLaMa-Lite checkpoints (assets/released_checkpoints.csv): one table, read here.

Evaluation sources (`dmas_repro.eval.sources`) turn its rows into checkpoints to fetch; the training
loop scales `released_steps()` to a run's length for its milestone checkpoints.

Also the registry of reference models (assets/reference_checkpoints.csv): intermediate checkpoints of
other open suites (Pythia, OLMo-1B, TinyLlama) at the tokens nearest the ten released ones, evaluated
by the same harness (`eval-all-checkpoints --checkpoints pythia-1.4b`); `reference_rows()`.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

from ..core.errors import UserError

REGISTRY = Path(__file__).resolve().parents[1] / "assets" / "released_checkpoints.csv"
REFERENCE_REGISTRY = REGISTRY.with_name("reference_checkpoints.csv")
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


@functools.lru_cache(maxsize=1)
def _reference_rows() -> tuple[dict, ...]:
    lines = [ln for ln in REFERENCE_REGISTRY.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    out = []
    for r in csv.DictReader(lines):
        step, tps = int(r["step"]), int(r["tokens_per_step"])
        if int(r["tokens"]) != step * tps:
            raise UserError(f"{REFERENCE_REGISTRY}: {r['label']}: tokens {r['tokens']} != step x tokens_per_step")
        out.append({"family": r["family"], "label": r["label"], "repo_id": r["repo_id"],
                    "revision": r["revision"] or None, "step": step, "tokens": int(r["tokens"]),
                    "tokens_per_step": tps, "architecture": r["architecture"], "kind": "base",
                    "nearest_to": tuple(r["nearest_to"].split())})
    return tuple(out)


def reference_rows(family: str | None = None) -> list[dict]:
    """Reference checkpoints (all, or one family's), in the file's order (a family by tokens)."""
    return [dict(r) for r in _reference_rows() if family is None or r["family"] == family]


def reference_families() -> tuple[str, ...]:
    """The reference families ('pythia-1.4b', 'olmo-1b', ...), in the file's order."""
    return tuple(dict.fromkeys(r["family"] for r in _reference_rows()))
