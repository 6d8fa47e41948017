"""eval-all-checkpoints: equality with lm-eval, kill-and-rerun, corrupt checkpoints, downloads.

Tiny exported checkpoints, the offline suite (bundled HellaSwag slice) with a few items, and a
hand-made validation split; the Hub is replaced at the transport boundary (snapshot_download and
HfApi.model_info), so nothing here touches the network.
"""

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dmas_repro.core.errors import UserError
from dmas_repro.core.files import dir_size_bytes
from dmas_repro.data import shards
from dmas_repro.eval import driver as evaluate
from dmas_repro.eval import sources
from dmas_repro.eval.store import KEY, ResultStore
from dmas_repro.eval.suites import TASKS_DIR
from dmas_repro.model import hf, hub
from dmas_repro.model import weights as checkpoint
from dmas_repro.model.tokenizer import gpt2
from dmas_repro.model.transformer import ModelConfig, build

CFG = ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=128)
LIMIT = 40
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_val_split(d: Path, tokens: np.ndarray, source: dict | None = None) -> Path:
    """A prepare-data directory with only a val split; `source` as prepare-data records it."""
    d.mkdir(parents=True)
    tokens = tokens.astype("<u2")
    tokens.tofile(d / "val_000000.bin")
    shard = {"file": "val_000000.bin", "tokens": len(tokens), "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()}
    (d / shards.MANIFEST).write_text(json.dumps({"format": shards.FORMAT, "dtype": "uint16", "byteorder": "little",
                                                 "eot": 50256, "shards": {"train": [], "val": [shard]},
                                                 "source": source or {"source": "/corpora/queries.txt"}}))
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalall")
    for i in range(2):
        torch.manual_seed(100 + i)
        hf.save_hf(build(CFG), root / f"m{i}")
    bad = root / "bad"
    shutil.copytree(root / "m0", bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # a truncated download
    text = (TASKS_DIR / "hellaswag_val_dev.jsonl").read_text().splitlines()[:40]
    toks = [t for ln in text for t in [50256] + gpt2().encode(json.loads(ln)["query"])]
    val = _write_val_split(root / "val", np.array(toks))
    return SimpleNamespace(root=root, m0=root / "m0", m1=root / "m1", bad=bad, val=val)


@contextlib.contextmanager
def captured():
    """The messages eval-all logs, then what it printed (the summary table) as one entry."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("dmas_repro")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # as `dmas-repro` sets it (progress messages included)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        lines.append(out.getvalue())


def _cfg(world, out, **kw) -> evaluate.EvalConfig:
    base = dict(checkpoints=(str(world.m0), str(world.bad), str(world.m1)), suite="offline", limit=LIMIT,
                device="cpu", dtype="float32", batch_size="8", out=str(out), val_data=str(world.val),
                val_tokens=1024, probe_seeds=(0,), probe_max_new_tokens=6)
    base.update(kw)
    return evaluate.EvalConfig(**base)


@pytest.fixture(scope="module")
def run_all(world):
    out = world.root / "results"
    with captured() as logs:
        rc = evaluate.run(_cfg(world, out))
    return SimpleNamespace(rc=rc, out=out, logs=logs, store=ResultStore(out))


def _csv(out):
    import pandas as pd

    return pd.read_csv(out / "results.csv")


def test_every_number_equals_direct_simple_evaluate(world, run_all):
    import lm_eval
    from lm_eval.tasks import TaskManager

    df = _csv(run_all.out)
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    for m in (world.m0, world.m1):
        direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(m), "dtype": "float32"},
                                         tasks=["hellaswag_dev"], limit=LIMIT, batch_size=8, device="cpu",
                                         task_manager=tm, log_samples=True)
        want = direct["results"]["hellaswag_dev"]
        got = df[(df.checkpoint == m.name) & (df.task == "hellaswag_dev")].set_index("metric")
        assert set(got.index) == {"acc", "acc_norm", "gold_nll_per_byte"}
        for metric in ("acc", "acc_norm"):
            assert got.loc[metric, "value"] == pytest.approx(want[f"{metric},none"], abs=0, rel=1e-12)
            assert got.loc[metric, "stderr"] == pytest.approx(want[f"{metric}_stderr,none"], abs=0, rel=1e-12)
        assert (got["n"] == LIMIT).all() and (got["num_fewshot"] == direct["n-shot"]["hellaswag_dev"]).all()
        assert (got["harness_version"] == lm_eval.__version__).all()

        samples = direct["samples"]["hellaswag_dev"]
        item_file = run_all.out / "items" / m.name / "hellaswag_dev.jsonl"
        items = [json.loads(x) for x in item_file.read_text().splitlines()]
        assert len(items) == len(samples) == LIMIT
        nll = []
        for it, s in zip(items, samples):
            lls = [r[0] for r in s["filtered_resps"]]
            assert it["doc_id"] == s["doc_id"] and it["gold"] == s["target"]
            assert it["loglikelihoods"] == lls
            assert it["acc"] == s["acc"] and it["acc_norm"] == s["acc_norm"]
            assert it["pred"] == int(np.argmax(lls))
            gold_bytes = len(s["arguments"][s["target"]][1].encode("utf-8"))
            nll.append(-lls[s["target"]] / gold_bytes)
            assert it["gold_nll_per_byte"] == pytest.approx(nll[-1], rel=1e-12)
        assert got.loc["gold_nll_per_byte", "value"] == pytest.approx(sum(nll) / len(nll), rel=1e-12)
        sd = float(np.std(nll, ddof=1)) / math.sqrt(len(nll))
        assert got.loc["gold_nll_per_byte", "stderr"] == pytest.approx(sd, rel=1e-9)
        # the weights hash is the content hash of the evaluated files
        sha = hashlib.sha256((m / "model.safetensors").read_bytes()).hexdigest()
        assert (got["model_sha"] == sources.model_sha({"model.safetensors": sha})).all()


def test_val_loss_and_probes_match_the_model(world, run_all):
    from dmas_repro.eval.probes import load_prompts
    from dmas_repro.eval.valloss import load_val_tokens

    df = _csv(run_all.out)
    model = hf.from_hf(world.m1, pad_vocab=False).eval()
    w = load_val_tokens(world.val, 1024).windows(CFG.context_length)
    assert w.shape == (1024 // 128, 129)
    x = torch.from_numpy(w.astype(np.int64))
    with torch.no_grad():
        want = model(x[:, :-1], targets=x[:, 1:]).item()
    row = df[(df.checkpoint == "m1") & (df.task == "val_loss")].set_index("metric")
    assert row.loc["loss", "value"] == pytest.approx(want, rel=1e-5)
    assert row.loc["loss", "n"] == 1024 and 0 < row.loc["bpb", "value"]
    # every val_loss row names what it measured; the run said once that it is not the paper's corpus
    val = df[df.task == "val_loss"]
    assert len(val) == 4 and (val["corpus"] == "queries.txt").all()
    assert (val["corpus_manifest_sha256"] == hashlib.sha256((world.val / shards.MANIFEST).read_bytes())
            .hexdigest()).all()
    assert df.loc[df.task != "val_loss", "corpus"].isna().all()
    notes = [line for line in run_all.logs if "not comparable with the paper" in line]
    assert len(notes) == 1 and "queries.txt" in notes[0] and "--source fineweb-edu" in notes[0]

    probes = [json.loads(x) for x in (run_all.out / "probes.jsonl").read_text().splitlines()]
    prompts = load_prompts("v1")
    assert len(probes) == 2 * len(prompts) * 2  # two good checkpoints x prompts x (greedy, seed 0)
    p = next(r for r in probes if r["checkpoint"] == "m1" and r["mode"] == "sample")
    ids = gpt2().encode(p["prompt"])
    out = model.generate(ids, max_new_tokens=6, temperature=1.0, top_k=50, seed=p["seed"])[0]
    assert p["output"] == gpt2().decode([t for t in out if t != 50256])
    assert 0 <= p["repetition_rate"] <= 1 and 0 < p["distinct_1"] <= 1 and p["mean_logprob"] < 0


def test_val_corpus_default_for_released_checkpoints_and_paper_note(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    released, own = sources.parse(["released"]), sources.parse([str(world.m0)])
    cfg = evaluate.EvalConfig()
    assert evaluate._val_dir(cfg, released) is None
    for d in (evaluate.DEFAULT_VAL_DATA, evaluate.PAPER_VAL_DATA):
        d.mkdir(parents=True)
        (d / shards.MANIFEST).write_text("{}")
        if d == evaluate.DEFAULT_VAL_DATA:
            assert evaluate._val_dir(cfg, released) == d  # no FineWeb-Edu split prepared: the bundled one
    assert evaluate._val_dir(cfg, released) == evaluate.PAPER_VAL_DATA  # released checkpoints: the paper's corpus
    assert evaluate._val_dir(cfg, own) == evaluate.DEFAULT_VAL_DATA
    assert evaluate._val_dir(evaluate.EvalConfig(val_data=str(world.val)), released) == world.val

    # on a FineWeb-Edu split: named so in every row, and no note
    text = (TASKS_DIR / "hellaswag_val_dev.jsonl").read_text().splitlines()[:10]
    fw = _write_val_split(tmp_path / "fw", np.array([t for ln in text for t in [50256] + gpt2().encode(ln)]),
                          {"source": "fineweb-edu", "repo": "HuggingFaceFW/fineweb-edu", "subset": "sample-10BT"})
    out = tmp_path / "res"
    with captured() as logs:
        assert evaluate.run(_cfg(world, out, checkpoints=(str(world.m0),), parts=("val_loss",), parts_explicit=True,
                                 val_data=str(fw), val_tokens=256)) == 0
    df = _csv(out)
    assert set(df["metric"]) == {"loss", "bpb"} and (df["corpus"] == "fineweb-edu/sample-10BT").all()
    assert not any("not comparable" in line for line in logs)
    assert any("corpus fineweb-edu/sample-10BT" in line for line in logs)


def test_corrupt_checkpoint_is_recorded_and_the_others_run(world, run_all):
    assert run_all.rc == 1
    fails = [json.loads(x) for x in (run_all.out / "failures.jsonl").read_text().splitlines()]
    assert [(f["checkpoint"], f["part"]) for f in fails] == [("bad", "load")]
    assert "corrupt or truncated" in fails[0]["error"]
    df = _csv(run_all.out)
    assert set(df.checkpoint) == {"m0", "m1"}  # m1 came after the corrupt one
    assert not df.duplicated(KEY).any()
    table = next(line for line in run_all.logs if "hellaswag_dev acc_norm" in line)  # the summary table
    assert "m0" in table and "m1" in table and "val_loss loss" in table


def test_download_logic_against_a_stand_in_hub(world, tmp_path, monkeypatch):
    """snapshot_download and HfApi.model_info replaced by a local hub; prefetch, budget, hashes, eviction."""
    import huggingface_hub

    hub_repos = {"org/a": world.m0, "org/b": world.m1, "org/c": world.m0}
    corrupt = set()
    calls = []
    cache = tmp_path / "cache"

    def fake_model_info(self, repo_id, revision=None, files_metadata=False, **kw):
        assert files_metadata
        src = hub_repos[repo_id]
        sib = [SimpleNamespace(rfilename=f.name, size=f.stat().st_size,
                               lfs=SimpleNamespace(sha256=hashlib.sha256(f.read_bytes()).hexdigest())
                               if f.suffix == ".safetensors" else None) for f in sorted(src.iterdir())]
        sib.append(SimpleNamespace(rfilename="README.md", size=10**12, lfs=None))  # not downloaded
        return SimpleNamespace(sha="c0ffee" + repo_id[-1], siblings=sib)

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None, **kw):
        assert allow_patterns == hub.MODEL_FILES and Path(cache_dir) == cache
        calls.append(("download", repo_id, revision))
        repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        snap = repo / "snapshots" / revision
        snap.mkdir(parents=True, exist_ok=True)
        for f in hub_repos[repo_id].iterdir():
            data = f.read_bytes()
            if repo_id in corrupt and f.suffix == ".safetensors":
                data = data[:-1] + bytes([data[-1] ^ 1])
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            (snap / f.name).unlink(missing_ok=True)
            (snap / f.name).symlink_to(blob)
        return str(snap)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake_model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)

    ckpts = sources.parse(["org/a", "org/b", "org/c"])
    assert [c.label for c in ckpts] == ["org--a", "org--b", "org--c"]
    one = dir_size_bytes(world.m0)

    def consume(fetcher):
        seen = []
        for ck, fut in fetcher.iterate(ckpts):
            local = fut.result()
            calls.append(("evaluate", ck.repo_id))
            seen.append(local)
            assert local.verified and local.owned and local.path.is_dir()
            fetcher.release(local)
            calls.append(("release", ck.repo_id))
        return seen

    # room for two: the next checkpoint downloads before the current one is released (prefetch)
    got = consume(sources.Fetcher(cache, tmp_path / "exports", max_disk=2 * one + 1000))
    order = [c[:2] for c in calls]
    assert order.index(("download", "org/b")) < order.index(("release", "org/a"))
    assert [c[2] for c in calls if c[0] == "download"] == ["c0ffeea", "c0ffeeb", "c0ffeec"]  # pinned commit
    sha0 = sources.model_sha({"model.safetensors": hashlib.sha256((world.m0 / "model.safetensors").read_bytes())
                              .hexdigest()})
    assert got[0].model_sha == sha0 == got[2].model_sha != got[1].model_sha
    assert not any(cache.glob("models--*"))  # evicted after evaluation under --max-disk

    # eviction goes through huggingface_hub's cache API: only this run's revision goes; another revision of the
    # repo, cached before the run and sharing the weights' blob, stays whole
    fake_snapshot_download("org/a", revision="0ld", cache_dir=cache, allow_patterns=hub.MODEL_FILES)
    fetcher = sources.Fetcher(cache, tmp_path / "exports", max_disk=2 * one + 1000)
    local = fetcher.fetch(ckpts[0])
    assert local.owned and local.path.name == "c0ffeea"
    fetcher.release(local)
    assert not local.path.exists() and [p.name for p in (cache / "models--org--a" / "snapshots").iterdir()] == ["0ld"]
    kept = cache / "models--org--a" / "snapshots" / "0ld" / "model.safetensors"
    assert kept.resolve().is_file() and kept.read_bytes() == (world.m0 / "model.safetensors").read_bytes()
    shutil.rmtree(cache / "models--org--a")

    # room for one: each download waits for the previous release
    calls.clear()
    consume(sources.Fetcher(cache, tmp_path / "exports", max_disk=one + 1000))
    order = [c[:2] for c in calls]
    assert order.index(("download", "org/b")) > order.index(("release", "org/a"))

    # too small for one: a clear error for that checkpoint
    with pytest.raises(UserError, match="--max-disk"):
        sources.Fetcher(cache, tmp_path / "exports", max_disk=one // 2).fetch(ckpts[0])

    # a download whose content differs from the Hub's sha256 is refused and deleted
    corrupt.add("org/b")
    with pytest.raises(UserError, match="sha256"):
        sources.Fetcher(cache, tmp_path / "exports").fetch(ckpts[1])
    assert not (cache / "models--org--b" / "snapshots" / "c0ffeeb" / "model.safetensors").exists()

    # without --max-disk downloads stay in the cache; offline, the cache is used without hashes
    local = sources.Fetcher(cache, tmp_path / "exports").fetch(ckpts[0])
    sources.Fetcher(cache, tmp_path / "exports").release(local)
    assert local.path.is_dir()

    def offline(self, *a, **k):
        raise huggingface_hub.errors.OfflineModeIsEnabled("offline")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    again = sources.Fetcher(cache, tmp_path / "exports")
    ck = sources.Checkpoint(**{**ckpts[0].__dict__, "revision": "c0ffeea"})
    local = again.fetch(ck)
    assert local.model_sha == sha0 and not local.verified and not local.owned


def test_killed_mid_run_then_rerun_is_complete_without_duplicates(world, tmp_path):
    out = tmp_path / "res"
    args = ["--checkpoints", str(world.m0), str(world.m1), "--suite", "offline", "--limit", "8",
            "--parts", "benchmarks,val_loss", "--val-data", str(world.val), "--val-tokens", "512",
            "--device", "cpu", "--dtype", "float32", "--batch-size", "8", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "dmas_repro", "eval-all-checkpoints", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ResultStore(out)
    deadline = time.time() + 240
    while not store.done("m0", "hellaswag_dev") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.done("m0", "hellaswag_dev") and not store.done("m1", "val_loss"), "not killed mid-run"
    first = json.loads(store.unit_path("m0", "hellaswag_dev").read_text())

    cfg = evaluate.EvalConfig(checkpoints=(str(world.m0), str(world.m1)), suite="offline", limit=8,
                              parts=("benchmarks", "val_loss"), parts_explicit=True, val_data=str(world.val),
                              val_tokens=512, device="cpu", dtype="float32", batch_size="8", out=str(out))
    assert evaluate.run(cfg) == 0
    assert json.loads(store.unit_path("m0", "hellaswag_dev").read_text()) == first  # not redone
    df = _csv(out)
    assert not df.duplicated(KEY).any()
    want = {(c, "hellaswag_dev", m) for c in ("m0", "m1") for m in ("acc", "acc_norm", "gold_nll_per_byte")}
    want |= {(c, "val_loss", m) for c in ("m0", "m1") for m in ("loss", "bpb")}
    assert set(map(tuple, df[KEY].values)) == want and len(df) == len(want)
    assert len((out / "items" / "m1" / "hellaswag_dev.jsonl").read_text().splitlines()) == 8

    # a third run finds nothing to do and changes nothing
    before = (out / "results.csv").read_text()
    with captured() as logs:
        assert evaluate.run(cfg) == 0
    assert any("0 with work left" in line for line in logs) and (out / "results.csv").read_text() == before
    # other settings into the same store are refused
    with pytest.raises(UserError, match="other settings"):
        evaluate.run(evaluate.EvalConfig(**{**cfg.__dict__, "limit": 9}))


def test_parse_sources_registry_runs_and_shards(tmp_path):
    reg = sources.parse(["released"])
    assert len(reg) == 11 and [c.kind for c in reg].count("instruct") == 1
    assert all(c.tokens == c.step * 524288 for c in reg) and reg[0].step == 2700 and reg[-2].step == 43500
    assert reg[-1].repo_id == "McGill-DMaS/DMaS-LLaMa-Lite-step-43.5k-instruct"
    assert sources.parse(["step-5.1k"])[0].tokens == 5100 * 524288
    assert sources.parse(["McGill-DMaS/DMaS-LLaMa-Lite-step-20k@abc"])[0].revision == "abc"

    torch.manual_seed(0)
    m = build(CFG)
    run = tmp_path / "runs" / "toy"
    for step in (20, 10):
        d = run / "checkpoints" / f"step_{step:08d}"
        d.mkdir(parents=True)
        checkpoint.save_model_files(m, d)
        (d / "trainer_state.json").write_text(json.dumps({"step": step, "tokens": step * 64}))
        (d / "config.json").write_text("{}")  # the trainer's resolved config: not an HF config
    (run / "checkpoints" / ".step_00000030.tmp-x").mkdir()  # an unfinished save is ignored
    hf.save_hf(m, run / "sft" / "hf")
    found = sources.parse([str(run)])
    assert [(c.label, c.kind, c.step, c.tokens, c.export) for c in found] == [
        ("toy-step_00000010", "base", 10, 640, True),
        ("toy-step_00000020", "base", 20, 1280, True),
        ("toy-sft-hf", "instruct", None, None, False),
    ]
    assert [c.label for c in sources.shard(found, "1/2")] == ["toy-step_00000020"]
    one = sources.parse([str(run / "checkpoints" / "step_00000010"), str(run / "sft" / "hf")])
    assert [(c.label, c.kind, c.step, c.export) for c in one] == [("toy-step_00000010", "base", 10, True),
                                                                   ("toy-sft-hf", "instruct", None, False)]
    with pytest.raises(UserError, match="shard"):
        sources.shard(found, "2/2")
    with pytest.raises(UserError, match="no such directory"):
        sources.parse([str(tmp_path / "nope")])
    assert sources.parse_size("20GB") == 20 * 10**9 and sources.parse_size("1.5GiB") == int(1.5 * 2**30)

    # a run dir checkpoint is exported on the fly, then removed after evaluation
    f = sources.Fetcher(None, tmp_path / "exports")
    local = f.fetch(found[0])
    assert hf.is_hf_dir(local.path) and local.owned
    back = hf.from_hf(local.path, pad_vocab=False)
    assert torch.equal(back.lm_head.weight, m.lm_head.weight[:50257])
    f.release(local)
    assert not local.path.exists()


def test_probe_fluency_measures_and_instruct_prompts():
    from dmas_repro.eval import probes

    loop = [1, 2, 3, 4] * 3
    assert probes.repetition_rate(loop) == pytest.approx(5 / 9)
    assert probes.repetition_rate(list(range(10))) == 0.0 and probes.repetition_rate([1, 2]) is None
    assert probes.distinct_n(loop, 1) == pytest.approx(4 / 12) and probes.distinct_n(loop, 2) == pytest.approx(4 / 11)
    prompts = probes.load_prompts("v1")
    assert {p["category"] for p in prompts} == {"knowledge", "reasoning", "continuation", "instruction"}
    assert len({p["id"] for p in prompts}) == len(prompts)
    assert probes.prompt_text(prompts[0], "base") == prompts[0]["prompt"]
    from dmas_repro.model.chat_format import chat_prompt  # the SFT stage's chat format

    assert probes.prompt_text(prompts[0], "instruct") == chat_prompt(prompts[0]["instruction"])


def test_task_groups_and_include_path(world, tmp_path):
    """A group of two tasks from --include-path (YAMLs over a local JSONL, as for lm-eval's mmlu)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = TASKS_DIR / "hellaswag_val_dev.jsonl"
    for name, text in (("hs_a", "{{query}}"), ("hs_b", "Context: {{query}}")):
        (tasks / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {data}\n"
            f"output_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: \"{text}\"\n"
            "doc_to_target: \"{{label}}\"\ndoc_to_choice: \"choices\"\nmetric_list:\n  - metric: acc\n"
            "    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 2.0\n")
    (tasks / "hs_pair.yaml").write_text(
        "group: hs_pair\ntask:\n  - hs_a\n  - hs_b\naggregate_metric_list:\n  - metric: acc\n"
        "    aggregation: mean\n    weight_by_size: true\nmetadata:\n  version: 1.0\n")
    out = tmp_path / "res"
    cfg = evaluate.EvalConfig(checkpoints=(str(world.m0),), suite="offline", tasks=("hs_pair",),
                              include_paths=(str(tasks),), limit=4, num_fewshot=1, parts=("benchmarks",),
                              device="cpu", dtype="float32", batch_size="8", out=str(out))
    assert evaluate.run(cfg) == 0
    df = _csv(out).set_index(["task", "metric"])
    assert set(df.index) == {("hs_pair", "acc"), ("hs_pair", "gold_nll_per_byte"), ("hs_a", "acc"),
                             ("hs_a", "gold_nll_per_byte"), ("hs_b", "acc"), ("hs_b", "gold_nll_per_byte")}
    assert df.loc[("hs_pair", "acc"), "value"] == pytest.approx(
        (df.loc[("hs_a", "acc"), "value"] + df.loc[("hs_b", "acc"), "value"]) / 2)
    assert df.loc[("hs_pair", "acc"), "n"] == 8 and df.loc[("hs_a", "acc"), "n"] == 4
    assert df.loc[("hs_a", "acc"), "group"] == "hs_pair" and pd_isna(df.loc[("hs_pair", "acc"), "group"])
    assert (df["num_fewshot"] == 1).all() and str(df.loc[("hs_a", "acc"), "task_version"]) == "2.0"
    nll = [json.loads(x)["gold_nll_per_byte"] for t in ("hs_a", "hs_b")
           for x in (out / "items" / "m0" / f"{t}.jsonl").read_text().splitlines()]
    assert df.loc[("hs_pair", "gold_nll_per_byte"), "value"] == pytest.approx(sum(nll) / len(nll))
    assert ResultStore(out).done("m0", "hs_pair")


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))
