"""In-loop evaluation in the authors' style: sampled continuations of a fixed prompt, and
completion-style HellaSwag (the ending with the lowest mean token loss wins: acc_norm)."""

from __future__ import annotations

import json

import torch

from ..core.errors import UserError


def hellaswag_acc_norm(model, items: list[dict], ctx) -> dict:
    """Completion-style HellaSwag as build-nanogpt computes it: the ending with the lowest mean
    token loss wins. Items are strided over ranks; returns acc_norm over all items."""
    from ..model.tokenizer import gpt2

    tok = gpt2()
    info = ctx.dist
    correct = torch.zeros((), device=ctx.device)
    for it in items[info.rank :: info.world_size]:
        ctx_ids = tok.encode(it["query"])
        losses = []
        for choice in it["choices"]:
            end = tok.encode(" " + choice)
            ids = (ctx_ids + end)[-model.cfg.context_length :]
            x = torch.tensor([ids[:-1]], device=ctx.device)
            y = torch.full_like(x, -100)
            n = min(len(end), len(ids) - 1)
            y[0, -n:] = torch.tensor(ids[-n:], device=ctx.device)
            with torch.no_grad(), ctx.autocast():
                losses.append(model(x, y).float())
        correct += float(int(torch.stack(losses).argmin()) == int(it["label"]))
    if info.enabled:
        torch.distributed.all_reduce(correct)
    return {"acc_norm": correct.item() / max(1, len(items)), "n": len(items)}


def read_hellaswag(path: str, limit: int) -> list[dict]:
    """Items {query, choices, label} of a jsonl file (the first `limit`; all when 0)."""
    items = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    items.append({"query": d["query"], "choices": list(d["choices"]), "label": int(d["label"])})
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise UserError(f"{path}:{i}: expected a JSON object with query, choices, label") from None
    return items[:limit] if limit else items


def sample_texts(model, prompt: str, count: int, new_tokens: int, seed: int, device, autocast) -> list[str]:
    """`count` sampled continuations (temperature 1, top-k 50) of `prompt`, prompt included."""
    from ..model.tokenizer import gpt2

    tok = gpt2()
    ids = torch.tensor([tok.encode(prompt)] * count, device=device)
    with autocast():
        outs = model.generate(ids, new_tokens, temperature=1.0, top_k=50, seed=seed, stop_token=None)
    return [prompt + tok.decode(o) for o in outs]
