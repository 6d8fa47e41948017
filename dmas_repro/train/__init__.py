"""The training stage: token shards (or instruction records) -> a run directory.

- `config`: `TrainConfig`, presets, YAML and `key=value` overrides.
- `loop`: the short training loop (`run`, `Workload`, `Trainer`); `callbacks`: its side concerns
  (metric rows, validation, samples, HellaSwag, signals, checkpoints).
- `layout`: the run directory's files (the only reader of checkpoints/step_*, hf/, sft/, metrics.jsonl);
  `checkpointer`: what a checkpoint holds, written atomically, retention.
- `optim`, `distributed`: AdamW + the LR schedule; torchrun, DDP/FSDP2 and collectives.
- `pretrain`, `sft`: the two stages' workloads; `stages`: their registry for `dmas-repro train`.
- `in_loop`: samples and HellaSwag in the authors' style; `plan`: what a config costs.
- `ablate`, `ablation_measures`: the paper's two training lessons rerun at small scale.
"""
