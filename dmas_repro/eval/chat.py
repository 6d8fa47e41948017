"""`dmas-repro chat`: talk to an instruct checkpoint, answers streamed token by token.

Every message is formatted with `dmas_repro.model.chat_format.chat_prompt` and answered on its own (the
Alpaca data the model was tuned on is single-turn); generation stops at <|endoftext|> (50256).
"""

from __future__ import annotations

import codecs
import math
import sys

from ..core.errors import UserError
from ..model.tokenizer import EOT


def stream_answer(model, tok, prompt_text: str, out=None, max_new_tokens: int = 256,
                  temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None) -> list[int]:
    """Generate after `prompt_text`, write the text to `out` as it arrives, stop at <|endoftext|>.
    Returns the new token ids (without the final <|endoftext|>)."""
    import torch

    out = out if out is not None else sys.stdout
    ids = tok.encode(prompt_text)
    ctx = model.cfg.context_length
    if len(ids) >= ctx:
        raise UserError(f"the prompt is {len(ids)} tokens; the model's context is {ctx}")
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    new = []
    for nxt in model.iter_generate(x, max_new_tokens, temperature, top_k, top_p, seed):
        t = int(nxt[0])
        if t == EOT:
            break
        new.append(t)
        out.write(dec.decode(tok.decode_bytes([t])))
        out.flush()
    out.write(dec.decode(b"", final=True))
    out.flush()
    return new


def check_generation(prompt: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> None:
    """Refuse, before loading a model, sampling settings that cannot work (one line each)."""
    if prompt is not None and not prompt.strip():
        raise UserError("--prompt is empty: give the message to answer, or leave --prompt out for the "
                        "interactive loop")
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"--temperature {temperature}: must be 0 (greedy) or positive")
    if top_p is not None and not (0 < top_p <= 1):
        raise UserError(f"--top-p {top_p}: must be in (0, 1] (1 keeps every token)")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k {top_k}: must be a positive number of tokens")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: must be positive")


def chat(checkpoint: str, prompt: str | None = None, *, raw: bool = False, device: str | None = None,
         dtype: str | None = None, **gen) -> int:
    """`dmas-repro chat`: one answer to `prompt`, or an interactive loop on stdin (one message per line)."""
    from ..core import runtime
    from ..model.chat_format import chat_prompt
    from ..model.tokenizer import gpt2
    from ..train.layout import load_model_from

    check_generation(prompt, **gen)
    dev = runtime.resolve_device(device)
    wdtype = runtime.parse_dtype(dtype) if dtype else (runtime.torch_dtype("auto", dev) if dev.type == "cuda" else None)
    model, where = load_model_from(checkpoint, device=dev, dtype=wdtype, prefer_sft=True)
    model.eval()
    tok = gpt2()
    fmt = (lambda s: s) if raw else chat_prompt
    if prompt is not None:
        print(f"dmas-repro chat: {where} on {dev}", file=sys.stderr)
        stream_answer(model, tok, fmt(prompt), **gen)
        print()
        return 0
    print(f"dmas-repro chat: {where} on {dev}. One message per line; Ctrl-D or /exit quits, "
          "Ctrl-C stops an answer.", file=sys.stderr)
    while True:
        try:
            line = input("USER: ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if not line.strip():
            continue
        print("ASSISTANT:", end=" ", flush=True)
        try:
            stream_answer(model, tok, fmt(line), **gen)
        except KeyboardInterrupt:
            print(" [stopped]", end="")
        except UserError as e:
            print(f"[{e}]", end="")
        print()
