"""Commands of the data stage: prepare-data (flags derived from `PrepareConfig`)."""

from __future__ import annotations

import os


def _default_procs() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _cmd_prepare(args) -> int:
    from ..core.config import from_args
    from ..core.files import check_out_dir
    from ..data.prepare import PrepareConfig, default_data_dir, prepare
    from ..data.shards import verify

    cfg = from_args(PrepareConfig, args, num_proc=args.num_proc or _default_procs())
    out = check_out_dir(args.out or default_data_dir(cfg.source))
    man = prepare(cfg, out, progress=None if not args.no_progress else False)
    if args.verify:
        verify(out)
    print(f"data in {out}: {man['tokens']['train']:,} train tokens in {len(man['shards']['train'])} shards, "
          f"{man['tokens']['val']:,} val tokens ({man['documents']['train']:,} + {man['documents']['val']:,} docs)")
    return 0


def register(sub, common) -> None:
    from ..core.config import add_arguments
    from ..data.prepare import PrepareConfig
    from .errors import epilog

    p = sub.add_parser("prepare-data", parents=[common], epilog=epilog("prepare-data"),
                       help="tokenize a corpus into uint16 shards (bundled, fineweb-edu, or files)")
    add_arguments(p, PrepareConfig, exclude=("chunk_docs",),
                  defaults={"num_proc": f"the CPU count, at most 8 (here {_default_procs()})"})
    p.add_argument("--out", default=None, help="output directory (default data/<source>)")
    p.add_argument("--verify", action="store_true", help="recompute shard hashes at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)
