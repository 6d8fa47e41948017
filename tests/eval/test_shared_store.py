"""eval-all-checkpoints processes sharing one results store, and what a long run tells its user.

Two real `dmas-repro eval-all-checkpoints` processes on one store split the units between them (claim
files, `filelock`); a claim held by a process killed with SIGKILL is taken over by the next run; the
terminal shows a checkpoint counter with an ETA and a line per unit, lm-eval's notices go to
OUT/eval.log, and git says nothing outside a checkout. Tiny models, the offline suite, a few items.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dmas_repro.cli import main
from dmas_repro.eval import driver
from dmas_repro.eval.store import KEY, ResultStore
from dmas_repro.model import hf
from dmas_repro.model.transformer import ModelConfig, build

CFG = ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=128)
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
# what lm-eval says on every call (its "lm_eval" logger), once per checkpoint and task before #15
LM_EVAL_NOTICES = ("`pretrained` model kwarg is not of type", "Overwriting default num_fewshot",
                   "Custom kwargs can be passed")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    for i in range(3):
        torch.manual_seed(200 + i)
        hf.save_hf(build(CFG), root / f"m{i}")
    return root


def _started(err: str) -> list[tuple[str, str]]:
    return re.findall(r"^(m\d): (\S+) started", err, re.MULTILINE)


def test_two_processes_on_one_store_split_the_units(models, tmp_path):
    work = tmp_path / "work"  # not inside a git checkout: lm-eval's `git describe` fails there
    work.mkdir()
    if subprocess.run(["git", "rev-parse"], cwd=work, capture_output=True).returncode == 0:
        pytest.skip("the temporary directory is inside a git checkout")
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "dmas_repro", "eval-all-checkpoints", "--checkpoints",
           *(str(models / f"m{i}") for i in range(3)), "--suite", "offline", "--limit", "4", "--parts",
           "benchmarks,probes", "--probe-seeds", "0", "--probe-max-new-tokens", "2", "--device", "cpu", "--dtype",
           "float32", "--batch-size", "4", "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    errs = [err for _, err in results]
    assert [p.returncode for p in procs] == [0, 0], errs

    # every unit evaluated once, by one of the two
    started = [_started(err) for err in errs]
    every = {(f"m{i}", u) for i in range(3) for u in ("hellaswag_dev", "probes")}
    assert sorted(started[0] + started[1]) == sorted(every), started
    # (whether the second process found work left depends on when it started: the claim itself is tested
    # deterministically below, with a claim held by another process)
    df = pd.read_csv(out / "results.csv")
    assert not df.duplicated(KEY).any()
    assert set(df.checkpoint) == {"m0", "m1", "m2"} and (df.task == "hellaswag_dev").all()
    probes = [json.loads(ln) for ln in (out / "probes.jsonl").read_text().splitlines()]
    assert sorted({p["checkpoint"] for p in probes}) == ["m0", "m1", "m2"]
    assert not list((out / "units").glob("*/*.claim"))  # a stored unit's claim file is removed

    # legible: counter, a line per unit; lm-eval's notices in the log file, not on the terminal; no git error
    log_text = (out / driver.LOG_NAME).read_text()
    for err in errs:
        assert "checkpoint 1/3 m0" in err
        assert "fatal:" not in err and "not a git repository" not in err
        for notice in LM_EVAL_NOTICES:
            assert notice not in err
    for notice in LM_EVAL_NOTICES:
        assert notice in log_text
    assert re.search(r"m\d: probes finished in \S+ \(\d+ outputs\)", "".join(errs))
    assert re.search(r"checkpoint \d/3 m\d: skipped, another process", "".join(errs))


def test_a_dead_process_claim_is_taken_over(models, tmp_path, caplog):
    out = tmp_path / "res"
    store = ResultStore(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dmas_repro.eval.store import ResultStore; "
         f"c = ResultStore({str(out)!r}).claim('m0', ['probes']); print(c.units, flush=True); time.sleep(300)"],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "['probes']"
        assert not store.claim("m0", ["probes"])  # held by the other process
        cfg = driver.EvalConfig(checkpoints=(str(models / "m0"), str(models / "m1")), suite="offline",
                                parts=("probes",), parts_explicit=True, probe_seeds=(0,), probe_max_new_tokens=2,
                                device="cpu", dtype="float32", out=str(out))
        with caplog.at_level("INFO", logger="dmas_repro"):
            assert driver.run(cfg) == 0
        assert store.done("m1", "probes") and not store.done("m0", "probes")
        assert "checkpoint 1/2 m0: skipped, another process" in caplog.text
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert store.claim_path("m0", "probes").exists()  # left behind by the killed process, and free
    caplog.clear()
    with caplog.at_level("INFO", logger="dmas_repro"):
        assert driver.run(cfg) == 0
    assert store.done("m0", "probes") and "m0: probes started" in caplog.text
    assert not store.claim_path("m0", "probes").exists()


def test_progress_counter_and_eta():
    assert driver.progress(1, 4, "step-2.7k", []) == "checkpoint 1/4 step-2.7k"
    now = time.mktime((2025, 1, 1, 12, 0, 0, 0, 0, -1))
    # two finished in 100 s and 140 s: 120 s each, this one and two more left
    assert driver.progress(3, 5, "step-5.1k", [100.0, 140.0], now=now) == (
        "checkpoint 3/5 step-5.1k (ETA 12:06, 6m00s left at 2m00s per checkpoint)")
    assert driver.progress(2, 2, "x", [4000.0], now=now) == "checkpoint 2/2 x (ETA 13:06, 1h06m left at 1h06m per " \
        "checkpoint)"
    assert [driver._duration(s) for s in (0.42, 9.96, 59.4, 61, 3599, 7260)] == ["0.4s", "10.0s", "59s", "1m01s",
                                                                                 "59m59s", "2h01m"]


def test_a_missing_path_is_named_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec, said in (("runs/tiny", "no such local directory"), ("./runs/tiny", "no such directory"),
                       ("nope", "no such directory")):
        assert main(["eval-all-checkpoints", "--checkpoints", spec, "--suite", "offline"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and spec in err[0] and said in err[0], err
    assert "hub id" in _last_error(tmp_path, capsys, "runs/tiny")  # offline: neither a directory nor in the cache
    (tmp_path / "runs").mkdir()  # now runs/tiny can only be a path
    err = _last_error(tmp_path, capsys, "runs/tiny")
    assert "runs/tiny: no such directory" in err and "hub id" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no results/ made


def _last_error(tmp_path, capsys, spec) -> str:
    assert main(["eval-all-checkpoints", "--checkpoints", spec, "--suite", "offline"]) == 2
    return capsys.readouterr().err.strip()
