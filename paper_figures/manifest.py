"""Every figure and table `make figures` builds: output name, script, kind, what it shows, inputs.

One entry per script in this directory, registered here explicitly; `python -m paper_figures --list`
prints this table. To add a figure: write paper_figures/fig_NAME.py with `make(ctx)`, import it here
and add its Entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from . import (
    fig_acc_vs_loss,
    fig_base_vs_instruct,
    fig_item_heatmap,
    fig_probe_fluency,
    fig_reference_acc_vs_bpb,
    fig_reference_acc_vs_loss,
    fig_reference_acc_vs_tokens,
    fig_rerun_overlay,
    fig_resume_ablation,
    fig_scores_vs_tokens,
    fig_training_curves,
    fig_weight_change,
    fig_world_size_ablation,
    tab_architecture,
    tab_neighbour_tests,
    tab_qualitative,
    tab_reference_matched_loss,
    tab_reference_matched_tokens,
    tab_reference_transitions,
    tab_scores,
    tab_transitions,
)


@dataclass(frozen=True)
class Entry:
    name: str  # output file stem in paper_figures/out/
    module: ModuleType  # its script, paper_figures/<module>.py, with make(ctx) (and plot/table for notebooks)
    kind: str  # figure | table
    title: str
    inputs: str  # what it reads

    @property
    def script(self) -> str:
        return f"paper_figures/{self.module.__name__.rpartition('.')[2]}.py"


MANIFEST: list[Entry] = [
    Entry("training_curves", fig_training_curves, "figure",
          "Training and validation loss against tokens, with the learning-rate schedule", "runs/*/metrics.jsonl"),
    Entry("scores_vs_tokens", fig_scores_vs_tokens, "figure",
          "Benchmark scores and validation loss against tokens seen, per checkpoint", "results.csv"),
    Entry("acc_vs_loss", fig_acc_vs_loss, "figure",
          "Accuracy against validation loss with fitted sigmoids and transition points (bootstrap CI)",
          "results.csv, items/"),
    Entry("base_vs_instruct", fig_base_vs_instruct, "figure",
          "Base vs instruct: benchmark scores and probe fluency of the instruct model against its base",
          "results.csv, probes.jsonl"),
    Entry("item_heatmap", fig_item_heatmap, "figure",
          "Per-item learning heat-map: which items each checkpoint solves; items learned and forgotten",
          "items/"),
    Entry("weight_change", fig_weight_change, "figure",
          "Relative weight change per layer between consecutive checkpoints", "results/weights/*.csv or checkpoints"),
    Entry("probe_fluency", fig_probe_fluency, "figure",
          "Fluency of probe outputs (repetition, distinct-n, log-probability) against validation loss",
          "probes.jsonl, results.csv"),
    Entry("rerun_overlay", fig_rerun_overlay, "figure",
          "Own training run overlaid on the released suite at matched token counts",
          "results.csv with released and own checkpoints"),
    Entry("resume_ablation", fig_resume_ablation, "figure",
          "Resuming with vs without the optimizer state: loss spike and recovery", "dmas-repro ablate resume"),
    Entry("world_size_ablation", fig_world_size_ablation, "figure",
          "Continuing on 1 vs 2 processes: loss agreement and throughput", "dmas-repro ablate world-size"),
    Entry("reference_acc_vs_tokens", fig_reference_acc_vs_tokens, "figure",
          "DMaS beside OLMo-ladder and Pythia runs: accuracy against tokens (log), the ten released checkpoints "
          "marked", "results.csv, reference store (dmas-repro import-reference; shipped in examples/)"),
    Entry("reference_acc_vs_loss", fig_reference_acc_vs_loss, "figure",
          "Accuracy against each family's own validation loss with fitted sigmoids and transitions",
          "results.csv, reference store"),
    Entry("reference_acc_vs_bpb", fig_reference_acc_vs_bpb, "figure",
          "Accuracy against the gold answer's bits per byte (tokenizer-free task loss)",
          "results.csv, reference store"),
    Entry("architecture", tab_architecture, "table",
          "Architecture and training hyperparameters, generated from the presets", "dmas_repro presets"),
    Entry("scores_table", tab_scores, "table",
          "Benchmark scores and validation loss per checkpoint", "results.csv"),
    Entry("transitions_table", tab_transitions, "table",
          "Transition loss per task (bootstrap CI), loss-score correlations, order of emergence",
          "results.csv, items/"),
    Entry("reference_matched_tokens", tab_reference_matched_tokens, "table",
          "Reference runs' accuracy at the ten DMaS token counts (log-token interpolation, extrapolation flagged)",
          "results.csv, reference store"),
    Entry("reference_transitions", tab_reference_transitions, "table",
          "Transition per task and run of each family (own loss, gold bpb; Pythia: tokens), order of emergence",
          "results.csv, reference store"),
    Entry("reference_matched_loss", tab_reference_matched_loss, "table",
          "Runs compared at matched loss and at matched gold bpb", "results.csv, reference store"),
    Entry("neighbour_tests", tab_neighbour_tests, "table",
          "Paired bootstrap tests between neighbouring checkpoints: which changes are real", "items/"),
    Entry("qualitative_outputs", tab_qualitative, "table",
          "Greedy probe outputs across checkpoints", "probes.jsonl"),
]


def by_name() -> dict[str, Entry]:
    return {e.name: e for e in MANIFEST}
