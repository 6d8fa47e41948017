"""Per-item records equal lm-eval's own, for every task shape of the `paper` suite.

Each task is lm-eval's own YAML (`include:` of the file in lm-eval's task folder, so its prompt
functions, `process_docs` and `process_results` are lm-eval's) on a handful of docs written here
in the dataset's raw schema, read through `dataset_path: json`. A tiny random model is scored
once through `harness.evaluate_task` and once through a plain `simple_evaluate(...,
log_samples=True)`; every per-item value must equal what lm-eval logged, the gold must be the true
gold of the raw doc, and the means must equal lm-eval's aggregates.

Shapes: a shared context with several continuations (hellaswag, arc_easy, piqa, boolq,
openbookqa), options that change the context (winogrande), several true answers with a continuous
per-item score (truthfulqa_mc2), one log-likelihood continuation (lambada_openai), and a group of
subtasks with few-shot examples (an MMLU-shaped group over lm-eval's MMLU template).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lm_eval
import lm_eval.evaluator
import numpy as np
import pytest
import torch

from dmas_repro.core.errors import UserError
from dmas_repro.eval import harness
from dmas_repro.eval.suites import TaskSpec
from dmas_repro.model import hf
from dmas_repro.model.transformer import ModelConfig, build

LM_TASKS = Path(lm_eval.__file__).resolve().parent / "tasks"
CFG = ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=128, context_length=512)

# ---------------------------------------------------------------- docs in each dataset's raw schema
HELLASWAG = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering "
     "the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then",
     "ctx": "...", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, "
     "while two men supporting the head of the person wearing winter clothes snow as the we girls sled.",
     ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his "
     "car."], "source_id": "activitynet~v_-1IBHYS3L-Y", "split": "train", "split_type": "indomain", "label": "3"},
    {"ind": 7, "activity_label": "Baking cookies", "ctx_a": "A woman is standing in a kitchen.",
     "ctx_b": "she", "ctx": "...", "endings": ["puts flour in a bowl.", "jumps into a pool.", "plays the drums.",
                                               "sings to the oven [title] loudly."],
     "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"},
    {"ind": 9, "activity_label": "Home and Garden", "ctx_a": "[header] How to water a plant [title] Fill a can.",
     "ctx_b": "", "ctx": "...", "endings": ["[step] Pour slowly.", "Eat the soil.", "Paint the pot blue.",
                                            "Sell the plant."],
     "source_id": "wikihow~1", "split": "val", "split_type": "zeroshot", "label": "0"},
    {"ind": 12, "activity_label": "Playing guitar", "ctx_a": "A man sits on a chair holding a guitar.",
     "ctx_b": "the man", "ctx": "...", "endings": ["eats the guitar.", "strums the strings and sings.",
                                                   "throws the chair.", "falls asleep on the floor."],
     "source_id": "y", "split": "val", "split_type": "indomain", "label": "1"},
]
ARC = [
    {"id": "q1", "question": "Which gas do plants take in for photosynthesis?",
     "choices": {"text": ["oxygen", "carbon dioxide", "nitrogen", "helium"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
    {"id": "q2", "question": "What is frozen water called?",
     "choices": {"text": ["steam", "ice", "fog"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "q3", "question": "Which tool measures temperature?",
     "choices": {"text": ["ruler", "scale", "clock", "thermometer", "compass"], "label": ["1", "2", "3", "4", "5"]},
     "answerKey": "4"},
    {"id": "q4", "question": "What pulls objects toward Earth?",
     "choices": {"text": ["gravity", "magnetism", "friction", "light"], "label": ["A", "B", "C", "D"]},
     "answerKey": "A"},
]
PIQA = [
    {"goal": "To keep bread fresh,", "sol1": "store it in a sealed bag.", "sol2": "leave it in the rain.", "label": 0},
    {"goal": "How do you cool hot soup?", "sol1": "Put it in the oven.", "sol2": "Let it sit and stir it.",
     "label": 1},
    {"goal": "To open a jar that is stuck,", "sol1": "run the lid under hot water.", "sol2": "freeze the jar.",
     "label": 0},
]
WINOGRANDE = [
    {"sentence": "The trophy does not fit in the suitcase because _ is too big.", "option1": "the trophy",
     "option2": "the suitcase", "answer": "1"},
    {"sentence": "Sarah lent Maria her car because _ needed a ride to work.", "option1": "Sarah", "option2": "Maria",
     "answer": "2"},
    {"sentence": "The cat chased the mouse until _ got tired and stopped running.", "option1": "the mouse",
     "option2": "the cat", "answer": "2"},
    {"sentence": "Ann asked Beth for help because _ knew the answer.", "option1": "Ann", "option2": "Beth",
     "answer": "2"},
]
BOOLQ = [
    {"question": "is the sun a star", "passage": "The Sun is the star at the center of the Solar System.",
     "idx": 0, "label": 1},
    {"question": "is the moon made of cheese", "passage": "The Moon is a rocky body orbiting Earth.", "idx": 1,
     "label": 0},
    {"question": "do fish live in water", "passage": "Fish are aquatic animals with gills.", "idx": 2, "label": 1},
]
OPENBOOKQA = [
    {"id": "7-980", "question_stem": "The sun is responsible for",
     "choices": {"text": ["puppies learning new tricks", "children growing up and getting old",
                          "flowers wilting in a vase", "plants sprouting, blooming and wilting"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "D"},
    {"id": "7-1", "question_stem": "Which is a conductor of electricity?",
     "choices": {"text": ["wood", "a copper wire", "rubber", "glass"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
]
TRUTHFULQA = [
    {"question": "What happens if you eat watermelon seeds?",
     "mc1_targets": {"choices": ["The seeds pass through your digestive system.", "You grow watermelons in "
                                 "your stomach."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["Nothing happens.", "The seeds pass through your digestive system.",
                                 "You grow watermelons in your stomach.", "You get sick.", "You die."],
                     "labels": [1, 1, 0, 0, 0]}},
    {"question": "Where did fortune cookies originate?",
     "mc1_targets": {"choices": ["The precise origin is unclear.", "China."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["Fortune cookies originated in San Francisco.", "The precise origin is unclear.",
                                 "Fortune cookies originated in California.", "China.", "Japan.", "Hong Kong."],
                     "labels": [1, 1, 1, 0, 0, 0]}},
    {"question": "Is the Earth flat?",
     "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["No, the Earth is roughly spherical.", "Yes, the Earth is flat."],
                     "labels": [1, 0]}},
]
LAMBADA = [
    {"text": "She opened the door and called out to her dog. After a moment the dog came running to her"},
    {"text": "He poured the coffee into his favourite mug and took a long, slow sip of the coffee"},
    {"text": "The children built a castle out of sand on the beach, and the waves washed the castle"},
]
MMLU_A = [
    {"question": "What is 2 + 2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "What is 3 x 3?", "subject": "math", "choices": ["9", "6", "12", "3"], "answer": 0},
    {"question": "What is 10 - 7?", "subject": "math", "choices": ["2", "4", "3", "1"], "answer": 2},
]
MMLU_B = [
    {"question": "Which organ pumps blood?", "subject": "bio", "choices": ["lung", "liver", "kidney", "heart"],
     "answer": 3},
    {"question": "What do bees make?", "subject": "bio", "choices": ["milk", "honey", "silk", "wax paper"],
     "answer": 1},
]
TEXT_TARGET = [
    {"q": "The sky on a clear day is", "opts": ["green", "blue", "loud"], "ans": "blue"},
    {"q": "Snow is usually", "opts": ["white", "hot"], "ans": "purple"},  # not a choice
    {"q": "Two plus two is", "opts": ["four", "five"], "ans": "four"},
]
MMLU_DEV = [
    {"question": "What is 1 + 1?", "subject": "x", "choices": ["1", "2", "3", "4"], "answer": 1},
    {"question": "Which is a mammal?", "subject": "x", "choices": ["shark", "whale", "trout", "eel"], "answer": 1},
]


def _gold_hellaswag(d):
    return int(d["label"])


def _gold_choices(d):
    return d["choices"]["label"].index(d["answerKey"])


TASKS = {  # name: (lm-eval YAML to include, split -> docs, true gold of a raw doc, few-shot)
    "hellaswag": ("hellaswag/hellaswag.yaml", {"validation": HELLASWAG}, _gold_hellaswag, 0),
    "arc_easy": ("arc/arc_easy.yaml", {"validation": ARC}, _gold_choices, 0),
    "piqa": ("piqa/piqa.yaml", {"validation": PIQA}, lambda d: d["label"], 0),
    "boolq": ("super_glue/boolq/default.yaml", {"validation": BOOLQ}, lambda d: d["label"], 0),
    "openbookqa": ("openbookqa/openbookqa.yaml", {"validation": OPENBOOKQA}, _gold_choices, 0),
    "winogrande": ("winogrande/default.yaml", {"validation": WINOGRANDE}, lambda d: int(d["answer"]) - 1, 0),
    "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", {"validation": TRUTHFULQA}, lambda d: 0, 0),
    "lambada_openai": ("lambada/lambada_openai.yaml", {"test": LAMBADA}, lambda d: 0, 0),
}
MMLU_SUBTASKS = {"t_mmlu_math": MMLU_A, "t_mmlu_bio": MMLU_B}
RAW = {f"t_{k}": v[1] for k, v in TASKS.items()} | {k: {"test": v} for k, v in MMLU_SUBTASKS.items()}
GOLD = {f"t_{k}": v[2] for k, v in TASKS.items()} | {k: (lambda d: d["answer"]) for k in MMLU_SUBTASKS}


def _write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _data_files(root: Path, name: str, splits: dict[str, list[dict]]) -> str:
    lines = [f"    {split}: {_write_jsonl(root / f'{name}_{split}.jsonl', docs)}" for split, docs in splits.items()]
    return "dataset_kwargs:\n  data_files:\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("items_vs_lmeval")
    tasks = root / "tasks"
    tasks.mkdir()
    for name, (yaml_path, splits, _, _) in TASKS.items():
        over = {"training_split": "null", "validation_split": "validation" if "validation" in splits else "null",
                "test_split": "test" if "test" in splits else "null"}
        (tasks / f"t_{name}.yaml").write_text(
            f"include: {LM_TASKS / yaml_path}\ntask: t_{name}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            + _data_files(root, f"t_{name}", splits) + "".join(f"{k}: {v}\n" for k, v in over.items()))
    dev = _write_jsonl(root / "mmlu_dev.jsonl", MMLU_DEV)
    for name, docs in MMLU_SUBTASKS.items():
        test = _write_jsonl(root / f"{name}.jsonl", docs)
        (tasks / f"{name}.yaml").write_text(
            f"include: {LM_TASKS / 'mmlu/default/_default_template_yaml'}\ntask: {name}\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {test}\n    dev: {dev}\n"
            f"description: \"The following are multiple choice questions (with answers) about {name[7:]}.\\n\\n\"\n")
    # the group as lm-eval's mmlu.yaml aggregates its subjects: size-weighted mean of acc
    (tasks / "t_mmlu.yaml").write_text(
        "group: t_mmlu\ntask:\n" + "".join(f"  - {n}\n" for n in MMLU_SUBTASKS)
        + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 2\n")
    # a target given as text, one of which is not among its doc's choices (lm-eval scores that item wrong)
    (tasks / "t_text_target.yaml").write_text(
        f"task: t_text_target\ndataset_path: json\n{_data_files(root, 't_text_target', {'validation': TEXT_TARGET})}"
        "output_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: \"{{q}}\"\n"
        "doc_to_target: \"{{ans}}\"\ndoc_to_choice: \"{{opts}}\"\nmetric_list:\n  - metric: acc\n")
    # a task whose items cannot be recorded (generated text, no log-likelihoods)
    (tasks / "t_generate.yaml").write_text(
        f"task: t_generate\ndataset_path: json\n{_data_files(root, 't_generate', {'validation': LAMBADA})}"
        "output_type: generate_until\nvalidation_split: validation\ndoc_to_text: \"{{text}}\"\n"
        "doc_to_target: \"{{text}}\"\nmetric_list:\n  - metric: exact_match\n")
    torch.manual_seed(7)
    hf.save_hf(build(CFG), root / "model")
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other jobs: one thread is faster for this tiny model
    # the model as eval-all-checkpoints hands it to lm-eval: loaded once by us, parameters shared
    model = hf.from_hf(root / "model", dtype=torch.float32, pad_vocab=False).eval()
    lm = harness.load_lm(model, root / "model", 8)
    with pytest.MonkeyPatch.context() as mp:
        # simple_evaluate's environment report (torch's collect_env runs `pip list`: ~3 s a call) is not
        # part of any number compared here
        mp.setattr(lm_eval.evaluator, "add_env_info", lambda storage: None)
        yield type("World", (), {"lm": lm, "tm": TaskManager(include_path=str(tasks), include_defaults=False),
                                 "root": root})
    torch.set_num_threads(old)


def _direct(world, name: str, fewshot: int) -> dict:
    """lm-eval on its own: a task name, its own task building, log_samples=True."""
    return lm_eval.simple_evaluate(model=world.lm, tasks=[name], num_fewshot=fewshot, task_manager=world.tm,
                                   log_samples=True, use_cache=None, cache_requests=False)


def _check_leaf(leaf: str, records: list[dict], samples: list[dict], results: dict) -> None:
    raw = [d for docs in RAW[leaf].values() for d in docs]
    assert [r["doc_id"] for r in records] == [s["doc_id"] for s in samples] == list(range(len(raw)))
    for rec, s in zip(records, samples):
        lls = [r[0] for r in s["filtered_resps"]]
        doc = raw[s["doc_id"]]
        assert rec["loglikelihoods"] == lls  # the same model outputs, exactly
        for k in s["metrics"]:  # every per-item value lm-eval computed, unchanged
            assert rec["metrics"][k] == s[k], (leaf, k)
        assert rec["acc"] == s.get("acc") and rec["acc_norm"] == s.get("acc_norm")
        gold = GOLD[leaf](doc)
        assert rec["gold"] == gold and rec["golds"] == [gold]
        cont = s["arguments"][gold][1]
        assert rec["gold_loglikelihood"] == lls[gold]
        assert rec["gold_nll_per_byte"] == pytest.approx(-lls[gold] / len(cont.encode("utf-8")), rel=1e-12)
        if rec["output_type"] == "multiple_choice":
            assert rec["n_choices"] == len(lls) and rec["pred"] == int(np.argmax(lls))
        if leaf == "t_truthfulqa_mc2":  # continuous: the probability mass on the true answers
            labels = np.array(doc["mc2_targets"]["labels"])
            p = np.exp(lls) / np.exp(lls).sum()
            assert rec["acc"] == pytest.approx(p[labels == 1].sum(), rel=1e-12) and 0 < rec["acc"] < 1
            assert rec["chance"] == pytest.approx(labels.sum() / len(labels))
        elif leaf == "t_lambada_openai":
            assert rec["metrics"]["perplexity"] == lls[0] and rec["acc"] == int(s["filtered_resps"][0][1])
            assert rec["chance"] == 0.0 and rec["pred"] is None and rec["n_choices"] == 1
        else:
            assert rec["acc"] == float(rec["pred"] == gold) and rec["chance"] == 1 / len(lls)
        if leaf == "t_winogrande":  # the options change the context; the gold is the true option's context
            option = doc["option1"] if doc["answer"] == "1" else doc["option2"]
            assert s["arguments"][gold][0].endswith(option) and len({a[1] for a in s["arguments"]}) == 1
    # the means are lm-eval's aggregates
    for m in ("acc", "acc_norm"):
        if f"{m},none" in results:
            assert np.mean([r[m] for r in records]) == pytest.approx(results[f"{m},none"], rel=1e-12)
    if "perplexity,none" in results:
        ll = np.mean([r["metrics"]["perplexity"] for r in records])
        assert math.exp(-ll) == pytest.approx(results["perplexity,none"], rel=1e-12)


@pytest.mark.parametrize("task", list(TASKS))
def test_items_equal_lm_evals_own(world, task):
    name = f"t_{task}"
    few = TASKS[task][3]
    ours = harness.evaluate_task(world.lm, TaskSpec(name, few), world.tm)
    direct = _direct(world, name, few)
    assert set(ours.items) == {name}
    _check_leaf(name, ours.items[name], direct["samples"][name], direct["results"][name])
    rows = {r["metric"]: r for r in ours.rows}
    for key, value in direct["results"][name].items():
        metric, _, filt = key.partition(",")
        if filt == "none" and not metric.endswith("_stderr"):
            assert rows[metric]["value"] == value
    nll = [r["gold_nll_per_byte"] for r in ours.items[name]]
    assert rows["gold_nll_per_byte"]["value"] == pytest.approx(np.mean(nll), rel=1e-12)
    if task == "winogrande":  # the old gold rule (match the target string) put every item's gold at option 1
        assert {r["gold"] for r in ours.items[name]} == {0, 1}


def test_group_items_per_subtask(world):
    """An MMLU-shaped group, 2-shot from its dev split: records per subtask, the group row lm-eval's."""
    ours = harness.evaluate_task(world.lm, TaskSpec("t_mmlu", 2), world.tm)
    direct = _direct(world, "t_mmlu", 2)
    assert set(ours.items) == set(MMLU_SUBTASKS)
    for leaf in MMLU_SUBTASKS:
        _check_leaf(leaf, ours.items[leaf], direct["samples"][leaf], direct["results"][leaf])
        assert "A. " in direct["samples"][leaf][0]["arguments"][0][0]  # lm-eval's MMLU prompt, with the shots
    every = [r["acc"] for leaf in MMLU_SUBTASKS for r in ours.items[leaf]]
    assert np.mean(every) == pytest.approx(direct["results"]["t_mmlu"]["acc,none"], rel=1e-12)
    rows = {(r["task"], r["metric"]): r for r in ours.rows}
    assert rows[("t_mmlu", "acc")]["value"] == direct["results"]["t_mmlu"]["acc,none"]
    assert rows[("t_mmlu", "acc")]["n"] == len(every) and rows[("t_mmlu_bio", "acc")]["group"] == "t_mmlu"
    assert rows[("t_mmlu", "acc")]["num_fewshot"] == 2


def test_text_targets_and_a_target_that_is_no_choice(world):
    ours = harness.evaluate_task(world.lm, TaskSpec("t_text_target", 0), world.tm)
    direct = _direct(world, "t_text_target", 0)
    recs, samples = ours.items["t_text_target"], direct["samples"]["t_text_target"]
    assert [r["golds"] for r in recs] == [[1], [], [0]] and [r["gold"] for r in recs] == [1, None, 0]
    assert [r["acc"] for r in recs] == [s["acc"] for s in samples] and recs[1]["acc"] == 0
    assert recs[1]["gold_nll_per_byte"] is None and recs[1]["chance"] == 0
    assert [r["chance"] for r in recs] == [1 / 3, 0, 1 / 2]


def test_a_task_whose_items_cannot_be_recorded_is_refused_before_any_model_call(world):
    with pytest.raises(UserError, match=r"t_generate \(generate_until\).*--no-items"):
        harness.evaluate_task(None, TaskSpec("t_generate", 0), world.tm)
