#!/usr/bin/env python3
"""Regenerate `examples/`, the small results set shipped with the repository (`make example-results`).

Everything is produced for real on this machine's CPU, in a scratch working directory:

1. `dmas-repro train`: the embedded default (tiny preset, bundled corpus) pretrains into runs/tiny
   and instruction-tunes into runs/tiny/sft;
2. `dmas-repro eval-all-checkpoints --checkpoints runs/tiny --suite offline`: every checkpoint
   (and the SFT model) on the bundled HellaSwag slice, validation loss and the probes;
3. `dmas-repro ablate resume` and `dmas-repro ablate world-size`;
4. `python -m analysis.weights runs/tiny`: weight dynamics between the run's checkpoints;
5. `dmas-repro import-reference olmo-ladder|pythia`: other suites' published trajectories (OLMo
   ladder, Pythia; Apache-2.0) from `--reference-data` (default: the project's bundled copies in
   ../shared/reference) into results/reference (parquet only: the CSV would be ~21 MB). Without
   that directory the stage cannot run, and the reference store already in examples/ is kept,
   with its commands' record.

Then only the small files are copied into examples/ (metrics.jsonl, configs, summaries,
results.csv/.parquet, items/, probes.jsonl, the weight-dynamics CSV, the reference store): never
checkpoint weights. examples/README.md records the commands, their wall time, the machine, the git
commit and every copied file's sha256.

    python scripts/make_example_results.py [--work DIR] [--stages train,eval,ablate,weights,reference] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("train", "eval", "ablate", "weights", "reference")
REFERENCE_DATA = REPO.parent / "shared" / "reference"  # olmo-ladder/*.csv, pythia-evals/<model>/*.json
REFERENCE_STORE = "results/reference"

# What is shipped, relative to the scratch directory (glob patterns); everything else stays behind.
KEEP = [
    "runs/**/metrics.jsonl", "runs/**/config.json", "runs/**/sft_config.json", "runs/**/summary.json",
    "results/offline/results.csv", "results/offline/results.parquet", "results/offline/probes.jsonl",
    "results/offline/failures.jsonl", "results/offline/store.json", "results/offline/items/**/*.jsonl",
    "results/weights/*.csv", "results/reference/results.parquet", "results/reference/reference.json",
    "results/reference/licenses/*",
]
SKIP_PARTS = ("checkpoints", "hf", "units", ".exports")  # weights, exports, the store's internal unit files


def commands(limit: int | None, reference_data: Path = REFERENCE_DATA) -> dict[str, list[list[str]]]:
    dr = [sys.executable, "-m", "dmas_repro"]
    ev = dr + ["eval-all-checkpoints", "--checkpoints", "runs/tiny", "--suite", "offline", "--out",
               "results/offline", "--device", "cpu"]
    if limit:
        ev += ["--limit", str(limit)]
    return {
        "train": [dr + ["train"]],
        "eval": [ev],
        "ablate": [dr + ["ablate", "resume", "--out", "runs/ablate/resume"],
                   dr + ["ablate", "world-size", "--out", "runs/ablate/world-size"]],
        "weights": [[sys.executable, "-m", "analysis.weights", "runs/tiny", "--out", "results/weights/tiny.csv"]],
        "reference": [dr + ["import-reference", fmt, str(Path(reference_data) / sub), "--out", REFERENCE_STORE,
                            "--parquet-only"]
                      for fmt, sub in (("olmo-ladder", "olmo-ladder"), ("pythia", "pythia-evals"))],
    }


def _commit() -> str | None:
    """The repository's commit now (each command records the one it ran at; a reused --work
    directory can hold commands run at different commits)."""
    sys.path.insert(0, str(REPO))
    from dmas_repro.core.runtime import git_commit

    return git_commit()


def cpu_model() -> str:
    try:
        for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if ln.startswith("Model name:"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def collect(work: Path, dest: Path, carry: tuple[str, ...] = ()) -> list[Path]:
    """Copy the whitelisted small files from `work` into a fresh `dest` (atomically replaced). `carry`:
    directories of the old `dest` (relative) kept as they are when `work` has none (a stage that could not run)."""
    files = sorted({f for pat in KEEP for f in work.glob(pat) if f.is_file()})
    files = [f for f in files if not any(p in SKIP_PARTS or p.startswith(".")
                                         for p in f.relative_to(work).parts[:-1])]
    tmp = Path(tempfile.mkdtemp(prefix=".examples.tmp-", dir=dest.parent))
    for f in files:
        out = tmp / f.relative_to(work)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, out)
    kept = []
    for rel in carry:
        if (dest / rel).is_dir() and not (work / rel).exists():
            shutil.copytree(dest / rel, tmp / rel)
            kept += [tmp / rel / f.relative_to(dest / rel) for f in sorted((dest / rel).rglob("*")) if f.is_file()]
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return sorted([dest / f.relative_to(work) for f in files] + [dest / f.relative_to(tmp) for f in kept])


def _previous_commands(dest: Path, name: str) -> list[dict]:
    """The record (command, seconds, commit) of earlier `name` commands in dest/manifest.json."""
    f = dest / "manifest.json"
    log = json.loads(f.read_text()).get("commands", []) if f.is_file() else []
    return [c for c in log if len(c["command"]) > 1 and c["command"][1] == name]


def write_readme(dest: Path, log: list[dict], files: list[Path], limit: int | None, commit: str | None) -> None:
    sys.path.insert(0, str(REPO))
    import torch

    from dmas_repro.core.files import file_sha256

    info = {"git_commit": commit, "machine": f"{os.cpu_count()} CPU cores, {cpu_model()}",
            "python": platform.python_version(), "torch": torch.__version__, "eval_limit": limit,
            "made": time.strftime("%Y-%m-%d %H:%M %Z"), "commands": log,
            "files": {str(f.relative_to(dest)): file_sha256(f) for f in files}}
    (dest / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in files)
    params = "tiny-preset"
    run_metrics = dest / "runs" / "tiny" / "metrics.jsonl"
    if run_metrics.is_file():  # the parameter count the training run logged in its start event
        for ln in run_metrics.read_text().splitlines():
            row = json.loads(ln) if ln.strip() else {}
            if row.get("kind") == "event" and row.get("params"):
                params = f"{row['params'] / 1e6:.1f}M-parameter"
                break
    rows = "\n".join(f"| `{' '.join(c['command'])}` | {c['seconds']:.0f} | `{(c.get('git_commit') or '?')[:12]}` |"
                     for c in log)
    (dest / "README.md").write_text(f"""# Example results (made by `make example-results`)

Real outputs of the tiny pipeline, run end to end on a CPU by `scripts/make_example_results.py`;
`make figures` and the notebooks read them when no `results/` or `runs/` exist. Nothing here is
typed by hand or synthetic. They come from a {params} model trained for minutes on a small
bundled corpus, so the benchmark accuracies sit near chance: they show the *pipeline*, not the paper's
numbers (evaluate the released checkpoints on a GPU for those).

- machine: {info['machine']}; Python {info['python']}, torch {info['torch']}
- collected at git commit `{info['git_commit']}`, {info['made']}; each command's own commit in the table
- {len(files)} files, {size / 1e6:.2f} MB; sha256 of each in `manifest.json`. Checkpoint weights are not shipped.

| command (in a scratch directory) | wall seconds | at commit |
|---|---|---|
{rows}

Layout (the same as a working directory): `runs/tiny/` (pretraining metrics and config),
`runs/tiny/sft/` (instruction tuning), `runs/ablate/{{resume,world-size}}/` (each run's metrics and
`summary.json`), `results/offline/` (results.csv/.parquet, items/, probes.jsonl),
`results/weights/tiny.csv` (per-parameter norms and change between checkpoints),
`results/reference/` (other suites' published per-checkpoint results, not made here: AI2's OLMo
model ladder and EleutherAI's Pythia evaluations, Apache-2.0, imported by `dmas-repro
import-reference` with the sha256 of every source file in `reference.json` and their licences in
`licenses/`; results.parquet only, the same table as CSV would be ~21 MB). With them `make figures`
shows real loss-to-capability transitions beside the tiny run.
""")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="scratch directory (default: a new temporary one); with an existing one, "
                    "commands that finished there are not run again")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {','.join(STAGES)}")
    ap.add_argument("--limit", type=int, default=200, help="HellaSwag items per checkpoint (default 200; 0: all)")
    ap.add_argument("--dest", default=str(REPO / "examples"), help="where the example set goes")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch directory")
    ap.add_argument("--reference-data", default=str(REFERENCE_DATA),
                    help="olmo-ladder/ and pythia-evals/ for the reference stage (default: %(default)s)")
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        print(f"unknown stages {bad}; choose from {STAGES}", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dmas-examples-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    print(f"scratch directory: {work}")
    started_at = _commit()  # before examples/ is rewritten (which would make the tree dirty)
    log_file = work / ".make_example_results.json"  # stages already run in this scratch dir (with --work)
    done = json.loads(log_file.read_text()) if log_file.is_file() else {}
    limit = args.limit or None
    carry: tuple[str, ...] = ()
    if "reference" not in stages or not (Path(args.reference_data) / "olmo-ladder").is_dir():
        # its sources are not part of the repository: keep the shipped store (and its record) as it is
        if "reference" in stages:
            print(f"note: {args.reference_data} has no olmo-ladder/: keeping the reference store of {args.dest}")
            stages.remove("reference")
        carry = (REFERENCE_STORE,)
        if not done.get("reference") and not (work / REFERENCE_STORE).exists():
            done["reference"] = _previous_commands(Path(args.dest), "import-reference")
    for stage in stages:
        for cmd in commands(limit, Path(args.reference_data))[stage]:
            shown = (["dmas-repro"] + cmd[3:]) if cmd[2] == "dmas_repro" else ["python"] + cmd[1:]
            if any(c["command"] == shown for c in done.get(stage, [])):
                print(f"\n$ {' '.join(shown)}  (done in an earlier run of this --work directory)", flush=True)
                continue
            print(f"\n$ {' '.join(shown)}", flush=True)
            t0 = time.time()
            try:
                rc = subprocess.run(cmd, cwd=work, env=env).returncode
            except KeyboardInterrupt:
                print(f"\nmake_example_results: interrupted; finished commands are kept in {work}: rerun with "
                      f"--work {work} to continue", file=sys.stderr)
                return 130
            dt = time.time() - t0
            if rc != 0:
                print(f"make_example_results: `{' '.join(shown)}` failed (exit {rc}); finished commands kept in "
                      f"{work} (rerun with --work {work})", file=sys.stderr)
                return rc
            done.setdefault(stage, [])
            done[stage] = [c for c in done[stage] if c["command"] != shown] + [
                {"command": shown, "seconds": round(dt, 1), "git_commit": _commit()}]
            log_file.write_text(json.dumps(done, indent=2))
    log = [c for s in STAGES for c in done.get(s, [])]
    dest = Path(args.dest)
    files = collect(work, dest, carry)
    write_readme(dest, log, files, limit, started_at)
    print(f"\nwrote {len(files)} files into {dest}")
    if not args.keep_work and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
