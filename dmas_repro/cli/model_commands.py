"""Commands of the model stage: info, export-hf, import-hf."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError


def _cmd_info(args) -> int:
    import torch

    from ..core.files import dir_size_bytes
    from ..model import hf
    from ..model import weights as checkpoint
    from ..model.transformer import Transformer, preset

    size = None
    if args.checkpoint:
        p = Path(args.checkpoint)
        if not p.is_dir():
            raise UserError(f"{p}: no such checkpoint directory")
        from ..train.layout import model_dir_of

        p = model_dir_of(str(p))  # a run directory: its newest checkpoint
        if (p / checkpoint.MODEL_CONFIG).is_file():
            cfg = checkpoint.read_model_config(p)
        else:
            cfg = hf.read_config(p, pad_vocab=False)
        size = dir_size_bytes(p)
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
    from ..core.files import DiskFull, check_new_dir
    from ..core.runtime import parse_dtype
    from ..model import hf
    from ..model.weights import MODEL_CONFIG, export_hf
    from ..train.layout import load_model_from, model_dir_of

    dtype = parse_dtype(args.dtype)
    check_new_dir(args.out, flag="--out", **hf.export_target(args.overwrite))  # before loading anything
    src = model_dir_of(args.checkpoint, revision=args.revision, cache_dir=args.cache_dir)
    if (Path(src) / MODEL_CONFIG).is_file():  # our files: converted tensor by tensor, no model in memory
        try:
            out = export_hf(src, args.out, dtype=dtype, overwrite=args.overwrite)
        except DiskFull:
            raise  # says itself what was kept
        except UserError as e:
            raise UserError(f"{args.checkpoint}: not usable as a DMaS-LLaMa-Lite model: {e}") from None
    else:
        model, src = load_model_from(args.checkpoint, revision=args.revision, cache_dir=args.cache_dir)
        out = hf.save_hf(model, args.out, dtype=dtype, overwrite=args.overwrite)
    print(f"wrote Hugging Face directory {out} (from {src})")
    return 0


def _cmd_import_hf(args) -> int:
    from ..core.files import atomic_dir, check_new_dir
    from ..core.runtime import parse_dtype
    from ..model import hf, hub
    from ..model.weights import save_model_files

    hint = "choose another --out"
    out = check_new_dir(args.out, hint=hint, flag="--out")  # before any download
    src = hub.resolve(args.source, revision=args.revision, cache_dir=args.cache_dir)
    model = hf.from_hf(src, dtype=parse_dtype(args.dtype))
    with atomic_dir(out, hint=hint) as tmp:
        save_model_files(model, tmp)
    print(f"imported {args.source} into {args.out}")
    return 0


def register(sub, common) -> None:
    from .errors import epilog

    p = sub.add_parser("info", parents=[common], help="architecture, parameter count, FLOPs/token, size on disk",
                       epilog=epilog("info"))
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a model preset: paper or tiny")
    g.add_argument("--checkpoint", help="a dmas-repro checkpoint, a Hugging Face model directory, or a training run "
                                        "directory (its newest checkpoint)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export-hf", parents=[common], epilog=epilog("export-hf"),
                       help="write a checkpoint as a transformers LlamaForCausalLM directory")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint directory, HF directory, training run directory (its newest checkpoint), "
                        "or hub id")
    p.add_argument("--out", required=True, help="output directory: new or empty")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds an earlier export (only export files: config, weights, "
                        "tokenizer); anything else there is refused")
    p.add_argument("--dtype", default="float32", help="float32 (as released) or bfloat16")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a hub id")
    p.add_argument("--cache-dir", default=None, help="download cache directory")
    p.set_defaults(func=_cmd_export_hf)

    p = sub.add_parser("import-hf", parents=[common], epilog=epilog("import-hf"),
                       help="read a released (or any compatible) HF checkpoint into our format")
    p.add_argument("source", help="a Hugging Face directory or a hub id like McGill-DMaS/DMaS-LLaMa-Lite-step-5.1k")
    p.add_argument("--out", required=True, help="output checkpoint directory: new or empty")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", default=None, help="download cache directory")
    p.add_argument("--dtype", default=None, help="cast weights (default: as stored)")
    p.set_defaults(func=_cmd_import_hf)
