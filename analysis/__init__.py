"""Analysis of the DMaS-LLaMa-Lite training trajectory (pandas + scipy).

Modules, each a set of documented functions over tidy DataFrames:

- `io`: loaders for metrics.jsonl, results.csv/.parquet, per-item records, probes, ablation
  summaries; `discover()` picks `results/` + `runs/` or the shipped example results.
- `training`: loss / LR / throughput curves of a run.
- `scores`: benchmark score against validation loss and tokens, correlations, base vs instruct,
  a rerun overlaid on a reference suite at matched token counts.
- `transitions`: sigmoid fits of accuracy against loss, transition points with bootstrap CIs,
  the order in which tasks emerge.
- `items`: per-item trajectories (first reliably solved, forgotten), paired bootstrap tests
  between neighbouring checkpoints.
- `probes`: fluency measures against loss, the table of outputs per checkpoint.
- `weights`: per-layer parameter norms and relative change between checkpoints (from the files;
  import it as `analysis.weights`, also a script: `python -m analysis.weights`).
- `ablation`: resume-spike measures and throughput per segment.
- `reference`: other open suites' trajectories (OLMo ladder, Pythia; `dmas-repro import-reference`)
  beside DMaS: curves against tokens, own validation loss and gold bpb, transitions, emergence,
  comparisons at matched tokens and at matched loss.
"""

from . import ablation, io, items, probes, reference, scores, training, transitions
from .io import discover, load_ablation, load_items, load_metrics, load_probes, load_results, load_runs

__all__ = [
    "ablation", "io", "items", "probes", "reference", "scores", "training", "transitions",
    "discover", "load_ablation", "load_items", "load_metrics", "load_probes", "load_results", "load_runs",
]
