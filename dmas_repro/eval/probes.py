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


@torch.no_grad()
def run_probes(model, kind: str, cfg: ProbeConfig, device="cpu") -> list[dict]:
    """Rows (prompt_id, category, mode, seed, prompt, output, fluency measures) for one model."""
    tok = gpt2()
    model.eval()
    rows = []
    modes = [("greedy", None)] + [("sample", s) for s in cfg.seeds]
    for p in load_prompts(cfg.prompt_set):
        text = prompt_text(p, kind)
        ids = tok.encode(text)
        budget = min(cfg.max_new_tokens, model.cfg.context_length - len(ids))
        if budget < 1:
            raise UserError(f"probe {p['id']}: prompt of {len(ids)} tokens leaves no room in the "
                            f"model's context {model.cfg.context_length}")
        for mode, seed in modes:
            temp = 0.0 if mode == "greedy" else cfg.temperature
            out = model.generate(torch.tensor(ids, device=device), max_new_tokens=budget, temperature=temp,
                                 top_k=cfg.top_k if mode == "sample" else None, seed=seed, stop_token=EOT)[0]
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
                "mean_logprob": mean_logprob(model, ids, out, device),
            })
    return rows
