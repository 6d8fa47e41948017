"""The pretraining workload: a `Transformer` on prepared token shards (`dmas-repro train`'s first
stage, `stages.pretrain_stage`).

`build_pretrain(ctx)` is what the loop trains (it prepares the data first when the config asks for
it and it is missing); `export_hf` writes a checkpoint as the released format.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..core.errors import UserError
from . import distributed as D
from .workload import LoopContext, Workload, batch_to, lm_loss

log = logging.getLogger(__name__)


def ensure_data(cfg, info: D.DistInfo) -> None:
    """Prepare `cfg.data_source` into `cfg.data_dir` on rank 0 when it has no manifest yet."""
    from ..data.prepare import PrepareConfig, prepare
    from ..data.shards import MANIFEST

    if (Path(cfg.data_dir) / MANIFEST).is_file():
        return
    if info.is_main:
        log.info(f"preparing {cfg.data_source} data into {cfg.data_dir} ...")
        prepare(PrepareConfig(source=cfg.data_source), cfg.data_dir)
    D.barrier(info)


def build_pretrain(ctx: LoopContext) -> Workload:
    """The pretraining workload: a `Transformer` on the prepared token shards."""
    from ..data import shards
    from ..data.batches import TokenBatches, eval_batches, val_window_count
    from ..model.transformer import Transformer

    cfg, info = ctx.cfg, ctx.dist
    if cfg.prepare_data_if_missing:
        ensure_data(cfg, info)
    shards.read_manifest(cfg.data_dir)  # missing data / bad shards: one clear error before any step
    train_tokens = shards.open_split(cfg.data_dir, "train")
    val_tokens = shards.open_split(cfg.data_dir, "val")
    torch.manual_seed(cfg.seed)
    with torch.device(ctx.device):
        model = Transformer(cfg.model_config())
    if cfg.init_from:
        from ..model.weights import load_any

        src = load_any(cfg.init_from, device=ctx.device, dtype=torch.float32)
        if src.cfg != model.cfg:
            raise UserError(f"init_from {cfg.init_from}: its architecture differs from model {cfg.model}")
        model.load_state_dict(src.state_dict())
        del src
    model.ce_chunk_tokens = cfg.ce_chunk_tokens
    if cfg.activation_checkpointing:
        model.activation_checkpointing = True
    batches = TokenBatches(train_tokens, ctx.seq_len, ctx.micro_batch, ctx.grad_accum, info.rank,
                           info.world_size, cfg.shuffle, cfg.seed)
    n_val = val_window_count(val_tokens, ctx.seq_len, cfg.val_tokens)
    if n_val < cfg.val_tokens // ctx.seq_len:
        log.warning(f"the val split of {cfg.data_dir} holds {len(val_tokens):,} tokens: validating on "
                    f"{n_val * ctx.seq_len:,} instead of val_tokens {cfg.val_tokens:,}")

    @torch.no_grad()
    def evaluate(m: torch.nn.Module, lctx: LoopContext) -> dict:
        total = torch.zeros(2, device=lctx.device)  # (sum of token losses, tokens), all ranks
        for x, y, counts in eval_batches(val_tokens, lctx.seq_len, n_val, lctx.micro_batch, info.rank,
                                         info.world_size):
            with lctx.autocast():
                loss = lm_loss(m, batch_to((x, y), lctx.device)).float()
            if counts:
                total += torch.stack([loss * y.numel(), torch.tensor(float(y.numel()), device=lctx.device)])
        total = D.all_reduce_mean(total, info)  # the ratio of the means is the ratio of the sums
        return {"val_loss": (total[0] / total[1]).item(), "val_loss_tokens": n_val * lctx.seq_len}

    return Workload(model=model, train_batches=batches, tokens_per_step=cfg.global_batch_tokens,
                    evaluate=evaluate, flops_per_token=model.flops_per_token(ctx.seq_len),
                    description={"train_tokens": len(train_tokens), "val_split_tokens": len(val_tokens),
                                 "val_loss_tokens": n_val * ctx.seq_len, "val_windows": n_val,
                                 "params": model.num_params()})


def export_hf(ckpt: Path, out: Path) -> Path:
    """A checkpoint written as a transformers LlamaForCausalLM directory (RUN/hf/: a rerun that
    reaches the end again replaces the run's earlier export, and refuses anything else there)."""
    from ..model import hf
    from ..model.weights import load_model

    return hf.save_hf(load_model(ckpt), out, overwrite=True)
