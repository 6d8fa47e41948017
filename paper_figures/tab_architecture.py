"""Architecture and training hyperparameters of each preset, generated from the code's presets
(dmas_repro.model.transformer.PRESETS and dmas_repro.train.config.PRESETS), never typed by hand."""

from __future__ import annotations

import pandas as pd


def model_rows() -> dict[str, dict]:
    import torch

    from dmas_repro.model.transformer import PRESETS, Transformer

    out = {}
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            m = Transformer(cfg)
        out[name] = {
            "layers": cfg.n_layer, "hidden size": cfg.dim, "query heads": cfg.n_head, "KV heads (GQA)": cfg.n_kv_head,
            "head dim": cfg.head_dim, "SwiGLU size": cfg.ffn_dim, "vocabulary (padded)": cfg.vocab_size,
            "context": cfg.context_length, "RoPE theta": cfg.rope_theta, "RMSNorm eps": cfg.norm_eps,
            "init std": cfg.init_std, "parameters": m.num_params(),
            "parameters w/o embeddings": m.num_params(exclude_embeddings=True),
            "train FLOPs/token": m.flops_per_token(),
        }
    return out


def training_rows() -> dict[str, dict]:
    from dmas_repro.train.config import PRESETS, TrainConfig

    out = {}
    for name, over in PRESETS.items():
        c = TrainConfig(**over)
        seq = c.resolved_seq_len()
        out[name] = {
            "model preset": c.model, "data": c.data_source, "sequence length": seq,
            "tokens per step": c.global_batch_tokens, "sequences per step": c.global_batch_tokens // seq,
            "micro-batch": c.micro_batch, "steps": c.end_step(), "schedule length": c.total_steps,
            "tokens (total)": c.end_step() * c.global_batch_tokens, "peak LR": c.lr, "final LR": c.min_lr,
            "warmup steps": c.warmup_steps, "AdamW betas": f"({c.beta1}, {c.beta2})", "AdamW eps": c.eps,
            "weight decay": c.weight_decay, "grad clip": c.grad_clip, "seed": c.seed,
        }
    return out


def table(ctx=None) -> pd.DataFrame:
    """One column per training preset: its model's architecture above its recipe."""
    rows = {f"model: {k}": v for k, v in model_rows().items()}
    models = pd.DataFrame(rows)
    tr = pd.DataFrame({f"training: {k}": v for k, v in training_rows().items()})
    # one column per training preset, its model's architecture above its recipe
    cols = {}
    for name, col in tr.items():
        arch = models[f"model: {col['model preset']}"]
        cols[name.removeprefix("training: ")] = pd.concat([arch, col.drop("model preset")])
    return pd.DataFrame(cols).map(_fmt)


def _fmt(v):
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3g}"
    return v


def make(ctx) -> None:
    from dmas_repro.model import transformer
    from dmas_repro.train import config

    ctx.use(transformer.__file__, config.__file__)
    ctx.save_table(table(ctx), caption="Architecture and training recipe per preset (from dmas_repro presets).")
