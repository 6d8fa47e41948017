"""`hellaswag_dev` is lm-eval's `hellaswag` on the bundled slice: the same prompts, choices, labels
and config; only the data source differs."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import lm_eval
import pytest
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.tasks.hellaswag import utils as lm_hellaswag

from dmas_repro.eval.suites import TASKS_DIR

DATA = TASKS_DIR / "hellaswag_val_dev.jsonl"
LM_YAML = Path(lm_eval.__file__).resolve().parent / "tasks" / "hellaswag" / "hellaswag.yaml"


@pytest.fixture(scope="module")
def task():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False).load(["hellaswag_dev"])["tasks"][
        "hellaswag_dev"]


def test_every_query_choice_and_label_is_lm_evals(task):
    rows = [json.loads(x) for x in DATA.read_text().splitlines()]
    assert len(rows) == 1000 and [r["ind"] for r in rows] == list(range(1000))
    raw = datasets.Dataset.from_list([{k: r[k] for k in ("activity_label", "ctx_a", "ctx_b", "endings", "label")}
                                      for r in rows])
    want = lm_hellaswag.process_docs(raw)  # lm-eval's own processing of the raw fields
    docs = task.validation_docs()
    assert len(docs) == len(want) == 1000
    for i, (d, w, r) in enumerate(zip(docs, want, rows)):
        assert task.doc_to_text(d) == w["query"] == r["query"], i
        assert task.doc_to_choice(d) == w["choices"] == r["choices"], i
        assert task.doc_to_target(d) == w["gold"] == int(r["label"]), i
    # lm-eval capitalises ctx_b: the first item reads "... on a roof. He", not "... on a roof. he"
    assert task.doc_to_text(docs[0]) == "Roof shingle removal: A man is sitting on a roof. He"


def test_config_is_lm_evals_hellaswag_but_the_data():
    ours = load_yaml(TASKS_DIR / "hellaswag_dev.yaml")
    theirs = load_yaml(LM_YAML)
    data_keys = {"task", "dataset_path", "dataset_name", "custom_dataset", "training_split", "test_split", "tag"}
    # the same function of lm-eval's file (lm-eval's loader may hold its own copy of the module)
    where = {(f.__module__, f.__qualname__, Path(f.__code__.co_filename).resolve())
             for f in (ours.pop("process_docs"), theirs.pop("process_docs"), lm_hellaswag.process_docs)}
    assert where == {("lm_eval.tasks.hellaswag.utils", "process_docs", LM_YAML.parent / "utils.py")}
    assert {k: v for k, v in ours.items() if k not in data_keys} == {k: v for k, v in theirs.items()
                                                                       if k not in data_keys}
