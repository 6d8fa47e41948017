"""`dmas-repro eval-all-checkpoints`: every checkpoint through the benchmarks, validation loss and
probes, into one results store (see `dmas_repro.results`).

For each checkpoint (of this --shard) with work left: fetch it (the next one downloads or is
exported in the background meanwhile), load it once, in the run's dtype on the run's device, and
run every pending unit on that one model: the benchmark tasks one by one through lm-eval (which
gets the instantiated model), then validation loss and probes, storing each (checkpoint, unit) as
soon as it is done; the tables are rebuilt after each checkpoint, and the seconds and peak memory
of each phase go to OUT/timings/<checkpoint>.json. A failure is recorded and the run goes on with
the next unit or checkpoint; the exit status is 0 only when every unit of this run succeeded.
SIGINT/SIGTERM stop after the current unit.

Before a checkpoint is fetched its pending units are claimed in the store (`ResultStore.claim`);
units another process holds are left to it, so processes sharing a store split the work. The
terminal gets a `checkpoint i/N` line with an ETA (`progress`) and a line as each unit starts and
finishes; lm-eval's, transformers' and datasets' notices go to OUT/eval.log (`_third_party_log`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..core import runtime
from ..core.config import opt
from ..core.errors import UserError
from .suites import SUITES

log = logging.getLogger(__name__)

PARTS = ("benchmarks", "val_loss", "probes")
DEFAULT_VAL_DATA = Path("data/bundled")
PAPER_VAL_DATA = Path("data/fineweb-edu")  # `prepare-data --source fineweb-edu`: the paper's corpus


def _limit(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise UserError(f"--limit {s!r}: a number of items, or a fraction below 1") from None
    if v <= 0:
        raise UserError(f"--limit {s!r} must be positive")
    return int(v) if v >= 1 and v.is_integer() else v


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {s!r}") from None


def _names(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


@dataclass(frozen=True)
class EvalConfig:
    """Everything `eval-all-checkpoints` takes; its command-line flags are derived from these fields."""

    checkpoints: tuple[str, ...] = opt(
        ("released",), "released (default), released-base, a registry label (step-5.1k), hub ids "
        "(owner/name[@revision]), Hugging Face or dmas-repro checkpoint directories, or run directories "
        "runs/NAME (all their checkpoints, and sft/); comma-separated lists work", nargs="+", metavar="SRC",
        parse=str)
    suite: str = opt("paper", "paper (needs the network for datasets), quick, or offline (bundled data)",
                     choices=sorted(SUITES))
    tasks: tuple[str, ...] | None = opt(None, "comma-separated lm-eval task names instead of the suite's",
                                        parse=_names)
    include_paths: tuple[str, ...] = opt((), "extra directory of lm-eval task YAMLs (repeatable)",
                                         flag="--include-path", action="append", metavar="DIR", parse=str)
    limit: float | None = opt(None, "items per task (or a fraction below 1); default: the suite's", parse=_limit)
    num_fewshot: int | None = opt(None, "few-shot examples for every task")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    dtype: str = opt("auto", "auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16")
    batch_size: str = opt("auto", "auto (lm-eval's search on GPU; 8 on CPU), auto:N or N")
    parts: tuple[str, ...] = opt(PARTS, "comma-separated subset of benchmarks,val_loss,probes", parse=_names)
    parts_explicit: bool = opt(False, cli=False)
    out: str | None = opt(None, "results directory (default results/<suite>)")
    cache_dir: str | None = opt(None, "download cache (default: the Hugging Face cache)")
    max_disk: str | None = opt(None, "disk this run's downloads/exports may use at once, e.g. 20GB: evaluated "
                                     "ones are deleted")
    shard: str | None = opt(None, "evaluate only every N-th checkpoint from i (0-based)", metavar="i/N")
    val_data: str | None = opt(None, f"prepare-data directory; its val split gives the validation loss "
                                     f"(default: {PAPER_VAL_DATA} for released checkpoints when it exists, "
                                     f"else {DEFAULT_VAL_DATA})")
    val_tokens: int = opt(20 * 32 * 1024, "validation token budget")
    val_seq_len: int | None = opt(None, "validation window length (default: 1024, or the model's context if "
                                        "shorter)")
    val_batch_size: int = opt(8, "windows per forward pass for validation loss")
    probe_seeds: tuple[int, ...] = opt((0, 1), "seeds of the sampled probe outputs", parse=_ints)
    probe_max_new_tokens: int = opt(64, "tokens generated per probe")
    probe_set: str = opt("v1", "probe prompt set version (dmas_repro/assets/probes)")
    items: bool = opt(True, "keep per-item records under items/ (--no-items: do not)")


def resolve_batch_size(bs: str, device: str) -> str | int:
    if bs == "auto" and not device.startswith("cuda"):
        return 8  # lm-eval's search starts at 64 full-length rows: far too much for a CPU run
    if bs.isdigit() and int(bs) > 0:
        return int(bs)
    if bs == "auto" or (bs.startswith("auto:") and bs[5:].isdigit()):
        return bs
    raise UserError(f"--batch-size {bs!r}: a positive integer, auto or auto:N")


def _val_dir(cfg: EvalConfig, ckpts) -> Path | None:
    """--val-data, else the FineWeb-Edu split (the paper's corpus) when released checkpoints are
    evaluated and it has been prepared, else data/bundled when present."""
    if cfg.val_data:
        p = Path(cfg.val_data)
        if not p.is_dir():
            raise UserError(f"--val-data {p}: no such directory")
        return p
    from ..model.released import rows

    released = {r["repo_id"] for r in rows()}
    default = [PAPER_VAL_DATA] if any(ck.repo_id in released for ck in ckpts) else []
    for d in default + [DEFAULT_VAL_DATA]:
        if (d / "manifest.json").is_file():
            return d
    return None


def _error_text(e: BaseException) -> str:
    if isinstance(e, UserError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def run(cfg: EvalConfig) -> int:
    import lm_eval

    from . import harness as benchmarks
    from . import sources
    from . import store as results
    from .suites import suite_tasks

    for p in cfg.parts:
        if p not in PARTS:
            raise UserError(f"--parts {p!r}: choose from {', '.join(PARTS)}")
    out = Path(cfg.out or f"results/{cfg.suite}")
    device = str(runtime.resolve_device(cfg.device))
    dtype = runtime.dtype_name(cfg.dtype, device)
    batch_size = resolve_batch_size(str(cfg.batch_size), device)
    specs = suite_tasks(cfg.suite, list(cfg.tasks) if cfg.tasks else None, cfg.limit, cfg.num_fewshot)
    max_disk = sources.parse_size(cfg.max_disk)
    ckpts = sources.shard(sources.parse(list(cfg.checkpoints)), cfg.shard)
    fetcher = sources.Fetcher(cfg.cache_dir, out / ".exports", max_disk)
    for ck in ckpts:
        fetcher.check_named(ck)  # a hub id nobody can give us: one line, before anything is written

    parts = list(cfg.parts)
    val_dir = _val_dir(cfg, ckpts) if "val_loss" in parts else None
    if "val_loss" in parts and val_dir is None:
        if cfg.parts_explicit:
            raise UserError(f"--parts val_loss needs validation tokens: pass --val-data DIR (a prepare-data "
                            f"directory; neither {PAPER_VAL_DATA} nor {DEFAULT_VAL_DATA} exists)")
        log.info(f"note: no validation data (no --val-data; neither {PAPER_VAL_DATA} nor {DEFAULT_VAL_DATA} "
                 "exists): skipping val_loss")
        parts.remove("val_loss")
    probe_cfg = None
    if "probes" in parts:
        from .probes import ProbeConfig, load_prompts

        probe_cfg = ProbeConfig(prompt_set=cfg.probe_set, seeds=tuple(cfg.probe_seeds),
                                max_new_tokens=cfg.probe_max_new_tokens)
        load_prompts(probe_cfg.prompt_set)

    units = ([s.name for s in specs] if "benchmarks" in parts else []) + [p for p in ("val_loss", "probes")
                                                                         if p in parts]
    store = results.ResultStore(out)
    val_set = None
    if val_dir is not None:
        from .valloss import load_val_tokens

        val_set = load_val_tokens(val_dir, cfg.val_tokens)
    settings = {"suite": cfg.suite, "dtype": dtype, "harness_version": lm_eval.__version__}
    if "benchmarks" in parts:
        for s in specs:
            settings[f"limit/{s.name}"] = s.limit
            settings[f"num_fewshot/{s.name}"] = s.num_fewshot
    if val_set is not None:
        settings["val/tokens_sha"] = val_set.sha
        settings["val/corpus"] = val_set.corpus
        settings["val/seq_len"] = cfg.val_seq_len or "min(1024, context)"
    if probe_cfg is not None:
        settings.update({"probes/set": probe_cfg.prompt_set, "probes/seeds": list(probe_cfg.seeds),
                         "probes/max_new_tokens": probe_cfg.max_new_tokens,
                         "probes/temperature": probe_cfg.temperature, "probes/top_k": probe_cfg.top_k})
    store.check_settings(settings)

    # Another suite's model (own_model False) gets the same benchmarks; validation loss and probes need our
    # architecture and tokenizer, so they are not units of it.
    skipped_parts = [u for u in units if u in ("val_loss", "probes")]
    if skipped_parts and any(not ck.own_model for ck in ckpts):
        log.info(f"note: {', '.join(c.label for c in ckpts if not c.own_model)}: other architectures/tokenizers; "
                 f"benchmarks only ({', '.join(skipped_parts)} need the DMaS-LLaMa-Lite model)")
    todo = [(ck, [u for u in units if not store.done(ck.label, u) and (ck.own_model or u not in skipped_parts)])
            for ck in ckpts]
    todo = [(ck, pending) for ck, pending in todo if pending]
    log.info(f"{len(ckpts)} checkpoint(s) in this shard, {len(todo)} with work left; results in {out}")
    if val_set is not None and any("val_loss" in pending for _, pending in todo):
        _say_val_corpus(val_dir, val_set)
    tm = None
    bench_pending = {s.name for _, pending in todo for s in specs if s.name in pending}
    if bench_pending:
        tm = benchmarks.task_manager(sorted(bench_pending), list(cfg.include_paths))

    failed = 0
    stopped = None
    from ..core.signals import StopSignal

    pending = {ck.label: p for ck, p in todo}
    claims: dict[str, results.Claim] = {}

    def take(ck) -> bool:
        """Claim this checkpoint's pending units before fetching it; none left: another process has them."""
        claims[ck.label] = store.claim(ck.label, pending[ck.label])
        pending[ck.label] = claims[ck.label].units
        return bool(claims[ck.label])

    requests = benchmarks.RequestCache(out) if bench_pending else None
    seconds: list[float] = []  # of each checkpoint evaluated by this run: the ETA
    try:
        with StopSignal() as stop, _third_party_log(out / LOG_NAME):
            for i, (ck, fut) in enumerate(fetcher.iterate([ck for ck, _ in todo], take=take), 1):
                if fut is None:
                    log.info(f"{progress(i, len(todo), ck.label, [])}: skipped, another process has evaluated or "
                             "is evaluating its units")
                    continue
                log.info(f"{progress(i, len(todo), ck.label, seconds)}: {', '.join(pending[ck.label])}")
                t0 = time.perf_counter()
                clock = _Clock(device)
                local = None
                try:
                    local = fut.result()
                    clock.lap("fetch_wait")
                    sources.check_loadable(local.path, ck.own_model)
                    clock.lap("check")
                except Exception as e:  # noqa: BLE001 - a failed checkpoint is recorded, the others go on
                    _report(ck.label, "load", e)
                    store.record_failure(ck.label, "load", _error_text(e))
                    failed += 1
                    if local is not None:
                        fetcher.release(local)
                    claims.pop(ck.label).release_all()
                    store.consolidate()
                    continue
                store.clear_failure(ck.label, "load")
                meta = {"checkpoint": ck.label, "step": ck.step, "tokens": ck.tokens, "kind": ck.kind,
                        "model_sha": local.model_sha, "dtype": dtype, "device": device, "source": ck.source,
                        "harness_version": lm_eval.__version__}
                clock.record("fetch", local.seconds)
                todo_specs = [s for s in specs if s.name in pending[ck.label]]
                try:
                    failed += _evaluate_checkpoint(cfg, store, tm, requests, local, meta, pending[ck.label], todo_specs,
                                                   val_set, probe_cfg, device, dtype, batch_size, stop, clock,
                                                   claims[ck.label])
                finally:
                    claims.pop(ck.label).release_all()
                    fetcher.release(local)
                    clock.lap("release")
                _write_timings(out, ck.label, meta, clock)
                seconds.append(time.perf_counter() - t0)
                if stop.requested:
                    stopped = stop.requested
                    break
    finally:
        for claim in claims.values():  # prefetched, not evaluated (stopped): free for the next run at once
            claim.release_all()
        if requests is not None:
            requests.close()
    df = store.consolidate()
    print()
    print(results.summary(df))
    open_failures = store.failures()
    if open_failures:
        log.warning(f"\n{len(open_failures)} open failure(s) in {out / 'failures.jsonl'}; rerun to retry them")
    if stopped:
        log.warning(f"stopped by {stopped}; rerun the same command to continue")
        return 1
    return 1 if failed else 0


LOG_NAME = "eval.log"  # in the store: this run's progress and what lm-eval, transformers and datasets said


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress(i: int, n: int, label: str, seconds: list[float], now: float | None = None) -> str:
    """'checkpoint i/N LABEL', and once a checkpoint has finished in this run, the time left for this one
    and the rest (their mean time each) with the clock time it ends at."""
    text = f"checkpoint {i}/{n} {label}"
    if seconds:
        each = sum(seconds) / len(seconds)
        left = each * (n - i + 1)
        end = time.strftime("%H:%M", time.localtime((time.time() if now is None else now) + left))
        text += f" (ETA {end}, {_duration(left)} left at {_duration(each)} per checkpoint)"
    return text


def _headline(task: str, rows: list[dict]) -> str:
    from .suites import headline_metric

    values = {r["metric"]: r["value"] for r in rows if r.get("task") == task}
    m = headline_metric(task, list(values))
    return f" ({m} {values[m]:.4f})" if m is not None and isinstance(values.get(m), float) else ""


@contextlib.contextmanager
def _third_party_log(path: Path):
    """lm-eval's per-call notices (its "lm_eval" logger), transformers' and datasets' warnings go to `path`
    instead of the terminal (also there with -v), beside this run's own progress lines; lm-eval's
    `git describe` for its results' git_hash runs with its stderr captured."""
    from lm_eval import evaluator

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s pid %(process)d %(name)s %(levelname)s: %(message)s"))
    ours = logging.getLogger("dmas_repro")
    verbose = ours.isEnabledFor(logging.DEBUG)
    saved = []
    for name in ("lm_eval", "transformers", "datasets"):
        lg = logging.getLogger(name)
        saved.append((lg, list(lg.handlers), lg.propagate, lg.level))
        terminal = (list(lg.handlers) or [logging.StreamHandler(sys.stderr)]) if verbose else []
        lg.handlers = terminal + [handler]
        lg.propagate = False
        if name == "lm_eval":
            lg.setLevel(logging.INFO)  # its notices; transformers and datasets keep their own level (warnings)
    ours.addHandler(handler)
    git_hash = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = _quiet_git_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = git_hash
        ours.removeHandler(handler)
        for lg, handlers, propagate, level in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
        handler.close()


def _quiet_git_hash() -> str | None:
    """lm-eval's `get_git_commit_hash` (`git describe --always` in the working directory, else the hash read
    from .git) without git's "fatal: not a git repository" on the terminal outside a checkout."""
    import os
    import subprocess

    from lm_eval.loggers.utils import get_commit_from_path

    try:
        r = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
    except OSError:
        r = None
    if r is not None and r.returncode == 0:
        return r.stdout.strip()
    return get_commit_from_path(os.getcwd())


def _say_val_corpus(val_dir: Path, val_set) -> None:
    """Which corpus the validation loss measures; once per run, that it is not the paper's unless it is."""
    from .valloss import PAPER_CORPUS, comparable_with_paper

    log.info(f"validation loss on {val_dir}: corpus {val_set.corpus}, manifest sha256 {val_set.manifest_sha256}")
    if not comparable_with_paper(val_set):
        log.warning(f"note: validation loss on the {val_set.corpus} corpus is not comparable with the paper's "
                    f"(measured on {PAPER_CORPUS}: `dmas-repro prepare-data --source fineweb-edu --out "
                    f"{PAPER_VAL_DATA}`, then --val-data {PAPER_VAL_DATA})")


def _report(label: str, part: str, e: BaseException) -> None:
    if not isinstance(e, UserError):
        traceback.print_exception(e, file=sys.stderr)
    log.error(f"{label}: {part} FAILED: {_error_text(e)}")


class _Clock:
    """Seconds of each phase of one checkpoint's evaluation, and the process's peak memory after it."""

    def __init__(self, device: str):
        self.device = device
        self.t = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.peak: dict[str, int] = {}

    def record(self, name: str, seconds: float | None) -> None:
        if seconds is not None:
            self.phases[name] = round(seconds, 3)

    def lap(self, name: str) -> float:
        runtime.synchronize(self.device)
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        self.phases[name] = round(self.phases.get(name, 0.0) + dt, 3)
        self.peak[name] = runtime.peak_rss_bytes() if not self.device.startswith("cuda") else _cuda_peak(self.device)
        return dt


def _cuda_peak(device: str) -> int:
    import torch

    return int(torch.cuda.max_memory_allocated(device))


def _write_timings(out: Path, label: str, meta: dict, clock: _Clock) -> None:
    """OUT/timings/<checkpoint>.json: seconds per phase of this checkpoint's last evaluation (fetch is the
    background download/export; fetch_wait the part of it the run waited for) and the peak memory after
    each phase (CPU: the process's resident high-water mark; CUDA: torch's max allocated)."""
    import json
    import platform

    from ..core.files import atomic_write_text

    doc = {"checkpoint": label, "device": meta["device"], "dtype": meta["dtype"], "host": platform.node(),
           "seconds": clock.phases, "peak_memory_bytes": clock.peak,
           "peak_memory_kind": "cuda max_memory_allocated" if meta["device"].startswith("cuda") else "process max RSS",
           "finished_at": time.time()}
    atomic_write_text(out / "timings" / f"{label}.json", json.dumps(doc, indent=1) + "\n")
    units = ", ".join(f"{k} {v:.1f}s" for k, v in clock.phases.items())
    log.info(f"{label}: {units}; peak memory {max(clock.peak.values(), default=0) / 2**30:.2f} GiB")


def _evaluate_checkpoint(cfg, store, tm, requests, local, meta, pending, specs, val_set, probe_cfg, device, dtype,
                         batch_size, stop, clock, claim) -> int:
    """Load the checkpoint once (in the run's dtype, on the run's device) and run every pending unit on
    that one model: the benchmarks through lm-eval (`harness.load_lm` shares its parameters), then
    validation loss and probes. Another suite's model (not `own_model`: benchmarks only) is loaded by
    lm-eval from its directory. Returns the number of failed units."""
    from ..model import hf

    own = [u for u in ("val_loss", "probes") if u in pending
           and (u != "val_loss" or val_set is not None) and (u != "probes" or probe_cfg is not None)]
    if not specs and not own:
        return 0
    label = meta["checkpoint"]
    try:
        model = None
        if local.ckpt.own_model:
            model = hf.from_hf(local.path, dtype=runtime.torch_dtype(dtype), device=device, pad_vocab=False).eval()
    except Exception as e:  # noqa: BLE001
        _report(label, "load", e)
        parts = [f"benchmarks/{s.name}" for s in specs] + own
        for part in parts:
            store.record_failure(label, part, _error_text(e))
        store.consolidate()
        return len(parts)
    clock.lap("load")
    failed = 0
    try:
        if specs:
            failed += _benchmarks(cfg, store, tm, requests, model, local, meta, specs, device, dtype, batch_size,
                                  stop, clock, claim)
        for unit in own:
            if stop.requested:
                break
            if unit == "val_loss":
                log.info(f"{label}: val_loss started (up to {len(val_set.tokens) - 1:,} tokens of {val_set.corpus})")
            else:
                log.info(f"{label}: probes started (prompt set {probe_cfg.prompt_set}, greedy and seeds "
                         f"{', '.join(map(str, probe_cfg.seeds))}, {probe_cfg.max_new_tokens} new tokens)")
            try:
                if unit == "val_loss":
                    said = _val_loss(cfg, store, model, meta, val_set, device)
                else:
                    said = _probes(store, model, meta, probe_cfg, device)
                log.info(f"{label}: {unit} finished in {_duration(clock.lap(unit))} ({said})")
            except Exception as e:  # noqa: BLE001
                clock.lap(unit)
                _report(label, unit, e)
                store.record_failure(label, unit, _error_text(e))
                failed += 1
            claim.release(unit)
        store.consolidate()
        clock.lap("consolidate")
    finally:
        del model
        _free_memory()
    return failed


def _benchmarks(cfg, store, tm, requests, model, local, meta, specs, device, dtype, batch_size, stop, clock,
                claim) -> int:
    from . import harness as benchmarks

    label = meta["checkpoint"]
    try:
        lm = benchmarks.load_lm(model, local.path, batch_size, device=device, dtype=dtype)
    except Exception as e:  # noqa: BLE001
        _report(label, "benchmarks", e)
        for s in specs:
            store.record_failure(label, f"benchmarks/{s.name}", _error_text(e))
        return len(specs)
    clock.lap("lm_eval_setup")
    failed = 0
    try:
        for s in specs:
            if stop.requested:
                break
            log.info(f"{label}: {s.name} started (few-shot {s.num_fewshot}, limit {s.limit})")
            part = f"benchmarks/{s.name}"
            try:
                res = benchmarks.evaluate_task(lm, s, tm, items=cfg.items, requests=requests)
                bs = benchmarks.used_batch_size(lm, batch_size)
                rows = [{**meta, **r, "batch_size": bs} for r in res.rows]
                items = None
                if cfg.items:
                    items = {t: [{"checkpoint": label, "step": meta["step"], "tokens": meta["tokens"],
                                  "kind": meta["kind"], **x}
                                 for x in recs] for t, recs in res.items.items()}
                store.write_unit(label, s.name, rows, items=items, part=part)
                log.info(f"{label}: {s.name} finished in {_duration(clock.lap(s.name))}{_headline(s.name, rows)}")
            except Exception as e:  # noqa: BLE001
                clock.lap(s.name)
                _report(label, part, e)
                store.record_failure(label, part, _error_text(e))
                failed += 1
            claim.release(s.name)
    finally:
        del lm
    return failed


def _val_loss(cfg, store, model, meta, val_set, device) -> None:
    from .valloss import val_loss

    r = val_loss(model, val_set, cfg.val_seq_len, batch_size=cfg.val_batch_size, device=device)
    base = {**meta, "task": "val_loss", "n": r["n_tokens"], "task_hash": r["windows_sha"], "batch_size":
            str(cfg.val_batch_size), "stderr": None, "num_fewshot": None, "group": None,
            "task_version": f"seq_len={r['seq_len']}", "limit": None, "corpus": val_set.corpus,
            "corpus_manifest_sha256": val_set.manifest_sha256}
    rows = [{**base, "metric": "loss", "value": r["loss"]}]
    if r["bpb"] is not None:
        rows.append({**base, "metric": "bpb", "value": r["bpb"]})
    store.write_unit(meta["checkpoint"], "val_loss", rows)
    return f"loss {r['loss']:.4f} on {r['n_tokens']:,} tokens"


def _probes(store, model, meta, probe_cfg, device) -> None:
    from .probes import run_probes

    rows = run_probes(model, meta["kind"], probe_cfg, device=device)
    probes = [{"checkpoint": meta["checkpoint"], "step": meta["step"], "tokens": meta["tokens"], "kind": meta["kind"],
               "model_sha": meta["model_sha"], **r} for r in rows]
    store.write_unit(meta["checkpoint"], "probes", [], probes=probes)
    return f"{len(probes)} outputs"


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


