"""Files of a run directory, shared by every stage: metrics.jsonl, atomic directories,
provenance (git commit), and a Ctrl-C / SIGTERM guard that lets a loop stop at a safe point.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success fsync its files and rename it to `final`.

    A crash or kill at any moment leaves either no `final` or a complete one (never a partial
    one); leftovers are named `.NAME.tmp-*` and ignored by readers. An existing `final` is
    replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    """Append one JSON object per line to OUT/metrics.jsonl, flushed at every row.

    Rows carry a `kind` ("train", "val", "event", ...) plus the stage's fields.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._f = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", buffering=1)

    def write(self, kind: str, **fields) -> dict:
        row = {"kind": kind, **{k: _clean(v) for k, v in fields.items()}}
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        return row

    def truncate_after(self, step: int) -> None:
        """Drop rows with step > `step` (from an attempt that was resumed from an earlier checkpoint)."""
        if not self.path.exists():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step_of(ln) <= step]
        if self._f is not None:
            self._f.close()
        atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        if self.enabled:
            self._f = open(self.path, "a", buffering=1)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", -1))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 62  # unreadable (torn) line: dropped


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All complete rows of a metrics.jsonl (a torn last line from a kill is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no metrics file (has the run started?)")
    rows = []
    for ln in path.read_text().splitlines():
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return rows


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """sha256 of a file, read in 16 MiB blocks (shards and weight files can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str | None:
    """The commit of the dmas-repro source tree, with '-dirty' when it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class StopSignal:
    """Catch SIGINT/SIGTERM inside a loop: `stop.requested` turns true and the loop checkpoints
    and exits at its next safe point. A second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested: str | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def check_free_space(path: str | os.PathLike, need_bytes: int, what: str) -> None:
    """One clear error before writing `need_bytes` under `path` on a disk that lacks room."""
    path = Path(path)
    probe = path if path.exists() else path.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise UserError(
            f"not enough disk space for {what} in {path}: need {need_bytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free"
        )
