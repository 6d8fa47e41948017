"""Reference models of other suites evaluated by this project's harness: the registry (Pythia stepN, OLMo-1B,
TinyLlama at the tokens nearest the ten DMaS checkpoints), `--checkpoints pythia-1.4b`, and an evaluation
against a local Hugging Face cache standing in for the Hub (a tiny random GPT-NeoX model at the registered
revisions), measured exactly as a DMaS checkpoint in the same run."""

import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from dmas_repro.core.errors import UserError
from dmas_repro.eval import driver as evaluate
from dmas_repro.eval import sources
from dmas_repro.eval.store import ResultStore
from dmas_repro.eval.suites import TASKS_DIR
from dmas_repro.model import hf, hub, released
from dmas_repro.model.transformer import ModelConfig, build

LIMIT = 12
DMAS = [r for r in released.rows() if r["kind"] == "base"]
PYTHIA_SCHEDULE = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))  # the 154 Hub branches
# OLMo-1B-hf branches whose names were seen in public code (the asset file says where from)
OLMO_SEEN = {1000: "step1000-tokens4B", 2000: "step2000-tokens8B", 3000: "step3000-tokens12B",
             4000: "step4000-tokens16B", 5000: "step5000-tokens20B", 10000: "step10000-tokens41B",
             20000: "step20000-tokens83B"}


def _nearest(steps, per_step, tokens):
    return min((s for s in steps if s > 0), key=lambda s: abs(math.log(s * per_step / tokens)))


def test_registry_rows_are_the_nearest_checkpoints():
    fams = released.reference_families()
    assert set(fams) == {"pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "olmo-1b", "tinyllama-1.1b"}
    for fam in fams:
        rows = released.reference_rows(fam)
        assert all(r["tokens"] == r["step"] * r["tokens_per_step"] for r in rows)
        covered = [lbl for r in rows for lbl in r["nearest_to"]]
        assert sorted(covered) == sorted(r["label"] for r in DMAS), fam  # each DMaS checkpoint exactly once
        for r in rows:
            for lbl in r["nearest_to"]:
                tok = next(d["tokens"] for d in DMAS if d["label"] == lbl)
                if fam.startswith("pythia"):
                    assert r["revision"] == f"step{r['step']}" and r["tokens_per_step"] == 2097152
                    assert r["step"] == _nearest(PYTHIA_SCHEDULE, 2097152, tok)
                elif fam == "olmo-1b":
                    assert r["repo_id"] == "allenai/OLMo-1B-hf" and r["revision"] == OLMO_SEEN[r["step"]]
                    assert r["step"] == _nearest(OLMO_SEEN, 4194304, tok)
                    assert r["revision"].endswith(f"tokens{r['tokens'] // 10**9}B")  # the -hf names round down
    tl = released.reference_rows("tinyllama-1.1b")
    assert len(tl) == 1 and tl[0]["repo_id"] == "TinyLlama/TinyLlama-1.1B-step-50K-105b"
    assert round(tl[0]["tokens"] / 1e9) == 105


def test_parse_families_labels_and_hub_ids():
    py = sources.parse(["pythia-1.4b"])
    assert [c.label for c in py][:3] == ["pythia-1.4b-step512", "pythia-1.4b-step1000", "pythia-1.4b-step2000"]
    assert all(not c.own_model and c.repo_id == "EleutherAI/pythia-1.4b" and c.kind == "base" for c in py)
    assert sources.parse(["olmo-1b-step3000"])[0].revision == "step3000-tokens12B"
    c = sources.parse(["EleutherAI/pythia-410m@step7000"])[0]  # not registered: step and tokens from the revision
    assert (c.label, c.step, c.tokens, c.own_model) == ("pythia-410m-step7000", 7000, 7000 * 2097152, False)
    assert sources.parse(["EleutherAI/pythia-410m@step1000"])[0].label == "pythia-410m-step1000"
    assert all(c.own_model for c in sources.parse(["released"]))  # DMaS's registry is untouched
    assert len(sources.parse(["pythia-1.4b,pythia-1.4b-step512"])) == 9  # no repeats


def neox_model(d: Path, seed: int = 0) -> Path:
    """A tiny random GPT-NeoX (Pythia's architecture) with the GPT-2 tokenizer files, as an HF directory."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=256, bos_token_id=50256, eos_token_id=50256)
    GPTNeoXForCausalLM(cfg).save_pretrained(d)
    hf.write_tokenizer_files(d)
    return d


def hub_cache(cache: Path, repo_id: str, revisions: dict[str, Path]) -> None:
    """The Hugging Face cache layout (refs/, snapshots/, blobs/) holding `revisions`: what a download leaves."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for rev, src in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{rev}".encode()).hexdigest()
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            (snap / f.name).symlink_to(blob)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("refmodels")
    neox = neox_model(root / "neox")
    revs = {r["revision"]: neox for r in released.reference_rows("pythia-1.4b")}
    hub_cache(root / "cache", "EleutherAI/pythia-1.4b", revs)
    torch.manual_seed(1)
    dmas = root / "dmas"
    hf.save_hf(build(ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=128)), dmas)
    return SimpleNamespace(root=root, neox=neox, dmas=dmas, cache=root / "cache")


def test_pythia_measured_exactly_as_dmas(world):
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = world.root / "results"
    picked = "pythia-1.4b-step512,pythia-1.4b-step6000"
    cfg = evaluate.EvalConfig(checkpoints=(str(world.dmas), picked), suite="offline", limit=LIMIT, device="cpu",
                              dtype="float32", batch_size="8", out=str(out), cache_dir=str(world.cache),
                              parts=("benchmarks", "probes"), probe_seeds=(0,), probe_max_new_tokens=4)
    assert evaluate.run(cfg) == 0
    df = pd.read_csv(out / "results.csv")
    bench = df[df.task == "hellaswag_dev"]
    assert set(bench.checkpoint) == {"dmas", "pythia-1.4b-step512", "pythia-1.4b-step6000"}
    same = ["task", "num_fewshot", "limit", "n", "dtype", "batch_size", "device", "harness_version", "task_version",
            "task_hash"]
    settings = bench.drop_duplicates("checkpoint")[same]
    assert (settings.nunique(dropna=False) == 1).all(), settings  # one setting for DMaS and Pythia
    assert settings["n"].iloc[0] == LIMIT and settings["dtype"].iloc[0] == "float32"
    py = bench[bench.checkpoint == "pythia-1.4b-step512"].set_index("metric")
    assert py.loc["acc", "step"] == 512 and py.loc["acc", "tokens"] == 512 * 2097152
    assert py.loc["acc", "source"] == "EleutherAI/pythia-1.4b@step512"
    # the numbers are lm-eval's own on that model
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(world.neox), "dtype": "float32"},
                                     tasks=["hellaswag_dev"], limit=LIMIT, batch_size=8, device="cpu",
                                     task_manager=tm)["results"]["hellaswag_dev"]
    for m in ("acc", "acc_norm"):
        assert py.loc[m, "value"] == pytest.approx(direct[f"{m},none"], abs=0, rel=1e-12)
    # probes (and validation loss) need our model: done for DMaS, not units of the reference model
    store = ResultStore(out)
    assert store.done("dmas", "probes") and not (out / "units" / "pythia-1.4b-step512" / "probes.json").exists()
    assert store.failures() == []
    assert evaluate.run(cfg) == 0  # a rerun finds nothing left to do
    assert len(pd.read_csv(out / "results.csv")) == len(df)


def test_foreign_weights_format_and_checks(world, tmp_path, monkeypatch):
    """A revision holding only pytorch_model.bin: downloaded as such (the DMaS download patterns unchanged),
    hashed, checked; a config transformers does not know is one clear error."""
    import huggingface_hub
    from safetensors.torch import load_file

    bin_dir = tmp_path / "bin"  # as older Hub revisions store it (transformers 5 only writes safetensors)
    shutil.copytree(world.neox, bin_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(world.neox / "model.safetensors"), bin_dir / "pytorch_model.bin")
    assert (bin_dir / "pytorch_model.bin").is_file() and not (bin_dir / "model.safetensors").exists()
    src = {"EleutherAI/pythia-1.4b": bin_dir, "org/safe": world.neox}
    seen = {}

    def fake_model_info(self, repo_id, revision=None, files_metadata=False, **kw):
        sib = [SimpleNamespace(rfilename=f.name, size=f.stat().st_size,
                               lfs=SimpleNamespace(sha256=hashlib.sha256(f.read_bytes()).hexdigest())
                               if f.suffix in (".bin", ".safetensors") else None) for f in src[repo_id].iterdir()]
        return SimpleNamespace(sha="c0ffee", siblings=sib)

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None, **kw):
        seen[repo_id] = allow_patterns
        snap = Path(cache_dir) / repo_id.replace("/", "--") / revision
        shutil.copytree(src[repo_id], snap, dirs_exist_ok=True)
        return str(snap)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake_model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    fetcher = sources.Fetcher(tmp_path / "cache", tmp_path / "exports")
    ck = sources.parse(["pythia-1.4b-step512"])[0]
    local = fetcher.fetch(ck)
    assert set(hub.BIN_FILES) <= set(seen["EleutherAI/pythia-1.4b"]) and local.verified
    sha = hashlib.sha256((bin_dir / "pytorch_model.bin").read_bytes()).hexdigest()
    assert local.model_sha == sources.model_sha({"pytorch_model.bin": sha})
    sources.check_loadable(local.path, own_model=False)
    safe = sources.Checkpoint(label="x", kind="base", step=1, tokens=1, source="org/safe", repo_id="org/safe",
                              revision="step1", own_model=False)
    fetcher.fetch(safe)
    assert not set(hub.BIN_FILES) & set(seen["org/safe"])  # safetensors there: no .bin download
    with pytest.raises(UserError, match="DMaS-LLaMa-Lite architecture"):
        sources.check_loadable(world.neox)  # as our own model it is refused, as before
    bad = tmp_path / "bad"
    shutil.copytree(world.neox, bad)
    (bad / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    with pytest.raises(UserError, match="cannot read this config"):
        sources.check_loadable(bad, own_model=False)
    assert set(sources.weight_shas(world.neox, own_model=False)) == {"model.safetensors"}
