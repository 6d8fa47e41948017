"""The DMaS-LLaMa-Lite architecture: a LLaMa decoder in one readable file.

Pre-norm RMSNorm blocks, grouped-query attention with RoPE (theta 500000, computed in fp32),
SwiGLU MLP, no biases, untied LM head. Parameter names are our own; `dmas_repro.model.hf` maps
them to and from `transformers.LlamaForCausalLM`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import UserError

GPT2_VOCAB = 50257  # real GPT-2 vocabulary; rows above it are padding


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 36
    dim: int = 2048
    n_head: int = 32
    n_kv_head: int = 8
    ffn_dim: int = 5120
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64
    context_length: int = 1024
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # Token ids below this are real tokens; the rows above it (up to vocab_size) are padding and are
    # never inside a loss or a softmax (their logits are left out of the cross-entropy and of sampling).
    # vocab_size (50304) here reproduces the authors' pretraining softmax over every padded logit.
    real_vocab_size: int = GPT2_VOCAB

    def __post_init__(self):
        sizes = ("n_layer", "dim", "n_head", "n_kv_head", "ffn_dim", "vocab_size", "context_length", "real_vocab_size")
        bad = [f"{k} {getattr(self, k)}" for k in sizes if getattr(self, k) <= 0]
        if bad:
            raise UserError(f"model config: {', '.join(bad)}: must be positive")
        if self.dim % self.n_head:
            raise UserError(f"model config: dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise UserError(
                f"model config: n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}"
            )
        if (self.dim // self.n_head) % 2:
            raise UserError("model config: head_dim must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def n_real_vocab(self) -> int:
        """Logits [:n_real_vocab] are real tokens; the rest are padding rows."""
        return min(self.real_vocab_size, self.vocab_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"model config: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def with_(self, **changes) -> ModelConfig:
        return replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # The published architecture (../shared/PAPER.md).
    "paper": ModelConfig(),
    # Same family, sized so the whole embedded pipeline trains on 2 CPU cores in minutes:
    # 4 layers, dim 128, 4 query / 2 KV heads (head_dim 32), SwiGLU 384, context 256.
    "tiny": ModelConfig(n_layer=4, dim=128, n_head=4, n_kv_head=2, ffn_dim=384, context_length=256),
}


def default_ce_chunk_tokens(device_type: str) -> int:
    """Chunk of the fused LM-head cross-entropy that trains fastest (BENCHMARKS.md): 512 tokens on
    CPU (1.8x a plain F.cross_entropy step for the tiny preset); 1024 on CUDA (not yet measured there:
    chosen for memory, 1024 x 50304 float32 logits = 206 MB; scripts/bench_gpu.sh measures it)."""
    return 1024 if device_type == "cuda" else 512


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, cast back, then scale: the same order as transformers' LlamaRMSNorm.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [T, head_dim] for the given positions, always computed in float32."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the LLaMa/transformers convention). x: [B, H, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).to(x.dtype)


class KVCache:
    """Preallocated keys/values for every layer: [n_layer, B, n_kv_head, max_len, head_dim]."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (cfg.n_layer, batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions already filled
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        self.k[layer, :, :, self.pos : self.pos + t] = k
        self.v[layer, :, :, self.pos : self.pos + t] = v
        end = self.pos + t
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_head * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            past = cache.pos
            k, v = cache.update(self.layer, k, v)
            if past == 0:
                mask = None
                causal = T > 1
            else:  # queries sit at positions past..past+T-1 and see every key up to their own
                causal = False
                mask = None
                if T > 1:
                    qpos = torch.arange(past, past + T, device=x.device)[:, None]
                    mask = torch.arange(past + T, device=x.device)[None, :] <= qpos
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w_up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w_down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Training-speed options (plain attributes, set by the trainer; see BENCHMARKS.md):
        # ce_chunk_tokens > 0: the loss never materializes logits for more than this many tokens at a time
        #   (fused LM-head + cross-entropy, gradients made chunk by chunk during the forward); 0: plain
        #   F.cross_entropy over all logits; None: default_ce_chunk_tokens(device) (what the trainer uses).
        # activation_checkpointing: recompute each block's activations in the backward (saves memory).
        self.ce_chunk_tokens = 0
        self.activation_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, dim]."""
        T = input_ids.shape[1]
        start = 0 if cache is None else cache.pos
        if start + T > self.cfg.context_length:
            raise ValueError(f"sequence of {start + T} tokens exceeds context {self.cfg.context_length}")
        positions = torch.arange(start, start + T, device=input_ids.device)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.tok_embeddings(input_ids)
        recompute = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for block in self.layers:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache)
        if cache is not None:
            cache.pos += T
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] or, with `targets`, the mean cross-entropy over targets != -100."""
        h = self.hidden_states(input_ids, cache)
        if targets is None:
            return self.lm_head(h)
        return self.cross_entropy(h, targets)

    def cross_entropy(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean CE of `lm_head(h)` over targets != -100, a softmax over the real vocabulary only (the
        padding rows' logits never enter it); chunked when `ce_chunk_tokens` > 0."""
        h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
        n = self.ce_chunk_tokens
        if n is None:
            n = default_ce_chunk_tokens(h.device.type)
        V = self.cfg.n_real_vocab
        if n <= 0:
            return F.cross_entropy(self.lm_head(h)[:, :V].float(), targets, ignore_index=-100)
        count = (targets != -100).sum().clamp(min=1)
        if type(self.lm_head) is nn.Linear:  # not wrapped (e.g. by an adapter): the fused path applies
            dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
            return LinearCrossEntropy.apply(h, self.lm_head.weight, targets, n, dtype, V) / count
        total = h.new_zeros((), dtype=torch.float32)
        for hs, ts in zip(h.split(n), targets.split(n)):
            total = total + torch.utils.checkpoint.checkpoint(_chunk_ce_sum, self.lm_head, hs, ts, V,
                                                              use_reentrant=False)
        return total / count

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel() + self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Model FLOPs per token (PaLM appendix-B convention, as used for MFU).

        6 * N for the matmuls of forward+backward, N = all parameters except the input
        embedding table (a lookup, no FLOPs; the LM head is a matmul and counts), plus
        12 * n_layer * dim * seq_len for attention scores and values, counted over the full
        (not causally halved) T x T square. Forward only: one third of that.
        """
        T = seq_len or self.cfg.context_length
        n = self.num_params() - self.tok_embeddings.weight.numel()
        flops = 6 * n + 12 * self.cfg.n_layer * self.cfg.dim * T
        return flops if training else flops / 3

    @torch.no_grad()
    def iter_generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token [B] at each step. temperature 0 = greedy."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        B, T0 = input_ids.shape
        max_new_tokens = min(max_new_tokens, self.cfg.context_length - T0)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=input_ids.device).manual_seed(seed)
        dtype = next(self.parameters()).dtype
        cache = KVCache(self.cfg, B, T0 + max_new_tokens, input_ids.device, dtype) if use_cache else None
        seq = input_ids
        step_input = input_ids
        for _ in range(max_new_tokens):
            logits = self(step_input if use_cache else seq, cache=cache)[:, -1, : self.cfg.n_real_vocab].float()
            nxt = sample_next(logits, temperature, top_k, top_p, gen)
            yield nxt
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            step_input = nxt[:, None]

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | list[int],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_token: int | None = 50256,
        use_cache: bool = True,
    ) -> list[list[int]]:
        """New tokens for each row, cut after the first `stop_token` (which is kept)."""
        if not torch.is_tensor(input_ids):
            input_ids = torch.tensor(input_ids, dtype=torch.long)
        device = next(self.parameters()).device
        input_ids = input_ids.to(device)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        out: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
        done = [False] * input_ids.shape[0]
        for nxt in self.iter_generate(input_ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache):
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    out[i].append(t)
                    done[i] = t == stop_token
            if all(done):
                break
        return out


def sample_next(logits, temperature=0.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """Pick the next token from logits [B, V]: greedy at temperature 0, else top-k/top-p sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _chunk_ce_sum(lm_head: nn.Module, h: torch.Tensor, t: torch.Tensor, n_real: int) -> torch.Tensor:
    return F.cross_entropy(lm_head(h)[:, :n_real].float(), t, ignore_index=-100, reduction="sum")


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `h @ weight[:n_real].T` over targets != -100, `chunk` tokens at a time.

    Only the first `n_real` rows of `weight` (the real vocabulary; None: all) are in the softmax: the
    padding rows get no logit and a zero gradient. The float32 logits of one chunk (one buffer,
    reused) are the largest temporary: for each chunk the forward computes the softmax in place, the
    loss (logsumexp - target logit), and, when gradients are needed, the gradients of h and weight
    right away, so nothing of the chunk is kept for the backward, which only scales the stored
    gradients. Matmuls run in `dtype` (the autocast dtype), softmax and the weight gradient's
    accumulation in float32 (float64 for float64). Equal to
    F.cross_entropy(h @ weight[:n_real].T, ..., reduction="sum") up to float rounding.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int, dtype: torch.dtype, n_real: int | None = None):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        n = h.shape[0]
        V = weight.shape[0] if n_real is None else min(n_real, weight.shape[0])
        acc = torch.promote_types(dtype, torch.float32)  # softmax and weight-gradient dtype
        with torch.autocast(h.device.type, enabled=False):
            w = weight[:V].to(dtype)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w_all = None
            if need_w:  # padding rows (V:) get exactly zero; the real rows are written below
                grad_w_all = torch.empty_like(weight, dtype=acc)
                grad_w_all[V:].zero_()
            grad_w = grad_w_all[:V] if need_w else None  # leading rows: a contiguous view
            total = torch.zeros((), device=h.device, dtype=acc)
            buf = torch.empty(min(chunk, n), V, device=h.device, dtype=acc)
            low = torch.empty_like(buf, dtype=dtype) if dtype != acc else None
            for start in range(0, n, chunk):
                hc, tc = h[start : start + chunk].to(dtype), targets[start : start + chunk]
                m = hc.shape[0]
                valid = (tc != -100)[:, None]
                tc = tc.masked_fill(~valid[:, 0], 0)[:, None]
                logits = buf[:m]
                if low is None:
                    torch.mm(hc, w.t(), out=logits)
                else:
                    logits.copy_(torch.mm(hc, w.t(), out=low[:m]))
                target_logit = logits.gather(1, tc)
                # softmax in place: exp(x - max) / sum; logsumexp = max + log(sum)
                row_max = logits.amax(dim=1, keepdim=True)
                probs = logits.sub_(row_max).exp_()
                row_sum = probs.sum(dim=1, keepdim=True)
                total += ((row_max + row_sum.log() - target_logit) * valid).sum()
                if not (need_h or need_w):
                    continue
                # d(sum CE)/d(logits) = softmax - onehot(target); ignored rows are zeroed through hc / grad_h
                g = probs.div_(row_sum).scatter_add_(1, tc, torch.full_like(target_logit, -1.0))
                g = g.to(dtype) if low is None else low[:m].copy_(g)
                mask = valid.to(dtype)
                if need_h:
                    grad_h[start : start + chunk] = (g @ w).mul_(mask)
                if need_w and low is None:  # matmul dtype = accumulation dtype: accumulate in place
                    if start == 0:
                        torch.mm(g.t(), hc * mask, out=grad_w)
                    else:
                        grad_w.addmm_(g.t(), hc * mask)
                elif need_w:
                    contrib = (g.t() @ (hc * mask)).to(acc)
                    if start == 0:
                        grad_w.copy_(contrib)
                    else:
                        grad_w.add_(contrib)
        ctx.save_for_backward(grad_h, grad_w_all)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        grad_h = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        grad_w = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None


def build(cfg: ModelConfig | str, device=None, dtype=None) -> Transformer:
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    model = Transformer(cfg)
    return model.to(device=device, dtype=dtype) if (device or dtype) else model
