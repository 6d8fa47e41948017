"""eval-all-checkpoints loads each checkpoint once, in the run's dtype, and gives lm-eval's own numbers;
the request cache lives for one run; batched probes give one-row generation's outputs."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmas_repro.data import shards
from dmas_repro.eval import driver as evaluate
from dmas_repro.eval import probes
from dmas_repro.eval.suites import TASKS_DIR
from dmas_repro.model import hf
from dmas_repro.model import weights as checkpoint
from dmas_repro.model.tokenizer import EOT, gpt2
from dmas_repro.model.transformer import ModelConfig, build

CFG = ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=128)
LIMIT = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _val_split(d: Path) -> Path:
    text = (TASKS_DIR / "hellaswag_val_dev.jsonl").read_text().splitlines()[:20]
    toks = np.array([t for ln in text for t in [EOT] + gpt2().encode(json.loads(ln)["query"])], dtype="<u2")
    d.mkdir(parents=True)
    toks.tofile(d / "val_000000.bin")
    shard = {"file": "val_000000.bin", "tokens": len(toks), "sha256": hashlib.sha256(toks.tobytes()).hexdigest()}
    (d / shards.MANIFEST).write_text(json.dumps({"format": shards.FORMAT, "dtype": "uint16", "byteorder": "little",
                                                 "eot": EOT, "shards": {"train": [], "val": [shard]}}))
    return d


def test_one_load_per_checkpoint_in_the_run_dtype_with_lm_evals_numbers(tmp_path, monkeypatch):
    import lm_eval
    import transformers
    from lm_eval.api import task as lm_task
    from lm_eval.tasks import TaskManager

    torch.manual_seed(7)
    h0 = hf.save_hf(build(CFG), tmp_path / "h0")
    ours = tmp_path / "ours"  # a dmas-repro checkpoint: exported tensor by tensor, never loaded for that
    ours.mkdir()
    torch.manual_seed(8)
    checkpoint.save_model_files(build(CFG), ours)
    out = tmp_path / "res"

    loads, saved, hits = [], [], []
    real_from_hf, real_load, real_save = hf.from_hf, lm_task.load_from_cache, lm_task.save_to_cache

    def counting_from_hf(path, dtype=None, device="cpu", pad_vocab=True):
        loads.append((Path(path).name, dtype))
        return real_from_hf(path, dtype=dtype, device=device, pad_vocab=pad_vocab)

    def no_directory_loads(*a, **k):
        raise AssertionError("a checkpoint directory was loaded a second time")

    def load_from_cache(file_name, cache=False):
        got = real_load(file_name=file_name, cache=cache)
        hits.append(got is not None)
        return got

    def save_to_cache(file_name, obj):
        saved.append(file_name)
        return real_save(file_name=file_name, obj=obj)

    monkeypatch.setattr(hf, "from_hf", counting_from_hf)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_directory_loads)
    monkeypatch.setattr(checkpoint, "load_model", no_directory_loads)
    monkeypatch.setattr(lm_task, "load_from_cache", load_from_cache)
    monkeypatch.setattr(lm_task, "save_to_cache", save_to_cache)
    val = _val_split(tmp_path / "val")
    cfg = evaluate.EvalConfig(checkpoints=(str(h0), str(ours)), suite="offline", limit=LIMIT, device="cpu",
                              dtype="bfloat16", batch_size="4", out=str(out), val_data=str(val), val_tokens=512,
                              probe_seeds=(0,), probe_max_new_tokens=4)
    assert evaluate.run(cfg) == 0
    assert [(n, d) for n, d in loads] == [("h0", torch.bfloat16), ("ours", torch.bfloat16)]  # one load each
    assert len(saved) == 1 and saved[0].startswith("requests-hellaswag_dev-0shot-") and hits == [False, True]
    assert not any((out / ".request_cache").iterdir())  # the run's request cache is gone

    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    assert set(df.dtype) == {"bfloat16"} and set(df.task) == {"hellaswag_dev", "val_loss"}
    timings = {f.stem: json.loads(f.read_text()) for f in (out / "timings").glob("*.json")}
    assert set(timings) == {"h0", "ours"}
    assert {"fetch", "load", "lm_eval_setup", "hellaswag_dev", "val_loss", "probes"} <= set(timings["ours"]["seconds"])

    # lm-eval on the checkpoint directories, in bfloat16: the same numbers, item by item
    monkeypatch.undo()
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    exported = checkpoint.export_hf(ours, tmp_path / "ours-hf")
    for label, d in (("h0", h0), ("ours", exported)):
        direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(d), "dtype": "bfloat16"},
                                         tasks=["hellaswag_dev"], limit=LIMIT, batch_size=4, device="cpu",
                                         task_manager=tm, log_samples=True)
        got = df[(df.checkpoint == label) & (df.task == "hellaswag_dev")].set_index("metric")["value"]
        for metric in ("acc", "acc_norm"):
            assert got[metric] == direct["results"]["hellaswag_dev"][f"{metric},none"]
        items = [json.loads(x) for x in (out / "items" / label / "hellaswag_dev.jsonl").read_text().splitlines()]
        want = [[r[0] for r in s["filtered_resps"]] for s in direct["samples"]["hellaswag_dev"]]
        assert [it["loglikelihoods"] for it in items] == want


@pytest.mark.parametrize("kind,batch_rows", [("base", None), ("instruct", 4)])
def test_batched_probes_equal_one_row_generation(kind, batch_rows):
    """Greedy and seeded sampling batched across prompts and seeds give the outputs of
    `Transformer.generate` run for each (prompt, seed) alone; mean_logprob equals one full forward's."""
    torch.manual_seed(11 if kind == "base" else 12)
    model = build(CFG.with_(vocab_size=50257)).eval()
    cfg = probes.ProbeConfig(seeds=(0, 1, 5), max_new_tokens=12)
    rows = probes.run_probes(model, kind, cfg, batch_rows=batch_rows)
    assert len(rows) == 4 * len(probes.load_prompts("v1"))
    tok = gpt2()
    for r in rows:
        ids = tok.encode(r["prompt"])
        out = model.generate(ids, max_new_tokens=cfg.max_new_tokens, temperature=r["temperature"], top_k=r["top_k"],
                             seed=r["seed"], stop_token=EOT)[0]
        gen = out[:-1] if out and out[-1] == EOT else out
        assert r["output"] == tok.decode(gen) and r["n_tokens"] == len(gen), (r["prompt_id"], r["mode"], r["seed"])
        assert r["mean_logprob"] == pytest.approx(probes.mean_logprob(model, ids, out, "cpu"), rel=1e-4, abs=1e-5)
    assert probes.rows_per_batch(model, 100, budget_bytes=probes.kv_bytes_per_token(CFG) * 100 * 3) == 3
