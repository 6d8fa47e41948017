"""Speed benchmarks: training steps against transformers' LlamaForCausalLM, and evaluation time.

`dmas-repro bench train` (also `scripts/bench_train.py`) times warm optimizer steps (forward,
backward, AdamW) of our model, eager and `torch.compile`d, and of `LlamaForCausalLM` with the same
configuration, weights, dtype, data and optimizer, alternating between them in one process so
that changing load on the machine hits every variant alike. It reports tokens/s (best and median
over rounds), MFU, peak memory and `ratio_vs_hf` = best ours / best HF tokens/s.

`dmas-repro bench eval` (also `scripts/bench_eval.py`) times what evaluating one checkpoint costs:
loading it and computing validation loss over a fixed token budget, by batch size, and lm-eval
log-likelihood throughput by batch size on the offline HellaSwag slice when that task is available.

MFU convention: model FLOPs per token from `Transformer.flops_per_token(seq_len)` = 6 N + 12 L d T
(N = parameters except the input embedding; attention counted over the full T x T square, not
causally halved; activation recomputation not counted), divided by the device's peak: dense bf16
from a table for known GPUs, otherwise a measured matmul peak in the benchmark's dtype.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import UserError

VARIANTS = ("ours-eager", "ours-compile", "hf", "hf-compile")
DEFAULT_VARIANTS = ("ours-eager", "ours-compile", "hf")

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by substring of torch.cuda.get_device_name().
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12 (matched first below)
    "A100": 312e12,
    "A6000": 155e12,  # RTX A6000, the authors' GPU
    "L40S": 362e12,
    "A10G": 70e12,
    "4090": 165e12,
}


# ---------------------------------------------------------------- configuration
@dataclass
class TrainBenchConfig:
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # ModelConfig overrides, e.g. {"n_layer": 2}
    micro_batch: int = 8
    seq_len: int | None = None  # default: the model's context length
    steps: int = 3  # timed optimizer steps per round and variant
    warmup: int = 2  # untimed steps per variant (after compilation)
    rounds: int = 3  # every round times each variant once, in turn
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU; or float32 | bf16-autocast | bfloat16
    ce_chunk_tokens: int | None = None  # ours: None = the model's default for the device
    activation_checkpointing: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    seed: int = 1337
    peak_flops: float | None = None  # override the device peak used for MFU

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: CUDA is not available on this machine")
        return self.device

    def resolved_dtype(self, device: str) -> str:
        if self.dtype == "auto":
            return "bf16-autocast" if device.startswith("cuda") else "float32"
        if self.dtype not in ("float32", "bf16-autocast", "bfloat16"):
            raise UserError(f"--dtype {self.dtype!r}: choose float32, bf16-autocast or bfloat16")
        return self.dtype


def parse_overrides(items: list[str] | None) -> dict:
    """`key=value` strings -> ModelConfig overrides with the field's type."""
    from .model import ModelConfig

    types = {f.name: f.type for f in fields(ModelConfig)}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--model {item!r}: expected key=value")
        if key not in types:
            raise UserError(f"--model {key!r}: unknown model field; known: {sorted(types)}")
        try:
            out[key] = float(value) if types[key] in ("float", float) else int(value)
        except ValueError:
            raise UserError(f"--model {item!r}: {value!r} is not a number") from None
    return out


def default_ce_chunk_tokens(device: str) -> int:
    """The fused chunked cross-entropy chunk our trainer uses by default (measured; BENCHMARKS.md)."""
    return 1024 if device.startswith("cuda") else 512


# ---------------------------------------------------------------- machine facts
def machine_info(device: str) -> dict:
    import torch

    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak_flops(device: str, dtype, n: int | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matmul in `dtype` on `device` (the CPU's practical peak)."""
    import torch

    n = n or (8192 if device.startswith("cuda") else 1536)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak_flops(device: str, dtype_name: str) -> tuple[float, str]:
    import torch

    if device.startswith("cuda") and dtype_name in ("bf16-autocast", "bfloat16"):
        name = torch.cuda.get_device_name(device)
        if "H100" in name and "PCIe" in name:
            return 756e12, f"table: {name} dense bf16"
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak, f"table: {name} dense bf16"
    mm_dtype = torch.float32 if dtype_name == "float32" else torch.bfloat16
    return matmul_peak_flops(device, mm_dtype), f"measured: best {str(mm_dtype)[6:]} square matmul on {device}"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class _PeakRSS:
    """Samples this process's resident memory every 2 ms while active (CPU peak memory)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


# ---------------------------------------------------------------- the training benchmark
class _Variant:
    """One model + AdamW + a step function; all variants share weights at start, data and settings."""

    def __init__(self, name: str, cfg, weights: dict, bc: TrainBenchConfig, device: str, dtype_name: str):
        import torch

        from . import hf
        from .model import Transformer

        self.name, self.device = name, device
        param_dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
        self.autocast = dtype_name == "bf16-autocast"
        if name.startswith("ours"):
            model = Transformer(cfg)
            model.load_state_dict(weights["ours"])
            model.ce_chunk_tokens = (
                default_ce_chunk_tokens(device) if bc.ce_chunk_tokens is None else bc.ce_chunk_tokens
            )
            model.activation_checkpointing = bc.activation_checkpointing
            self.attn = "sdpa (enable_gqa)"
        else:
            from transformers import LlamaConfig, LlamaForCausalLM

            # pad_token_id None: with it, nn.Embedding(padding_idx=...) would never train that row; ours does
            hf_cfg = LlamaConfig(**{**hf.config_to_hf_dict(cfg, vocab_size=cfg.vocab_size), "pad_token_id": None})
            self.attn = _hf_best_attention(device, param_dtype if not self.autocast else torch.bfloat16)
            hf_cfg._attn_implementation = self.attn
            hf_cfg.use_cache = False
            model = LlamaForCausalLM(hf_cfg)
            model.load_state_dict(weights["hf"], strict=True)
            if bc.activation_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model.to(device=device, dtype=param_dtype).train()
        fused = device.startswith("cuda") or device == "cpu"
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=fused
        )
        self.fn = self.model
        if name.endswith("compile"):
            self.fn = torch.compile(self.model, mode=bc.compile_mode, backend=bc.compile_backend)
        self.is_hf = name.startswith("hf")

    def step(self, inp, tgt):
        import torch

        with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.autocast):
            if self.is_hf:
                loss = self.fn(input_ids=inp, labels=tgt, shift_labels=tgt, use_cache=False).loss
            else:
                loss = self.fn(inp, targets=tgt)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


def _hf_best_attention(device: str, dtype) -> str:
    import torch

    if device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16):
        try:
            from transformers.utils import is_flash_attn_2_available

            if is_flash_attn_2_available():
                return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def run_train_bench(bc: TrainBenchConfig, log=print) -> dict:
    import torch

    from . import hf
    from .model import Transformer, preset

    unknown = [v for v in bc.variants if v not in VARIANTS]
    if unknown or not bc.variants:
        raise UserError(f"--variants {','.join(bc.variants)}: choose from {','.join(VARIANTS)}")
    if min(bc.micro_batch, bc.steps, bc.rounds) < 1 or bc.warmup < 0:
        raise UserError("micro-batch, steps and rounds must be >= 1, warmup >= 0")
    device = bc.resolved_device()
    dtype_name = bc.resolved_dtype(device)
    cfg = preset(bc.preset).with_(**bc.model)
    T = bc.seq_len or cfg.context_length
    if T > cfg.context_length:
        raise UserError(f"--seq-len {T} exceeds the model's context length {cfg.context_length}")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(bc.seed)
    with torch.device("cpu"):
        reference = Transformer(cfg)
    weights = {"ours": reference.state_dict(), "hf": hf.hf_state_dict(reference, vocab_size=cfg.vocab_size)}
    flops_per_token = reference.flops_per_token(T, training=True)
    params = reference.num_params()
    del reference
    gen = torch.Generator().manual_seed(bc.seed)
    n_batches = bc.warmup + bc.steps
    data = torch.randint(0, min(cfg.vocab_size, 50257), (n_batches, bc.micro_batch, T + 1), generator=gen)
    batches = [(d[:, :-1].contiguous().to(device), d[:, 1:].contiguous().to(device)) for d in data]
    tokens_per_step = bc.micro_batch * T

    peak, peak_source = (bc.peak_flops, "given") if bc.peak_flops else device_peak_flops(device, dtype_name)
    log(f"bench train: preset {bc.preset} {bc.model or ''} B={bc.micro_batch} T={T} {dtype_name} on {device}; "
        f"{params / 1e6:.1f}M params, {flops_per_token / 1e6:.1f} MFLOP/token, peak {peak / 1e12:.3f} TFLOP/s "
        f"({peak_source})")

    variants, results = [], {}
    for name in bc.variants:
        v = _Variant(name, cfg, weights, bc, device, dtype_name)
        t0 = time.perf_counter()
        losses = [v.step(inp, tgt) for inp, tgt in batches[: max(bc.warmup, 1)]]  # the first step compiles
        first_loss = losses[0].item()
        _sync(device)
        warm_s = time.perf_counter() - t0
        variants.append(v)
        results[name] = {"attention": v.attn, "warmup_s": round(warm_s, 3), "first_loss": first_loss,
                         "rounds_tokens_per_s": [], "peak_mem_bytes": 0}
        log(f"  {name:<13} warm-up {warm_s:.1f}s (loss {first_loss:.4f})")

    for r in range(bc.rounds):
        for v in variants:
            res = results[v.name]
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            with _PeakRSS() as mem:
                _sync(device)
                t0 = time.perf_counter()
                for inp, tgt in batches[bc.warmup :] if bc.warmup else batches:
                    loss = v.step(inp, tgt)
                _sync(device)
                dt = time.perf_counter() - t0
            res["last_loss"] = loss.item()
            if device.startswith("cuda"):
                res["peak_mem_bytes"] = max(res["peak_mem_bytes"], torch.cuda.max_memory_allocated(device))
            else:
                res["peak_mem_bytes"] = max(res["peak_mem_bytes"], mem.peak - mem.start)
            res["rounds_tokens_per_s"].append(round(tokens_per_step * bc.steps / dt, 2))
            log(f"  round {r + 1}/{bc.rounds} {v.name:<13} {tokens_per_step * bc.steps / dt:12,.0f} tokens/s")

    for res in results.values():
        tps = res["rounds_tokens_per_s"]
        res["tokens_per_s"] = max(tps)
        res["tokens_per_s_median"] = statistics.median(tps)
        res["mfu"] = res["tokens_per_s"] * flops_per_token / peak
    ours = {k: v["tokens_per_s"] for k, v in results.items() if k.startswith("ours")}
    theirs = {k: v["tokens_per_s"] for k, v in results.items() if k.startswith("hf")}
    out = {
        "benchmark": "train",
        "config": {**asdict(bc), "variants": list(bc.variants), "seq_len": T, "dtype": dtype_name,
                   "device": device, "model_config": cfg.to_dict(),
                   "ce_chunk_tokens_ours": variants[0].model.ce_chunk_tokens if ours else None},
        "machine": machine_info(device),
        "params": params,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": flops_per_token,
        "flop_convention": "6N + 12*n_layer*dim*seq_len per token (N = params without the input embedding; "
                           "full TxT attention; recomputation not counted)",
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "peak_mem_kind": "torch.cuda.max_memory_allocated" if device.startswith("cuda")
        else "process RSS increase during the timed steps (sampled every 2 ms)",
        "variants": results,
        "best_ours": max(ours, key=ours.get) if ours else None,
        "best_hf": max(theirs, key=theirs.get) if theirs else None,
        "ratio_vs_hf": (max(ours.values()) / max(theirs.values())) if ours and theirs else None,
    }
    return out


def format_train(res: dict) -> str:
    c = res["config"]
    lines = [f"{c['preset']} {c['model'] or ''} B={c['micro_batch']} T={c['seq_len']} {c['dtype']} on "
             f"{res['machine'].get('gpu') or res['machine']['cpu']} ({res['machine']['device']})",
             f"{'variant':<13} {'tokens/s':>12} {'median':>12} {'MFU':>7} {'peak mem':>10}  attention"]
    for name, v in res["variants"].items():
        lines.append(f"{name:<13} {v['tokens_per_s']:12,.0f} {v['tokens_per_s_median']:12,.0f} "
                     f"{100 * v['mfu']:6.2f}% {v['peak_mem_bytes'] / 2**20:8.0f}MiB  {v['attention']}")
    if res["ratio_vs_hf"] is not None:
        lines.append(f"ratio_vs_hf = {res['ratio_vs_hf']:.3f} ({res['best_ours']} / {res['best_hf']})")
    return "\n".join(lines)


def _write_json(path: str | None, obj: dict) -> None:
    if not path:
        return
    from .runio import atomic_write_text

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- CLI
def _cmd_train(args) -> int:
    bc = TrainBenchConfig(
        preset=args.preset, model=parse_overrides(args.model), micro_batch=args.micro_batch,
        seq_len=args.seq_len, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        variants=tuple(v for v in args.variants.split(",") if v), device=args.device, dtype=args.dtype,
        ce_chunk_tokens=args.ce_chunk_tokens, activation_checkpointing=args.activation_checkpointing,
        compile_mode=args.compile_mode, compile_backend=args.compile_backend, seed=args.seed,
        peak_flops=args.peak_flops,
    )
    res = run_train_bench(bc)
    print(format_train(res))
    _write_json(args.json, res)
    return 0


def add_train_arguments(p) -> None:
    p.add_argument("--preset", default="tiny", help="model preset (tiny, paper)")
    p.add_argument("--model", action="append", metavar="KEY=VALUE",
                   help="override a model config field, e.g. --model n_layer=2 (repeatable)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None, help="default: the model's context length")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per round and variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each times every variant once, in turn")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list from {','.join(VARIANTS)}")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bf16-autocast | bfloat16")
    p.add_argument("--ce-chunk-tokens", type=int, default=None,
                   help="ours: fused chunked cross-entropy chunk (0 = plain; default per device)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute activations (both)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default, max-autotune, ...)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: trace only)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (default: table "
                   "for known GPUs in bf16, else a measured matmul peak)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full result as JSON")


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks: training steps vs transformers, evaluation time")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    t = bsub.add_parser("train", help="tokens/s, MFU, memory of training steps: ours (eager, compiled) vs HF")
    add_train_arguments(t)
    t.set_defaults(func=_cmd_train)
