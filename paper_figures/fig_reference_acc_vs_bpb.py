"""Accuracy against the task's own loss: bits per UTF-8 byte of the gold answer (OLMo's downstream bpb;
this harness's gold_nll_per_byte / ln 2), which needs no common tokenizer. OLMo-ladder scored it with
5-shot prompts, the DMaS suites 0-shot. Fitted sigmoids and transition ticks as in reference_acc_vs_loss."""

from __future__ import annotations

from . import fig_reference_acc_vs_loss as by_loss

NOTE = "gold-answer bits per byte: OLMo-ladder 5-shot, DMaS 0-shot; Pythia's evaluations do not report it"


def plot(ctx):
    return by_loss.plot(ctx, x="gold_bpb", xlabel="gold answer, bits per byte (training goes right)", note=NOTE)


def make(ctx) -> None:
    ctx.save_figure(plot(ctx))
