"""Benchmarks through lm-evaluation-harness's Python API: no scoring of our own.

One `HFLM` per checkpoint on the model the driver loaded once (lm-eval accepts an instantiated
model), then one `lm_eval.simple_evaluate` call per task, so each (checkpoint, task) is stored as
soon as it is done. lm-eval's response cache (`use_cache`) is never used: it is keyed by request,
not by model, and would hand one checkpoint's answers to the next. Its request cache
(`cache_requests`: the prompts built from a task's documents) is, per run (`RequestCache`).

Per-item records come from what lm-eval logged for each sample (`log_samples=True`): its doc id,
its requests' arguments and log-likelihoods, and the per-sample metric values it computed (acc,
acc_norm, truthfulqa_mc2's continuous score, lambada's acc and log-likelihood, ...), unchanged.
lm-eval does not log the gold index of a multiple-choice item; it is taken with lm-eval's own rule
on the logged doc (`doc_to_text` when the options change the context, as in WinoGrande, else
`doc_to_target`; a string is looked up among `doc_to_choice`), and checked against lm-eval's logged
accuracy. Next to accuracy each item gets a continuous score: the negative log-likelihood of its
gold continuation per UTF-8 byte (nats/byte; divide by ln 2 for bits per byte, as OLMo's bpb).
The suites are in `dmas_repro.eval.suites`.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from .suites import TASKS_DIR, TaskSpec

# Output types whose samples hold log-likelihoods: the ones per-item records are made for.
RECORDED_TYPES = ("multiple_choice", "loglikelihood")


def task_manager(names: list[str], include_paths: list[str] | None = None):
    """A TaskManager that knows `names`. lm-eval's own ~200 task folders are only indexed when a
    name is not in our bundled tasks or the user's --include-path (indexing them takes a while)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + [str(p) for p in include_paths or []]
    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"--include-path {p}: no such directory")
    tm = TaskManager(include_path=paths, include_defaults=False)
    if all(n in tm.all_tasks for n in names):
        return tm
    tm = TaskManager(include_path=paths)
    missing = [n for n in names if n not in tm.all_tasks]
    if missing:
        raise UserError(f"unknown lm-eval task(s) {missing}; see `lm_eval ls tasks`, or add --include-path DIR")
    return tm


def load_lm(model, hf_dir: str | Path, batch_size: str | int, max_batch_size: int = 64, device: str | None = None,
            dtype: str | None = None):
    """lm-eval's HFLM on the checkpoint already in memory: `model` (our Transformer, loaded once per
    checkpoint in the run's dtype and device) seen as a transformers `LlamaForCausalLM` that shares its
    parameters (`hf.as_transformers`, with `hf_dir`'s config), and `hf_dir`'s tokenizer. lm-eval takes
    an instantiated model; device and dtype are the model's. `model` None (another suite's model, e.g.
    Pythia): lm-eval loads `hf_dir` itself, on `device` in `dtype`."""
    from lm_eval.models.huggingface import HFLM

    from ..model.hf import as_transformers

    if model is None:
        return HFLM(pretrained=str(hf_dir), device=device, dtype=dtype, batch_size=batch_size,
                    max_batch_size=max_batch_size, trust_remote_code=False)

    return HFLM(pretrained=as_transformers(model, hf_dir), tokenizer=str(hf_dir), batch_size=batch_size,
                max_batch_size=max_batch_size, trust_remote_code=False)


class RequestCache:
    """lm-eval's request cache (`cache_requests=True`) for one run: the requests lm-eval builds from a
    task's documents (prompts and continuations, never model outputs) are built once per task and
    reused for every checkpoint. It lives in a directory of this run under OUT/.request_cache/ (lm-eval's
    key names the task, few-shot count and rank, not the task's files, so it is never shared between
    runs) and is removed when the run ends; one left by a killed run can be deleted."""

    def __init__(self, out: str | Path):
        import tempfile

        root = Path(out) / ".request_cache"
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="run-", dir=root))

    @contextlib.contextmanager
    def active(self):
        from lm_eval.caching import cache

        old, cache.PATH = cache.PATH, str(self.dir)
        try:
            yield
        finally:
            cache.PATH = old

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def _env_info_once():
    """lm-eval adds an environment report (torch's collect_env: pip and other subprocesses, seconds
    each time) to every `simple_evaluate` result; we never read it, and it is the same for every call
    of a process, so it is collected once per process."""
    from lm_eval import evaluator

    original = evaluator.add_env_info

    def once(storage: dict) -> None:
        if not _ENV_INFO:
            original(_ENV_INFO)
        storage.update(_ENV_INFO)

    evaluator.add_env_info = once
    try:
        yield
    finally:
        evaluator.add_env_info = original


_ENV_INFO: dict = {}


def used_batch_size(lm, requested) -> str:
    sizes = [v for v in getattr(lm, "batch_sizes", {}).values() if v]
    if str(requested).startswith("auto") and sizes:
        return f"auto:{max(sizes)}"
    return str(requested)


@dataclass
class TaskResult:
    rows: list[dict]  # long-form metric rows (without checkpoint columns)
    items: dict[str, list[dict]]  # leaf task -> one record per item (empty without items)


def load_tasks(name: str, tm) -> tuple[list, dict]:
    """lm-eval's task objects for `name`: (the top-level tasks/groups to evaluate, leaf name -> task)."""
    loaded = tm.load([name])
    children = {c for kids in (loaded.get("group_map") or {}).values() for c in kids}
    groups = loaded.get("groups") or {}
    top = [g for n, g in groups.items() if n not in children]
    top += [t for n, t in loaded["tasks"].items() if n not in children]
    return top, dict(loaded["tasks"])


def check_recordable(name: str, leaves: dict) -> None:
    """One clear error when a task's items cannot be recorded (no log-likelihoods to record)."""
    from lm_eval.api.task import ConfigurableTask

    bad = {n: t.OUTPUT_TYPE for n, t in leaves.items()
           if not isinstance(t, ConfigurableTask) or t.OUTPUT_TYPE not in RECORDED_TYPES}
    if bad:
        said = ", ".join(f"{n} ({'a Python task class' if not isinstance(leaves[n], ConfigurableTask) else o})"
                         for n, o in sorted(bad.items()))
        raise UserError(f"{name}: per-item records are made for YAML tasks of output type "
                        f"{' or '.join(RECORDED_TYPES)}; not for {said}: run it with --no-items")


def evaluate_task(lm, spec: TaskSpec, tm, items: bool = True, requests: RequestCache | None = None) -> TaskResult:
    """One lm-eval call for one task (a group such as mmlu gives a row per subtask and one for the group).

    Per-item records (and the gold_nll_per_byte rows) are made whenever the task's items can be
    recorded; `items`: they are wanted, so a task whose items cannot be recorded is refused before
    any model call (without `items` it gets lm-eval's metric rows only). With `requests`, lm-eval's
    request cache of this run is used (built requests, not responses)."""
    import lm_eval

    top, leaves = load_tasks(spec.name, tm)
    try:
        check_recordable(spec.name, leaves)
    except UserError:
        if items:
            raise
        leaves = None  # rows only
    with _env_info_once(), (requests.active() if requests is not None else contextlib.nullcontext()):
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=top,
            num_fewshot=spec.num_fewshot,
            limit=spec.limit,
            task_manager=tm,
            log_samples=True,
            use_cache=None,  # never share model responses between checkpoints
            cache_requests=requests is not None,
        )
    if res is None:
        raise RuntimeError(f"lm-eval returned no results for {spec.name} (not rank 0?)")
    return result_from_lm_eval(res, spec, leaves)


def _split_metric(key: str) -> tuple[str, str] | None:
    metric, _, filt = key.partition(",")
    if not filt or metric.endswith("_stderr") or metric in ("alias", "name", "sample_len"):
        return None
    return metric, filt


def _num(v) -> float | None:
    if isinstance(v, (list, tuple, dict, str)) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def result_from_lm_eval(res: dict, spec: TaskSpec, leaves: dict | None) -> TaskResult:
    """Rows and per-item records from a `simple_evaluate` result with samples.

    leaves: leaf task name -> lm-eval task object (for the gold of each item); None: no items."""
    from lm_eval.utils import hash_string

    samples = res.get("samples") or {}
    items = {leaf: item_records(leaves[leaf], leaf, s) for leaf, s in samples.items()} if leaves is not None else {}
    leaf_hash = {leaf: hash_string("".join(x["doc_hash"] + x["prompt_hash"] + x["target_hash"] for x in s))
                 for leaf, s in samples.items()}
    children = _leaves(res, spec.name, set(samples))
    n_samples = res.get("n-samples", {})
    rows = []
    for task, metrics in res["results"].items():
        leaves_of = children.get(task, [task])
        n = sum(int(n_samples.get(t, {}).get("effective", 0)) for t in leaves_of) or None
        task_hash = leaf_hash.get(task) or hash_string("".join(leaf_hash.get(t, "") for t in sorted(leaves_of)))
        base = {
            "task": task,
            "group": spec.name if task != spec.name else None,
            "n": n,
            "num_fewshot": _fewshot(res, task, leaves_of),
            "limit": spec.limit,
            "task_version": _version(res, task),
            "task_hash": task_hash,
        }
        for key, value in metrics.items():
            parsed = _split_metric(key)
            if parsed is None or _num(value) is None:
                continue
            metric, filt = parsed
            name = metric if filt == "none" else f"{metric},{filt}"
            stderr = _num(metrics.get(f"{metric}_stderr,{filt}"))
            rows.append({**base, "metric": name, "value": _num(value), "stderr": stderr})
        nll = [x["gold_nll_per_byte"] for t in leaves_of for x in items.get(t, [])
               if x["gold_nll_per_byte"] is not None]
        if nll:
            mean = sum(nll) / len(nll)
            sd = math.sqrt(sum((v - mean) ** 2 for v in nll) / (len(nll) - 1)) if len(nll) > 1 else None
            rows.append({**base, "metric": "gold_nll_per_byte", "value": mean,
                         "stderr": sd / math.sqrt(len(nll)) if sd is not None else None})
    return TaskResult(rows=rows, items=items)


def _leaves(res: dict, top: str, sample_tasks: set[str]) -> dict[str, list[str]]:
    """group -> its leaf tasks (recursively), from lm-eval's group_subtasks."""
    sub = res.get("group_subtasks", {}) or {}

    def leaves(t: str) -> list[str]:
        if t not in sub or not sub[t]:
            return [t]
        return [x for c in sub[t] for x in leaves(c)]

    out = {g: leaves(g) for g in sub if sub[g]}
    if top not in out and top not in res["results"] and sample_tasks:
        out[top] = sorted(sample_tasks)
    return out


def _fewshot(res: dict, task: str, leaves: list[str]) -> int | None:
    shots = res.get("n-shot", {}) or {}
    if task in shots:
        return int(shots[task])
    vals = {int(shots[t]) for t in leaves if t in shots}
    return vals.pop() if len(vals) == 1 else None


def _version(res: dict, task: str) -> str | None:
    v = (res.get("versions", {}) or {}).get(task)
    return None if v is None else str(v)


# ---------------------------------------------------------------- per-item records
def gold_indices(task, doc) -> list[int]:
    """The gold choice(s) of a multiple-choice doc, by the rule of lm-eval's `process_results`: the
    gold is `doc_to_text(doc)` when the options change the context (`multiple_input`: WinoGrande),
    else `doc_to_target(doc)`; an int is an index, a string is looked up among `doc_to_choice(doc)`,
    a list gives several golds. A gold that is not one of the choices is left out (lm-eval marks it
    -100 and scores the item as wrong), so such an item has no gold."""
    choices = task.doc_to_choice(doc)
    raw = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    out = []
    for g in raw if isinstance(raw, list) else [raw]:
        if isinstance(g, str):
            g = choices.index(g) if g in choices else -100
        if isinstance(g, numbers.Integral) and 0 <= g < len(choices):
            out.append(int(g))
    return out


def item_records(task, name: str, samples: list[dict]) -> list[dict]:
    """One record per item from lm-eval's logged samples of one leaf task (see the module docstring).

    Fields: doc_id; output_type; n_choices; golds (lm-eval's gold indices: one, several for a task
    whose target is a list, none when its target is not a choice; truthfulqa_mc2's target is its
    first true answer, its own score weighs all of them) and gold (the gold when there is one);
    pred (argmax of the log-likelihoods, lm-eval's `acc` prediction); acc and acc_norm as lm-eval
    logged them (None where the task has no such metric); metrics (every numeric per-sample value
    lm-eval logged, e.g. truthfulqa_mc2's continuous "acc", lambada's "perplexity", which is the
    item's log-likelihood); loglikelihoods (one per choice; one for a loglikelihood task);
    gold_loglikelihood and gold_nll_per_byte (of the single gold continuation); chance (the item's
    expected score under a model that gives every choice the same probability: |golds| / n_choices
    for lm-eval's default scoring, the task's own `process_results` at equal log-likelihoods for a
    task with its own scoring such as truthfulqa_mc2, 0 for an open-vocabulary loglikelihood task)."""
    out = []
    seen = set()
    own_scoring = callable(task.config.process_results)
    for s in samples:
        if s["doc_id"] in seen:
            raise UserError(f"{name}: several lm-eval filters log each item more than once; per-item records "
                            "need one filter: run it with --no-items")
        seen.add(s["doc_id"])
        resps = s["filtered_resps"]
        lls = [float(r[0]) for r in resps]
        conts = [a[1] for a in s["arguments"]]
        metrics = {k: _num(s[k]) for k in s["metrics"] if _num(s.get(k)) is not None}
        doc = s["doc"]
        if task.OUTPUT_TYPE == "loglikelihood":
            golds, n_choices, pred, chance = [0], 1, None, 0.0
        else:
            n_choices = len(task.doc_to_choice(doc))
            lls, conts = lls[:n_choices], conts[:n_choices]  # (acc_mutual_info appends unconditional ones)
            golds = gold_indices(task, doc)
            pred = max(range(n_choices), key=lls.__getitem__)
            if own_scoring:
                uniform = task.process_results(doc, [(0.0, False)] * len(resps))
                chance = _num(uniform.get("acc", next(iter(uniform.values())) if len(uniform) == 1 else None))
            else:
                chance = len(set(golds)) / n_choices if n_choices else None
                if "acc" in metrics and metrics["acc"] != float(pred in golds):
                    raise RuntimeError(f"{name} doc {s['doc_id']}: gold {golds} and prediction {pred} disagree "
                                       f"with lm-eval's logged acc {metrics['acc']}")
        gold = golds[0] if len(golds) == 1 else None
        gold_ll = lls[gold] if gold is not None else None
        nbytes = len(conts[gold].encode("utf-8")) if gold is not None else 0
        out.append({
            "task": name,
            "doc_id": s["doc_id"],
            "output_type": task.OUTPUT_TYPE,
            "n_choices": n_choices,
            "gold": gold,
            "golds": golds,
            "pred": pred,
            "acc": metrics.get("acc"),
            "acc_norm": metrics.get("acc_norm"),
            "metrics": metrics,
            "loglikelihoods": lls,
            "gold_loglikelihood": gold_ll,
            "gold_nll_per_byte": -gold_ll / nbytes if nbytes else None,
            "chance": chance,
        })
    return out
