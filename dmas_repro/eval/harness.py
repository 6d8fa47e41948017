"""Benchmarks through lm-evaluation-harness's Python API: no scoring of our own.

One `HFLM` per checkpoint on the model the driver loaded once (lm-eval accepts an instantiated
model), then one `lm_eval.simple_evaluate` call per task, so each (checkpoint, task) is stored as
soon as it is done. lm-eval's response cache (`use_cache`) is never used: it is keyed by request,
not by model, and would hand one checkpoint's answers to the next. Its request cache
(`cache_requests`: the prompts built from a task's documents) is, per run (`RequestCache`).

From lm-eval's per-sample log we keep one record per item (choice log-likelihoods, prediction,
correctness) and a continuous score next to accuracy: the negative log-likelihood of the gold
continuation per UTF-8 byte (nats/byte; divide by ln 2 for bits per byte, as OLMo's bpb).
The suites are in `dmas_repro.eval.suites`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from .suites import TASKS_DIR, TaskSpec


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


def load_lm(model, hf_dir: str | Path, batch_size: str | int, max_batch_size: int = 64):
    """lm-eval's HFLM on the checkpoint already in memory: `model` (our Transformer, loaded once per
    checkpoint in the run's dtype and device) seen as a transformers `LlamaForCausalLM` that shares its
    parameters (`hf.as_transformers`, with `hf_dir`'s config), and `hf_dir`'s tokenizer. lm-eval takes
    an instantiated model; device and dtype are the model's."""
    from lm_eval.models.huggingface import HFLM

    from ..model.hf import as_transformers

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
    items: dict[str, list[dict]]  # leaf task -> one record per item


def evaluate_task(lm, spec: TaskSpec, tm, requests: RequestCache | None = None) -> TaskResult:
    """One lm-eval call for one task (a group such as mmlu gives a row per subtask and one for the group).
    With `requests`, lm-eval's request cache of this run is used (built requests, not responses)."""
    import lm_eval

    with _env_info_once(), (requests.active() if requests is not None else contextlib.nullcontext()):
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=[spec.name],
            num_fewshot=spec.num_fewshot,
            limit=spec.limit,
            task_manager=tm,
            log_samples=True,
            use_cache=None,  # never share model responses between checkpoints
            cache_requests=requests is not None,
        )
    if res is None:
        raise RuntimeError(f"lm-eval returned no results for {spec.name} (not rank 0?)")
    return result_from_lm_eval(res, spec)


def _split_metric(key: str) -> tuple[str, str] | None:
    metric, _, filt = key.partition(",")
    if not filt or metric.endswith("_stderr") or metric in ("alias", "name", "sample_len"):
        return None
    return metric, filt


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def result_from_lm_eval(res: dict, spec: TaskSpec) -> TaskResult:
    """Rows and per-item records from a `simple_evaluate` result with samples."""
    from lm_eval.utils import hash_string

    samples = res.get("samples") or {}
    items = {leaf: item_records(leaf, s) for leaf, s in samples.items()}
    leaf_hash = {leaf: hash_string("".join(x["doc_hash"] + x["prompt_hash"] + x["target_hash"] for x in s))
                 for leaf, s in samples.items()}
    children = _leaves(res, spec.name, set(samples))
    n_samples = res.get("n-samples", {})
    rows = []
    for task, metrics in res["results"].items():
        leaves = children.get(task, [task])
        n = sum(int(n_samples.get(t, {}).get("effective", 0)) for t in leaves) or None
        task_hash = leaf_hash.get(task) or hash_string("".join(leaf_hash.get(t, "") for t in sorted(leaves)))
        base = {
            "task": task,
            "group": spec.name if task != spec.name else None,
            "n": n,
            "num_fewshot": _fewshot(res, task, leaves),
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
        nll = [x["gold_nll_per_byte"] for t in leaves for x in items.get(t, []) if x["gold_nll_per_byte"] is not None]
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


def item_records(task: str, samples: list[dict]) -> list[dict]:
    """One record per benchmark item from lm-eval's logged samples."""
    out = []
    for s in samples:
        resps = s.get("filtered_resps") or []
        lls = [float(r[0]) for r in resps if isinstance(r, (list, tuple)) and len(r) == 2 and _num(r[0]) is not None]
        if len(lls) != len(resps):
            lls = []
        conts = [a[1] for a in s.get("arguments", []) if isinstance(a, (list, tuple)) and len(a) >= 2]
        gold = _gold(s.get("target"), conts)
        pred = None
        if len(lls) > 1:
            pred = max(range(len(lls)), key=lls.__getitem__)
        elif len(lls) == 1:
            pred = 0 if resps[0][1] else None  # loglikelihood tasks: is the gold the greedy continuation
        nll = None
        if gold is not None and gold < len(lls) and gold < len(conts) and isinstance(conts[gold], str):
            nbytes = len(conts[gold].encode("utf-8"))
            nll = -lls[gold] / nbytes if nbytes else None
        metrics = {k: _num(s[k]) for k in s.get("metrics", []) if k in s}
        out.append({
            "task": task,
            "doc_id": s.get("doc_id"),
            "gold": gold,
            "pred": pred,
            "acc": metrics.get("acc"),
            "acc_norm": metrics.get("acc_norm"),
            "loglikelihoods": lls,
            "gold_nll_per_byte": nll,
            "metrics": metrics,
        })
    return out


def _gold(target, conts: list) -> int | None:
    if isinstance(target, bool):
        return int(target)
    if isinstance(target, int):
        return target
    if isinstance(target, (list, tuple)) and target and isinstance(target[0], int):
        return target[0]  # several correct choices: the first
    if isinstance(target, str):
        if len(conts) == 1:
            return 0
        stripped = [c.strip() if isinstance(c, str) else c for c in conts]
        if target.strip() in stripped:
            return stripped.index(target.strip())
        if target.isdigit():
            return int(target)
    return None
