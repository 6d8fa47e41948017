"""Rebuild every figure and table of the manifest: `make figures` / `python -m paper_figures`.

Inputs: `--results` / `--runs` when given; else `results/` and `runs/` of the current directory
when present; else the shipped example results in `examples/`. An entry whose input is missing is
skipped with a message naming the command that produces it; an entry whose input cannot be read
(a corrupt results.csv or metrics.jsonl) fails with one line naming the file and what to do; the
others still build, and outputs built before stay. Writes `OUT/build.json` (built / skipped /
failed) and `OUT/README.md` (an index). Exit status: 0 when nothing failed (skips are not
failures); 2 when only unreadable inputs failed, or for a --results/--runs/--root that does not
exist or holds no inputs (one `error:` line each); 1 when a figure script itself failed (traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import analysis
from dmas_repro.core.errors import UserError

from . import style
from .core import Context, Skip
from .manifest import MANIFEST, by_name

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
# What `make figures` refuses or fails with one line (README.md "Commands" errors table: tests/test_cli.py
# checks that the two match); shown by --help.
ERRORS = (
    "`--results`/`--runs`/`--root` that does not exist, or no inputs at all; an input that exists but "
    "cannot be read (a `results.csv`, `metrics.jsonl`, items, probes, summary or weights table that is "
    "not UTF-8, not CSV/JSON, lacks a column or holds text where a number belongs): that entry fails with "
    "one line naming the file, the others still build, exit 2 (exit 1 only when a figure script itself "
    "fails, with its traceback)"
)


def build(inputs: analysis.io.Inputs, out: Path, only: list[str] | None = None, n_boot: int = 200,
          log=print) -> dict:
    """Build the manifest entries (all, or `only`) into `out`; returns the build report."""
    style.apply()
    out.mkdir(parents=True, exist_ok=True)
    entries = MANIFEST if not only else [by_name()[n] for n in only]
    ctx = Context(inputs, out, n_boot=n_boot)
    report = {"inputs_from": inputs.source, "git_commit": ctx.commit, "built": {}, "skipped": {}, "failed": {},
              "unreadable_inputs": []}
    log(inputs.describe())
    for e in entries:
        ctx.begin(e.name, e.script)
        t0 = time.time()
        try:
            e.module.make(ctx)
        except Skip as s:
            report["skipped"][e.name] = str(s)
            log(f"  skipped {e.name}: {s}")
            continue
        except UserError as ex:  # an input that exists but cannot be read: named, no traceback
            report["failed"][e.name] = str(ex)
            if str(ex) not in report["unreadable_inputs"]:
                report["unreadable_inputs"].append(str(ex))
            log(f"  FAILED  {e.name}: {ex}")
            continue
        except Exception as ex:  # one broken figure must not stop the others
            report["failed"][e.name] = f"{type(ex).__name__}: {ex}"
            log(f"  FAILED  {e.name}: {type(ex).__name__}: {ex}")
            traceback.print_exc(file=sys.stderr)
            continue
        files = [str(p.relative_to(out)) for p in ctx.written]
        report["built"][e.name] = files
        log(f"  built   {e.name} ({time.time() - t0:.1f}s): {', '.join(f for f in files if 'provenance' not in f)}")
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(_index(report, entries))
    return report


def _index(report: dict, entries) -> str:
    lines = ["# Paper figures and tables", "", f"Built by `make figures` from {report['inputs_from']}; "
             f"git commit {report['git_commit']}. Every output has a `.provenance.json` sidecar with the "
             "sha256 of each input.", "", "| output | kind | what | status |", "|---|---|---|---|"]
    for e in entries:
        if e.name in report["built"]:
            ext = "png" if e.kind == "figure" else "md"
            status = f"[{e.name}.{ext}]({e.name}.{ext})"
        elif e.name in report["skipped"]:
            status = "skipped: " + report["skipped"][e.name].replace("|", "\\|")
        else:
            status = "FAILED: " + report["failed"].get(e.name, "").replace("|", "\\|")
        lines.append(f"| {e.name} | {e.kind} | {e.title} | {status} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paper_figures", description=__doc__.split("\n\n")[0],
                                 epilog=f"errors (exit status 2): {ERRORS}.")
    ap.add_argument("--results", help="results directory (default: results/, else examples/results)")
    ap.add_argument("--runs", help="runs directory (default: runs/, else examples/runs)")
    ap.add_argument("--root", help="working directory holding results/ and runs/ (default: the current one)")
    ap.add_argument("--examples", action="store_true", help="use the shipped example results even if results/ exists")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument("--only", nargs="+", choices=sorted(by_name()), help="build only these entries")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for confidence intervals")
    ap.add_argument("--list", action="store_true", help="print the manifest and exit")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # headless: `make figures` needs no display
    if args.list:
        for e in MANIFEST:
            print(f"{e.name:<22} {e.kind:<6} {e.script:<40} {e.title}")
        return 0
    try:
        for flag, value in (("--results", args.results), ("--runs", args.runs), ("--root", args.root)):
            if value is not None and not Path(value).is_dir():
                raise UserError(f"{flag} {value}: no such directory")
        if args.examples:
            root = Path(args.root or analysis.io.REPO_ROOT) / analysis.io.EXAMPLES
            inputs = analysis.discover(results=root / "results", runs=root / "runs")
            inputs.source = f"the shipped example results ({root})"
        else:
            inputs = analysis.discover(root=args.root, results=args.results, runs=args.runs)
        if inputs.is_empty:
            raise UserError(f"no inputs found in {inputs.source} (no results.csv, metrics.jsonl, ablation "
                            "summary.json or weights table); run `make example-results` (tiny pipeline, CPU) or "
                            "the pipeline itself, or point --results/--runs at its output")
        from dmas_repro.core.files import check_out_dir

        check_out_dir(args.out)
    except UserError as e:
        print(f"python -m paper_figures: error: {e}", file=sys.stderr)
        return 2
    report = build(inputs, Path(args.out), args.only, args.n_boot)
    n = {k: len(v) for k, v in report.items() if isinstance(v, dict)}
    print(f"{n['built']} built, {n['skipped']} skipped, {n['failed']} failed -> {args.out}")
    for msg in report["unreadable_inputs"]:
        print(f"python -m paper_figures: error: {msg}", file=sys.stderr)
    if n["failed"] > len([k for k, v in report["failed"].items() if v in report["unreadable_inputs"]]):
        return 1  # a figure script failed (its traceback is above)
    return 2 if n["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
