"""The one-layer member of the tiny family on 16-token windows that the training tests share: a step
takes milliseconds. `micro(...)` gives its KEY=VALUE overrides with some changed."""

MICRO = {"model.n_layer": 1, "model.dim": 32, "model.n_head": 2, "model.n_kv_head": 1, "model.ffn_dim": 64,
         "model.context_length": 32, "seq_len": 16, "micro_batch": 4, "global_batch_tokens": 256,
         "total_steps": 8, "warmup_steps": 2, "lr": "1e-2", "min_lr": "1e-3", "log_every": 1, "val_every": 3,
         "val_tokens": 160, "sample_every": 0, "ckpt_every": 0, "milestones": "none", "export_hf": "false",
         "prepare_data_if_missing": "false", "keep_last": 3}


def micro(**changes) -> list[str]:
    """MICRO as overrides, with `changes` (keys with dots spelled with double underscores)."""
    merged = {**MICRO, **{k.replace("__", "."): v for k, v in changes.items()}}
    return [f"{k}={v}" for k, v in merged.items()]
