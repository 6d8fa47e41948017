"""LoRA adapters in peft's own format: what `PeftModel.save_pretrained` writes for the HF model,
applied with plain peft + transformers to the base's HF export they give the logits (and, merged,
the weights) of our merged SFT export; resume reads them back, and reads the earlier format."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dmas_repro.core.errors import UserError
from dmas_repro.model import hf, lora
from dmas_repro.model import weights as checkpoint
from dmas_repro.model.transformer import ModelConfig, build
from dmas_repro.train import sft

MICRO = ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=96)
FAST = ["method=lora", "export_hf=false", "val_size=8", "max_len=64", "batch_size=4", "micro_batch=2",
        "log_every=1", "val_every=0", "warmup_steps=1", "lr=5e-3", "lora_r=4", "lora_alpha=8", "lora_dropout=0.0",
        "total_steps=4"]
SPEC = lora.LoraSpec(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A base as an HF directory (50,257 vocabulary rows, padded to 50,304 when we load it)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hf_base") / "base"
    hf.save_hf(build(MICRO), d)
    return d


def _batch():
    torch.manual_seed(5)
    return torch.randint(0, 50257, (2, 48))


def test_saved_adapters_are_what_peft_saves_for_the_hf_model(tmp_path):
    """Our file and peft's `PeftModel.save_pretrained` of the same adapters on `LlamaForCausalLM`:
    the same file names, keys, shapes, values and LoRA config (target modules q_proj ... down_proj)."""
    from peft import PeftModel, get_peft_model, set_peft_model_state_dict
    from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    assert (lora.ADAPTER_WEIGHTS, lora.ADAPTER_CONFIG) == (SAFETENSORS_WEIGHTS_NAME, CONFIG_NAME)
    torch.manual_seed(0)
    m = build(MICRO)
    ref_hf = hf.to_hf(m)
    lora.apply_lora(m, SPEC)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".lora_" in n:
                p.normal_(0, 0.05)
    ours = tmp_path / "ours"
    ours.mkdir()
    lora.save_peft_adapters(m, m.state_dict(), SPEC, MICRO.n_layer, ours, metadata={"k": "v"})
    # peft on the transformers model, its adapters set from our file through peft's own loader
    theirs_model = get_peft_model(ref_hf, lora.peft_config(SPEC))
    assert isinstance(theirs_model, PeftModel)
    res = set_peft_model_state_dict(theirs_model, load_file(str(ours / lora.ADAPTER_WEIGHTS)))
    assert not res.unexpected_keys and not [k for k in res.missing_keys if ".lora_" in k]
    theirs_model.save_pretrained(tmp_path / "theirs")
    a, b = (load_file(str(d / lora.ADAPTER_WEIGHTS)) for d in (ours, tmp_path / "theirs"))
    assert sorted(a) == sorted(b) and len(a) == 2 * 7 * MICRO.n_layer
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any("embed" in k or "lm_head" in k for k in a)  # the vocab rows are never adapted
    ca, cb = (json.loads((d / lora.ADAPTER_CONFIG).read_text()) for d in (ours, tmp_path / "theirs"))
    assert sorted(ca["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert {k: v for k, v in ca.items() if k != "target_modules"} == {
        k: v for k, v in cb.items() if k != "target_modules"}
    assert sorted(ca["target_modules"]) == sorted(cb["target_modules"])
    # and back into our Transformer: the same tensors
    m2 = build(MICRO)
    lora.apply_lora(m2, SPEC)
    lora.load_peft_adapters(m2, tmp_path / "theirs", SPEC)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd if ".lora_" in k)
    with pytest.raises(UserError, match="lora_r 4 saved, 8 now"):
        m3 = build(MICRO)
        spec8 = lora.LoraSpec(r=8, alpha=8, dropout=0.0)
        lora.apply_lora(m3, spec8)
        lora.load_peft_adapters(m3, ours, spec8)


def test_sft_adapters_apply_with_plain_peft_and_transformers(hf_base, tmp_path):
    """The SFT run's adapters on `LlamaForCausalLM.from_pretrained(base)` through
    `PeftModel.from_pretrained` = our merged export, in logits and (merge_and_unload) in weights."""
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import LlamaForCausalLM

    out = tmp_path / "sft"
    r = sft.run_sft(str(hf_base), out, "tiny", [*FAST, "export_hf=true"], max_steps=3)
    adapter = out / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == sorted([lora.ADAPTER_WEIGHTS, lora.ADAPTER_CONFIG])
    for f in (lora.ADAPTER_WEIGHTS, lora.ADAPTER_CONFIG):  # the final checkpoint's adapters
        assert (adapter / f).read_bytes() == (r.checkpoint / f).read_bytes()
    cfg = json.loads((adapter / lora.ADAPTER_CONFIG).read_text())
    assert cfg["base_model_name_or_path"] == str(hf_base.resolve()) and cfg["r"] == 4

    x = _batch()
    base = LlamaForCausalLM.from_pretrained(hf_base).eval()
    assert base.config.vocab_size == 50257
    with torch.no_grad():
        base_logits = base(input_ids=x).logits
        peft_model = PeftModel.from_pretrained(base, adapter).eval()
        adapted = peft_model(input_ids=x).logits
        merged_export = LlamaForCausalLM.from_pretrained(out / "hf").eval()
        merged = merged_export(input_ids=x).logits
        torch.testing.assert_close(adapted, merged, rtol=0, atol=1e-5)
        assert (adapted - base_logits).abs().max().item() > 1e-3  # the adapters trained: not a no-op
        # base_model_name_or_path makes the adapter directory loadable on its own
        auto = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
        torch.testing.assert_close(auto(input_ids=x).logits, merged, rtol=0, atol=1e-5)
        unloaded = peft_model.merge_and_unload().state_dict()
    exported = merged_export.state_dict()
    assert unloaded.keys() == exported.keys() and all(torch.equal(v, exported[k]) for k, v in unloaded.items())


def test_resume_reads_the_earlier_adapter_format_bit_for_bit(hf_base, tmp_path):
    """A checkpoint written before the peft format (lora_adapters.safetensors under our module names +
    lora.json) still resumes, and the run continues exactly as one without the interruption."""
    straight = sft.run_sft(str(hf_base), tmp_path / "a", "tiny", FAST, max_steps=4)
    half = sft.run_sft(str(hf_base), tmp_path / "b", "tiny", FAST, max_steps=2)
    ckpt = half.checkpoint
    # rewrite the checkpoint's adapters as the earlier code did: the adapted model's own state-dict names
    m = build(MICRO)
    lora.apply_lora(m, SPEC)
    lora.load_peft_adapters(m, ckpt, SPEC)
    fingerprint = lora.read_peft_metadata(ckpt)[sft.FINGERPRINT_KEY]
    old = {k: v.contiguous() for k, v in m.state_dict().items() if ".lora_" in k}
    assert all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in old)
    save_file(old, str(ckpt / sft.LEGACY_LORA_ADAPTERS), metadata={"format": "pt"})
    (ckpt / sft.LEGACY_LORA_CONFIG).write_text(json.dumps(
        {"r": 4, "alpha": 8.0, "dropout": 0.0, "targets": list(lora.ALL_LINEAR), "scaling": 2.0,
         "base_fingerprint": fingerprint}))
    (ckpt / lora.ADAPTER_WEIGHTS).unlink()
    (ckpt / lora.ADAPTER_CONFIG).unlink()
    resumed = sft.run_sft(str(hf_base), tmp_path / "b", "tiny", FAST, max_steps=4, resume=True)
    assert resumed.resumed_from == 2 and resumed.step == straight.step == 4
    a, b = (load_file(str(c / lora.ADAPTER_WEIGHTS)) for c in (straight.checkpoint, resumed.checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(checkpoint.load_model(straight.checkpoint).lm_head.weight,
                       checkpoint.load_model(resumed.checkpoint).lm_head.weight)
    # a resume with another LoRA shape or scale is one clear error; so is a checkpoint without adapters
    for change, needle in (("lora_alpha=16", "lora_alpha 8.0 saved, 16.0 now"),
                           ("lora_targets=wq,wv", "lora_targets")):
        with pytest.raises(UserError, match=needle):
            sft.run_sft(str(hf_base), tmp_path / "b", "tiny", [*FAST, change], max_steps=5, resume=True)
    (resumed.checkpoint / lora.ADAPTER_WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="unreadable adapters"):
        sft.run_sft(str(hf_base), tmp_path / "b", "tiny", FAST, max_steps=5, resume=True)
    (resumed.checkpoint / lora.ADAPTER_WEIGHTS).unlink()
    with pytest.raises(UserError, match="no LoRA adapters"):
        sft.run_sft(str(hf_base), tmp_path / "b", "tiny", FAST, max_steps=5, resume=True)


def test_fsdp_lora_on_two_processes_applies_with_peft(hf_base, tmp_path, torchrun):
    """Under FSDP the adapters come from the full state dict gathered on rank 0: the same peft files."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    out = tmp_path / "fsdp"
    p = torchrun(["-m", "dmas_repro", "sft", "--base", str(hf_base), "--out", str(out), "--preset", "tiny",
                  "--device", "cpu", "--max-steps", "2", *FAST, "export_hf=true", "parallel=fsdp"])
    assert p.returncode == 0, p.stderr[-3000:]
    x = _batch()
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(hf_base), out / "adapter").eval()
        merged = LlamaForCausalLM.from_pretrained(out / "hf").eval()
        torch.testing.assert_close(adapted(input_ids=x).logits, merged(input_ids=x).logits, rtol=0, atol=1e-5)
