"""The authors' recipe where it is the default, checked against re-implementations of their code
(github.com/McGill-DMaS/DMaS-LLaMa-Lite-Training-Code at eee358e: `train.py`, `utils.py`,
`hellaswag.py`): the LR schedule over several resumes, in-loop samples and HellaSwag; and the batch
layout for any world size, the validation set fixed in tokens."""

import contextlib
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from micro import micro

from dmas_repro.cli import main
from dmas_repro.core.errors import UserError
from dmas_repro.model import weights as checkpoint
from dmas_repro.model.tokenizer import gpt2
from dmas_repro.model.transformer import ModelConfig, build
from dmas_repro.train import config as tconfig
from dmas_repro.train import distributed as D
from dmas_repro.train import in_loop, layout, loop
from dmas_repro.train.layout import read_metrics
from dmas_repro.train.plan import format_plan, plan

MICRO = micro(val_every=0, ckpt_every=0, keep_last=2)




def _cfg(data, *extra) -> tconfig.TrainConfig:
    return tconfig.load_config("tiny", overrides=[*MICRO, f"data_dir={data}", *extra])


# ---------------------------------------------------------------- batch layout
def test_micro_batch_derived_for_any_world_size():
    tiny = tconfig.load_config("tiny")  # 1,024 tokens = 8 sequences of 128 per step, micro_batch 8
    got = {w: (b.micro_batch, b.grad_accum) for w in (1, 2, 4, 8) for b in [tiny.batch_layout(w)]}
    assert got == {1: (8, 1), 2: (4, 1), 4: (2, 1), 8: (1, 1)}
    paper = tconfig.load_config("paper")  # 512 sequences of 1024 per step, micro_batch 32
    assert [(paper.batch_layout(w).micro_batch, paper.batch_layout(w).grad_accum) for w in (1, 2, 8, 16, 32)] == [
        (32, 16), (32, 8), (32, 2), (32, 1), (16, 1)]
    # a request that divides nothing: the largest micro-batch not above it that divides the per-rank share
    assert tconfig.with_changes(paper, micro_batch=24).batch_layout(2).micro_batch == 16  # 256 per rank
    with pytest.raises(UserError, match="Nearest valid: global_batch_tokens=522240 or 528384, or a world size "
                                        "dividing its 512 sequences"):
        paper.batch_layout(6)
    b = tconfig.with_changes(tiny, micro_batch=3).batch_layout(1)
    assert (b.micro_batch, b.grad_accum) == (2, 4)
    assert b.describe() == ("world 1 x micro 2 x accum 4 (micro_batch 3 requested: 2 is the largest not above it "
                            "that divides 8 sequences per rank)")
    assert tconfig.fit_micro_batch(9, 2, 8) is None and tconfig.fit_micro_batch(9, 3, 8).micro_batch == 3
    # an error only when nothing fits, naming the nearest valid settings
    with pytest.raises(UserError, match=r"no micro-batch fits. Nearest valid: global_batch_tokens=768 or 1152, "
                                        r"or a world size dividing its 8 sequences \(1, 2, 4, 8\)"):
        tiny.batch_layout(3)
    with pytest.raises(UserError, match="Nearest valid: global_batch_tokens=1024 or 1152$"):
        tconfig.with_changes(tiny, global_batch_tokens=1100).batch_layout(1)
    with pytest.raises(UserError, match="micro_batch 0: must be positive"):
        tconfig.with_changes(tiny, micro_batch=0).validate(1)
    with pytest.raises(UserError, match="n_layer 0: must be positive"):
        tconfig.load_config("tiny", overrides=["model.n_layer=0"]).validate(1)
    text = format_plan(plan(paper), "paper")
    assert "1 GPUs: 32 x 16, 2 GPUs: 32 x 8, 8 GPUs: 32 x 2, 16 GPUs: 32 x 1" in text


def test_sft_batch_in_examples_and_errors(tmp_path, monkeypatch):
    from dmas_repro.train import sft

    torch.manual_seed(0)
    (tmp_path / "base").mkdir()
    checkpoint.save_model_files(build(ModelConfig(n_layer=1, dim=32, n_head=2, n_kv_head=1, ffn_dim=64,
                                                  context_length=96)), tmp_path / "base")
    monkeypatch.setenv("WORLD_SIZE", "2")  # the check before any work sees the torchrun world size
    with pytest.raises(UserError, match="batch_size 9 examples per step does not split over 2 ranks: no "
                                        "micro-batch fits. Nearest valid: batch_size=8 or 10"):
        sft.run_sft(str(tmp_path / "base"), tmp_path / "out", "tiny", ["batch_size=9"])
    with pytest.raises(UserError, match="micro_batch 0: must be positive"):
        sft.run_sft(str(tmp_path / "base"), tmp_path / "out", "tiny", ["micro_batch=0"])
    with pytest.raises(UserError, match="val_tokens cannot be set for the SFT stage"):
        sft.load_sft_config("tiny", ["val_tokens=100"])


# ---------------------------------------------------------------- the LR schedule over resumes
def authors_get_lr(it: int, max_steps: int, warmup_steps: int, max_lr: float, min_lr: float) -> float:
    """Their get_lr (max_steps, warmup_steps, max_lr, min_lr are module globals of their train.py)."""
    if it < warmup_steps:
        return max_lr * (it + 1) / warmup_steps
    if it > max_steps:
        return min_lr
    decay_ratio = (it - warmup_steps) / (max_steps - warmup_steps)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (max_lr - min_lr)


def authors_lrs(args_max_steps: int, warmup_steps: int, max_lr: float, min_lr: float, starts: list[int]) -> dict:
    """Their train.py, attempt by attempt: `start_step` from the checkpoint (0 for the first),
    `max_steps = max_steps + start_step` from the command-line value, `for step in range(start_step,
    max_steps)`, `lr = get_lr(step)`; an attempt is cut at the next resume step. {update index: lr}."""
    lrs = {}
    for k, start_step in enumerate(starts):
        max_steps = args_max_steps + start_step
        stop = starts[k + 1] if k + 1 < len(starts) else max_steps
        for step in range(start_step, stop):
            lrs[step] = authors_get_lr(step, max_steps, warmup_steps, max_lr, min_lr)
    return lrs


def test_stretch_lr_on_resume_equals_the_authors_code_over_several_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    loop.run(_cfg(tiny_data, "max_steps=3"), out)  # the first attempt, cut at step 3
    for stop in (5, 9):  # two more attempts cut early, each resumed with the authors' re-stretch
        loop.run(_cfg(tiny_data, f"max_steps={stop}", "stretch_lr_on_resume=true"), out, resume=True)
    r = loop.run(_cfg(tiny_data, "stretch_lr_on_resume=true"), out, resume=True)  # runs to its end
    assert r.step == 8 + 9  # their loop ran to args.max_steps + start_step
    rows = read_metrics(out / "metrics.jsonl")
    ours = {row["step"] - 1: row["lr"] for row in rows if row["kind"] == "train"}  # row of step s: update s-1
    theirs = authors_lrs(8, 2, 1e-2, 1e-3, [0, 3, 5, 9])
    assert sorted(ours) == sorted(theirs) == list(range(17))
    assert all(ours[i] == pytest.approx(theirs[i], rel=1e-12) for i in theirs)
    ev = [row for row in rows if row.get("event") == "resume"]
    assert [(e["step"], e["lr_total_steps"], e["end_step"]) for e in ev] == [(3, 11, 5), (5, 13, 9), (9, 17, 17)]
    # without the flag the configured schedule holds, whatever a checkpoint's was
    plain = tmp_path / "plain"
    loop.run(_cfg(tiny_data, "max_steps=3"), plain)
    loop.run(_cfg(tiny_data, "max_steps=5", "stretch_lr_on_resume=true"), plain, resume=True)
    loop.run(_cfg(tiny_data), plain, resume=True)
    assert layout.read_trainer_state(layout.newest_checkpoint(plain))["lr_total_steps"] == 8


# ---------------------------------------------------------------- the validation set
def test_validation_set_fixed_in_tokens_in_the_loop(tiny_data, tmp_path):
    """(The windows themselves: tests/data/test_data.py.)"""
    # an identical model (step 0) gives the same validation loss at micro 8 and micro 4 (the case)
    rows = {}
    for mb in (8, 4):
        out = tmp_path / f"mb{mb}"
        loop.run(_cfg(tiny_data, f"micro_batch={mb}", "max_steps=2", "val_tokens=384"), out)
        rows[mb] = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "val"]
    assert rows[8][0]["step"] == 0 and rows[8][0]["val_loss_tokens"] == rows[4][0]["val_loss_tokens"] == 384
    assert rows[8][0]["val_loss"] == pytest.approx(rows[4][0]["val_loss"], abs=1e-6)
    start = [r for r in read_metrics(tmp_path / "mb4" / "metrics.jsonl") if r.get("event") == "start"][0]
    assert start["val_loss_tokens"] == 384 and start["val_windows"] == 24


def test_in_loop_val_loss_is_the_eval_val_loss(tiny_data, tmp_path):
    """metrics.jsonl val_loss and `eval-all` val_loss (results.csv) are one definition: the same
    windows of the val split and a softmax over GPT-2's 50,257 tokens."""
    from dmas_repro.eval.valloss import load_val_tokens, val_loss

    out = tmp_path / "run"
    loop.run(_cfg(tiny_data, "max_steps=3", "val_tokens=320"), out)
    last = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "val"][-1]
    model = checkpoint.load_model(layout.newest_checkpoint(out))
    ref = val_loss(model, load_val_tokens(tiny_data, budget=320), seq_len=16)
    assert last["step"] == 3 and ref["n_tokens"] == last["val_loss_tokens"] == 320
    assert last["val_loss"] == pytest.approx(ref["loss"], abs=1e-5)


# ---------------------------------------------------------------- in-loop samples
def authors_completion(model, prompt_ids: list[int], num_return_sequences: int, generate_max_length: int,
                       seed: int) -> torch.Tensor:
    """Their utils.completion (sampling branch, no cache), on the logits of the real vocabulary."""
    tokens = torch.tensor(prompt_ids, dtype=torch.long).unsqueeze(0).repeat(num_return_sequences, 1)
    xgen = tokens
    sample_rng = torch.Generator(device="cpu")
    sample_rng.manual_seed(seed)
    while xgen.size(1) < generate_max_length:
        with torch.no_grad():
            logits = model(xgen)[:, -1, : model.cfg.n_real_vocab]
            probs = F.softmax(logits, dim=-1)
            topk_probs, topk_indices = torch.topk(probs, 50, dim=-1)
            ix = torch.multinomial(topk_probs, 1, generator=sample_rng)
            xcol = torch.gather(topk_indices, -1, ix)
            xgen = torch.cat((xgen, xcol), dim=1)
    return xgen[:, :generate_max_length]


def test_samples_as_the_authors_ran_them():
    torch.manual_seed(0)
    m = build(ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=64)).eval()
    with torch.no_grad():  # padding rows that would win every softmax if they were in it
        m.lm_head.weight[50257:] = m.lm_head.weight[:47] * 50
    prompt = gpt2().encode("Hello, I am a language model,")
    assert len(prompt) == 8
    ours = in_loop.sample_ids(m, prompt, 4, 32, 42, "cpu", contextlib.nullcontext)
    assert ours.shape == (4, 32) and (ours[:, :8] == torch.tensor(prompt)).all()  # 24 new tokens
    assert torch.equal(ours, authors_completion(m, prompt, 4, 32, 42)) and (ours < 50257).all()
    texts = in_loop.sample_texts(m, "Hello, I am a language model,", 4, 32, 42, "cpu", contextlib.nullcontext)
    assert texts == [gpt2().decode(row) for row in ours.tolist()]
    assert texts[0].startswith("Hello, I am a language model,")
    # raising real_vocab_size to the padded size reproduces their softmax over all 50,304 logits
    full = build(m.cfg.with_(real_vocab_size=50304)).eval()
    full.load_state_dict(m.state_dict())
    wide = in_loop.sample_ids(full, prompt, 4, 32, 42, "cpu", contextlib.nullcontext)
    assert (wide[:, 8:] >= 50257).any() and "<|pad:" in in_loop.decode(gpt2(), wide[0].tolist())


# ---------------------------------------------------------------- in-loop HellaSwag
RAW = [  # HellaSwag's raw fields, as in hellaswag_val.jsonl
    {"ind": 0, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"ind": 1, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell.", "ctx_b": "",
     "label": 1, "endings": ["swings and lands in her arms.", "pulls the barbell forward.",
                             "pulls a rope attached to the barbell.", "stands and lifts the weight over her head."]},
]


def authors_prediction(model, example: dict) -> int:
    """Their hellaswag.render_example + utils.get_most_likely_row, on the logits of the real vocabulary."""
    enc = gpt2()
    ctx_tokens = enc.encode(example["ctx"])
    tok_rows, mask_rows = [], []
    for end in example["endings"]:
        end_tokens = enc.encode(" " + end)
        tok_rows.append(ctx_tokens + end_tokens)
        mask_rows.append([0] * len(ctx_tokens) + [1] * len(end_tokens))
    max_len = max(len(row) for row in tok_rows)
    tokens = torch.zeros((4, max_len), dtype=torch.long)
    mask = torch.zeros((4, max_len), dtype=torch.long)
    for i, (tok_row, mask_row) in enumerate(zip(tok_rows, mask_rows)):
        tokens[i, : len(tok_row)] = torch.tensor(tok_row)
        mask[i, : len(mask_row)] = torch.tensor(mask_row)
    with torch.no_grad():
        logits = model(tokens)[..., : model.cfg.n_real_vocab]
    shift_logits = logits[..., :-1, :].contiguous()
    shift_tokens = tokens[..., 1:].contiguous()
    shift_losses = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_tokens.view(-1),
                                   reduction="none").view(tokens.size(0), -1)
    shift_mask = mask[..., 1:].contiguous()
    avg_loss = (shift_losses * shift_mask).sum(dim=1) / shift_mask.sum(dim=1)
    return avg_loss.argmin().item()


def test_hellaswag_in_the_authors_format(tmp_path):
    torch.manual_seed(0)
    m = build(ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=64)).eval()
    f = tmp_path / "raw.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in RAW))
    items = in_loop.read_hellaswag(str(f), 0, "authors")
    assert [it["context"] for it in items] == ["A man is sitting on a roof. he", "A lady walks to a barbell."]
    ctx = SimpleNamespace(dist=D.DistInfo(), device=torch.device("cpu"), autocast=contextlib.nullcontext)
    for raw, it in zip(RAW, items):
        x, y = in_loop.item_rows(gpt2(), it, m.cfg.context_length)
        pred = int(in_loop.ending_losses(m, x, y, contextlib.nullcontext).argmin())
        assert pred == authors_prediction(m, {**raw, "ctx": it["context"]})
    want = sum(authors_prediction(m, {**r, "ctx": it["context"]}) == r["label"] for r, it in zip(RAW, items)) / 2
    assert in_loop.hellaswag_acc_norm(m, items, ctx) == {"acc_norm": want, "n": 2}
    # lm-eval's format: the query (activity label, capitalised ctx_b) and its preprocessed choices
    lm = tmp_path / "lm.jsonl"
    lm.write_text(json.dumps({"query": "Roof shingle removal: A man is sitting on a roof. He",
                              "choices": RAW[0]["endings"], "label": 3}) + "\n")
    assert in_loop.read_hellaswag(str(lm), 0)[0]["context"].startswith("Roof shingle removal:")
    with pytest.raises(UserError, match="raw fields ctx .*hellaswag_format=authors"):
        in_loop.read_hellaswag(str(lm), 0, "authors")
    assert main(["train", "--out", str(tmp_path / "o"), "hellaswag_format=nanogpt"]) == 2
