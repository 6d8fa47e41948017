"""Commands of the speed benchmarks: bench train|eval|release|prepare|report (flags derived from the bench configs)."""

from __future__ import annotations


def _cmd_train(args) -> int:
    from ..core.config import from_args
    from ..speed.bench import TrainBenchConfig, format_train, run_train_bench
    from ..speed.common import write_json

    res = run_train_bench(from_args(TrainBenchConfig, args))
    print(format_train(res))
    write_json(args.json, res)
    return 0


def _cmd_eval(args) -> int:
    from ..core.config import from_args
    from ..speed.bench import EvalBenchConfig, format_eval, run_eval_bench
    from ..speed.common import write_json

    res = run_eval_bench(from_args(EvalBenchConfig, args))
    print(format_eval(res))
    write_json(args.json, res)
    return 0


def _cmd_release(args) -> int:
    from ..core.config import from_args
    from ..speed.common import write_json
    from ..speed.release import ReleaseBenchConfig, markdown, run_release_bench

    res = run_release_bench(from_args(ReleaseBenchConfig, args))
    print(markdown(res))
    write_json(args.json, res)
    return 0 if all(r["rc"] == 0 for r in res["commands"].values()) else 1


def _cmd_prepare(args) -> int:
    from ..core.config import from_args
    from ..speed.common import write_json
    from ..speed.prepare_bench import PrepareBenchConfig, format_prepare, run_prepare_bench

    res = run_prepare_bench(from_args(PrepareBenchConfig, args))
    print(format_prepare(res))
    write_json(args.json, res)
    return 0


def _cmd_report(args) -> int:
    from ..speed.bench import report

    print(report(args.json_files), end="")
    return 0


def register(sub, common) -> None:
    from ..core.config import add_arguments
    from ..speed.bench import EvalBenchConfig, TrainBenchConfig
    from ..speed.prepare_bench import PrepareBenchConfig
    from ..speed.release import ReleaseBenchConfig
    from .errors import epilog

    p = sub.add_parser("bench", parents=[common], epilog=epilog("bench"),
                       help="speed benchmarks: training steps vs transformers, evaluation time")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    for name, config, func, what in (
        ("train", TrainBenchConfig, _cmd_train,
         "tokens/s, MFU, memory of training steps: ours (eager, compiled) vs HF"),
        ("eval", EvalBenchConfig, _cmd_eval,
         "seconds per checkpoint: validation loss and lm-eval throughput by batch size"),
        ("release", ReleaseBenchConfig, _cmd_release,
         "import-hf, export-hf, eval-all-checkpoints, chat on a random release-shaped checkpoint: seconds and "
         "peak memory against the weights' bytes"),
        ("prepare", PrepareBenchConfig, _cmd_prepare,
         "prepare-data tokens/s on a large local file against tiktoken alone x processes"),
    ):
        one = bsub.add_parser(name, parents=[common], help=what)
        add_arguments(one, config)
        one.add_argument("--json", default=None, metavar="PATH", help="write the full result as JSON")
        one.set_defaults(func=func)
    r = bsub.add_parser("report", parents=[common],
                        help="print a BENCHMARKS.md section (markdown) for result JSON files")
    r.add_argument("json_files", nargs="+", metavar="JSON")
    r.set_defaults(func=_cmd_report)
