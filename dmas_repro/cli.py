"""The `dmas-repro` command line. Every subcommand is registered here the same way:
a module with `add_commands(subparsers)` that gives each parser a `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys

from .errors import UserError

# Modules that add subcommands, in the order the data flows.
COMMAND_MODULES = ("dmas_repro.cli", "dmas_repro.data", "dmas_repro.train", "dmas_repro.sft", "dmas_repro.chat",
                   "dmas_repro.evaluate", "dmas_repro.bench", "dmas_repro.ablate")


def parse_dtype(name: str | None):
    import torch

    if name is None:
        return None
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise UserError(f"unknown dtype {name!r}; choose one of {sorted(table)}")
    return table[name]


# ---------------------------------------------------------------- foundation commands
def _cmd_info(args) -> int:
    from pathlib import Path

    import torch

    from . import checkpoint, hf
    from .model import Transformer, preset

    size = None
    if args.checkpoint:
        p = Path(args.checkpoint)
        if not p.is_dir():
            raise UserError(f"{p}: no such checkpoint directory")
        if (p / checkpoint.MODEL_CONFIG).is_file():
            cfg = checkpoint.read_model_config(p)
        else:
            cfg = hf.read_config(p, pad_vocab=False)
        size = checkpoint.dir_size_bytes(p)
        name = str(p)
    else:
        cfg = preset(args.preset)
        name = args.preset
    with torch.device("meta"):
        model = Transformer(cfg)
    info = {
        "name": name,
        "config": cfg.to_dict(),
        "params": model.num_params(),
        "params_without_embeddings": model.num_params(exclude_embeddings=True),
        "flops_per_token_train": model.flops_per_token(),
        "flops_per_token_forward": model.flops_per_token(training=False),
        "size_on_disk_bytes": size,
        "size_fp32_bytes": model.num_params() * 4,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{name}")
    for k, v in cfg.to_dict().items():
        print(f"  {k:<16} {v}")
    print(f"  {'head_dim':<16} {cfg.head_dim}")
    print(f"parameters       {info['params']:,} ({info['params'] / 1e9:.3f} B)")
    print(f"  w/o embeddings {info['params_without_embeddings']:,}")
    print(f"FLOPs/token      {info['flops_per_token_train']:.4g} train (6N + attention), "
          f"{info['flops_per_token_forward']:.4g} forward, at seq {cfg.context_length}")
    if size is not None:
        print(f"size on disk     {size / 1e9:.3f} GB")
    else:
        print(f"fp32 weights     {info['size_fp32_bytes'] / 1e9:.3f} GB")
    return 0


def _cmd_export_hf(args) -> int:
    from . import checkpoint, hf

    model = checkpoint.load_any(args.checkpoint)
    out = hf.save_hf(model, args.out, dtype=parse_dtype(args.dtype))
    print(f"wrote Hugging Face directory {out}")
    return 0


def _cmd_import_hf(args) -> int:
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from . import checkpoint, hf, hub

    src = hub.resolve(args.source, revision=args.revision, cache_dir=args.cache_dir)
    model = hf.from_hf(src, dtype=parse_dtype(args.dtype))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        checkpoint.save_model_files(model, tmp)
        if out.exists():
            raise UserError(f"{out}: already exists; choose another --out")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"imported {args.source} into {out}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("info", help="architecture, parameter count, FLOPs/token, size on disk")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a model preset: paper or tiny")
    g.add_argument("--checkpoint", help="a dmas-repro checkpoint or a Hugging Face model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export-hf", help="write a checkpoint as a transformers LlamaForCausalLM directory")
    p.add_argument("--checkpoint", required=True, help="dmas-repro checkpoint directory (or HF directory)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", default="float32", help="float32 (as released) or bfloat16")
    p.set_defaults(func=_cmd_export_hf)

    p = sub.add_parser("import-hf", help="read a released (or any compatible) HF checkpoint into our format")
    p.add_argument("source", help="a Hugging Face directory or a hub id like McGill-DMaS/DMaS-LLaMa-Lite-step-5.1k")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", default=None, help="download cache directory")
    p.add_argument("--dtype", default=None, help="cast weights (default: as stored)")
    p.set_defaults(func=_cmd_import_hf)


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmas-repro",
        description="Reproduce and analyse DMaS-LLaMa-Lite (1.7B LLaMa on FineWeb-Edu).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"dmas-repro {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dmas-repro {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"dmas-repro {args.command}: error: no space left on device ({e.filename or e})",
                  file=sys.stderr)
            return 1
        if e.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR):
            print(f"dmas-repro {args.command}: error: {e.strerror}: {e.filename}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
