"""Instruction tuning: the prompt format, loss masks, data loading, LoRA merge, the SFT stage
(resume, export, errors) and `dmas-repro chat`."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dmas_repro.cli import main
from dmas_repro.core.errors import UserError
from dmas_repro.data import sft_records as sft_data
from dmas_repro.model import chat_format, hf, lora
from dmas_repro.model import weights as checkpoint
from dmas_repro.model.tokenizer import EOT, gpt2
from dmas_repro.model.transformer import ModelConfig, build
from dmas_repro.train import sft

MICRO = ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=96)
# A few seconds per run on 2 cores: 64-token examples, 8 validation examples, no HF export.
FAST = ["method=lora", "export_hf=false", "val_size=8", "max_len=64", "batch_size=4", "micro_batch=2",
        "log_every=1", "val_every=0", "warmup_steps=1", "lr=5e-3", "lora_r=4", "lora_alpha=8", "lora_dropout=0.0"]


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("base")
    checkpoint.save_model_files(build(MICRO), d)
    return d


# ---------------------------------------------------------------- format and masks
def test_chat_prompt_golden():
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.")
    assert chat_format.chat_prompt("Name a primary color.") == f"{system} USER: Name a primary color. ASSISTANT:"
    assert chat_format.chat_prompt("Translate to English.", "Bonjour") == (
        f"{system} USER: Translate to English.\nBonjour ASSISTANT:")
    assert chat_format.answer_text("Red.") == " Red."


def _bundled_set(n=6, max_tokens=10_000):
    recs = [r for r in sft_data.load_records("bundled") if len(r.output) < 200][:n]
    return recs, sft_data.tokenize(gpt2(), [chat_format.chat_prompt(r.instruction, r.input) for r in recs],
                                   [chat_format.answer_text(r.output) for r in recs], max_tokens)


def test_prompt_tokens_never_contribute_to_the_loss():
    recs, ts = _bundled_set()
    tok = gpt2()
    x, y = sft_data.collate(ts.ids, ts.prompt_lens)
    for i, r in enumerate(recs):
        ids, n_p = ts.ids[i], ts.prompt_lens[i]
        assert ids[:n_p].tolist() == tok.encode(chat_format.chat_prompt(r.instruction, r.input))
        assert ids[n_p:-1].tolist() == tok.encode(" " + r.output) and ids[-1] == EOT
        L = len(ids)
        assert x[i, : L - 1].tolist() == ids[:-1].tolist()
        assert (y[i, : n_p - 1] == -100).all()  # positions whose next token is a prompt token
        assert y[i, n_p - 1 : L - 1].tolist() == ids[n_p:].tolist()  # answer + final <|endoftext|> count
        assert (y[i, L - 1 :] == -100).all() and (x[i, L - 1 :] == EOT).all()  # padding
    # The gradient of the loss w.r.t. the logits is exactly zero at every masked position.
    m = build(MICRO.with_(context_length=256))
    logits = m(x)[..., :50257].detach().requires_grad_(True)  # the real vocabulary: padding rows in no softmax
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    loss.backward()
    masked = y == -100
    assert (logits.grad[masked] == 0).all() and (logits.grad[~masked].abs().sum(-1) > 0).all()
    assert torch.allclose(m(x, y), loss, atol=1e-6)


def test_overlong_examples_truncated_or_dropped_and_counted():
    tok = gpt2()
    prompts = ["short prompt", "short prompt", "a much longer prompt " * 10]
    answers = [" ok", " a long answer " * 20, " ok"]
    n_p = len(tok.encode(prompts[0]))
    t = sft_data.tokenize(tok, prompts, answers, max_tokens=24, overlong="truncate")
    assert (len(t), t.n_truncated, t.n_dropped) == (2, 1, 1)
    assert len(t.ids[1]) == 24 and t.ids[1][-1] != EOT and t.prompt_lens[1] == n_p
    d = sft_data.tokenize(tok, prompts, answers, max_tokens=24, overlong="drop")
    assert (len(d), d.n_truncated, d.n_dropped) == (1, 0, 2)
    assert d.stats()["answer_tokens"] == len(tok.encode(" ok")) + 1


# ---------------------------------------------------------------- data sources
def test_bundled_sample_and_licence():
    recs = sft_data.load_records("bundled")
    assert len(recs) == 999 and all(r.instruction and r.output for r in recs)
    assert "CC BY-NC 4.0" in (sft_data.BUNDLED_FILE.parent / "LICENSE.md").read_text()


def test_local_json_and_jsonl(tmp_path):
    rows = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "output": "e"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    for f in ("d.json", "d.jsonl"):
        assert sft_data.load_records(str(tmp_path / f)) == [sft_data.Record("a", "b", "c"),
                                                             sft_data.Record("d", "", "e")]


@pytest.mark.parametrize("content,needle", [
    ('{"instruction": "a", "input": ""}\n', "record 0 (missing 'output')"),
    ('{"instruction": "a", "output": "b"}\n{"output": 3}\n', "record 1 (missing 'instruction'; not text: 'output')"),
    ('{"instruction": "a", "output": "b"}\nnot json\n', "line 2 is not valid JSON"),
])
def test_bad_sft_file_is_one_clear_error(tmp_path, content, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(UserError) as e:
        sft_data.load_records(str(f))
    assert needle in str(e.value) and str(f) in str(e.value)


def test_alpaca_cleaned_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, split=None, revision=None, cache_dir=None):
        calls.append((path, split, revision))
        return datasets.Dataset.from_list([{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    recs = sft_data.load_records("yahma/alpaca-cleaned", revision="r1")
    assert calls == [("yahma/alpaca-cleaned", "train", "r1")] and len(recs) == 3

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'yahma/alpaca-cleaned' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="yahma/alpaca-cleaned: cannot load the dataset"):
        sft_data.load_records("yahma/alpaca-cleaned")


def test_batches_rank_strided_and_resumable():
    _, ts = _bundled_set(n=10)
    one = sft_data.SFTBatches(ts, 2, seed=3)
    seq = [one.next_batch()[0] for _ in range(8)]  # crosses the epoch boundary (5 micro-batches)
    r0, r1 = (sft_data.SFTBatches(ts, 2, seed=3, rank=r, world_size=2) for r in (0, 1))
    two = [b for _ in range(2) for b in (r0.next_batch()[0], r1.next_batch()[0])]
    assert all(torch.equal(a, b) for a, b in zip(seq[:4], two))
    again = sft_data.SFTBatches(ts, 2, seed=3)
    for _ in range(3):
        again.next_batch()
    resumed = sft_data.SFTBatches(ts, 2, seed=3)
    resumed.load_state_dict(again.state_dict())
    assert all(torch.equal(resumed.next_batch()[0], s) for s in seq[3:])
    with pytest.raises(UserError, match="batch_size"):
        sft_data.SFTBatches(ts, 3, seed=3).load_state_dict(again.state_dict())


def test_validation_batches_padded_to_the_same_count_on_every_rank():
    _, ts = _bundled_set(n=9)
    one = list(sft_data.eval_batches(ts, 9))
    assert len(one) == 1 and one[0][0].shape[0] == 9 and one[0][2]
    y1 = one[0][1]
    for micro in (1, 2, 4):
        for world in (1, 2, 3):
            shares = [list(sft_data.eval_batches(ts, micro, r, world)) for r in range(world)]
            assert len({len(s) for s in shares}) == 1  # the same number of forwards on every rank
            rows = sorted(tuple(y[i][y[i] != -100].tolist()) for s in shares for _, y, c in s if c
                          for i in range(y.shape[0]))
            assert rows == sorted(tuple(y1[i][y1[i] != -100].tolist()) for i in range(9))  # each example once


# ---------------------------------------------------------------- LoRA
def test_merged_logits_equal_adapter_logits():
    torch.manual_seed(0)
    m = build(MICRO).eval()
    spec = lora.LoraSpec(r=4, alpha=8, dropout=0.1)
    peft_model = lora.apply_lora(m, spec)
    assert {n.split(".")[-4] for n, p in m.named_parameters() if p.requires_grad} == set(lora.ALL_LINEAR)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = torch.randint(0, 50257, (2, 40))
    peft_model.eval()
    with torch.no_grad():
        adapted = m(x)
        merged = lora.merged_model(m, spec.scaling)
        assert (merged(x) - adapted).abs().max().item() <= 1e-4
        assert (merged(x) - build(MICRO).eval()(x)).abs().max().item() > 1e-3  # the adapters do matter
        ref = peft_model.merge_and_unload().state_dict()  # peft's own merge: the same weights
    assert all(torch.equal(merged.state_dict()[k], v) for k, v in ref.items())


# ---------------------------------------------------------------- the stage
def _adapters(ckpt):
    from safetensors.torch import load_file

    return load_file(str(ckpt / lora.ADAPTER_WEIGHTS))


def test_sft_resume_is_exact_and_checkpoints_load(micro_base, tmp_path):
    straight = sft.run_sft(str(micro_base), tmp_path / "a", "tiny", FAST, max_steps=4)
    sft.run_sft(str(micro_base), tmp_path / "b", "tiny", FAST, max_steps=2)
    with pytest.raises(UserError, match="--resume"):
        sft.run_sft(str(micro_base), tmp_path / "b", "tiny", FAST, max_steps=4)
    resumed = sft.run_sft(str(micro_base), tmp_path / "b", "tiny", FAST, max_steps=4, resume=True)
    assert resumed.resumed_from == 2 and resumed.step == straight.step == 4
    a, b = _adapters(straight.checkpoint), _adapters(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # every SFT checkpoint is a plain model directory holding the merged weights
    merged = checkpoint.load_model(straight.checkpoint)
    assert merged.cfg == MICRO and not lora.is_adapted(merged)
    rows = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r.get("event") == "start")
    assert start["stage"] == "sft" and start["train_truncated"] > 0 and start["train_dropped"] > 0
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    # adapters trained on one base are not resumed on another
    torch.manual_seed(1)
    other = tmp_path / "other"
    other.mkdir()
    checkpoint.save_model_files(build(MICRO), other)
    with pytest.raises(UserError, match="another base model"):
        sft.run_sft(str(other), tmp_path / "b", "tiny", FAST, max_steps=5, resume=True)


def test_full_finetuning_and_cli_export(micro_base, tmp_path, capsys):
    out = tmp_path / "full"
    rc = main(["sft", "--base", str(micro_base), "--out", str(out), "--preset", "tiny", "--max-steps", "2",
               *FAST, "method=full", "export_hf=true"])
    assert rc == 0
    hf_dir = out / "hf"
    assert hf.is_hf_dir(hf_dir) and json.loads((hf_dir / "generation_config.json").read_text())["eos_token_id"] == EOT
    final = checkpoint.load_model(out / "checkpoints" / "step_00000002")
    base = checkpoint.load_model(micro_base)
    changed = [k for k, v in final.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert "lm_head.weight" in changed and "layers.0.attn_norm.weight" in changed  # all weights train
    cfg = json.loads((out / sft.SFT_CONFIG).read_text())
    assert cfg["sft"]["method"] == "full" and cfg["data"]["records"] == 999


def _write_hf_config(d, **change):
    torch.manual_seed(0)
    hf.save_hf(build(MICRO), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change", [{"tie_word_embeddings": True},
                                    {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}])
def test_base_of_another_architecture_is_one_clear_error(tmp_path, change):
    _write_hf_config(tmp_path / "base", **change)
    with pytest.raises(UserError, match="not usable as a DMaS-LLaMa-Lite model") as e:
        sft.run_sft(str(tmp_path / "base"), tmp_path / "out", "tiny", FAST)
    assert "config.json" in str(e.value) and not (tmp_path / "out").exists()


def test_cli_errors_are_one_line(micro_base, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x"}]))
    _write_hf_config(tmp_path / "tied", tie_word_embeddings=True)
    for args in (["sft", "--base", str(micro_base), "--out", str(tmp_path / "o"), "--data", str(bad)],
                 ["sft", "--base", str(tmp_path / "tied"), "--out", str(tmp_path / "o")],
                 ["sft", "--base", str(micro_base), "--out", str(tmp_path / "o"), "lora_rank=8"],
                 ["sft", "--base", str(micro_base), "--out", str(tmp_path / "o"), "seq_len=64"],
                 ["chat", "--checkpoint", str(tmp_path / "nope"), "--prompt", "hi"],
                 ["train", "--stages", "sft", "--out", str(tmp_path / "no-run")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0], err
    r = subprocess.run([sys.executable, "-m", "dmas_repro", "sft", "--base", str(micro_base), "--out",
                        str(tmp_path / "o"), "--data", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing 'output'" in r.stderr


# ---------------------------------------------------------------- chat
def test_stream_answer_stops_at_endoftext(micro_base):
    import io

    from dmas_repro.eval.chat import stream_answer

    tok = gpt2()
    m = checkpoint.load_model(micro_base)
    want = tok.encode(" Caf\u00e9 \u2615 ok")  # multi-byte characters split across tokens
    script = want + [EOT] + tok.encode(" never shown")
    m.iter_generate = lambda x, n, *a, **k: (torch.tensor([t]) for t in script[:n])
    out = io.StringIO()
    assert stream_answer(m, tok, chat_format.chat_prompt("hi"), out) == want
    assert out.getvalue() == " Caf\u00e9 \u2615 ok"


def test_chat_prompt_one_shot(micro_base, capsys):
    assert main(["chat", "--checkpoint", str(micro_base), "--prompt", "Name a color.", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    m = checkpoint.load_model(micro_base)
    ids = gpt2().encode(chat_format.chat_prompt("Name a color."))
    new = m.generate(ids, 6)[0]
    new = new[: new.index(EOT)] if EOT in new else new
    assert printed == gpt2().decode(new) + "\n"


# ---------------------------------------------------------------- the embedded default pipeline (pretrain -> sft)
def test_default_pipeline_sft_lowers_val_loss(default_run):
    from dmas_repro.train.layout import read_metrics

    rows = read_metrics(default_run / "sft" / "metrics.jsonl")
    vals = [r["val_loss"] for r in rows if r["kind"] == "val"]
    assert len(vals) >= 3 and vals[-1] < vals[0] - 0.1, vals
    start = next(r for r in rows if r.get("event") == "start")
    assert start["stage"] == "sft" and start["method"] == "full" and start["train_examples"] > 0
    base_dir = json.loads((default_run / "sft" / sft.SFT_CONFIG).read_text())["base_dir"]
    assert base_dir.endswith(f"checkpoints/{sorted((default_run / 'checkpoints').glob('step_*'))[-1].name}")


def test_instruct_export_loads_offline_and_generate_stops_at_endoftext(default_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor

    d = default_run / "sft" / "hf"
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert tok.eos_token_id == EOT and model.generation_config.eos_token_id == EOT
    # the export is the final SFT checkpoint (merged weights)
    final = checkpoint.load_model(sorted((default_run / "sft" / "checkpoints").glob("step_*"))[-1])
    ours, theirs = hf.hf_state_dict(final), model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items())
    prompt = chat_format.chat_prompt("Give three tips for staying healthy.")
    ids = tok(prompt, return_tensors="pt").input_ids
    n = ids.shape[1]
    assert ids[0].tolist() == gpt2().encode(prompt)

    class EndAt(LogitsProcessor):  # make <|endoftext|> the only choice at the 4th new token
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == n + 3:
                scores = torch.full_like(scores, -float("inf"))
                scores[:, EOT] = 0.0
            return scores

    forced = model.generate(ids, max_new_tokens=20, do_sample=False, logits_processor=[EndAt()])[0, n:].tolist()
    assert len(forced) == 4 and forced[-1] == EOT and EOT not in forced[:-1]
    free = model.generate(ids, max_new_tokens=48, do_sample=False)[0, n:].tolist()
    assert EOT not in free[:-1]


def test_chat_one_shot_on_the_default_run(default_run, capsys):
    from transformers import AutoModelForCausalLM

    assert main(["chat", "--checkpoint", str(default_run), "--prompt", "Name a color.", "--max-new-tokens", "24"]) == 0
    printed = capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(default_run / "sft" / "hf")
    ids = torch.tensor([gpt2().encode(chat_format.chat_prompt("Name a color."))])
    new = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    assert printed == gpt2().decode([t for t in new if t != EOT]) + "\n"


# ---------------------------------------------------------------- padding rows of the vocabulary
def test_finetuning_loss_from_a_50257_row_checkpoint_equals_transformers(tmp_path):
    """A released-style HF checkpoint (50,257 rows) is padded to 50,304 on load; the padding rows are in
    no softmax: the SFT loss equals LlamaForCausalLM's on the same batch, on the plain, the fused
    chunked and the LoRA (chunk-checkpointed) paths, with the same LM-head gradient and none for the
    padding rows; the export gives the checkpoint back unchanged."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**hf.config_to_hf_dict(MICRO))).eval()
    assert ref.config.vocab_size == 50257
    ref.save_pretrained(tmp_path / "hf")
    _, ts = _bundled_set(n=4, max_tokens=MICRO.context_length)
    x, y = sft_data.collate(ts.ids, ts.prompt_lens)
    # transformers shifts labels itself: one more input position, labels one to the right
    ids = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
    labels = torch.cat([torch.full_like(y[:, :1], -100), y], dim=1)
    want = ref(input_ids=ids, labels=labels).loss
    want.backward()
    ref_grad = ref.lm_head.weight.grad

    m = checkpoint.load_any(tmp_path / "hf")
    assert m.cfg.vocab_size == 50304 and m.cfg.n_real_vocab == 50257 and (m.lm_head.weight[50257:] == 0).all()
    for chunk in (0, 16):  # plain F.cross_entropy; fused LinearCrossEntropy
        m.ce_chunk_tokens = chunk
        m.zero_grad()
        loss = m(x, y)
        loss.backward()
        torch.testing.assert_close(loss, want, rtol=0, atol=1e-5)
        g = m.lm_head.weight.grad
        assert (g[50257:] == 0).all()
        torch.testing.assert_close(g[:50257], ref_grad, rtol=1e-4, atol=1e-7)
    assert {k: v.shape for k, v in hf.hf_state_dict(m).items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in hf.hf_state_dict(m).items())  # export unchanged
    lora.apply_lora(m, lora.LoraSpec(r=4, alpha=8, dropout=0.0))  # B = 0: the same function; frozen head, fused
    m.ce_chunk_tokens = 16
    torch.testing.assert_close(m(x, y), want, rtol=0, atol=1e-5)
    from peft import LoraConfig, get_peft_model

    head = build(MICRO.with_(vocab_size=50304))  # an adapter on the LM head itself: the chunk-checkpointed path
    head.load_state_dict(checkpoint.load_any(tmp_path / "hf").state_dict())
    get_peft_model(head, LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"]))
    assert type(head.lm_head) is not torch.nn.Linear
    for chunk in (0, 16):
        head.ce_chunk_tokens = chunk
        torch.testing.assert_close(head(x, y), want, rtol=0, atol=1e-5)
