"""Helpers every speed benchmark shares: model-config overrides, the command line as run, result JSON."""

from __future__ import annotations

import contextlib
import json
from dataclasses import fields
from pathlib import Path

from ..core.errors import UserError


def parse_overrides(items: list[str] | None) -> dict:
    """`key=value` strings -> ModelConfig overrides with the field's type."""
    from ..model.transformer import ModelConfig

    types = {f.name: f.type for f in fields(ModelConfig)}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--model {item!r}: expected key=value")
        if key not in types:
            raise UserError(f"--model {key!r}: unknown model field; known: {sorted(types)}")
        try:
            out[key] = float(value) if types[key] in ("float", float) else int(value)
        except ValueError:
            raise UserError(f"--model {item!r}: {value!r} is not a number") from None
    return out


def command_line() -> str:
    import shlex
    import sys

    prog = sys.argv[0]
    if Path(prog).name == "__main__.py":
        prog = "python -m dmas_repro"
    elif Path(prog).name == "dmas-repro":
        prog = "dmas-repro"
    return " ".join([prog, *(shlex.quote(a) for a in sys.argv[1:])])


def write_json(path: str | None, obj: dict) -> None:
    if not path:
        return
    from ..core.files import atomic_write_text

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def scratch_dir(given: str | None, prefix: str):
    """The benchmark's working directory: `given` (created if needed, kept: what was built there is reused),
    or a new temporary one removed at the end, however the benchmark ends."""
    import shutil
    import tempfile

    if given is not None:
        work = Path(given)
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
