"""`dmas-repro train` on two gloo processes without hand-tuning: both stages to the end under FSDP
with micro-batches derived from requests that do not fit, in-loop evaluation on odd counts
(validation micro-batches, HellaSwag items, SFT validation examples), and a batch that cannot be
split: one error line from rank 0. (The embedded default itself under `torchrun --nproc_per_node 2`
takes minutes: README, "Pretraining", quotes that run.)"""

import json
from pathlib import Path

import pytest
import torch

from dmas_repro.data import prepare as prep
from dmas_repro.data import sft_records
from dmas_repro.model import weights as checkpoint
from dmas_repro.train import layout, sft
from dmas_repro.train.layout import read_metrics

# pretraining: 16 sequences of 16 tokens per step, 8 per rank, micro_batch 6 requested -> 4 x 2;
# validation 160 tokens = 10 windows = 3 micro-batches of 4 (ranks: 2 and 1 + a padded one)
PRETRAIN = ["model.n_layer=1", "model.dim=32", "model.n_head=2", "model.n_kv_head=1", "model.ffn_dim=64",
            "model.context_length=128", "seq_len=16", "global_batch_tokens=256", "micro_batch=6",
            "total_steps=4", "warmup_steps=1", "log_every=1", "val_every=2", "val_tokens=160", "ckpt_every=0",
            "milestones=none", "sample_every=2", "sample_count=1", "sample_length=12", "hellaswag_every=2",
            "prepare_data_if_missing=false", "parallel=fsdp"]
# SFT (tiny preset, full fine-tuning): 8 examples per step, 4 per rank, micro_batch 3 requested -> 2 x 2;
# 9 validation examples = 5 micro-batches of 2 (ranks: 3 and 2 + a padded one)
SFT = ["sft.parallel=fsdp", "sft.micro_batch=3", "sft.val_size=9", "sft.total_steps=3", "sft.val_every=0",
       "sft.log_every=1", "sft.export_hf=false"]


def test_both_stages_on_two_processes_fsdp_derived_batches_odd_eval_counts(tmp_path, torchrun):
    data = tmp_path / "data"
    prep.prepare(prep.PrepareConfig(source="bundled", max_tokens=20_000, val_tokens=2_000), data, progress=False)
    hs = tmp_path / "hs.jsonl"
    hs.write_text("".join(json.dumps({"query": f"A man picks up a ball {i}.", "choices": [
        "He throws it.", "The sky is green.", "It eats soup.", "Then he walks away."], "label": i % 4}) + "\n"
        for i in range(5)))
    run = tmp_path / "run"
    p = torchrun(["-m", "dmas_repro", "train", "--preset", "tiny", "--out", str(run), "--device", "cpu", *PRETRAIN,
                  f"data_dir={data}", f"hellaswag_path={hs}", *SFT])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "world 2 x micro 4 x accum 2 (micro_batch 6 requested" in p.stderr
    assert "world 2 x micro 2 x accum 2 (micro_batch 3 requested" in p.stderr and "done in" in p.stdout

    rows = read_metrics(run / "metrics.jsonl")
    start = next(r for r in rows if r.get("event") == "start")
    assert (start["world_size"], start["micro_batch"], start["grad_accum"], start["val_loss_tokens"]) == (2, 4, 2, 160)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [0, 2, 4]
    assert [(r["step"], r["n"]) for r in rows if r["kind"] == "hellaswag"] == [(2, 5), (4, 5)]
    assert len(next(r for r in rows if r["kind"] == "sample")["text"]) > len("Hello, I am a language model,")
    assert (run / layout.HF / "config.json").is_file()

    srows = read_metrics(run / "sft" / "metrics.jsonl")
    sstart = next(r for r in srows if r.get("event") == "start")
    assert (sstart["micro_batch"], sstart["grad_accum"], sstart["val_examples"]) == (2, 2, 9)
    assert [r["step"] for r in srows if r["kind"] == "train"] == [1, 2, 3]
    val0 = next(r for r in srows if r["kind"] == "val" and r["step"] == 0)
    # the padded validation counted each of the 9 examples once: the base model's loss on one process
    sc, _ = sft.load_sft_config("tiny", ["val_size=9"])
    base = checkpoint.load_model(layout.newest_checkpoint(run)).eval()
    sets = sft.prepare_data(sc, base.cfg.context_length, 1337)
    total = n = 0.0
    with torch.no_grad():
        for x, y, _ in sft_records.eval_batches(sets["val"], 9):  # one process: one micro-batch of 9
            k = int((y != -100).sum())
            total, n = total + base(x, y).item() * k, n + k
    assert val0["val_loss_tokens"] == n
    assert val0["val_loss"] == pytest.approx(total / n, abs=1e-5)


def test_a_batch_that_cannot_split_is_one_error_line_from_rank_0(tmp_path, torchrun):
    p = torchrun(["-m", "dmas_repro", "train", "--out", str(tmp_path / "run"), "--device", "cpu",
                  "global_batch_tokens=1152"], timeout=120)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if "dmas-repro train:" in ln]
    assert lines == ["dmas-repro train: error: global_batch_tokens 1,152 does not split into sequences of seq_len 128 "
                     "over 2 rank(s) (a multiple of 256 tokens): no micro-batch fits. Nearest valid: "
                     "global_batch_tokens=1024 or 1280, or a world size dividing its 9 sequences (1, 3, 9)"]
    assert not Path(tmp_path / "run").exists()
