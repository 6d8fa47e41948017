"""Commands of the evaluation stage: eval-all-checkpoints (flags derived from `EvalConfig`), chat,
import-reference."""

from __future__ import annotations


def _cmd_eval_all(args) -> int:
    from ..core.config import from_args
    from ..core.files import check_out_dir
    from ..eval.driver import EvalConfig, run

    cfg = from_args(EvalConfig, args, parts_explicit=args.parts is not None)
    if cfg.out:
        check_out_dir(cfg.out)  # before any work (the default results/<suite> is the driver's)
    return run(cfg)


def _cmd_chat(args) -> int:
    from ..eval.chat import chat

    return chat(args.checkpoint, args.prompt, raw=args.raw, device=args.device, dtype=args.dtype,
                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed)


def _cmd_import_reference(args) -> int:
    from ..eval.reference import run

    return run(args.format, args.paths, args.out, csv=not args.parquet_only)


def register(sub, common) -> None:
    from ..core.config import add_arguments
    from ..eval.driver import EvalConfig
    from .errors import epilog

    p = sub.add_parser(
        "eval-all-checkpoints", parents=[common], epilog=epilog("eval-all-checkpoints"),
        help="every checkpoint through lm-eval benchmarks, validation loss and probes, into one results store",
        description="Evaluate checkpoints (default: the ten released ones and the instruct model) with "
                    "lm-evaluation-harness, validation loss and qualitative probes. Rerun the same command to "
                    "resume: finished (checkpoint, task) units are skipped.",
    )
    add_arguments(p, EvalConfig)
    p.set_defaults(func=_cmd_eval_all)

    p = sub.add_parser("chat", parents=[common], epilog=epilog("chat"),
                       help="chat with an instruct checkpoint (streams; stops at <|endoftext|>)")
    p.add_argument("--checkpoint", required=True,
                   help="hub id, HF directory, checkpoint directory, or run directory (its sft/ export first)")
    p.add_argument("--prompt", default=None, help="answer this one (non-empty) message and exit")
    p.add_argument("--max-new-tokens", type=int, default=256, help="at most this many tokens per answer (>= 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), or positive to sample")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (k >= 1)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: 0 < p <= 1")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--raw", action="store_true", help="send the text as is, without the chat template")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bf16 on GPU, as stored on CPU)")
    p.set_defaults(func=_cmd_chat)

    from ..eval.reference import FORMATS

    p = sub.add_parser(
        "import-reference", parents=[common], epilog=epilog("import-reference"),
        help="published per-checkpoint results of other suites (OLMo ladder, Pythia) into a results store",
        description="Read OLMo-ladder CSVs or Pythia lm-eval result JSONs (files, or directories searched for "
                    "*.csv / *.json) into DIR/results.csv and .parquet (kind reference), with lm-eval's task and "
                    "metric names (the mapping: dmas_repro/eval/reference.py, README). Columns or tasks the mapping "
                    "does not cover are reported; a malformed file stops the import before anything is written.",
    )
    p.add_argument("format", choices=FORMATS, help="olmo-ladder (model-ladder CSVs) or pythia (lm-eval v0.3 JSONs)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, or directories holding them")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the reference results store (created; an existing one keeps its other runs)")
    p.add_argument("--parquet-only", action="store_true",
                   help="write results.parquet but not results.csv (a full import's CSV is ~21 MB)")
    p.set_defaults(func=_cmd_import_reference)
