"""The benchmark suites of `eval-all-checkpoints` and the one table of each task's headline metric.

Suites (few-shot counts; the paper's own settings could not be read, these follow the usual
small-model convention, e.g. TinyLlama/OLMo: zero-shot except MMLU 5-shot):

| suite | tasks | few-shot | limit | data |
|---|---|---|---|---|
| paper | hellaswag, arc_easy, arc_challenge, piqa, winogrande, boolq, openbookqa | 0 | all | Hub (network) |
| paper | lambada_openai, truthfulqa_mc2 (its fixed 6-QA prompt is part of the task) | 0 | all | Hub (network) |
| paper | mmlu (57 subjects; the group row is lm-eval's size-weighted mean) | 5 | all | Hub (network) |
| quick | hellaswag, arc_easy, lambada_openai | 0 | 500 items each | Hub datasets (network) |
| offline | hellaswag_dev (first 1,000 HellaSwag validation items, bundled in dmas_repro/eval/tasks) | 0 | all | none |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    num_fewshot: int | None = None  # None: the task's own default
    limit: float | None = None  # None: every item


SUITES: dict[str, list[TaskSpec]] = {
    "paper": [
        TaskSpec("hellaswag", 0),
        TaskSpec("arc_easy", 0),
        TaskSpec("arc_challenge", 0),
        TaskSpec("piqa", 0),
        TaskSpec("winogrande", 0),
        TaskSpec("boolq", 0),
        TaskSpec("openbookqa", 0),
        TaskSpec("lambada_openai", 0),
        TaskSpec("mmlu", 5),
        TaskSpec("truthfulqa_mc2", 0),
    ],
    "quick": [TaskSpec("hellaswag", 0, 500), TaskSpec("arc_easy", 0, 500), TaskSpec("lambada_openai", 0, 500)],
    "offline": [TaskSpec("hellaswag_dev", 0)],
}


def suite_tasks(suite: str, tasks: list[str] | None = None, limit: float | None = None,
                num_fewshot: int | None = None) -> list[TaskSpec]:
    """The suite's tasks, or `tasks` (keeping the suite's settings where it names them), with overrides."""
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    known = {t.name: t for t in SUITES[suite]}
    specs = [known.get(n, TaskSpec(n)) for n in tasks] if tasks else list(SUITES[suite])
    out = []
    for t in specs:
        out.append(TaskSpec(t.name, t.num_fewshot if num_fewshot is None else num_fewshot,
                            t.limit if limit is None else limit))
    return out



# The headline metric per task (lm-eval's conventions: length-normalised accuracy where the
# choices differ in length; lm-eval calls truthfulqa_mc2's score "acc"). Tasks not listed use
# acc_norm when reported, else acc; validation loss reports its loss.
HEADLINE_METRIC = {
    "hellaswag": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "piqa": "acc_norm",
    "openbookqa": "acc_norm", "winogrande": "acc", "boolq": "acc", "lambada_openai": "acc",
    "mmlu": "acc", "truthfulqa_mc2": "acc", "val_loss": "loss",
}
# Local variants of standard tasks (same prompts and scoring on a bundled slice of the data).
LOCAL_VARIANTS = {"hellaswag_dev": "hellaswag"}


def base_task(task: str) -> str:
    """The standard task a local variant stands for ('hellaswag_dev' -> 'hellaswag')."""
    return LOCAL_VARIANTS.get(str(task), str(task).removesuffix("_dev"))


def headline_metric(task: str, available) -> str | None:
    """The metric to report for `task` among `available`: HEADLINE_METRIC, else acc_norm, else acc,
    else (when `available` has others) the first in sorted order."""
    have = set(available)
    for m in (HEADLINE_METRIC.get(base_task(task)), "acc_norm", "acc"):
        if m in have:
            return m
    return sorted(have)[0] if have else None
