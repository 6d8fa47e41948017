"""import-reference: OLMo-ladder CSVs and Pythia lm-eval JSONs made here (not the shipped ones) into the
results store: names mapped as the table says, tokens, item counts, unmapped columns reported, malformed
files refused before anything is written; and the store shipped in examples/ as the importer writes it."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmas_repro.cli import main
from dmas_repro.core.errors import UserError
from dmas_repro.eval import reference as ref
from dmas_repro.eval.store import COLUMNS

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "examples" / "results" / "reference"


def olmo_csv(path: Path, steps=(100, 200, 300, 400), batch=1048576, n=250, extra=None) -> Path:
    rng = np.random.default_rng(0)
    k = len(steps)
    hs = rng.integers(60, 120, k) / n  # k/n accuracies, kept as float32 like the W&B exports
    cols = {
        "_step": list(steps),
        "eval/c4_en-validation/CrossEntropyLoss": np.linspace(6, 4, k),
        "eval/pile-validation/CrossEntropyLoss": np.linspace(5.5, 3.5, k),
        "eval/downstream/hellaswag_val_rc_5shot_len_norm": hs.astype(np.float32),
        "eval/downstream_bpb/hellaswag_val_rc_5shot_bpb": np.linspace(1.8, 1.2, k),
        "eval/downstream/arc_easy_val_rc_5shot_len_norm": (rng.integers(10, 40, k) / 57).astype(np.float32),
        "eval/downstream/arc_easy_test_rc_5shot_len_norm": (rng.integers(50, 90, k) / 237).astype(np.float32),
        "eval/downstream/boolq_val_rc_5shot_acc": (rng.integers(100, 200, k) / 327).astype(np.float32),
        "eval/downstream_soft/hellaswag_val_rc_5shot_soft": np.full(k, 0.25),
        "eval/downstream/copa_val_rc_5shot_len_norm": np.full(k, 0.5),  # a task the table does not know
        "optim/learning_rate_group0": np.linspace(1e-3, 1e-4, k),  # not an evaluation
        "batch_size_in_tokens": batch,
        "throughput/total_tokens": [s * batch for s in steps],
    }
    cols.update(extra or {})
    pd.DataFrame(cols).to_csv(path, index=False)
    return path


def pythia_json(path: Path, size="160m", step=3000, n=500, revision=True, **over) -> Path:
    p = 0.6
    se = np.sqrt(p * (1 - p) / (n - 1))  # lm-eval's sample stderr of a mean of n 0/1 values
    doc = {
        "results": {
            "hendrycksTest-anatomy": {"acc": 0.3, "acc_stderr": np.sqrt(0.21 / 134), "acc_norm": 0.28,
                                      "acc_norm_stderr": 0.03},
            "lambada_openai": {"ppl": 12.5, "ppl_stderr": 0.4, "acc": p, "acc_stderr": se},
            "crows_pairs_english": {"likelihood_difference": 3.2, "likelihood_difference_stderr": 0.1,
                                    "pct_stereotype": 0.6, "pct_stereotype_stderr": 0.012},
            "piqa": {"acc": 0.61, "acc_stderr": 0.011, "f1": 0.5},  # f1: a metric the table does not know
            "made_up_task": {"acc": 0.5, "acc_stderr": 0.01},
        },
        "versions": {"lambada_openai": 0, "piqa": 0, "hendrycksTest-anatomy": 0},
        "config": {"model": "hf-causal", "num_fewshot": 0, "batch_size": 16, "device": "cuda:0", "limit": None,
                   "model_args": f"pretrained=EleutherAI/pythia-v1.1-{size}" + (f",revision=step{step}" if revision
                                                                                else "")},
    }
    for k, v in over.items():
        doc[k] = v
    path.write_text(json.dumps(doc))
    return path


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_olmo_ladder_rows_names_tokens_and_items(tmp_path):
    f = olmo_csv(tmp_path / "1B-1xC.csv")
    rep = ref.import_reference("olmo-ladder", [str(f)], str(tmp_path / "store"))
    df = pd.read_csv(tmp_path / "store" / "results.csv")
    assert list(df.columns) == COLUMNS + ref.REFERENCE_COLUMNS
    assert (df["kind"] == "reference").all() and (df["family"] == "olmo-ladder").all()
    assert set(df["series"]) == {"OLMo-ladder-1B-1xC"} and (df["model_size"] == "1B").all()
    assert (df["tokens"] == df["step"] * 1048576).all() and (df["source_sha256"] == _sha(f)).all()
    ck = df[df["checkpoint"] == "olmo-ladder-1B-1xC-step300"].set_index(["task", "metric", "corpus"], drop=False)
    hs = ck[ck.task == "hellaswag"]
    assert set(hs["metric"]) == {"acc_norm", "gold_bpb", "soft"} and (hs["num_fewshot"] == 5).all()
    assert (hs["split"] == "validation").all() and (hs["n"] == 250).all()  # recovered from the k/250 values
    raw = pd.read_csv(f).iloc[2]
    assert hs.set_index("metric").loc["acc_norm", "value"] == raw["eval/downstream/hellaswag_val_rc_5shot_len_norm"]
    vl = ck[ck.task == "val_loss"]
    assert set(zip(vl["metric"], vl["corpus"])) == {("loss", "c4_en"), ("loss", "pile")}
    # the split lm-eval scores keeps lm-eval's name; the other split is named after it
    assert set(ck[ck.task.str.startswith("arc_easy")]["task"]) == {"arc_easy", "arc_easy_validation"}
    assert ck[ck.task == "arc_easy"]["split"].iloc[0] == "test" and ck[ck.task == "arc_easy"]["n"].iloc[0] == 237
    assert ck[ck.task == "boolq"]["metric"].tolist() == ["acc"]
    assert rep["not_mapped"] == {"eval/downstream/copa_val_rc_5shot_len_norm": ["1B-1xC.csv"],
                                 "optim/learning_rate_group0": ["1B-1xC.csv"]}
    man = json.loads((tmp_path / "store" / ref.MANIFEST).read_text())
    assert man["sources"][0]["sha256"] == _sha(f)
    assert "optim/learning_rate_group0" in man["not_mapped"]["olmo-ladder"]
    pq = pd.read_parquet(tmp_path / "store" / "results.parquet")
    assert len(pq) == len(df) and np.allclose(pq["value"].astype(float), df["value"])


def test_pythia_rows_names_stderr_and_items(tmp_path):
    d = tmp_path / "evals" / "pythia-160m"
    d.mkdir(parents=True)
    files = [pythia_json(d / f"160m_step{s}.json", step=s) for s in (1000, 3000)]
    rep = ref.import_reference("pythia", [str(tmp_path / "evals")], str(tmp_path / "store"))  # a directory
    assert rep["files"] == 2 and rep["checkpoints"] == 2
    df = pd.read_parquet(tmp_path / "store" / "results.parquet")
    one = df[df["checkpoint"] == "pythia-160m-step3000"].set_index(["task", "metric"])
    assert one.loc[("lambada_openai", "perplexity"), "value"] == 12.5
    assert one.loc[("lambada_openai", "perplexity"), "stderr"] == pytest.approx(0.4)
    assert one.loc[("lambada_openai", "acc"), "n"] == 500 == one.loc[("lambada_openai", "perplexity"), "n"]
    assert one.loc[("mmlu_anatomy", "acc"), "group"] == "mmlu" and one.loc[("mmlu_anatomy", "acc"), "n"] == 135
    assert one.loc[("crows_pairs_english", "likelihood_diff"), "value"] == 3.2
    assert (one["tokens"] == 3000 * 2097152).all() and (one["num_fewshot"] == 0).all()
    assert (one["harness_version"] == "lm-eval 0.3").all() and one.loc[("piqa", "acc"), "task_version"] == "0"
    assert set(df["series"]) == {"Pythia-160M"} and set(df["source_sha256"]) == {_sha(f) for f in files}
    assert set(rep["not_mapped"]) == {"made_up_task", "piqa.f1"}


def test_two_families_share_a_store_and_a_reimport_replaces_its_run(tmp_path, capsys):
    store = tmp_path / "store"
    (tmp_path / "LICENSE").write_text("Apache License 2.0 (test)")  # beside the inputs: travels with the store
    assert main(["import-reference", "olmo-ladder", str(olmo_csv(tmp_path / "190M-1xC.csv")), "--out", str(store)]) == 0
    assert "imported" in capsys.readouterr().out
    lic = json.loads((store / ref.MANIFEST).read_text())["licenses"]["olmo-ladder"]
    assert (store / lic["file"]).read_text() == "Apache License 2.0 (test)" and lic["source"] == "LICENSE"
    pythia_json(tmp_path / "1.4b_step512.json", size="1.4b", step=512)
    assert main(["import-reference", "pythia", str(tmp_path / "1.4b_step512.json"), "--out", str(store)]) == 0
    both = pd.read_csv(store / "results.csv")
    assert set(both["family"]) == {"olmo-ladder", "pythia"}
    # importing the run again with fewer checkpoints replaces its rows, and keeps the other family's
    assert main(["import-reference", "olmo-ladder", str(olmo_csv(tmp_path / "190M-1xC.csv", steps=(100, 200))),
                 "--out", str(store), "--parquet-only"]) == 0
    df = pd.read_parquet(store / "results.parquet")
    assert not (store / "results.csv").exists()
    assert sorted(df[df.family == "olmo-ladder"]["step"].unique()) == [100, 200]
    assert (df.family == "pythia").sum() == (both.family == "pythia").sum()
    man = json.loads((store / ref.MANIFEST).read_text())
    assert len(man["sources"]) == 2 and set(man["licenses"]) == {"olmo-ladder", "pythia"}
    assert all((store / v["file"]).is_file() for v in man["licenses"].values())  # kept across imports


@pytest.mark.parametrize("fmt,make,match", [
    ("olmo-ladder", lambda d: (d / "a.csv").write_text("a,b\n1,2\n") and d / "a.csv", "no '_step' column"),
    ("olmo-ladder", lambda d: olmo_csv(d / "b.csv", extra={"eval/pile-validation/CrossEntropyLoss": ["x", 1, 2, 3]}),
     "is not a number"),
    ("olmo-ladder", lambda d: olmo_csv(d / "c.csv", extra={"throughput/total_tokens": [1, 2, 3, 4]}),
     "total_tokens"),
    ("olmo-ladder", lambda d: olmo_csv(d / "d.csv", steps=(100, 100, 200, 300)), "appears twice"),
    ("pythia", lambda d: (d / "e.json").write_text("{not json") and d / "e.json", "not a JSON file"),
    ("pythia", lambda d: pythia_json(d / "160m_step3000.json", results=[]), "not an lm-eval result file"),
    ("pythia", lambda d: pythia_json(d / "nostep.json", revision=False), "gives the step"),
    ("pythia", lambda d: pythia_json(d / "160m_step3000.json", step=7), "file name says step 3000"),
    ("pythia", lambda d: pythia_json(d / "160m_step3000.json", config={"model_args": "pretrained=gpt2"}),
     "not a Pythia model"),
])
def test_a_malformed_file_is_one_error_and_nothing_is_written(tmp_path, fmt, make, match, capsys):
    store = tmp_path / "store"
    (tmp_path / "ok").mkdir()
    ok = olmo_csv(tmp_path / "ok" / "1B-1xC.csv")
    ref.import_reference("olmo-ladder", [str(ok)], str(store))
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    (tmp_path / "bad").mkdir()
    bad = make(tmp_path / "bad")
    # a good file in the same call is not imported either
    with pytest.raises(UserError, match=match):
        ref.import_reference(fmt, [str(ok), str(bad)] if fmt == "olmo-ladder" else [str(bad)], str(store))
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]  # no temporary leftovers
    capsys.readouterr()
    rc = main(["import-reference", fmt, str(bad), "--out", str(store)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bad) in err[0]


def test_refuses_a_foreign_out_directory_and_missing_inputs(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    f = olmo_csv(tmp_path / "1B-1xC.csv")
    with pytest.raises(UserError, match="not a reference store"):
        ref.import_reference("olmo-ladder", [str(f)], str(other))
    with pytest.raises(UserError, match="no such file"):
        ref.import_reference("olmo-ladder", [str(tmp_path / "nope.csv")], str(tmp_path / "s"))
    with pytest.raises(UserError, match="two inputs give"):
        g = tmp_path / "copy"
        g.mkdir()
        ref.import_reference("olmo-ladder", [str(f), str(olmo_csv(g / "1B-1xC.csv"))], str(tmp_path / "s"))


def test_items_behind_recovers_counts_and_refuses_noise():
    rng = np.random.default_rng(1)
    for n in (57, 500, 1267, 10042):
        vals = (rng.integers(0, n, 40) / n).astype(np.float32).tolist()
        assert ref.items_behind(vals) == n
    assert ref.items_behind(rng.random(40).tolist()) is None
    assert ref.items_behind([0.25, 0.25]) is None  # too few distinct values to tell
    assert ref.items_from_stderr(0.5, np.sqrt(0.25 / 99)) == 100 and ref.items_from_stderr(0.0, 0.0) is None


def test_the_shipped_store_is_the_importers_output():
    """examples/results/reference: what `import-reference` wrote from the two bundled suites (README)."""
    man = json.loads((SHIPPED / ref.MANIFEST).read_text())
    assert man["format"] == ref.STORE_FORMAT and man["mapping"] == ref.mapping_table()
    df = pd.read_parquet(SHIPPED / "results.parquet")
    assert list(df.columns) == COLUMNS + ref.REFERENCE_COLUMNS and (df["kind"] == "reference").all()
    assert set(df["series"]) == {"OLMo-ladder-190M-1xC", "OLMo-ladder-370M-1xC", "OLMo-ladder-760M-1xC",
                                 "OLMo-ladder-1B-1xC", "OLMo-ladder-1B-0.5xC",
                                 "OLMo-ladder-1B-2xC", "OLMo-ladder-1B-5xC", "Pythia-160M", "Pythia-410M",
                                 "Pythia-1.4B"}
    assert {s["sha256"] for s in man["sources"]} == set(df["source_sha256"])
    hs = df[(df.series == "OLMo-ladder-1B-1xC") & (df.task == "hellaswag")]
    assert set(hs["n"]) == {10042} and (hs["tokens"] == hs["step"] * 1572864).all()
    py = df[(df.family == "pythia")]
    assert (py["tokens"] == py["step"] * ref.PYTHIA_TOKENS_PER_STEP).all()
    assert set(py[py.task == "piqa"]["n"]) == {1838}
    assert not df.duplicated(ref.REFERENCE_KEY).any()
    assert os.path.getsize(SHIPPED / "results.parquet") < 2_000_000
    for lic in man["licenses"].values():  # the data's Apache-2.0 licences ship with it
        assert "Apache License" in (SHIPPED / lic["file"]).read_text()
