import json
import shutil

import pytest
import torch
from test_tokenizer import VARIED

from dmas_repro.core.errors import UserError
from dmas_repro.model import hf
from dmas_repro.model.tokenizer import gpt2
from dmas_repro.model.transformer import ModelConfig, build

PAPER_SHAPES = ModelConfig(n_layer=2)  # the paper's layer shapes at reduced depth
SMALL = [
    ModelConfig(n_layer=3, dim=96, n_head=6, n_kv_head=2, ffn_dim=200, context_length=128, rope_theta=10000.0),
    ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=4, ffn_dim=160, context_length=64, norm_eps=1e-6),
    ModelConfig(n_layer=1, dim=128, n_head=8, n_kv_head=1, ffn_dim=256, context_length=96),
]


def _logit_diff(cfg, lengths):
    torch.manual_seed(0)
    ours = build(cfg).eval()
    theirs = hf.to_hf(ours)
    worst = 0.0
    with torch.no_grad():
        for T in lengths:
            x = torch.randint(0, 50257, (2, T))
            worst = max(worst, (ours(x)[..., :50257] - theirs(x).logits).abs().max().item())
    return worst


def test_logits_match_transformers_paper_shapes():
    assert _logit_diff(PAPER_SHAPES, [1, 13, 64]) <= 1e-4


@pytest.mark.parametrize("cfg", SMALL)
def test_logits_match_transformers_random_configs(cfg):
    assert _logit_diff(cfg, [1, 5, 31, cfg.context_length]) <= 1e-4


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(1)
    m = build(SMALL[0]).eval()
    out = hf.save_hf(m, tmp_path / "export")
    return m, out


def test_export_from_pretrained_import_bit_identical(exported, tmp_path):
    from transformers import AutoModelForCausalLM

    m, out = exported
    loaded = AutoModelForCausalLM.from_pretrained(out)
    back = hf.from_hf(loaded)
    again = hf.from_hf(out)
    want = hf.hf_state_dict(m)
    for other in (back, again):
        got = hf.hf_state_dict(other)
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want)
    assert back.cfg == m.cfg
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 50257 and cfg["eos_token_id"] == 50256
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256


def test_sharded_export_round_trip(tmp_path):
    torch.manual_seed(2)
    m = build(SMALL[1])
    out = hf.save_hf(m, tmp_path / "sharded", max_shard_bytes=4_000_000)
    assert (out / hf.SAFE_INDEX).is_file()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    back = hf.from_hf(out)
    assert all(torch.equal(a, b) for a, b in zip(hf.hf_state_dict(m).values(), hf.hf_state_dict(back).values()))


def test_exported_tokenizer_loads_offline_and_matches(exported):
    from transformers import AutoTokenizer

    _, out = exported
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(VARIED)["input_ids"] == gpt2().encode(VARIED)
    assert tok.eos_token_id == 50256
    for f in ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]:
        assert (out / f).is_file()


def test_generate_from_export_matches_ours(exported):
    from transformers import AutoModelForCausalLM

    m, out = exported
    with torch.no_grad():
        m.lm_head.weight.mul_(30)
    out = hf.save_hf(m, out, overwrite=True)  # replaces the earlier export
    theirs = AutoModelForCausalLM.from_pretrained(out)
    prompt = torch.tensor([[15496, 11, 314, 716]])
    ours = m.generate(prompt, 12, stop_token=None)[0]
    ref = theirs.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, 4:].tolist()
    assert ours == ref


def test_released_style_config_transformers4(tmp_path, exported):
    """A config.json as transformers 4.44 wrote the released checkpoints (top-level rope_theta,
    torch_dtype, bos/eos 1/2, sharded) reads into the paper architecture."""
    released = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 5120, "max_position_embeddings": 1024,
        "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 36,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 500000, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.44.2", "use_cache": True, "vocab_size": 50257,
    }
    cfg = hf.config_from_hf_dict(released)
    assert cfg == ModelConfig()
    v5 = dict(released)
    del v5["rope_theta"], v5["torch_dtype"]
    v5.update({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "dtype": "float32",
               "head_dim": 64})
    assert hf.config_from_hf_dict(v5) == ModelConfig()


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
        ({"model_type": "mistral"}, "model_type"),
    ],
)
def test_wrong_architecture_config_refused(exported, change, needle):
    _, out = exported
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(change)
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=needle) as e:
        hf.from_hf(out)
    assert "config.json" in str(e.value)


def test_head_count_mismatch_names_file(exported):
    _, out = exported
    cfg = json.loads((out / "config.json").read_text())
    cfg["num_key_value_heads"] = 6
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="model.safetensors"):
        hf.from_hf(out)


def test_missing_shard_names_file(tmp_path):
    m = build(SMALL[1])
    out = hf.save_hf(m, tmp_path / "sharded", max_shard_bytes=4_000_000)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(UserError, match=victim.name):
        hf.from_hf(out)


def test_truncated_safetensors_names_file(exported):
    _, out = exported
    f = out / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        hf.from_hf(out)


def test_export_overwrites_atomically(exported, tmp_path):
    m, out = exported
    with pytest.raises(UserError, match="not empty"):  # an existing export is replaced only when asked
        hf.save_hf(m, out)
    hf.save_hf(m, out, overwrite=True)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):  # never what the export did not write
        hf.save_hf(m, out, overwrite=True)
    assert (out / "notes.txt").is_file()
    shutil.rmtree(out)
