"""Qualitative probes: a fixed, versioned prompt set run on every checkpoint.

Each prompt is generated greedily and with seeded sampling (temperature, top-k 50 as in the
authors' in-loop samples). Base checkpoints continue `prompt`; instruct checkpoints answer
`instruction` wrapped by `dmas_repro.model.chat_format.chat_prompt` (Vicuna 1.1, the tuning format).
Generation stops at <|endoftext|> or after `max_new_tokens`.

Fluency measures, over the generated GPT-2 tokens (without <|endoftext|>):
- repetition_rate: share of the output's token 4-grams that already occurred earlier in it
  (0 = no repeats, towards 1 = a loop);
- distinct_1 / distinct_2: distinct token unigrams / bigrams over their count (Li et al. 2016);
- mean_logprob: mean log-probability (nats) of the generated tokens (a final <|endoftext|>
  included) under the model's full softmax (temperature 1, no top-k), for greedy and sampled
  outputs alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import UserError
from ..model.chat_format import chat_prompt
from ..model.tokenizer import EOT, N_VOCAB, gpt2

PROBES_DIR = Path(__file__).resolve().parents[1] / "assets" / "probes"
DEFAULT_SET = "v1"


@dataclass(frozen=True)
class ProbeConfig:
    prompt_set: str = DEFAULT_SET
    seeds: tuple[int, ...] = (0, 1)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 50


def load_prompts(version: str = DEFAULT_SET) -> list[dict]:
    f = PROBES_DIR / f"{version}.json"
    if not f.is_file():
        have = sorted(p.stem for p in PROBES_DIR.glob("*.json"))
        raise UserError(f"no probe set {version!r}; available: {have}")
    return json.loads(f.read_text())["prompts"]


def prompt_text(p: dict, kind: str) -> str:
    if kind == "instruct":
        return chat_prompt(p["instruction"])
    return p["prompt"]


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(tokens: list[int], n: int = 4) -> float | None:
    grams = ngrams(tokens, n)
    if not grams:
        return None
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def distinct_n(tokens: list[int], n: int) -> float | None:
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else None


@torch.no_grad()
def mean_logprob(model, prompt_ids: list[int], out_ids: list[int], device) -> float | None:
    if not out_ids:
        return None
    ids = torch.tensor([prompt_ids + out_ids], device=device)
    logits = model(ids[:, :-1])[0, len(prompt_ids) - 1:, :N_VOCAB].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(out_ids, device=device)
    return logp.gather(1, target[:, None]).mean().item()


@dataclass
class Generation:
    tokens: list[int]  # the new tokens, a final <|endoftext|> included
    logprobs: list[float]  # log-probability of each under the full softmax at temperature 1


def kv_bytes_per_token(cfg) -> int:
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4


KV_BUDGET = 256 * 2**20  # bytes of keys and values a batch of probe rows may hold


def rows_per_batch(model, tokens_per_row: int, budget_bytes: int = KV_BUDGET) -> int:
    """How many rows to decode at once: their keys and values (counted in float32) within `budget_bytes`,
    so a batch adds little to the model's memory (all 45 rows of the v1 set for the tiny preset; about 20
    at the paper's size)."""
    return max(1, budget_bytes // (kv_bytes_per_token(model.cfg) * max(1, tokens_per_row)))


@torch.no_grad()
def generate_batch(lm, prompts: list[list[int]], settings: list[tuple[float, int | None, int | None]],
                   budgets: list[int], stop_token: int = EOT) -> list[Generation]:
    """Continuations of several prompts at once, one row per (prompt, (temperature, top_k, seed), budget).

    `lm` is a transformers causal LM (here `hf.as_transformers` of our model: the same weights). The
    prompts are left-padded and masked, each row with its own positions, and every step is one forward
    pass of all rows through the key/value cache. Each row picks its tokens as
    `Transformer.generate(prompt, temperature=, top_k=, seed=)` does: its own torch.Generator seeded
    with its seed and one draw per step (`transformer.sample_next`), greedy at temperature 0; it ends
    after `stop_token` or its budget. Batched, the logits agree with one-row decoding to float
    rounding, not bit for bit (tests/eval/test_one_load.py checks that the outputs are the same).
    """
    from transformers.cache_utils import DynamicCache

    from ..model.transformer import GPT2_VOCAB

    device = next(lm.parameters()).device
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), stop_token, dtype=torch.long, device=device)
    mask = torch.zeros((B, L), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p, device=device)
        mask[i, L - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator(device=device).manual_seed(seed) if seed is not None else None for _, _, seed in settings]
    cache = DynamicCache(config=lm.config)
    out = [Generation([], []) for _ in prompts]
    done = [b < 1 for b in budgets]
    step_ids = ids
    for _ in range(max(budgets)):
        logits = lm(input_ids=step_ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                    logits_to_keep=1).logits[:, -1, :GPT2_VOCAB].float()
        nxt = _pick(logits, settings, gens, done, stop_token)
        logp = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None])[:, 0].tolist()
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                out[i].tokens.append(t)
                out[i].logprobs.append(logp[i])
                done[i] = t == stop_token or len(out[i].tokens) >= budgets[i]
        if all(done):
            break
        step_ids = nxt[:, None]
        mask = torch.cat([mask, mask.new_ones((B, 1))], dim=1)
        pos = pos[:, -1:] + 1
    return out


def _pick(logits: torch.Tensor, settings, gens, done: list[bool], stop_token: int) -> torch.Tensor:
    """The next token of every row: `transformer.sample_next` row by row, with the elementwise and per-row
    steps (temperature, top-k, softmax) done once for all rows that share a setting; each sampled row
    then draws from its own generator (`torch.multinomial` on its [1, V] row, as one-row decoding)."""
    from ..model.transformer import sample_next

    nxt = torch.full((len(settings),), stop_token, dtype=torch.long, device=logits.device)
    groups: dict[tuple, list[int]] = {}
    for i, (temp, top_k, _) in enumerate(settings):
        if not done[i]:
            groups.setdefault((temp, top_k), []).append(i)
    for (temp, top_k), rows in groups.items():
        if temp <= 0:
            nxt[rows] = sample_next(logits[rows], temp)
            continue
        idx = torch.tensor(rows, device=logits.device)
        probs = sample_probs(logits[idx], temp, top_k)
        for j, i in enumerate(rows):
            nxt[i] = torch.multinomial(probs[j: j + 1], 1, generator=gens[i])[0, 0]
    return nxt


def sample_probs(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """The sampling distribution of `transformer.sample_next` (temperature, then top-k), row by row."""
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.softmax(logits, dim=-1)


@torch.no_grad()
def run_probes(model, kind: str, cfg: ProbeConfig, device="cpu", batch_rows: int | None = None) -> list[dict]:
    """Rows (prompt_id, category, mode, seed, prompt, output, fluency measures) for one model.

    Every (prompt, greedy or seeded sample) is one row of `generate_batch`, decoded together in
    batches of `batch_rows` (default `rows_per_batch`), on our model's weights seen through
    `hf.as_transformers` (no copy)."""
    from ..model.hf import as_transformers

    tok = gpt2()
    model.eval()
    modes = [("greedy", None)] + [("sample", s) for s in cfg.seeds]
    jobs = []
    for p in load_prompts(cfg.prompt_set):
        text = prompt_text(p, kind)
        ids = tok.encode(text)
        budget = min(cfg.max_new_tokens, model.cfg.context_length - len(ids))
        if budget < 1:
            raise UserError(f"probe {p['id']}: prompt of {len(ids)} tokens leaves no room in the "
                            f"model's context {model.cfg.context_length}")
        for mode, seed in modes:
            setting = (0.0, None, None) if mode == "greedy" else (cfg.temperature, cfg.top_k, seed)
            jobs.append((p, text, ids, budget, mode, seed, setting))
    lm = as_transformers(model)
    n = batch_rows or rows_per_batch(model, max(len(j[2]) + j[3] for j in jobs))
    results: list[Generation] = []
    for i in range(0, len(jobs), n):
        part = jobs[i: i + n]
        results += generate_batch(lm, [j[2] for j in part], [j[6] for j in part], [j[3] for j in part], EOT)
    rows = []
    for (p, text, _ids, _budget, mode, seed, (temp, _, _)), g in zip(jobs, results):
        out = g.tokens
        gen = out[:-1] if out and out[-1] == EOT else out
        rows.append({
            "prompt_set": cfg.prompt_set,
            "prompt_id": p["id"],
            "category": p["category"],
            "mode": mode,
            "seed": seed,
            "temperature": temp,
            "top_k": cfg.top_k if mode == "sample" else None,
            "prompt": text,
            "output": tok.decode(gen),
            "n_tokens": len(gen),
            "stopped": bool(out) and out[-1] == EOT,
            "repetition_rate": repetition_rate(gen),
            "distinct_1": distinct_n(gen, 1),
            "distinct_2": distinct_n(gen, 2),
            "mean_logprob": sum(g.logprobs) / len(g.logprobs) if g.logprobs else None,
        })
    return rows
