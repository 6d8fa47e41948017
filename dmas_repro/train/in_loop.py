"""In-loop evaluation as the authors ran it (their `train.py`, `utils.py` and `hellaswag.py`, a
build-nanogpt derivative): sampled texts of a fixed prompt, and completion-style HellaSwag.

Differences that remain, on purpose: the softmax of sampling and of the HellaSwag losses covers the
real vocabulary only (theirs also covered the 47 padding logits); samples use a KV cache (theirs
recomputed the whole sequence: the same logits up to float rounding); HellaSwag items are shared
among the ranks padded to the same count, so every rank runs the same number of forwards (theirs
strided without padding, which only DDP tolerates); a context longer than the model's is cut from
the left (theirs would fail); `hellaswag_items` may take a slice of the file (theirs: all 10,042
validation items).
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..core.errors import UserError

TOP_K = 50  # the authors' completion(): "top-k sampling of 50 (huggingface pipeline default)"


def prompt_tokens(prompt: str) -> list[int]:
    from ..model.tokenizer import gpt2

    return gpt2().encode(prompt)


# ---------------------------------------------------------------- samples
@torch.no_grad()
def sample_ids(model, prompt_ids: list[int], count: int, length: int, seed: int, device, autocast) -> torch.Tensor:
    """[count, length] token ids: the prompt, then sampled tokens until `length` (the prompt included),
    as the authors' completion(): softmax, the top 50 probabilities, torch.multinomial with one
    generator seeded `seed` for the whole call. Logits of padding rows are left out."""
    from ..model.transformer import KVCache

    x = torch.tensor([prompt_ids] * count, dtype=torch.long, device=device)
    new = length - x.shape[1]
    gen = torch.Generator(device=device).manual_seed(seed)
    cfg = model.cfg
    cache = KVCache(cfg, count, min(length, cfg.context_length), device, next(model.parameters()).dtype)
    step_in, out = x, [x]
    for _ in range(max(0, min(new, cfg.context_length - x.shape[1]))):
        with autocast():
            logits = model(step_in, cache=cache)[:, -1, : cfg.n_real_vocab]
        probs = F.softmax(logits.float(), dim=-1)
        topk_probs, topk_ids = torch.topk(probs, min(TOP_K, probs.shape[-1]), dim=-1)
        ix = torch.multinomial(topk_probs, 1, generator=gen)
        step_in = torch.gather(topk_ids, -1, ix)
        out.append(step_in)
    return torch.cat(out, dim=1)


def decode(tok, ids: list[int]) -> str:
    """Text of token ids; an id outside the tokenizer (a padding row, only possible when the model's
    real_vocab_size was raised to its padded size) shows as <|pad:ID|>."""
    parts, run = [], []
    for i in ids:
        if i < tok.n_vocab:
            run.append(i)
            continue
        parts.append(tok.decode(run) + f"<|pad:{i}|>")
        run = []
    return "".join(parts) + tok.decode(run)


def sample_texts(model, prompt: str, count: int, length: int, seed: int, device, autocast) -> list[str]:
    """`count` sampled texts of `length` tokens, the prompt included (see `sample_ids`)."""
    from ..model.tokenizer import gpt2

    tok = gpt2()
    out = sample_ids(model, tok.encode(prompt), count, length, seed, device, autocast)
    return [decode(tok, row) for row in out.tolist()]


# ---------------------------------------------------------------- HellaSwag
def read_hellaswag(path: str, limit: int, fmt: str = "lm-eval") -> list[dict]:
    """Items {context, endings, label} of a jsonl file (the first `limit`; all when 0).

    fmt "lm-eval": context = `query`, endings = `choices` (lm-eval's hellaswag preprocessing, as in
    dmas_repro/eval/tasks/hellaswag_val_dev.jsonl). fmt "authors": their hellaswag.py on HellaSwag's
    raw fields, context = `ctx` (or `ctx_a` + " " + `ctx_b`; no activity label), endings = `endings`."""
    items = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if fmt == "authors":
                    ctx = d["ctx"] if "ctx" in d else (d["ctx_a"] + " " + d["ctx_b"] if d["ctx_b"] else d["ctx_a"])
                    items.append({"context": ctx, "endings": list(d["endings"]), "label": int(d["label"])})
                else:
                    items.append({"context": d["query"], "endings": list(d["choices"]), "label": int(d["label"])})
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                want = ("HellaSwag's raw fields ctx (or ctx_a, ctx_b), endings, label" if fmt == "authors"
                        else "query, choices, label")
                raise UserError(f"{path}:{i}: expected a JSON object with {want} (hellaswag_format={fmt})") from None
    return items[:limit] if limit else items


def item_rows(tok, item: dict, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' render_example: one row per ending, context tokens then " " + ending tokens,
    right-padded; as (inputs, targets) with targets -100 outside the ending."""
    ctx = tok.encode(item["context"])
    rows = []
    for e in item["endings"]:
        end = tok.encode(" " + e)
        ids = (ctx + end)[-(context_length + 1):]
        rows.append((ids, min(len(end), len(ids) - 1)))
    L = max(len(ids) for ids, _ in rows) - 1
    x = torch.zeros(len(rows), L, dtype=torch.long)
    y = torch.full((len(rows), L), -100, dtype=torch.long)
    for r, (ids, n_end) in enumerate(rows):
        x[r, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[r, len(ids) - 1 - n_end : len(ids) - 1] = torch.tensor(ids[-n_end:])
    return x, y


@torch.no_grad()
def ending_losses(model, x: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
    """Mean per-token loss of each row's ending (targets != -100), over the real vocabulary."""
    with autocast():
        logits = model(x)[..., : model.cfg.n_real_vocab]
    losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none")
    losses = losses.view(y.shape)
    n = (y != -100).sum(1).clamp(min=1)
    return losses.sum(1) / n


def hellaswag_acc_norm(model, items: list[dict], ctx) -> dict:
    """Completion-style HellaSwag as the authors computed it: the ending with the lowest mean token
    loss wins (acc_norm). Item k goes to rank k % world; every rank runs ceil(n / world) forwards, a
    rank with no item left in the last round scores item 0 again and does not count it."""
    from ..model.tokenizer import gpt2

    tok = gpt2()
    info = ctx.dist
    correct = torch.zeros(2, device=ctx.device)  # (correct, counted)
    for r in range(-(-len(items) // info.world_size)):
        k = r * info.world_size + info.rank
        counts = k < len(items)
        it = items[k] if counts else items[0]
        x, y = item_rows(tok, it, model.cfg.context_length)
        losses = ending_losses(model, x.to(ctx.device), y.to(ctx.device), ctx.autocast)
        if counts:
            correct += torch.stack([(losses.argmin() == int(it["label"])).float(), torch.ones((), device=ctx.device)])
    if info.enabled:
        torch.distributed.all_reduce(correct)
    return {"acc_norm": correct[0].item() / max(1.0, correct[1].item()), "n": int(correct[1].item())}
