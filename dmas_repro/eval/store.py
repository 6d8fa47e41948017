"""The results store of `eval-all-checkpoints`: one directory, safe to kill, rerun and share.

```
OUT/store.json                    settings that make results comparable (a rerun must match them)
OUT/units/<checkpoint>/<unit>.json  one finished (checkpoint, unit): unit = a benchmark task,
                                  "val_loss" or "probes"; holds its metric rows (and probe rows).
                                  Written atomically, last: its existence means "done".
OUT/units/<checkpoint>/<part>.failed.json   the last failure of a unit not done yet
OUT/units/<checkpoint>/<unit>.claim  a lock file (`filelock`): held by the process evaluating the unit
OUT/items/<checkpoint>/<task>.jsonl  one record per benchmark item (written before the unit)
OUT/results.csv, results.parquet  long form: every unit's rows, one row per
                                  (checkpoint, task, metric); rebuilt after each unit
OUT/probes.jsonl, failures.jsonl  the same for probe outputs and open failures
```

Because the unit files are the only source of truth and each is keyed by its path, a rerun
skips finished units and can never duplicate a row. Several processes may write into one store
(`--shard i/N`, or the same command started twice): a process claims a unit (`claim`: an exclusive
`filelock` on its claim file, held until the unit is stored) before it evaluates it, so a second
process takes other work; a lock dies with its process (kill -9 included), so a dead run's claims
are taken over by the next run. The settings and the tables are written under a lock on OUT/.lock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ..core.errors import UserError
from ..core.files import atomic_write_text

COLUMNS = [
    "checkpoint", "step", "tokens", "kind", "task", "metric", "value", "stderr", "n", "num_fewshot", "limit",
    "group", "harness_version", "task_version", "model_sha", "task_hash", "dtype", "batch_size", "device",
    "source", "finished_at", "corpus", "corpus_manifest_sha256",
]
KEY = ["checkpoint", "task", "metric"]
INT_COLUMNS = ["step", "tokens", "n", "num_fewshot"]
FLOAT_COLUMNS = ["value", "stderr", "limit", "finished_at"]
PROBE_FIELDS = ["checkpoint", "step", "tokens", "kind"]



def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def dumps(obj) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False)


class ResultStore:
    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.units = self.out / "units"
        self.items = self.out / "items"

    # ---------------------------------------------------------------- settings
    def check_settings(self, settings: dict) -> None:
        """Record the settings of this store, or refuse to mix results made with other ones."""
        with self._lock():
            self._check_settings(settings)

    def _check_settings(self, settings: dict) -> None:
        f = self.out / "store.json"
        if f.is_file():
            try:
                old = json.loads(f.read_text())["settings"]
            except (json.JSONDecodeError, KeyError) as e:
                raise UserError(f"{f}: unreadable ({e}); move the results directory away") from None
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v and k in old}
            if diff:
                said = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise UserError(f"{self.out} holds results made with other settings ({said}); "
                                "use the same settings or another --out")
            if any(k not in old for k in settings):
                atomic_write_text(f, json.dumps({"settings": {**old, **settings}}, indent=2) + "\n")
            return
        atomic_write_text(f, json.dumps({"settings": settings}, indent=2) + "\n")

    # ---------------------------------------------------------------- units
    def unit_path(self, checkpoint: str, unit: str) -> Path:
        return self.units / checkpoint / f"{unit}.json"

    def claim_path(self, checkpoint: str, unit: str) -> Path:
        return self.units / checkpoint / f"{unit.replace('/', '__')}.claim"

    def claim(self, checkpoint: str, units: list[str]) -> Claim:
        """Claim what is left of `units` of one checkpoint for this process: each unit not done whose claim
        file no other process holds. The claim of a unit is released by `Claim.release(unit)` (after it is
        stored or has failed) or when the process ends, however it ends."""
        held: dict[str, FileLock] = {}
        for unit in units:
            if self.done(checkpoint, unit):
                continue
            path = self.claim_path(checkpoint, unit)
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(path, thread_local=False)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                continue  # another process evaluates it
            if self.done(checkpoint, unit):  # stored by another process between the first check and the lock
                lock.release()
                continue
            held[unit] = lock
        return Claim(self, checkpoint, held)

    def failure_path(self, checkpoint: str, part: str) -> Path:
        return self.units / checkpoint / f"{part.replace('/', '__')}.failed.json"

    def done(self, checkpoint: str, unit: str) -> bool:
        f = self.unit_path(checkpoint, unit)
        if not f.is_file():
            return False
        try:
            json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            return False
        return True

    def write_unit(self, checkpoint: str, unit: str, rows: list[dict], items: dict[str, list[dict]] | None = None,
                   probes: list[dict] | None = None, part: str | None = None) -> None:
        """Store one finished unit: items first, then the unit file (atomically), then clear its failure."""
        for task, recs in (items or {}).items():
            text = "".join(dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in recs)
            atomic_write_text(self.items / checkpoint / f"{task}.jsonl", text)
        doc = {"checkpoint": checkpoint, "unit": unit, "finished_at": time.time(),
               "rows": [{k: _clean(v) for k, v in r.items()} for r in rows], "probes": probes or [],
               "items": sorted(items or {})}
        atomic_write_text(self.unit_path(checkpoint, unit), dumps(doc) + "\n")
        self.failure_path(checkpoint, part or unit).unlink(missing_ok=True)

    def record_failure(self, checkpoint: str, part: str, error: str) -> None:
        doc = {"checkpoint": checkpoint, "part": part, "error": error, "time": time.time()}
        atomic_write_text(self.failure_path(checkpoint, part), dumps(doc) + "\n")

    def clear_failure(self, checkpoint: str, part: str) -> None:
        self.failure_path(checkpoint, part).unlink(missing_ok=True)

    def _unit_docs(self) -> list[dict]:
        docs = []
        for f in sorted(self.units.glob("*/*.json")):
            if f.name.endswith(".failed.json") or f.name.startswith("."):
                continue
            try:
                docs.append(json.loads(f.read_text()))
            except (json.JSONDecodeError, OSError):
                continue  # cannot happen with atomic writes; a foreign file is ignored
        return docs

    def failures(self) -> list[dict]:
        out = []
        for f in sorted(self.units.glob("*/*.failed.json")):
            with contextlib.suppress(json.JSONDecodeError, OSError):
                out.append(json.loads(f.read_text()))
        return out

    # ---------------------------------------------------------------- tables
    @contextlib.contextmanager
    def _lock(self):
        self.out.mkdir(parents=True, exist_ok=True)
        with FileLock(self.out / ".lock", thread_local=False):
            yield

    def table(self):
        """All metric rows as a DataFrame (one row per checkpoint, task, metric)."""
        import pandas as pd

        rows = [{**r, "finished_at": d.get("finished_at")} for d in self._unit_docs() for r in d["rows"]]
        df = pd.DataFrame(rows, columns=None if rows else COLUMNS)
        for c in COLUMNS:
            if c not in df.columns:
                df[c] = None
        df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
        df = df.astype({**{c: "Int64" for c in INT_COLUMNS}, **{c: "Float64" for c in FLOAT_COLUMNS}})
        df = df.astype({c: "string" for c in df.columns if c not in INT_COLUMNS + FLOAT_COLUMNS})
        if len(df):
            df = df.drop_duplicates(subset=KEY, keep="last")
            df = df.sort_values(["kind", "step", "checkpoint", "task", "metric"], na_position="last",
                                kind="stable").reset_index(drop=True)
        return df

    def consolidate(self):
        """Rebuild results.csv/.parquet, probes.jsonl and failures.jsonl from the unit files."""
        with self._lock():
            df = self.table()
            atomic_write_text(self.out / "results.csv", df.to_csv(index=False))
            tmp = self.out / f".results.parquet.tmp-{os.getpid()}"
            try:
                df.to_parquet(tmp, index=False)
                os.replace(tmp, self.out / "results.parquet")
            finally:
                tmp.unlink(missing_ok=True)
            probes = [p for d in self._unit_docs() for p in d.get("probes", [])]
            atomic_write_text(self.out / "probes.jsonl", "".join(dumps(p) + "\n" for p in probes))
            atomic_write_text(self.out / "failures.jsonl", "".join(dumps(f) + "\n" for f in self.failures()))
        return df


class Claim:
    """The units of one checkpoint this process holds (see `ResultStore.claim`)."""

    def __init__(self, store: ResultStore, checkpoint: str, held: dict[str, FileLock]):
        self.store, self.checkpoint, self._held = store, checkpoint, held

    @property
    def units(self) -> list[str]:
        return list(self._held)

    def __bool__(self) -> bool:
        return bool(self._held)

    def release(self, unit: str) -> None:
        """Let go of one unit; the claim file of a stored unit is removed (a process that opened it
        meanwhile finds the unit done once it holds the lock)."""
        lock = self._held.pop(unit, None)
        if lock is None:
            return
        lock.release()
        if self.store.done(self.checkpoint, unit):
            self.store.claim_path(self.checkpoint, unit).unlink(missing_ok=True)

    def release_all(self) -> None:
        for unit in list(self._held):
            self.release(unit)


def summary(df) -> str:
    """A checkpoint x task table of each task's headline metric (`suites.headline_metric`; val loss)."""
    from .suites import headline_metric

    if df is None or not len(df):
        return "(no results yet)"
    picked = []
    for task, g in df.groupby("task", sort=False):
        if task != "val_loss" and g["group"].notna().all():
            continue  # subtasks of a group: the group's row stands for them
        m = headline_metric(task, g["metric"])
        if m is not None:
            picked.append(g[g["metric"] == m].assign(column=f"{task} {m}"))
    if not picked:
        return "(no headline metrics)"
    import pandas as pd

    sel = pd.concat(picked)
    order = df.drop_duplicates("checkpoint")[["checkpoint"]].reset_index(drop=True)
    table = sel.pivot_table(index="checkpoint", columns="column", values="value", aggfunc="first")
    table = table.reindex(order["checkpoint"])
    info = df.drop_duplicates("checkpoint").set_index("checkpoint")[["step", "tokens"]]
    table.insert(0, "step", info["step"])
    table.insert(1, "tokens", info["tokens"])
    return table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")
