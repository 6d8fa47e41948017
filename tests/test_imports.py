"""The package's imports run one way, along the data flow, with no cycles (ARCHITECTURE.md).

Every import statement of dmas_repro/, analysis/ and paper_figures/ is read with `ast`, including
those inside functions, and resolved to the module it loads. The levels, lowest first:

    dmas_repro.core < model < data < train < eval < speed < cli < analysis < paper_figures

A module may import its own level and the levels below; nothing imports `dmas_repro.cli` (the
entry points `dmas_repro/__main__.py` and the console script aside); no module string is handed
to importlib; and the module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dmas_repro", "analysis", "paper_figures")
LEVELS = ["dmas_repro.core", "dmas_repro.model", "dmas_repro.data", "dmas_repro.train", "dmas_repro.eval",
          "dmas_repro.speed", "dmas_repro.cli", "analysis", "paper_figures"]
ENTRY_POINTS = {"dmas_repro.__main__"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            if "tasks" in rel.parts:  # lm-eval task helpers, loaded by lm-eval itself
                continue
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _resolve(name: str, mods: dict) -> str | None:
    """The longest known module that `name` is or lies in (None for third-party modules)."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def _edges(mods: dict) -> tuple[dict[str, set[str]], list[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    dynamic = []
    for mod, f in mods.items():
        is_pkg = f.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[: len(up) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module"):
                dynamic.append(f"{mod}: importlib.import_module")
            for t in targets:
                r = _resolve(t, mods)
                if r is not None and r != mod:
                    edges[mod].add(r)
    return edges, dynamic


def _level(mod: str) -> int:
    best = -1
    for i, prefix in enumerate(LEVELS):
        if mod == prefix or mod.startswith(prefix + "."):
            best = i
    return best


def test_every_module_has_a_level():
    unplaced = [m for m in _modules() if _level(m) < 0 and m not in ("dmas_repro", *ENTRY_POINTS)]
    assert not unplaced, f"modules outside the levels of ARCHITECTURE.md: {unplaced}"


def test_imports_follow_the_data_flow():
    mods = _modules()
    edges, _ = _edges(mods)
    backward = []
    for src, dsts in edges.items():
        if src in ENTRY_POINTS or src == "dmas_repro":
            continue
        for dst in dsts:
            if dst == "dmas_repro":
                continue
            if _level(dst) > _level(src):
                backward.append(f"{src} -> {dst}")
            elif dst.startswith("dmas_repro.cli") and not src.startswith("dmas_repro.cli"):
                backward.append(f"{src} -> {dst} (nothing imports the CLI)")
    assert not backward, "imports against the data flow:\n" + "\n".join(sorted(backward))


def test_no_module_strings_handed_to_importlib():
    _, dynamic = _edges(_modules())
    assert not dynamic, "register modules explicitly, not by name: " + ", ".join(dynamic)


def test_no_import_cycles():
    edges, _ = _edges(_modules())
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_planted_backward_import(tmp_path, monkeypatch):
    """The rules bite: a model module importing the training stage is reported."""
    mods = _modules()
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from ..train import loop\n")
    mods["dmas_repro.model.planted"] = planted
    edges, _ = _edges(mods)
    assert "dmas_repro.train.loop" in edges["dmas_repro.model.planted"]
    assert _level("dmas_repro.train.loop") > _level("dmas_repro.model.planted")
