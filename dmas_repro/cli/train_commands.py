"""Commands of the training stage: train (every registered stage, or --plan), sft, ablate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_Raw = argparse.RawDescriptionHelpFormatter


def _cmd_train(args) -> int:
    from ..core.files import check_out_dir
    from ..train import distributed as D
    from ..train import stages
    from ..train.config import load_config

    names = stages.stage_names(args.stages)  # unknown names fail before any work
    embedded = not (args.preset or args.config or args.overrides or args.out)
    preset = args.preset or "tiny"
    if args.out:
        run_dir = check_out_dir(args.out)
    elif args.resume:
        run_dir = Path("runs") / preset
    else:
        run_dir = stages.default_out(preset)
    per = stages.split_overrides(args.overrides or [])
    if args.plan:
        from ..train.plan import format_plan, plan

        cfg = load_config(preset, args.config, per["pretrain"], max_steps=args.max_steps)
        cfg.model_config()
        print(format_plan(plan(cfg, args.mfu), preset))
        return 0
    # check the pretraining config before any work (unknown keys, batch arithmetic)
    if "pretrain" in names:
        load_config(preset, args.config, per["pretrain"], device=args.device, dtype=args.dtype,
                    max_steps=args.max_steps).validate(D.world_size())
    base = stages.StageContext(run_dir=run_dir, preset=preset, yaml_path=args.config, device=args.device,
                               dtype=args.dtype, max_steps=args.max_steps, resume=args.resume,
                               restore_optimizer=not args.no_restore_optimizer, embedded=embedded)
    return stages.run_stages(names, base, per)


def _cmd_sft(args) -> int:
    from ..core.files import check_out_dir
    from ..train import distributed as D
    from ..train.sft import run_sft

    check_out_dir(args.out)
    result = run_sft(args.base, args.out, args.preset, args.overrides or [], device=args.device, dtype=args.dtype,
                     max_steps=args.max_steps, resume=args.resume, restore_optimizer=not args.no_restore_optimizer,
                     data=args.data, revision=args.revision, cache_dir=args.cache_dir)
    if result.interrupted:
        return 130
    if D.rank() == 0:
        print(f"sft: {args.out}: step {result.step}, val_loss {result.first_val_loss} -> {result.last_val_loss}")
    return 0


def _cmd_resume(args) -> int:
    from ..core.config import from_args
    from ..core.files import check_out_dir
    from ..train.ablate import SUMMARY, ResumeAblation, run_resume

    ab = from_args(ResumeAblation, args, overrides=list(args.overrides or []))
    out = check_out_dir(args.out or "runs/ablate/resume")
    s = run_resume(ab, out)
    if s is None:
        print(f"stopped; rerun the same command to continue {out}", file=sys.stderr)
        return 130
    print(f"resume ablation (resume at step {s['resume_step']}, end {s['end_step']}): {out / SUMMARY}")
    print(f"  {'variant':<27} {'spike':>8} {'recover':>8} {'final gap':>10} {'val gap':>8}")
    for name, v in s["variants"].items():
        vg = f"{v['final_val_gap']:+.4f}" if v["final_val_gap"] is not None else "-"
        print(f"  {name:<27} {v['peak_excess']:+8.4f} {str(v['steps_to_recover']):>8} {v['final_gap']:+10.4f} {vg:>8}")
    print(f"  full state identical to the reference: {s['full_state_equals_reference']}; "
          f"wall {s['wall_s']['total']:.0f} s")
    return 0


def _cmd_world_size(args) -> int:
    from ..core.config import from_args
    from ..core.files import check_out_dir
    from ..train.ablate import SUMMARY, WorldSizeAblation, run_world_size

    ab = from_args(WorldSizeAblation, args, overrides=list(args.overrides or []))
    out = check_out_dir(args.out or "runs/ablate/world-size")
    s = run_world_size(ab, out)
    if s is None:
        print(f"stopped; rerun the same command to continue {out}", file=sys.stderr)
        return 130
    print(f"world-size ablation (continue from step {s['start_step']} to {s['end_step']}): {out / SUMMARY}")
    print(f"  same global batch on {s['processes']} processes: max |loss diff| {s['same_batch_max_abs_diff']:.2e} "
          f"(tolerance {s['tolerance']:g}: {'ok' if s['same_batch_within_tolerance'] else 'EXCEEDED'})"
          + ("" if s.get("same_batch_final_val_diff") is None
             else f"; final |val loss diff| {s['same_batch_final_val_diff']:.2e}"))
    for seg in s["segments"]:
        tps = seg["tokens_per_s_median"]
        print(f"  {seg['run']:<27} world {seg['world_size']} batch {seg['global_batch_tokens']:>7} tokens  "
              f"{(tps or 0):>9,.0f} tok/s  final loss {seg['final_loss']:.4f}")
    return 0


def register(sub, common) -> None:
    from ..core.config import add_arguments, describe
    from ..train.ablate import ResumeAblation, WorldSizeAblation
    from ..train.config import PRESETS, TrainConfig
    from ..train.sft import SFT_PRESETS, SFTConfig
    from ..train.stages import STAGES
    from .errors import epilog

    p = sub.add_parser(
        "train", parents=[common],
        help="pretrain (then later stages); no arguments: the embedded tiny run on bundled data",
        description="Config = preset + optional YAML + key=value overrides (model.KEY=... for the model, "
                    "STAGE.KEY=... for a later stage). Under torchrun it runs data-parallel.",
        epilog="config keys (TrainConfig, paper preset defaults):\n" + describe(TrainConfig) + "\n\n" + epilog("train"),
        formatter_class=_Raw)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. lr=3e-4 micro_batch=8")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="training preset (default tiny)")
    p.add_argument("--config", default=None, help="YAML file of config keys (applied after the preset)")
    p.add_argument("--out", default=None, help="run directory (default runs/PRESET, dated when it exists)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this global step (schedule unchanged)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default=None, help="auto | float32 | bfloat16")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--no-restore-optimizer", action="store_true",
                   help="with --resume: fresh AdamW state (weights, schedule and data position restored)")
    p.add_argument("--plan", action="store_true",
                   help="print tokens, data size, FLOPs and GPU-hours of the config, and exit")
    p.add_argument("--mfu", type=float, default=0.4, help="with --plan: assumed model FLOPs utilisation")
    p.add_argument("--stages", default=None, help=f"comma list of stages to run (default all: {','.join(STAGES)})")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "sft", parents=[common],
        help="instruction-tune a base model (LoRA or full) on Alpaca in the Vicuna 1.1 format",
        description="Config = preset + key=value overrides: SFT keys (below) and the training loop's keys "
                    "(lr, min_lr, warmup_steps, total_steps, micro_batch, val_every, ckpt_every, ...; see "
                    "`dmas-repro train --help`).",
        epilog="SFT keys:\n" + describe(SFTConfig) + "\n\n" + epilog("sft"), formatter_class=_Raw)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. method=full lr=1e-4")
    p.add_argument("--base", required=True,
                   help="hub id, HF directory, checkpoint directory, or training run directory (newest checkpoint)")
    p.add_argument("--out", required=True, help="SFT run directory")
    p.add_argument("--preset", default="auto", choices=["auto", *sorted(SFT_PRESETS)],
                   help="auto (default): paper for a paper-sized base, else tiny")
    p.add_argument("--data", default=None, help="bundled | yahma/alpaca-cleaned | a .json/.jsonl file")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (schedule unchanged)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default=None, help="auto | float32 | bfloat16")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--no-restore-optimizer", action="store_true", help="with --resume: fresh AdamW state")
    p.add_argument("--revision", default=None, help="hub revision of --base")
    p.add_argument("--cache-dir", default=None, help="download cache directory")
    p.set_defaults(func=_cmd_sft)

    p = sub.add_parser("ablate", parents=[common], help="the paper's training lessons at small scale: resume, "
                       "world-size", description="Rerun the paper's two training lessons through the training loop.",
                       epilog=epilog("ablate"))
    asub = p.add_subparsers(dest="ablation", metavar="ABLATION", required=True)
    r = asub.add_parser("resume", parents=[common],
                        help="resume with the full state vs a fresh AdamW (and the re-stretched LR)",
                        description="Reference 0 -> E with a checkpoint at S; continue S -> E with the full state, "
                                    "with a fresh AdamW, and with a fresh AdamW plus the authors' re-stretched LR.")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training config overrides (e.g. model.n_layer=2)")
    r.add_argument("--out", default=None, help="output directory (default runs/ablate/resume)")
    add_arguments(r, ResumeAblation)
    r.set_defaults(func=_cmd_resume)
    w = asub.add_parser("world-size", parents=[common],
                        help="continue one checkpoint on 1 and 2 processes (same and doubled batch)",
                        description="Base 0 -> S on 1 process; S -> E on 1 process, on 2 processes with the same "
                                    "global batch, and on 2 processes with the global batch doubled.")
    w.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training config overrides")
    w.add_argument("--out", default=None, help="output directory (default runs/ablate/world-size)")
    add_arguments(w, WorldSizeAblation)
    w.set_defaults(func=_cmd_world_size)

