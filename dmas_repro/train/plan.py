"""`dmas-repro train --plan`: what a config costs, without running it."""

from __future__ import annotations

from ..core.errors import UserError
from ..core.runtime import GPU_PEAK_BF16
from .config import TrainConfig

PLAN_GPUS = ("A6000", "A100", "H100")


def plan(cfg: TrainConfig, mfu: float = 0.4, world_sizes: tuple[int, ...] = (1, 2, 8, 16)) -> dict:
    """Tokens, data on disk, FLOPs, GPU-hours at `mfu` of the dense bf16 peak, checkpoint sizes,
    and the micro-batch and grad accumulation per world size (None where the batch does not split)."""
    import torch

    from ..model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg.model_config())
    seq = cfg.resolved_seq_len()
    steps = cfg.end_step()
    tokens = steps * cfg.global_batch_tokens
    fpt = model.flops_per_token(seq)
    n = model.num_params()
    accum, micro = {}, {}
    for w in world_sizes:
        try:
            b = cfg.batch_layout(w)
            accum[w], micro[w] = b.grad_accum, b.micro_batch
        except UserError:
            accum[w] = micro[w] = None
    return {
        "steps": steps, "tokens_per_step": cfg.global_batch_tokens, "tokens": tokens,
        "train_data_bytes_uint16": 2 * tokens, "params": n, "flops_per_token": fpt, "flops": fpt * tokens,
        "mfu_assumed": mfu,
        "gpu_hours": {g: fpt * tokens / (GPU_PEAK_BF16[g] * mfu) / 3600 for g in PLAN_GPUS},
        "gpu_peak_bf16_flops": {g: GPU_PEAK_BF16[g] for g in PLAN_GPUS},
        "weights_fp32_bytes": 4 * n, "checkpoint_with_optimizer_bytes": 12 * n,
        "grad_accum_by_world_size": accum, "micro_batch_by_world_size": micro, "micro_batch": cfg.micro_batch,
        "seq_len": seq,
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def format_plan(p: dict, preset: str) -> str:
    lines = [f"plan for preset {preset}: {p['steps']:,} steps x {p['tokens_per_step']:,} tokens = "
             f"{p['tokens']:,} tokens ({p['tokens'] / 1e9:.2f}B)",
             f"  training data on disk (uint16)   {_gb(p['train_data_bytes_uint16'])}",
             f"  parameters                       {p['params']:,}",
             f"  FLOPs/token (6N + attention)     {p['flops_per_token']:.4g}",
             f"  total training FLOPs             {p['flops']:.4g}"]
    for g, h in p["gpu_hours"].items():
        hours = f"{h:,.0f}" if h >= 10 else f"{h:.2g}"
        lines.append(f"  GPU-hours on {g:<6} at {100 * p['mfu_assumed']:.0f}% MFU  {hours} "
                     f"(peak {p['gpu_peak_bf16_flops'][g] / 1e12:.0f} TFLOP/s bf16)")
    lines.append(f"  weights fp32 / full checkpoint   {_gb(p['weights_fp32_bytes'])} / "
                 f"{_gb(p['checkpoint_with_optimizer_bytes'])}")
    micro = p["micro_batch_by_world_size"]
    acc = ", ".join(f"{w} GPUs: {micro[w]} x {a}" if a else f"{w} GPUs: -"
                    for w, a in p["grad_accum_by_world_size"].items())
    lines.append(f"  micro-batch x accumulation (micro_batch {p['micro_batch']}, seq {p['seq_len']})  {acc}")
    return "\n".join(lines)
