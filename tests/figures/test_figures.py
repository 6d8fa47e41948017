"""`make figures`: every manifest entry builds from a complete (synthetic) workspace with provenance;
missing inputs skip one entry with a message naming the command to run; the Makefile target works, the
reference entries with the reference store shipped in examples/."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from analysis_synth import write_workspace
from PIL import Image

import analysis
from paper_figures import build
from paper_figures.manifest import MANIFEST

REPO = Path(__file__).resolve().parents[2]
REFERENCE_ENTRIES = [e.name for e in MANIFEST if "reference" in e.name]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = write_workspace(tmp_path_factory.mktemp("ws"))
    out = root / "out"
    report = build.build(analysis.discover(root), out, n_boot=20, log=lambda *a: None)
    return root, out, report


def test_every_manifest_entry_builds_with_provenance(built):
    root, out, report = built
    assert report["failed"] == {} and report["skipped"] == {}
    assert set(report["built"]) == {e.name for e in MANIFEST}
    figures = [e for e in MANIFEST if e.kind == "figure"]
    tables = [e for e in MANIFEST if e.kind == "table"]
    assert len(figures) >= 6 and len(tables) >= 2
    sha = hashlib.sha256((root / "results" / "offline" / "results.csv").read_bytes()).hexdigest()
    for e in figures:
        png, pdf = out / f"{e.name}.png", out / f"{e.name}.pdf"
        assert png.stat().st_size > 5000 and pdf.read_bytes()[:5] == b"%PDF-"
        side = json.loads((out / f"{e.name}.provenance.json").read_text())
        assert side["inputs"] and side["script"] == e.script and "git_commit" in side
        meta = json.loads(Image.open(png).text["Comment"])
        assert meta["inputs"] == side["inputs"] and meta["git_commit"] == side["git_commit"]
        assert str(side["git_commit"]).encode() in pdf.read_bytes()  # PDF info dictionary
    acc = json.loads((out / "acc_vs_loss.provenance.json").read_text())
    assert acc["inputs"]["results/offline/results.csv"] == sha
    assert any(k.startswith("results/offline/items/") for k in acc["inputs"])
    for name in REFERENCE_ENTRIES:  # the workspace's own reference store, beside its DMaS results
        side = json.loads((out / f"{name}.provenance.json").read_text())["inputs"]
        assert {"results/reference/results.csv", "results/reference/reference.json"} <= set(side), name
        assert "results/offline/results.csv" in side
    for e in tables:
        for ext in ("md", "tex", "csv", "provenance.json"):
            assert (out / f"{e.name}.{ext}").stat().st_size > 0
        assert "inputs sha256" in (out / f"{e.name}.md").read_text().splitlines()[0]
    assert (out / "README.md").is_file() and json.loads((out / "build.json").read_text())["built"]


def test_tables_hold_generated_values(built):
    from dmas_repro.model.transformer import PRESETS
    from dmas_repro.train.config import PRESETS as TRAIN_PRESETS

    _, out, _ = built
    arch = pd.read_csv(out / "architecture.csv", index_col=0)
    assert set(arch.columns) == set(TRAIN_PRESETS)
    assert arch.loc["layers", "paper"] == f"{PRESETS['paper'].n_layer:,}"
    assert arch.loc["parameters", "paper"] == "1,716,144,128"
    scores = pd.read_csv(out / "scores_table.csv", index_col=0)
    assert "tiny-sft-hf" in scores.index and "easy_task (acc_norm)" in scores.columns
    tr = pd.read_csv(out / "transitions_table.csv")
    easy = tr[(tr["series"] == "tiny") & (tr["task"] == "easy_task")].iloc[0]
    assert easy["midpoint"] == pytest.approx(5.5, abs=0.3) and easy["emergence_rank"] == 1
    q = (out / "qualitative_outputs.md").read_text()
    assert "tiny-step_00000100" in q and "tiny-sft-hf" in q
    m = pd.read_csv(out / "reference_matched_tokens_long.csv")
    assert m.groupby(["series", "task"]).size().eq(10).all()  # the ten released token counts
    assert set(m.task) == {"arc_easy", "piqa", "hellaswag"}
    rt = pd.read_csv(out / "reference_transitions.csv")
    planted = rt[(rt.series == "OLMo-ladder-1B-1xC") & (rt.against == "olmo-ladder c4_en loss")].set_index("task")
    assert planted.loc["piqa", "emergence_rank"] == 1 and planted.loc["hellaswag", "emergence_rank"] == 2


def test_missing_inputs_skip_with_the_command_to_run(tmp_path):
    root = write_workspace(tmp_path / "ws", parts=("runs",))
    out = tmp_path / "out"
    lines = []
    inputs = analysis.discover(root)
    assert inputs.reference == analysis.io.shipped_reference()  # none of its own: the shipped one
    inputs.reference = []
    report = build.build(inputs, out, log=lines.append)
    assert report["failed"] == {}
    assert {"training_curves", "architecture"} <= set(report["built"])
    assert "eval-all-checkpoints" in report["skipped"]["scores_vs_tokens"]
    assert "ablate resume" in report["skipped"]["resume_ablation"]
    assert "analysis.weights" in report["skipped"]["weight_change"]
    assert all("import-reference" in report["skipped"][n] for n in REFERENCE_ENTRIES)
    assert any("skipped scores_vs_tokens" in ln for ln in lines)
    assert not (out / "scores_vs_tokens.png").exists() and (out / "training_curves.png").exists()


def test_make_figures_target(tmp_path):
    """`make figures` with the shipped examples: every entry builds but the overlay on the released suite
    (its inputs need a GPU evaluation of the released checkpoints), which is skipped with its message."""
    out = tmp_path / "out"
    r = subprocess.run(["make", "-s", "figures", f"FIGURES_ARGS=--examples --out {out} --n-boot 20"], cwd=REPO,
                       capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "build.json").read_text())
    assert report["failed"] == {}
    assert set(report["built"]) == {e.name for e in MANIFEST} - {"rerun_overlay"}, report
    assert "rerun_overlay" in report["skipped"] and "eval-all-checkpoints" in r.stdout
    for e in MANIFEST:
        if e.name in report["built"]:
            exts = ("png", "pdf") if e.kind == "figure" else ("md", "tex", "csv")
            assert all((out / f"{e.name}.{x}").stat().st_size > 0 for x in exts), e.name
    # the reference entries: the shipped reference store beside the tiny run; real transitions
    side = json.loads((out / "reference_acc_vs_loss.provenance.json").read_text())["inputs"]
    assert {"examples/results/reference/results.parquet", "examples/results/offline/results.csv"} <= set(side)
    rt = pd.read_csv(out / "reference_transitions.csv")
    hs = rt[(rt.series == "OLMo-ladder-1B-1xC") & (rt.task == "hellaswag")].set_index("against")
    assert 4.0 < hs.loc["olmo-ladder c4_en loss", "transition"] < 4.6
    assert set(rt[rt.series == "tiny"].task) == {"hellaswag_dev"}
    m = pd.read_csv(out / "reference_matched_tokens_long.csv")
    assert set(m.checkpoint) == set(analysis.reference.dmas_token_counts().checkpoint)


def _env():
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_example_results_keep_only_small_files(tmp_path):
    """make_example_results copies metrics, results, items, probes, summaries, weight tables; never weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mer", REPO / "scripts" / "make_example_results.py")
    mer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mer)
    work = tmp_path / "work"
    keep = ["runs/tiny/metrics.jsonl", "runs/tiny/config.json", "runs/tiny/sft/metrics.jsonl",
            "runs/ablate/resume/summary.json", "runs/ablate/resume/reference/metrics.jsonl",
            "results/offline/results.csv", "results/offline/probes.jsonl",
            "results/offline/items/tiny-step_00000010/hellaswag_dev.jsonl", "results/weights/tiny.csv"]
    drop = ["runs/tiny/checkpoints/step_00000010/model.safetensors", "runs/tiny/checkpoints/step_00000010/config.json",
            "runs/tiny/hf/config.json", "runs/tiny/hf/model.safetensors", "results/offline/units/x/val_loss.json",
            "results/offline/.exports/tiny-step_00000010/model.safetensors", "data/bundled/train_000000.bin",
            "runs/ablate/resume/reference/checkpoints/step_00000080/optimizer.pt"]
    for f in keep + drop:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("x")
    dest = tmp_path / "examples"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    files = mer.collect(work, dest)
    assert sorted(str(f.relative_to(dest)) for f in files) == sorted(keep)
    assert not (dest / "stale.txt").exists()


def test_example_results_keep_the_reference_store_without_its_sources(tmp_path):
    """The reference store's sources are not in the repository: regenerating examples/ without them (or
    without the reference stage) keeps the shipped store and its commands' record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mer", REPO / "scripts" / "make_example_results.py")
    mer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mer)
    dest = tmp_path / "examples"
    (dest / "results" / "reference").mkdir(parents=True)
    (dest / "results" / "reference" / "results.parquet").write_text("old store")
    rec = {"command": ["dmas-repro", "import-reference", "pythia", "x"], "seconds": 1.0, "git_commit": "abc"}
    (dest / "manifest.json").write_text(json.dumps({"commands": [rec]}))
    assert mer._previous_commands(dest, "import-reference") == [rec]
    work = tmp_path / "work"
    (work / "results" / "weights").mkdir(parents=True)
    (work / "results" / "weights" / "tiny.csv").write_text("x")
    files = mer.collect(work, dest, carry=(mer.REFERENCE_STORE,))
    assert sorted(str(f.relative_to(dest)) for f in files) == ["results/reference/results.parquet",
                                                               "results/weights/tiny.csv"]
    assert (dest / "results" / "reference" / "results.parquet").read_text() == "old store"
    assert mer._previous_commands(tmp_path / "nowhere", "import-reference") == []
    cmds = mer.commands(None, tmp_path / "src")["reference"]
    assert [c[3:6] for c in cmds] == [["import-reference", "olmo-ladder", str(tmp_path / "src" / "olmo-ladder")],
                                      ["import-reference", "pythia", str(tmp_path / "src" / "pythia-evals")]]

