"""The evaluation stage: checkpoints -> one results store.

- `driver`: `dmas-repro eval-all-checkpoints` (`EvalConfig`, `run`).
- `sources`: which checkpoints (released registry, hub ids, HF/our directories, run directories) and
  getting each onto local disk.
- `suites`: the benchmark suites and each task's headline metric; `harness`: the lm-eval adapter
  (scoring is lm-eval's own) and per-item records; `tasks/`: bundled task YAMLs.
- `store`: the results store (unit files, results.csv/.parquet, probes, failures).
- `valloss`: validation loss over a fixed token budget; `probes`: qualitative generations.
- `chat`: `dmas-repro chat`.
"""
