"""Weight files without a second copy in memory: the safetensors reader/writer against the library,
exports and imports byte for byte, the transformers view sharing our parameters, and peak memory."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dmas_repro.core.errors import UserError
from dmas_repro.model import hf
from dmas_repro.model import weights as checkpoint
from dmas_repro.model.safetensors_io import SafetensorsReader, write_safetensors
from dmas_repro.model.transformer import ModelConfig, build

REPO = Path(__file__).resolve().parents[2]
CFG = ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=64)


def _mixed() -> dict:
    torch.manual_seed(0)
    return {"b": torch.randn(3), "a": torch.randn(2, 2).to(torch.bfloat16), "c": torch.arange(5),
            "d": torch.zeros(1, dtype=torch.float64), "e": torch.randn(4, 3).half(), "z": torch.tensor([True, False]),
            "u": torch.arange(7, dtype=torch.uint8), "i": torch.arange(3, dtype=torch.int32), "s": torch.tensor(3.0),
            "empty": torch.zeros(0, 4), "big": torch.randn(300, 70)}


def test_writer_bytes_equal_save_file_and_reader_equals_safe_open(tmp_path):
    sd = _mixed()
    save_file(sd, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    asked = []

    def tensor(name):
        asked.append(name)
        return sd[name]

    write_safetensors(tmp_path / "ours.safetensors", {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()}, tensor,
                      {"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert sorted(asked) == sorted(sd)  # each tensor asked for once, when written
    with SafetensorsReader(tmp_path / "ref.safetensors") as st, safe_open(tmp_path / "ref.safetensors", "pt") as lib:
        assert set(st.keys()) == set(lib.keys()) and st.metadata == lib.metadata()
        for k in st.keys():
            assert torch.equal(st.read(k), lib.get_tensor(k)) and st.read(k).dtype == lib.get_tensor(k).dtype
        out = torch.empty(300, 70, dtype=torch.float64)  # a cast through one staging tensor
        st.read_into("big", out)
        assert torch.equal(out, sd["big"].double())
        with pytest.raises(UserError, match="shape"):
            st.read_into("big", torch.empty(70, 300))


def test_reader_names_a_damaged_file(tmp_path):
    f = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(100, 100)}, f)
    data = f.read_bytes()
    for name, bad in {"truncated": data[:-100], "no header": data[:5], "header length": b"\xff" * 8 + data[8:],
                      "not json": data[:8] + b"{" * (len(data) - 8)}.items():
        g = tmp_path / f"{name}.safetensors"
        g.write_bytes(bad)
        with pytest.raises(UserError, match=rf"{g.name}: corrupt or truncated safetensors file"):
            SafetensorsReader(g)
    with pytest.raises(UserError, match="cannot read"):
        SafetensorsReader(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("shard_bytes", [hf.MAX_SHARD_BYTES, 200_000])
def test_save_hf_matches_the_libraries_and_export_streams_the_same_bytes(tmp_path, shard_bytes):
    """save_hf's files are what safetensors.save_file writes for the state dict that
    huggingface_hub.split_torch_state_dict_into_shards cuts; export_hf (tensor by tensor from our files)
    writes the same bytes; both read back equal through transformers."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    m = build(CFG)
    out = hf.save_hf(m, tmp_path / "hf", max_shard_bytes=shard_bytes)
    sd = {k: v.clone() for k, v in hf.hf_state_dict(m).items()}  # own storage: sized as saved
    split = split_torch_state_dict_into_shards(sd, max_shard_size=shard_bytes)
    assert split.is_sharded == (shard_bytes < hf.MAX_SHARD_BYTES)
    for fname, names in split.filename_to_tensors.items():
        save_file({k: sd[k] for k in names}, tmp_path / "ref.safetensors", metadata={"format": "pt"})
        assert (out / fname).read_bytes() == (tmp_path / "ref.safetensors").read_bytes(), fname
    if split.is_sharded:
        index = json.loads((out / hf.SAFE_INDEX).read_text())
        assert index["weight_map"] == split.tensor_to_filename and index["metadata"] == split.metadata

    ours = tmp_path / "ours"
    ours.mkdir()
    checkpoint.save_model_files(m, ours)
    if shard_bytes == hf.MAX_SHARD_BYTES:
        exported = checkpoint.export_hf(ours, tmp_path / "exported")
        files = sorted(p.name for p in out.iterdir())
        assert files == sorted(p.name for p in exported.iterdir())
        for name in files:
            assert (exported / name).read_bytes() == (out / name).read_bytes(), name
        bf16 = checkpoint.export_hf(ours, tmp_path / "bf16", dtype=torch.bfloat16)
        back = AutoModelForCausalLM.from_pretrained(bf16)
        assert back.dtype == torch.bfloat16
        assert torch.equal(back.lm_head.weight, m.lm_head.weight[:50257].to(torch.bfloat16))
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for k, v in theirs.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # and back: our loaders give the exact parameters again (the vocab's padding rows, not exported, as zeros)
    back = hf.from_hf(out)
    for k, v in m.state_dict().items():
        if k in hf.VOCAB_ROWS:
            assert torch.equal(back.state_dict()[k][:50257], v[:50257]) and not back.state_dict()[k][50257:].any()
        else:
            assert torch.equal(back.state_dict()[k], v), k
    assert torch.equal(checkpoint.load_model(ours, dtype=torch.bfloat16).lm_head.weight, m.lm_head.weight.bfloat16())


def test_transformers_view_shares_our_parameters_and_gives_from_pretrained_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    d = hf.save_hf(build(CFG), tmp_path / "hf")
    ours = hf.from_hf(d, pad_vocab=False)
    view = hf.as_transformers(ours, d)
    assert view.lm_head.weight.data_ptr() == ours.lm_head.weight.data_ptr()  # no copy
    assert view.model.layers[1].mlp.down_proj.weight.data_ptr() == ours.layers[1].mlp.w_down.weight.data_ptr()
    ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert view.config._attn_implementation == ref.config._attn_implementation
    x = torch.randint(0, 50257, (3, 40))
    with torch.no_grad():
        assert torch.equal(view(x).logits, ref(x).logits)  # bit for bit: what HFLM(pretrained=DIR) computes


def test_peak_memory_of_loading_and_exporting_is_one_model(tmp_path):
    """In a fresh process, the resident memory an operation adds (sampled every 2 ms), on a 224 MB model
    minus on a tiny one (what does not grow with the model: tokenizer files, imports): reading weights adds
    the model's bytes (not model + file mapping); converting our files to an HF directory about one tensor;
    exporting a loaded model no copy."""
    sizes = {}
    for name, c in (("big", ModelConfig(n_layer=2, dim=512, n_head=8, n_kv_head=2, ffn_dim=1024, context_length=64)),
                    ("small", CFG)):
        torch.manual_seed(3)
        m = build(c)
        (tmp_path / name).mkdir()
        checkpoint.save_model_files(m, tmp_path / name)
        hf.save_hf(m, tmp_path / f"{name}-hf")
        sizes[name] = (sum(p.numel() * 4 for p in m.parameters()), max(p.numel() * 4 for p in m.parameters()))
        del m
    code = textwrap.dedent(f"""
        import gc, json, sys, threading, torch
        from dmas_repro.core.runtime import rss_bytes
        from dmas_repro.model import hf, weights
        root, what = {str(tmp_path)!r}, sys.argv[1]

        def run(name, i):
            if what == "from_hf":
                return hf.from_hf(f"{{root}}/{{name}}-hf", pad_vocab=False)
            if what == "load_model":
                return weights.load_model(f"{{root}}/{{name}}")
            if what == "export_hf":
                return weights.export_hf(f"{{root}}/{{name}}", f"{{root}}/exported-{{i}}")
            return hf.save_hf(MODELS[name], f"{{root}}/saved-{{i}}")

        def added(name, i):
            gc.collect()
            before, peak, stop = rss_bytes(), [0], threading.Event()
            def sample():
                while not stop.wait(0.002):
                    peak[0] = max(peak[0], rss_bytes())
            t = threading.Thread(target=sample)
            t.start()
            out = run(name, i)
            stop.set()
            t.join()
            del out
            return max(peak[0], rss_bytes()) - before

        MODELS = {{n: weights.load_model(f"{{root}}/{{n}}") for n in ("small", "big")}} if what == "save_hf" else {{}}
        run("small", 0)
        print(json.dumps({{"small": added("small", 1), "big": added("big", 2)}}))
    """)
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    grew = {}
    for what in ("from_hf", "load_model", "export_hf", "save_hf"):
        r = subprocess.run([sys.executable, "-c", code, what], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout.strip().splitlines()[-1])
        grew[what] = got["big"] - got["small"]
    (big, largest), (small, _) = sizes["big"], sizes["small"]
    slack = 32 * 2**20  # allocator and library noise
    assert grew["from_hf"] <= big - small + slack, (grew, big)
    assert grew["load_model"] <= big - small + slack, (grew, big)
    assert grew["export_hf"] <= 2 * largest + slack, (grew, largest)
    assert grew["save_hf"] <= slack, grew
