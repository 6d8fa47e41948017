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
causally halved; activation recomputation not counted), divided by the device's peak
(`dmas_repro.core.runtime.peak_flops`: dense bf16 from a table for known GPUs, otherwise a measured
matmul peak in the benchmark's dtype).
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core import runtime
from ..core.config import opt
from ..core.errors import UserError
from .common import command_line, parse_overrides  # noqa: F401 (parse_overrides: part of this module's API)

log = logging.getLogger(__name__)

VARIANTS = ("ours-eager", "ours-compile", "hf", "hf-compile")
DEFAULT_VARIANTS = ("ours-eager", "ours-compile", "hf")
# A variant may carry options after slashes, to measure one optimization against another in the same run:
# ce<N> (ours: fused chunked cross-entropy chunk, ce0 = plain F.cross_entropy), ac (activation
# checkpointing), foreach (AdamW without the fused kernel). E.g. ours-eager/ce0, ours-eager/ac, hf/foreach.

# ---------------------------------------------------------------- configuration
def _variants(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def _pos_ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise UserError(f"{text!r}: expected comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise UserError(f"{text!r}: expected positive integers")
    return vals


@dataclass
class TrainBenchConfig:
    """`dmas-repro bench train`: its flags are derived from these fields."""

    preset: str = opt("tiny", "model preset (tiny, paper)")
    model: dict = opt(help="override a model config field, e.g. --model n_layer=2 (repeatable)", factory=dict,
                      action="append", metavar="KEY=VALUE", parse=str, convert=lambda items: parse_overrides(items))
    micro_batch: int = opt(8, "sequences per step")
    seq_len: int | None = opt(None, "default: the model's context length")
    steps: int = opt(3, "timed optimizer steps per round and variant")
    warmup: int = opt(2, "untimed steps per variant (after compilation)")
    rounds: int = opt(3, "rounds; each times every variant once, in turn")
    variants: tuple[str, ...] = opt(("ours-eager", "ours-compile", "hf"), "comma list from "
                                    "ours-eager,ours-compile,hf,hf-compile, each with optional /ce<N> /ac /foreach",
                                    parse=_variants)
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, cuda:1")
    dtype: str = opt("auto", "auto (bf16 autocast on CUDA, float32 on CPU) | float32 | bfloat16 (autocast over "
                             "float32 weights, as training)")
    ce_chunk_tokens: int | None = opt(None, "ours: fused chunked cross-entropy chunk (0 = plain; default per device)")
    activation_checkpointing: bool = opt(False, "recompute activations (both models)")
    compile_mode: str | None = opt(None, "torch.compile mode (default, max-autotune, ...)")
    compile_backend: str = opt("inductor", "torch.compile backend (eager: trace only)")
    offload_idle: bool | None = opt(None, "park the idle model + optimizer on the CPU between turns "
                                          "(default: GPUs under 100 GiB)")
    seed: int = opt(1337, "seed of the weights and data")
    peak_flops: float | None = opt(None, "device peak FLOP/s for MFU (default: table for known GPUs in bf16, else a "
                                         "measured matmul peak)")
    threads: int | None = opt(None, "torch CPU threads (default: torch's choice)")

    def resolved_device(self) -> str:
        return str(runtime.resolve_device(self.device))

    def resolved_dtype(self, device: str) -> str:
        name = runtime.dtype_name(self.dtype, device)
        if name not in runtime.TRAIN_DTYPES:
            raise UserError(f"--dtype {self.dtype!r}: choose auto, float32 or bfloat16")
        return name


# ---------------------------------------------------------------- memory
class _PeakRSS:
    """Samples this process's resident memory every 5 ms while active (CPU peak memory)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        return runtime.rss_bytes()

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


# ---------------------------------------------------------------- the training benchmark
@dataclass(frozen=True)
class VariantSpec:
    name: str
    kind: str  # ours | hf
    compiled: bool
    ce_chunk_tokens: int | None  # None: the model's default for the device
    activation_checkpointing: bool
    fused_adamw: bool

    @property
    def family_key(self) -> tuple:
        return (self.kind, self.ce_chunk_tokens, self.activation_checkpointing, self.fused_adamw)


def parse_variant(text: str, bc: TrainBenchConfig) -> VariantSpec:
    base, *opts = text.split("/")
    if base not in VARIANTS:
        raise UserError(f"--variants: {text!r} is not one of {','.join(VARIANTS)} (options: /ce<N>, /ac, /foreach)")
    kind = "hf" if base.startswith("hf") else "ours"
    ce, ac, fused = bc.ce_chunk_tokens, bc.activation_checkpointing, True
    for o in opts:
        if o.startswith("ce") and o[2:].isdigit() and kind == "ours":
            ce = int(o[2:])
        elif o == "ac":
            ac = True
        elif o == "foreach":
            fused = False
        else:
            raise UserError(f"--variants: unknown option {o!r} in {text!r} (ce<N> for ours, ac, foreach)")
    return VariantSpec(text, kind, base.endswith("compile"), ce, ac, fused)


class _Family:
    """One model + AdamW, shared by its eager and compiled variants (the compiled module wraps the same
    parameters). Both families start from the same weights and see the same data and settings."""

    def __init__(self, spec: VariantSpec, cfg, weights: dict, device: str, dtype_name: str):
        import torch

        from ..model import hf
        from ..model.transformer import Transformer, default_ce_chunk_tokens

        kind = spec.kind
        self.kind, self.device = kind, device
        self.ce_chunk_tokens = None
        param_dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
        self.autocast = dtype_name == "bf16-autocast"
        if kind == "ours":
            model = Transformer(cfg)
            model.load_state_dict(weights["ours"])
            ce = spec.ce_chunk_tokens
            self.ce_chunk_tokens = default_ce_chunk_tokens(device.split(":")[0]) if ce is None else ce
            model.ce_chunk_tokens = self.ce_chunk_tokens
            model.activation_checkpointing = spec.activation_checkpointing
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
            if spec.activation_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model.to(device=device, dtype=param_dtype).train()
        self.activation_checkpointing, self.fused_adamw = spec.activation_checkpointing, spec.fused_adamw
        fused = {"fused": True} if spec.fused_adamw and device.split(":")[0] in ("cuda", "cpu") else {"foreach": True}
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **fused
        )
        self.compiled = None
        self.where = device

    def fn(self, compiled: bool, bc: TrainBenchConfig):
        import torch

        if not compiled:
            return self.model
        if self.compiled is None:
            self.compiled = torch.compile(self.model, mode=bc.compile_mode, backend=bc.compile_backend)
        return self.compiled

    def move(self, device: str) -> None:
        """Park the model and optimizer state on `device` (e.g. the CPU while another family runs)."""
        if device == self.where:
            return
        self.model.to(device)
        for state in self.opt.state.values():  # fused AdamW keeps all its state (step too) with the params
            for k, v in state.items():
                if hasattr(v, "to"):
                    state[k] = v.to(device)
        self.where = device


class _Variant:
    def __init__(self, spec: VariantSpec, family: _Family, bc: TrainBenchConfig):
        self.name, self.family = spec.name, family
        self.fn = family.fn(spec.compiled, bc)
        self.is_hf = family.kind == "hf"

    def step(self, inp, tgt):
        import torch

        fam = self.family
        with torch.autocast(fam.device.split(":")[0], dtype=torch.bfloat16, enabled=fam.autocast):
            if self.is_hf:
                loss = self.fn(input_ids=inp, labels=tgt, shift_labels=tgt, use_cache=False).loss
            else:
                loss = self.fn(inp, targets=tgt)
        loss.backward()
        fam.opt.step()
        fam.opt.zero_grad(set_to_none=True)
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


def run_train_bench(bc: TrainBenchConfig) -> dict:
    import torch

    from ..model import hf
    from ..model.transformer import Transformer, preset

    if not bc.variants or len(set(bc.variants)) < len(bc.variants):
        raise UserError(f"--variants {','.join(bc.variants)}: give each of {','.join(VARIANTS)} at most once")
    specs = [parse_variant(v, bc) for v in bc.variants]
    if min(bc.micro_batch, bc.steps, bc.rounds) < 1 or bc.warmup < 0:
        raise UserError("micro-batch, steps and rounds must be >= 1, warmup >= 0")
    device = bc.resolved_device()
    dtype_name = bc.resolved_dtype(device)
    if bc.threads:
        torch.set_num_threads(bc.threads)
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

    machine = runtime.machine_info(device)  # at the start: the load average before our own work
    peak, peak_source = ((bc.peak_flops, "given") if bc.peak_flops
                         else runtime.peak_flops(device, runtime.torch_dtype(dtype_name)))
    log.info(f"bench train: preset {bc.preset} {bc.model or ''} B={bc.micro_batch} T={T} {dtype_name} on {device}; "
        f"{params / 1e6:.1f}M params, {flops_per_token / 1e6:.1f} MFLOP/token, peak {peak / 1e12:.3f} TFLOP/s "
        f"({peak_source})")

    offload = bc.offload_idle
    if offload is None:  # two 1.7B families with AdamW (2 x 27 GB) plus activations do not fit in 80 GB
        offload = device.startswith("cuda") and torch.cuda.get_device_properties(device).total_memory < 100 * 2**30
    families: dict[tuple, _Family] = {}
    variants, results = [], {}

    def activate(fam: _Family) -> None:
        if offload:
            for other in families.values():
                if other is not fam:
                    other.move("cpu")
            fam.move(device)

    for spec in specs:
        name = spec.name
        if spec.family_key not in families:
            if offload:
                for other in families.values():
                    other.move("cpu")
            families[spec.family_key] = _Family(spec, cfg, weights, device, dtype_name)
        v = _Variant(spec, families[spec.family_key], bc)
        activate(v.family)
        t0 = time.perf_counter()
        losses = [v.step(inp, tgt) for inp, tgt in batches[: max(bc.warmup, 1)]]  # the first step compiles
        first_loss = losses[0].item()
        runtime.synchronize(device)
        warm_s = time.perf_counter() - t0
        variants.append(v)
        fam = v.family
        results[name] = {"attention": fam.attn, "ce_chunk_tokens": fam.ce_chunk_tokens,
                         "activation_checkpointing": fam.activation_checkpointing, "fused_adamw": fam.fused_adamw,
                         "warmup_s": round(warm_s, 3), "first_loss": first_loss, "rounds_tokens_per_s": [],
                         "rounds_tokens_per_cpu_s": [],
                         "peak_mem_bytes": 0}
        log.info(f"  {name:<13} warm-up {warm_s:.1f}s (loss {first_loss:.4f})")

    for r in range(bc.rounds):
        for v in variants:
            res = results[v.name]
            activate(v.family)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            with _PeakRSS() as mem:
                runtime.synchronize(device)
                t0, c0 = time.perf_counter(), time.process_time()
                for inp, tgt in batches[bc.warmup :] if bc.warmup else batches:
                    loss = v.step(inp, tgt)
                runtime.synchronize(device)
                dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            res["last_loss"] = loss.item()
            if device.startswith("cuda"):
                res["peak_mem_bytes"] = max(res["peak_mem_bytes"], torch.cuda.max_memory_allocated(device))
            else:
                res["peak_mem_bytes"] = max(res["peak_mem_bytes"], mem.peak - mem.start)
            res["rounds_tokens_per_s"].append(round(tokens_per_step * bc.steps / dt, 2))
            res["rounds_tokens_per_cpu_s"].append(round(tokens_per_step * bc.steps / cpu, 2))
            log.info(f"  round {r + 1}/{bc.rounds} {v.name:<13} {tokens_per_step * bc.steps / dt:12,.0f} tokens/s")

    for res in results.values():
        tps = res["rounds_tokens_per_s"]
        res["tokens_per_s"] = max(tps)
        res["tokens_per_s_median"] = statistics.median(tps)
        res["tokens_per_cpu_s"] = max(res["rounds_tokens_per_cpu_s"])
        res["mfu"] = res["tokens_per_s"] * flops_per_token / peak
    ours = {k: v["tokens_per_s"] for k, v in results.items() if k.startswith("ours")}
    theirs = {k: v["tokens_per_s"] for k, v in results.items() if k.startswith("hf")}
    out = {
        "benchmark": "train",
        "config": {**asdict(bc), "variants": list(bc.variants), "seq_len": T, "dtype": dtype_name,
                   "device": device, "model_config": cfg.to_dict(),
                   "offload_idle": offload},
        "command": command_line(),
        "machine": {**machine, "load_avg_1m_end": runtime.load_average()},
        "params": params,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": flops_per_token,
        "flop_convention": "6N + 12*n_layer*dim*seq_len per token (N = params without the input embedding; "
                           "full TxT attention; recomputation not counted)",
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "peak_mem_kind": "torch.cuda.max_memory_allocated" if device.startswith("cuda")
        else "process RSS increase during the timed steps (sampled every 5 ms)",
        "variants": results,
        "best_ours": max(ours, key=ours.get) if ours else None,
        "best_hf": max(theirs, key=theirs.get) if theirs else None,
        "ratio_vs_hf": (max(ours.values()) / max(theirs.values())) if ours and theirs else None,
        # the same ratio in process CPU time (all threads): steadier than wall time on a shared machine
        "ratio_vs_hf_cpu_time": (max(results[k]["tokens_per_cpu_s"] for k in ours)
                                 / max(results[k]["tokens_per_cpu_s"] for k in theirs)) if ours and theirs else None,
    }
    return out


def format_train(res: dict) -> str:
    c = res["config"]
    w = max(13, *(len(k) for k in res["variants"]))
    lines = [f"{c['preset']} {c['model'] or ''} B={c['micro_batch']} T={c['seq_len']} {c['dtype']} on "
             f"{res['machine'].get('gpu') or res['machine']['cpu']} ({res['machine']['device']})",
             f"{'variant':<{w}} {'tokens/s':>10} {'median':>10} {'tok/CPU-s':>10} {'MFU':>7} {'peak mem':>10}  "
             "attention"]
    for name, v in res["variants"].items():
        lines.append(f"{name:<{w}} {v['tokens_per_s']:10,.0f} {v['tokens_per_s_median']:10,.0f} "
                     f"{v['tokens_per_cpu_s']:10,.0f} {100 * v['mfu']:6.2f}% {v['peak_mem_bytes'] / 2**20:7.0f}MiB  "
                     f"{v['attention']}")
    if res["ratio_vs_hf"] is not None:
        lines.append(f"ratio_vs_hf = {res['ratio_vs_hf']:.3f} ({res['best_ours']} / {res['best_hf']}); "
                     f"in CPU time {res['ratio_vs_hf_cpu_time']:.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the evaluation benchmark
@dataclass
class EvalBenchConfig:
    """`dmas-repro bench eval`: its flags are derived from these fields."""

    checkpoint: str | None = opt(None, "our or HF checkpoint dir (default: a random init of --preset)")
    preset: str = opt("tiny", "model preset of the random init")
    model: dict = opt(help="model config override (repeatable)", factory=dict, action="append", metavar="KEY=VALUE",
                      parse=str, convert=lambda items: parse_overrides(items))
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, cuda:1")
    val_data: str | None = opt(None, "prepared data dir (default: data/bundled if present, else random tokens)")
    val_tokens: int = opt(32768, "validation token budget")
    val_seq_len: int | None = opt(None, "default: min(1024, context)")
    val_batch_sizes: tuple[int, ...] = opt((1, 4, 16), "comma list of batch sizes", parse=_pos_ints)
    lmeval_batch_sizes: tuple[int, ...] = opt((1, 8, 32), "comma list of batch sizes", parse=_pos_ints)
    hellaswag_limit: int = opt(50, "items of the bundled HellaSwag slice (lm-eval, offline)")
    threads: int | None = opt(None, "torch CPU threads (default: torch's choice)")
    parts: tuple[str, ...] = opt(("val", "lmeval"), "comma list: val, lmeval, compare (eval-all-checkpoints side "
                                 "by side with a direct lm-eval call)", parse=_variants)
    compare_batch_size: int = opt(8, "compare: lm-eval batch size of both (eval-all's CPU default)")
    compare_rounds: int = opt(2, "compare: rounds, each running lm-eval alone and then eval-all once")
    probe_max_new_tokens: int = opt(64, "compare: tokens per probe generation (eval-all's default)")
    seed: int = opt(1337, "seed of the random init and tokens")


def run_eval_bench(ec: EvalBenchConfig) -> dict:
    """Seconds to evaluate one checkpoint: load + validation loss by batch size; lm-eval throughput by batch size."""
    import tempfile

    import numpy as np
    import torch

    from ..model import hf
    from ..model import weights as checkpoint
    from ..model.transformer import Transformer, preset

    bad = [p for p in ec.parts if p not in ("val", "lmeval", "compare")]
    if bad or not ec.parts:
        raise UserError(f"--parts {','.join(ec.parts)}: choose from val,lmeval,compare")
    device = TrainBenchConfig(device=ec.device).resolved_device()
    if ec.threads:
        torch.set_num_threads(ec.threads)
    out: dict = {"benchmark": "eval", "config": {**asdict(ec), "device": device}, "command": command_line(),
                 "machine": runtime.machine_info(device)}
    with tempfile.TemporaryDirectory(prefix="dmas-bench-eval-") as tmp:
        src = Path(ec.checkpoint) if ec.checkpoint else None
        if src is None:
            torch.manual_seed(ec.seed)
            src = Path(tmp) / "model"
            src.mkdir()
            checkpoint.save_model_files(Transformer(preset(ec.preset).with_(**ec.model)), src)
            out["checkpoint"] = f"random init of preset {ec.preset} {ec.model or ''}".strip()
        elif not src.is_dir():
            raise UserError(f"--checkpoint {src}: no such directory")
        else:
            out["checkpoint"] = str(src)
        # evaluate-all-checkpoints works on the HF directory: export ours first (timed apart), then load it
        hf_dir = src if hf.is_hf_dir(src) else None
        if hf_dir is None:
            t0 = time.perf_counter()
            hf_dir = hf.save_hf(checkpoint.load_any(src), Path(tmp) / "hf")
            out["export_hf_s"] = time.perf_counter() - t0
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
        runtime.synchronize(device)
        t0 = time.perf_counter()
        model = hf.from_hf(hf_dir, dtype=runtime.torch_dtype(dtype), device=device, pad_vocab=False).eval()
        runtime.synchronize(device)
        out["load_s"] = time.perf_counter() - t0
        out["dtype"] = dtype
        log.info(f"bench eval: {out['checkpoint']} on {device} ({dtype}): loaded in {out['load_s']:.2f}s")

        if "val" in ec.parts:
            from ..eval.valloss import ValTokens, load_val_tokens, token_bytes, val_loss

            token_bytes()  # a per-process table, built once: not part of any checkpoint's time

            data_dir = ec.val_data or ("data/bundled" if Path("data/bundled/manifest.json").is_file() else None)
            if data_dir:
                vt = load_val_tokens(data_dir, ec.val_tokens)
            else:
                toks = np.random.default_rng(ec.seed).integers(0, 50257, ec.val_tokens + 1, dtype=np.uint16)
                vt = ValTokens(tokens=toks, source="random tokens", sha="")
            rows = []
            for bs in ec.val_batch_sizes:
                runtime.synchronize(device)
                t0 = time.perf_counter()
                r = val_loss(model, vt, ec.val_seq_len, batch_size=bs, device=device)
                runtime.synchronize(device)
                dt = time.perf_counter() - t0
                rows.append({"batch_size": bs, "seconds": dt, "tokens_per_s": r["n_tokens"] / dt,
                             "loss": r["loss"], "n_tokens": r["n_tokens"], "seq_len": r["seq_len"]})
                log.info(f"  val loss  batch {bs:>3}: {dt:7.2f}s  {r['n_tokens'] / dt:10,.0f} tokens/s  "
                    f"loss {r['loss']:.4f}")
                if model.cfg.vocab_size == 50257:  # exact vocab: the fused loss computes the same number
                    runtime.synchronize(device)
                    t0 = time.perf_counter()
                    fused = fused_val_loss(model, vt.windows(r["seq_len"]), bs, device)
                    runtime.synchronize(device)
                    rows[-1].update(fused_seconds=time.perf_counter() - t0, fused_loss=fused)
                    log.info(f"            fused CE: {rows[-1]['fused_seconds']:7.2f}s  loss {fused:.4f}")
            best = min(rows, key=lambda x: x["seconds"])
            out["val"] = {"source": vt.source, "by_batch_size": rows, "best_batch_size": best["batch_size"],
                          "seconds_per_checkpoint": out["load_s"] + best["seconds"]}
        del model

        if "lmeval" in ec.parts:
            from ..eval import harness as benchmarks
            from ..eval.suites import TaskSpec

            tm = benchmarks.task_manager(["hellaswag_dev"])
            spec = TaskSpec("hellaswag_dev", 0, ec.hellaswag_limit)
            model = hf.from_hf(hf_dir, dtype=runtime.torch_dtype(dtype), device=device, pad_vocab=False).eval()
            rows = []
            for bs in ec.lmeval_batch_sizes:
                t0 = time.perf_counter()
                lm = benchmarks.load_lm(model, hf_dir, bs)
                load_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                res = benchmarks.evaluate_task(lm, spec, tm)
                dt = time.perf_counter() - t0
                items = [r for recs in res.items.values() for r in recs]
                n_req = sum(len(r["loglikelihoods"]) for r in items)
                acc = next((r["value"] for r in res.rows if r["metric"] == "acc_norm"), None)
                rows.append({"batch_size": bs, "load_s": load_s, "seconds": dt, "items": len(items),
                             "requests": n_req, "requests_per_s": n_req / dt, "items_per_s": len(items) / dt,
                             "acc_norm": acc})
                log.info(f"  lm-eval   batch {bs:>3}: {dt:7.2f}s for {len(items)} items, {n_req / dt:8.1f} "
                    f"log-likelihood requests/s (load {load_s:.1f}s)")
                del lm
            del model
            out["lmeval"] = {"task": "hellaswag_dev", "limit": ec.hellaswag_limit, "dtype": dtype,
                             "backend": "lm-eval HFLM on the loaded model", "by_batch_size": rows,
                             "best_batch_size": max(rows, key=lambda x: x["requests_per_s"])["batch_size"]}
        if "compare" in ec.parts:
            out["compare"] = compare_with_lm_eval(ec, src, hf_dir, device, dtype, Path(tmp))
    out["machine"]["load_avg_1m_end"] = runtime.load_average()
    return out


def compare_with_lm_eval(ec: EvalBenchConfig, src: Path, hf_dir: Path, device: str, dtype: str, tmp: Path) -> dict:
    """eval-all-checkpoints on one checkpoint next to a direct `lm_eval.simple_evaluate(model="hf",
    pretrained=<its HF directory>)` on the same task, limit, batch size, device and dtype, in turns,
    `compare_rounds` times in this process: the benchmark unit's seconds against lm-eval's, whether their
    numbers are equal, and every other phase of eval-all's per-checkpoint work (from OUT/timings/)."""
    import lm_eval

    from ..eval import driver
    from ..eval import harness as benchmarks

    task, limit, bs = "hellaswag_dev", ec.hellaswag_limit, ec.compare_batch_size
    tm = benchmarks.task_manager([task])
    val_dir = ec.val_data or ("data/bundled" if Path("data/bundled/manifest.json").is_file() else None)
    parts = ("benchmarks", "val_loss", "probes") if val_dir else ("benchmarks", "probes")
    rounds = []
    for r in range(ec.compare_rounds):
        runtime.synchronize(device)
        t0 = time.perf_counter()
        direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(hf_dir), "dtype": dtype},
                                         tasks=[task], limit=limit, batch_size=bs, device=device, task_manager=tm,
                                         log_samples=True)
        lm_eval_s = time.perf_counter() - t0
        store = tmp / f"compare-{r}"
        cfg = driver.EvalConfig(checkpoints=(str(src),), suite="offline", tasks=(task,), limit=limit, device=device,
                                dtype=dtype, batch_size=str(bs), parts=parts, out=str(store), val_data=val_dir,
                                val_tokens=ec.val_tokens, val_seq_len=ec.val_seq_len,
                                probe_max_new_tokens=ec.probe_max_new_tokens)
        t0 = time.perf_counter()
        if driver.run(cfg) != 0:
            raise RuntimeError(f"eval-all-checkpoints failed in {store}")
        eval_all_s = time.perf_counter() - t0
        (timing,) = [json.loads(f.read_text()) for f in (store / "timings").glob("*.json")]
        sec = timing["seconds"]
        import pandas as pd

        df = pd.read_csv(store / "results.csv").set_index(["task", "metric"])
        want = direct["results"][task]
        same = all(float(df.loc[(task, m), "value"]) == float(want[f"{m},none"]) for m in ("acc", "acc_norm"))
        unit = sec.get("load", 0) + sec.get("lm_eval_setup", 0) + sec[task]
        rounds.append({"lm_eval_s": lm_eval_s, "eval_all_s": eval_all_s, "benchmark_unit_s": unit,
                       "task_s": sec[task], "phases_s": sec, "same_numbers": same,
                       "peak_memory_bytes": max(timing["peak_memory_bytes"].values())})
        log.info(f"  compare round {r}: lm-eval alone {lm_eval_s:.2f}s, eval-all's benchmark unit {unit:.2f}s "
                 f"(task {sec[task]:.2f}s), whole checkpoint {sum(sec.values()):.2f}s; same numbers: {same}")
    best = min(rounds, key=lambda x: x["benchmark_unit_s"])
    best_direct = min(x["lm_eval_s"] for x in rounds)
    return {"task": task, "limit": limit, "batch_size": bs, "dtype": dtype, "parts": list(parts),
            "probe_max_new_tokens": ec.probe_max_new_tokens, "rounds": rounds,
            "lm_eval_s": best_direct, "benchmark_unit_s": best["benchmark_unit_s"],
            "ratio_unit_vs_lm_eval": best["benchmark_unit_s"] / best_direct,
            "seconds_per_checkpoint": min(sum(x["phases_s"].values()) for x in rounds),
            "same_numbers": all(x["same_numbers"] for x in rounds)}


def fused_val_loss(model, windows, batch_size: int, device) -> float:
    """Mean next-token loss over `windows` ([n, T+1] token ids) through the model's fused chunked
    cross-entropy (no full logits). Equals valloss.val_loss when the model's vocab is exactly 50257."""
    import numpy as np
    import torch

    from ..model.transformer import default_ce_chunk_tokens

    old, model.ce_chunk_tokens = model.ce_chunk_tokens, default_ce_chunk_tokens(str(device).split(":")[0])
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with torch.no_grad():
            for i in range(0, len(windows), batch_size):
                w = torch.from_numpy(windows[i : i + batch_size].astype(np.int64)).to(device)
                total += model(w[:, :-1], targets=w[:, 1:]).double() * w[:, 1:].numel()
    finally:
        model.ce_chunk_tokens = old
    return total.item() / (windows.shape[0] * (windows.shape[1] - 1))


def format_eval(res: dict) -> str:
    lines = [f"{res['checkpoint']} on {res['machine'].get('gpu') or res['machine']['cpu']}: "
             f"load {res['load_s']:.2f}s"]
    if "val" in res:
        v = res["val"]
        lines.append(f"validation loss ({v['source']}, {v['by_batch_size'][0]['n_tokens']} tokens): "
                     f"{v['seconds_per_checkpoint']:.2f}s per checkpoint incl. load, at batch {v['best_batch_size']}")
    if "lmeval" in res:
        b = max(res["lmeval"]["by_batch_size"], key=lambda x: x["requests_per_s"])
        lines.append(f"lm-eval hellaswag_dev: best {b['requests_per_s']:.1f} requests/s at batch {b['batch_size']}")
    if "compare" in res:
        c = res["compare"]
        lines.append(f"{c['task']} (limit {c['limit']}, batch {c['batch_size']}): lm-eval alone {c['lm_eval_s']:.2f}s, "
                     f"eval-all's benchmark unit {c['benchmark_unit_s']:.2f}s "
                     f"(ratio {c['ratio_unit_vs_lm_eval']:.2f}), "
                     f"same numbers: {c['same_numbers']}; eval-all per checkpoint {c['seconds_per_checkpoint']:.2f}s")
    return "\n".join(lines)


# ---------------------------------------------------------------- markdown for BENCHMARKS.md
def markdown(res: dict) -> str:
    """A BENCHMARKS.md section for one result JSON (train, eval, release or prepare)."""
    if res.get("benchmark") == "release":
        from .release import markdown as release_markdown

        return release_markdown(res)
    if res.get("benchmark") == "prepare":
        from .prepare_bench import markdown as prepare_markdown

        return prepare_markdown(res)
    m = res["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_threads']} torch thread{'s' if m['cpu_threads'] != 1 else ''}"
    versions = f"torch {m['torch']}, transformers {m.get('transformers', '-')}, Python {m['python']}"
    load = ""
    if m.get("load_avg_1m_end") is not None:
        load = f"; 1-min load average {m['load_avg_1m']:.1f} at the start, {m['load_avg_1m_end']:.1f} at the end"
    elif m.get("load_avg_1m") is not None:
        load = f"; 1-min load average {m['load_avg_1m']:.1f} at the end"
    head = [f"Command: `{res.get('command', '?')}`  ", f"Machine: {where} ({m['device']}); {versions}; "
            f"{m.get('time', '')}{load}", ""]
    if res["benchmark"] == "train":
        c = res["config"]
        over = "".join(f" {k}={v}" for k, v in (c["model"] or {}).items())
        lines = [f"#### Training steps: preset `{c['preset']}`{over}, micro-batch {c['micro_batch']}, "
                 f"seq {c['seq_len']}, {c['dtype']}", ""] + head
        lines += ["| variant | tokens/s (best) | tokens/s (median) | tokens per CPU-s | MFU | peak memory | attention "
                  "| CE chunk | act. ckpt | AdamW |", "|---|---:|---:|---:|---:|---:|---|---:|---|---|"]
        for name, v in res["variants"].items():
            ce = "-" if v["ce_chunk_tokens"] is None else v["ce_chunk_tokens"] or "off (plain)"
            lines.append(f"| {name} | {v['tokens_per_s']:,.0f} | {v['tokens_per_s_median']:,.0f} | "
                         f"{v.get('tokens_per_cpu_s', 0):,.0f} | {100 * v['mfu']:.1f}% | "
                         f"{v['peak_mem_bytes'] / 2**20:,.0f} MiB | {v['attention']} | {ce} | "
                         f"{'on' if v['activation_checkpointing'] else 'off'} | "
                         f"{'fused' if v['fused_adamw'] else 'foreach'} |")
        lines += ["", f"{c['rounds']} rounds x {c['steps']} timed steps per variant (in turn) after {c['warmup']} "
                  f"warm-up steps. MFU: {res['flops_per_token'] / 1e6:,.1f} "
                  f"MFLOP/token ({res['flop_convention']}) against {res['peak_flops'] / 1e12:.3f} TFLOP/s "
                  f"({res['peak_flops_source']}). Peak memory: {res['peak_mem_kind']}."]
        if res["ratio_vs_hf"] is not None:
            cpu = res.get("ratio_vs_hf_cpu_time")
            lines.append(f"**ratio_vs_hf = {res['ratio_vs_hf']:.2f}** ({res['best_ours']} / {res['best_hf']}, "
                         f"best wall-clock tokens/s of each)" + (f"; in CPU time {cpu:.2f}." if cpu else "."))
        return "\n".join(lines) + "\n"
    lines = [f"#### Evaluation of one checkpoint: {res['checkpoint']}", ""] + head
    lines.append(f"Load (`hf.from_hf`, {res.get('dtype')}, as eval-all-checkpoints does): {res['load_s']:.2f} s.")
    if "val" in res:
        v = res["val"]
        lines += ["", f"Validation loss (`valloss.val_loss`, {v['by_batch_size'][0]['n_tokens']:,} tokens of "
                  f"{v['source']}, seq {v['by_batch_size'][0]['seq_len']}):", "",
                  "| batch size | seconds | tokens/s | fused CE seconds | loss | fused CE loss |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in v["by_batch_size"]:
            fs, fl = r.get("fused_seconds"), r.get("fused_loss")
            lines.append(f"| {r['batch_size']} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | "
                         f"{'-' if fs is None else f'{fs:.2f}'} | {r['loss']:.5f} | "
                         f"{'-' if fl is None else f'{fl:.5f}'} |")
        lines += ["", f"Seconds per checkpoint (load + best batch size): **{v['seconds_per_checkpoint']:.2f}**."]
    if "lmeval" in res:
        e = res["lmeval"]
        lines += ["", f"lm-eval ({e['backend']}, {e['dtype']}) on `{e['task']}`, first {e['limit']} items:", "",
                  "| batch size | model load s | eval s | requests/s | items/s | acc_norm |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['batch_size']} | {r['load_s']:.1f} | {r['seconds']:.2f} | {r['requests_per_s']:.1f} | "
                  f"{r['items_per_s']:.2f} | {r['acc_norm'] if r['acc_norm'] is None else round(r['acc_norm'], 4)} |"
                  for r in e["by_batch_size"]]
    if "compare" in res:
        c = res["compare"]
        phases = sorted({k for r in c["rounds"] for k in r["phases_s"]}, key=lambda k: _PHASE_ORDER.get(k, 50))
        lines += ["", f"eval-all-checkpoints next to a direct `lm_eval.simple_evaluate(model=\"hf\", pretrained=DIR)` "
                  f"on `{c['task']}` (first {c['limit']} items, batch {c['batch_size']}, {c['dtype']}), in turns "
                  f"in one process; eval-all's units: {', '.join(c['parts'])} (probes: "
                  f"{c['probe_max_new_tokens']} new tokens):", "",
                  "| round | lm-eval alone s | eval-all benchmark unit s (load + HFLM + task) | same numbers | "
                  + " | ".join(f"{p} s" for p in phases) + " | eval-all per checkpoint s |",
                  "|---:|---:|---:|---|" + "---:|" * len(phases) + "---:|"]
        for i, r in enumerate(c["rounds"]):
            lines.append(f"| {i} | {r['lm_eval_s']:.2f} | {r['benchmark_unit_s']:.2f} | {r['same_numbers']} | "
                         + " | ".join(f"{r['phases_s'].get(p, 0):.2f}" for p in phases)
                         + f" | {sum(r['phases_s'].values()):.2f} |")
        lines += ["", f"Best of the rounds: **benchmark unit / lm-eval alone = {c['ratio_unit_vs_lm_eval']:.2f}**; "
                  f"eval-all per checkpoint {c['seconds_per_checkpoint']:.2f} s (fetch: background download or "
                  "export, overlapped with the previous checkpoint; fetch_wait: the part of it the run waited for)."]
    return "\n".join(lines) + "\n"


_PHASE_ORDER = {"fetch": 0, "fetch_wait": 1, "check": 2, "load": 3, "lm_eval_setup": 4, "val_loss": 60,
                "probes": 61, "consolidate": 62, "release": 63}


def report(json_files: list[str]) -> str:
    """BENCHMARKS.md sections (markdown) for result JSON files."""
    parts = []
    for path in json_files:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: no such result file")
        try:
            parts.append(markdown(json.loads(p.read_text())))
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{p}: not a bench result ({e})") from None
    return "\n".join(parts)
