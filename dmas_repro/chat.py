"""`dmas-repro chat`: talk to an instruct checkpoint, answers streamed token by token.

Every message is formatted with `dmas_repro.sft.chat_prompt` and answered on its own (the
Alpaca data the model was tuned on is single-turn); generation stops at <|endoftext|> (50256).
"""

from __future__ import annotations

import codecs
import sys

from .errors import UserError
from .tokenizer import EOT


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


def _cmd_chat(args) -> int:
    import torch

    from .cli import parse_dtype
    from .sft import chat_prompt, load_model_from
    from .tokenizer import gpt2

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = parse_dtype(args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda") else None)
    model, where = load_model_from(args.checkpoint, device=device, dtype=dtype, prefer_sft=True)
    model.eval()
    tok = gpt2()
    fmt = (lambda s: s) if args.raw else chat_prompt
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
               top_p=args.top_p, seed=args.seed)
    if args.prompt is not None:
        print(f"dmas-repro chat: {where} on {device}", file=sys.stderr)
        stream_answer(model, tok, fmt(args.prompt), **gen)
        print()
        return 0
    print(f"dmas-repro chat: {where} on {device}. One message per line; Ctrl-D or /exit quits, "
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


def add_commands(sub) -> None:
    p = sub.add_parser("chat", help="chat with an instruct checkpoint (streams; stops at <|endoftext|>)")
    p.add_argument("--checkpoint", required=True,
                   help="hub id, HF directory, checkpoint directory, or run directory (its sft/ export first)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--raw", action="store_true", help="send the text as is, without the chat template")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bf16 on GPU, as stored on CPU)")
    p.set_defaults(func=_cmd_chat)
