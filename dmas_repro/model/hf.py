"""Conversion between our model and `transformers.LlamaForCausalLM` directories.

Released DMaS-LLaMa-Lite checkpoints are float32 `LlamaForCausalLM` directories whose
embedding and LM head were sliced from the training vocab (50304) to GPT-2's 50257 rows.
`from_hf` pads them back; `save_hf` slices exactly as the release did.

One deliberate difference from the release: the released generation_config.json says
bos/eos = 1/2, ids that are ordinary GPT-2 tokens, so `generate` never stops there. We write
bos = eos = pad = 50256 (<|endoftext|>), which makes `generate` stop where the model does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..core.errors import UserError
from ..core.files import atomic_dir
from .safetensors_io import SafetensorsReader, write_safetensors
from .tokenizer import ENCODER_JSON, EOT, VOCAB_BPE, hf_tokenizer
from .transformer import GPT2_VOCAB, ModelConfig, Transformer

MAX_SHARD_BYTES = 5 * 1000**3  # the release used 5 GB shards
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
# What `save_hf` writes (the tokenizer files of transformers 4.x and 5.x included): a directory
# holding only these, with our config, is an earlier export that `save_hf(overwrite=True)` may replace.
EXPORT_FILES = frozenset({"config.json", "generation_config.json", SAFE_SINGLE, SAFE_INDEX, "tokenizer.json",
                          "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                          "added_tokens.json"})
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


# ---------------------------------------------------------------- names
def name_map(n_layer: int) -> dict[str, str]:
    """our parameter name -> transformers LlamaForCausalLM name."""
    m = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    per_layer = {
        "attn_norm.weight": "input_layernorm.weight",
        "attn.wq.weight": "self_attn.q_proj.weight",
        "attn.wk.weight": "self_attn.k_proj.weight",
        "attn.wv.weight": "self_attn.v_proj.weight",
        "attn.wo.weight": "self_attn.o_proj.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
        "mlp.w_gate.weight": "mlp.gate_proj.weight",
        "mlp.w_up.weight": "mlp.up_proj.weight",
        "mlp.w_down.weight": "mlp.down_proj.weight",
    }
    for i in range(n_layer):
        for ours, theirs in per_layer.items():
            m[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return m


VOCAB_ROWS = ("tok_embeddings.weight", "lm_head.weight")


# ---------------------------------------------------------------- configs
def config_to_hf_dict(cfg: ModelConfig, vocab_size: int = GPT2_VOCAB) -> dict:
    """A LlamaConfig dict for our architecture (vocab sliced to `vocab_size`)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "pad_token_id": EOT,
        "hidden_act": "silu",
        "hidden_size": cfg.dim,
        "head_dim": cfg.head_dim,
        "initializer_range": cfg.init_std,
        "intermediate_size": cfg.ffn_dim,
        "max_position_embeddings": cfg.context_length,
        "mlp_bias": False,
        "num_attention_heads": cfg.n_head,
        "num_hidden_layers": cfg.n_layer,
        "num_key_value_heads": cfg.n_kv_head,
        "pretraining_tp": 1,
        "rms_norm_eps": cfg.norm_eps,
        "rope_scaling": None,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def config_from_hf_dict(d: dict, source: str = "config.json", pad_vocab: bool = True) -> ModelConfig:
    """Our ModelConfig from a transformers 4.x or 5.x Llama config dict; refuse other architectures."""
    problems = []
    if d.get("model_type", "llama") != "llama":
        problems.append(f"model_type is {d.get('model_type')!r}, not 'llama'")
    arch = d.get("architectures") or ["LlamaForCausalLM"]
    if arch != ["LlamaForCausalLM"]:
        problems.append(f"architectures is {arch}, not ['LlamaForCausalLM']")
    if d.get("tie_word_embeddings", False):
        problems.append("tie_word_embeddings is true (DMaS-LLaMa-Lite has an untied LM head)")
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key, False):
            problems.append(f"{key} is true (the architecture has no biases)")
    if d.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act is {d.get('hidden_act')!r}, not 'silu'")
    rope = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling")
    rope_type = rope.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    if scaling or (rope_type not in (None, "default")):
        problems.append(f"rope scaling {scaling or rope} is set (the architecture uses plain RoPE)")
    theta = rope.get("rope_theta", d.get("rope_theta"))
    if theta is None:
        problems.append("no rope_theta (neither top-level nor in rope_parameters)")
    try:
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        kv = int(d.get("num_key_value_heads") or heads)
        head_dim = d.get("head_dim") or hidden // heads
        if head_dim * heads != hidden:
            problems.append(f"head_dim {head_dim} x {heads} heads != hidden_size {hidden}")
        vocab = int(d["vocab_size"])
        cfg_kw = dict(
            n_layer=int(d["num_hidden_layers"]),
            dim=hidden,
            n_head=heads,
            n_kv_head=kv,
            ffn_dim=int(d["intermediate_size"]),
            vocab_size=max(vocab, 50304) if (pad_vocab and vocab == GPT2_VOCAB) else vocab,
            context_length=int(d.get("max_position_embeddings", 1024)),
            rope_theta=float(theta or 0.0),
            norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            init_std=float(d.get("initializer_range", 0.02)),
        )
    except KeyError as e:
        raise UserError(f"{source}: missing required key {e.args[0]!r}") from None
    if problems:
        raise UserError(f"{source}: not the DMaS-LLaMa-Lite architecture: " + "; ".join(problems))
    return ModelConfig(**cfg_kw)


def read_config(path: str | os.PathLike, pad_vocab: bool = True) -> ModelConfig:
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: no config.json (is {path} a Hugging Face model directory?)")
    try:
        d = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path}: not valid JSON ({e})") from None
    return config_from_hf_dict(d, str(cfg_path), pad_vocab)


# ---------------------------------------------------------------- loading
def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of an HF directory, checked to exist."""
    path = Path(path)
    index = path / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index}: unreadable shard index ({e})") from None
        files = [path / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise UserError(f"{f}: shard listed in {SAFE_INDEX} is missing")
        return files
    single = path / SAFE_SINGLE
    if single.is_file():
        return [single]
    raise UserError(f"{path}: no {SAFE_SINGLE} or {SAFE_INDEX} (only safetensors weights are read)")


def _file_tensors(files: list[Path]):
    """(file, hf_name, shape, copy_into) for every tensor of the files, in file order."""
    for f in files:
        with SafetensorsReader(f) as st:
            for key in st.keys():
                yield f, key, st.entries[key].shape, lambda out, st=st, key=key: st.read_into(key, out)


def _model_tensors(hf_model):
    for k, v in hf_model.state_dict().items():
        yield "<model>", k, tuple(v.shape), lambda out, v=v: out.copy_(v)


def _load_into(model: Transformer, tensors, source: str) -> None:
    """Copy (file, hf_name, shape, copy_into) items into `model`, padding vocab rows; check completeness."""
    reverse = {v: k for k, v in name_map(model.cfg.n_layer).items()}
    params = dict(model.named_parameters())
    seen = set()
    with torch.no_grad():
        for f, key, shape, copy_into in tensors:
            if key.endswith("rotary_emb.inv_freq"):
                continue
            ours = reverse.get(key)
            if ours is None:
                raise UserError(f"{f}: unexpected tensor {key!r} for this architecture")
            p = params[ours]
            if ours in VOCAB_ROWS and len(shape) == 2 and shape[0] <= p.shape[0] and shape[1:] == p.shape[1:]:
                copy_into(p[: shape[0]])  # rows are contiguous: read straight into the parameter
                p[shape[0]:].zero_()
            elif shape == tuple(p.shape):
                copy_into(p)
            else:
                raise UserError(f"{f}: tensor {key} has shape {list(shape)}, config says {list(p.shape)}")
            seen.add(ours)
    missing = sorted(set(params) - seen)
    if missing:
        names = [name_map(model.cfg.n_layer)[m] for m in missing[:3]]
        raise UserError(f"{source}: {len(missing)} tensors missing from the weights, e.g. {names}")


def empty_model(cfg: ModelConfig, dtype: torch.dtype | None = None, device="cpu") -> Transformer:
    """A Transformer with uninitialised parameters allocated once, directly in `dtype` on `device`."""
    with torch.device("meta"):
        model = Transformer(cfg)
    if dtype is not None:
        model = model.to(dtype)  # on meta: no memory
    return model.to_empty(device=device)


def from_hf(path_or_model, dtype: torch.dtype | None = None, device="cpu", pad_vocab: bool = True) -> Transformer:
    """Our model from an HF directory (or a LlamaForCausalLM instance).

    Parameters are allocated once (uninitialised, in `dtype` on `device`) and each is filled by
    reading its bytes from the safetensors files into it (`safetensors_io`, no memory map), so
    peak memory is one model plus at most one tensor (a cast or device copy).
    `pad_vocab` pads 50257 rows back to 50304 with zeros (as in training); logits of the
    padding ids are then 0 and `generate` never picks them.
    """
    if isinstance(path_or_model, (str, os.PathLike)):
        path = Path(path_or_model)
        if not path.is_dir():
            raise UserError(f"{path}: no such model directory")
        cfg = read_config(path, pad_vocab)
        tensors = _file_tensors(weight_files(path))
        source = str(path)
    else:
        hf_model = path_or_model
        cfg = config_from_hf_dict(hf_model.config.to_dict(), "model config", pad_vocab)
        tensors = _model_tensors(hf_model)
        source = "model"
    model = empty_model(cfg, dtype, device)
    _load_into(model, tensors, source)
    return model


def as_transformers(model: Transformer, hf_dir: str | os.PathLike | None = None):
    """A transformers `LlamaForCausalLM` that shares `model`'s parameters (no copy, same device and
    dtype): one set of weights serves both our code and lm-eval.

    With `hf_dir`, its config.json and generation_config.json are used, exactly as
    `from_pretrained(hf_dir)` would (the model's vocabulary must then be the directory's, i.e.
    loaded with `pad_vocab=False`); otherwise the config is derived from ours.
    """
    from transformers import AutoConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if hf_dir is not None:
        hf_cfg = AutoConfig.from_pretrained(str(hf_dir))
    else:
        hf_cfg = LlamaConfig(**config_to_hf_dict(model.cfg, vocab_size=model.cfg.vocab_size))
    if hf_cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"config vocab {hf_cfg.vocab_size} != model vocab {model.cfg.vocab_size} "
                         "(load with pad_vocab=False)")
    hf_cfg.dtype = dtype
    with torch.device("meta"):
        hf = LlamaForCausalLM(hf_cfg)
    names = name_map(model.cfg.n_layer)
    hf.load_state_dict({names[k]: v for k, v in model.state_dict().items()}, assign=True, strict=True)
    if hasattr(hf.model, "rotary_emb"):  # its buffers were made on meta: build it again, as from_pretrained does
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf_cfg).to(device)
    if hf_dir is not None and (Path(hf_dir) / "generation_config.json").is_file():
        hf.generation_config = GenerationConfig.from_pretrained(str(hf_dir))
    return hf.eval()


# ---------------------------------------------------------------- saving
def _hf_views(model: Transformer, vocab_size: int = GPT2_VOCAB) -> dict:
    """HF name -> the parameter itself (vocab rows sliced): views, no copies, on the model's device."""
    names = name_map(model.cfg.n_layer)
    return {names[ours]: (p.detach()[:vocab_size] if ours in VOCAB_ROWS else p.detach())
            for ours, p in model.state_dict().items()}


def hf_state_dict(model: Transformer, dtype: torch.dtype | None = None, vocab_size: int = GPT2_VOCAB) -> dict:
    """The HF state dict as CPU tensors (vocab sliced to `vocab_size`; cast to `dtype`)."""
    return {k: (t if dtype is None else t.to(dtype)).contiguous().cpu()
            for k, t in _hf_views(model, vocab_size).items()}


def to_hf(model: Transformer, dtype: torch.dtype | None = None):
    """An in-memory transformers LlamaForCausalLM with our weights (vocab sliced to 50257)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(**config_to_hf_dict(model.cfg))
    with torch.device("meta"):
        hf = LlamaForCausalLM(hf_cfg)
    hf.load_state_dict(hf_state_dict(model, dtype), assign=True, strict=True)
    if hasattr(hf.model, "rotary_emb"):  # its buffers were made on meta: build it again on CPU
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf_cfg)
    return hf.eval()


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_hf(
    model: Transformer,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None = torch.float32,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write an HF directory that `AutoModelForCausalLM`/`AutoTokenizer` load offline.

    Shards are cut by `huggingface_hub.split_torch_state_dict_into_shards` (as `save_pretrained`
    does) and written tensor by tensor (`safetensors_io.write_safetensors`): the export holds no
    second copy of the weights, not even when it casts them (--dtype bfloat16 of a float32 model).
    Written into a temporary sibling and renamed into place: an interrupted export never
    leaves a half-written directory behind. `out_dir` must be new or empty; with `overwrite`,
    an earlier export (`is_export_dir`) is replaced in one atomic step. Anything else there is
    refused (`UserError`) before any work; a full disk is `DiskFull`, and the old export stays.
    """
    views = _hf_views(model)  # the parameters themselves (vocab rows sliced), not copies
    out_dtype = dtype or next(iter(views.values())).dtype
    return write_hf_dir(model.cfg, {k: tuple(t.shape) for k, t in views.items()}, out_dtype,
                         lambda name: views[name].to(device="cpu", dtype=out_dtype).contiguous(), out_dir,
                         max_shard_bytes, overwrite)


def write_hf_dir(cfg: ModelConfig, shapes: dict, out_dtype: torch.dtype, tensor, out_dir,
                 max_shard_bytes: int = MAX_SHARD_BYTES, overwrite: bool = False) -> Path:
    """An HF directory (atomically) of the tensors `shapes` names (HF name -> shape), each asked of
    `tensor(name)` when it is written, in `out_dtype`; config, generation config, tokenizer files.
    `out_dir` must be new or empty; with `overwrite`, an earlier export is replaced (`save_hf`)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    out_dir = Path(out_dir)
    sizing = {k: torch.empty(s, dtype=out_dtype, device="meta") for k, s in shapes.items()}
    split = split_torch_state_dict_into_shards(sizing, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_bytes)
    with atomic_dir(out_dir, **export_target(overwrite)) as tmp:
        for fname, names in split.filename_to_tensors.items():
            write_safetensors(tmp / fname, {k: (out_dtype, shapes[k]) for k in names}, tensor, {"format": "pt"})
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        hf_cfg = config_to_hf_dict(cfg)
        hf_cfg["torch_dtype"] = _torch_dtype_name(out_dtype)
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
        gen = {"bos_token_id": EOT, "eos_token_id": EOT, "pad_token_id": EOT}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        write_tokenizer_files(tmp)
    return out_dir


def write_tokenizer_files(out_dir: Path) -> None:
    """tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
    tok = hf_tokenizer()
    tok.save_pretrained(str(out_dir))
    shutil.copyfile(ENCODER_JSON, out_dir / "vocab.json")
    shutil.copyfile(VOCAB_BPE, out_dir / "merges.txt")
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tc_path = out_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    tc.update(special)
    # A class that transformers 4.x and 5.x both resolve to a tokenizer.json-backed GPT-2 tokenizer.
    tc.update({"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False})
    tc.pop("backend", None)
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def foreign_to_export(path: str | os.PathLike) -> str:
    """What in a directory `save_hf` did not write ("" when nothing: an earlier export). An export
    holds only its files (`EXPORT_FILES`, weight shards) and a config.json with our architecture
    and our <|endoftext|> bos/eos (a released checkpoint says 1/2)."""
    p = Path(path)
    foreign = sorted(e.name for e in p.iterdir()
                     if e.is_symlink() or not e.is_file() or not (e.name in EXPORT_FILES or _SHARD_RE.match(e.name)))
    if foreign:
        return ", ".join(foreign[:3]) + (f", ... ({len(foreign)} entries)" if len(foreign) > 3 else "")
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return "no readable config.json of an export"
    if not (isinstance(cfg, dict) and cfg.get("architectures") == ["LlamaForCausalLM"]
            and cfg.get("bos_token_id") == EOT and cfg.get("eos_token_id") == EOT):
        return "a config.json this tool did not write"
    return ""


def is_export_dir(path: str | os.PathLike) -> bool:
    """A directory that `save_hf` wrote (and nothing else wrote into)."""
    return Path(path).is_dir() and not foreign_to_export(path)


def export_target(overwrite: bool) -> dict:
    """`atomic_dir` / `check_new_dir` arguments for an export directory."""
    if overwrite:
        return {"replace": lambda p: foreign_to_export(p) or True,
                "hint": "only an earlier export is replaced: move these files away or export elsewhere"}
    return {"hint": "choose another --out, or pass --overwrite to replace an earlier export"}


def is_hf_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and ((p / SAFE_SINGLE).is_file() or (p / SAFE_INDEX).is_file())
