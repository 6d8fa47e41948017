"""Corpus -> token shards (`dmas-repro prepare-data`); the layout is described in `shards.py`.

Every document is preceded by <|endoftext|> (50256), as in the authors' FineWeb-Edu shards.
Documents are read in a fixed order; every `val_every_docs`-th document goes to the validation split until it holds
`val_tokens` tokens (with val_every_docs=1 the first documents form the validation split, like
the authors' shard 0). Shards are cut at exactly `shard_tokens` tokens (a document may span two).

The preparation is resumable: after a chunk of documents that completed a shard, at most every
`PROGRESS_EVERY_S` seconds, it makes the shards written so far durable (fsync) and saves its
position in the document stream and the unfinished shard buffers (`.progress*` files); a rerun
continues from there and produces the same bytes as an uninterrupted run (shards written after
the last save are written again, identically).

Speed: with `num_proc` > 1, worker processes tokenize chunks of `chunk_docs` documents and send
back one uint16 array per chunk; the main process only reads documents and writes shards
(scripts/bench_prepare.py measures it against tiktoken alone, BENCHMARKS.md).

Sources: `bundled` (two small real corpora shipped with the package), `fineweb-edu`
(`HuggingFaceFW/fineweb-edu` through `datasets` streaming; revision recorded), or a local
`.txt` / `.jsonl` file or a directory of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import opt
from ..core.errors import UserError
from ..core.files import atomic_write_text, check_free_space, file_sha256, fsync_dir
from .shards import DTYPE, EOT, FORMAT, MANIFEST, PROGRESS, SPLITS, read_manifest

CORPORA = Path(__file__).resolve().parents[1] / "assets" / "corpora"
BUNDLED_FILES = ("wiki_demo.txt", "c4_demo.jsonl")
FINEWEB_REPO = "HuggingFaceFW/fineweb-edu"
# GPT-2 tokens in FineWeb-Edu's sample subsets (their names): the progress bar's total for an ETA.
# Progress (a resume point) is saved at most this often; shards are fsynced just before it is.
PROGRESS_EVERY_S = 30.0
FINEWEB_SUBSET_TOKENS = {"sample-10BT": 10_000_000_000, "sample-100BT": 100_000_000_000,
                         "sample-350BT": 350_000_000_000}


# ---------------------------------------------------------------- configuration
@dataclass
class PrepareConfig:
    """What `prepare-data` reads and how it cuts it. `None` fields take the source's default."""

    source: str = opt("bundled", "bundled (default), fineweb-edu, or a .txt/.jsonl file or directory of them")
    shard_tokens: int | None = opt(None, "tokens per shard (fineweb-edu: 100M, as the authors; local: 100k)")
    val_tokens: int | None = opt(None, "validation tokens, whole documents (fineweb-edu: 100M; local: 40k)")
    val_every_docs: int | None = opt(None, "every k-th document goes to validation until it is full "
                                           "(fineweb-edu: 1; local: 10)")
    max_tokens: int | None = opt(None, "stop after this many training tokens (default: the whole source)")
    subset: str = opt("sample-100BT", "FineWeb-Edu subset (config name)")
    revision: str | None = opt(None, "FineWeb-Edu revision (branch, tag or commit); the resolved commit is recorded")
    text_field: str = opt("text", "text field of .jsonl records")
    txt_unit: str = opt("line", ".txt files: one document per non-empty line, or per file", choices=["line", "file"])
    num_proc: int = opt(1, "tokenizer processes (the output does not depend on it)")
    chunk_docs: int = opt(256, "documents per tokenizer task (a resume point lies between chunks)")

    def resolved(self) -> PrepareConfig:
        d = asdict(self)
        defaults = SOURCE_DEFAULTS["fineweb-edu" if self.source == "fineweb-edu" else "local"]
        for k, v in defaults.items():
            if d[k] is None:
                d[k] = v
        cfg = PrepareConfig(**d)
        if cfg.shard_tokens <= 0 or cfg.val_tokens < 0 or cfg.val_every_docs <= 0 or cfg.chunk_docs <= 0:
            raise UserError("prepare-data: shard_tokens, val_every_docs, chunk_docs must be > 0; val_tokens >= 0")
        if cfg.txt_unit not in ("line", "file"):
            raise UserError(f"prepare-data: txt_unit must be 'line' or 'file', not {cfg.txt_unit!r}")
        return cfg

    def fingerprint(self) -> dict:
        """The fields that determine the output bytes (num_proc does not)."""
        d = asdict(self)
        d.pop("num_proc")
        return d


SOURCE_DEFAULTS = {
    # The authors' layout: 100M-token shards, a 100M-token validation split made of the first documents.
    "fineweb-edu": {"shard_tokens": 100_000_000, "val_tokens": 100_000_000, "val_every_docs": 1},
    # Small corpora: validation from every 10th document, so it mixes all files.
    "local": {"shard_tokens": 100_000, "val_tokens": 40_000, "val_every_docs": 10},
}


# ---------------------------------------------------------------- document sources
class DocStream:
    """Documents in a fixed order, with a resumable position (`state()` after the last yielded doc)."""

    description: dict

    def iter_from(self, state: dict | None) -> Iterator[str]:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError


class LocalFiles(DocStream):
    def __init__(self, files: list[Path], text_field: str, txt_unit: str, label: str):
        self.files, self.text_field, self.txt_unit = files, text_field, txt_unit
        self.docs = 0
        self.description = {
            "source": label,
            "files": [{"name": f.name, "bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in files],
        }

    def _all(self) -> Iterator[str]:
        for f in self.files:
            try:
                yield from self._docs(f)
            except UnicodeDecodeError as e:
                raise UserError(f"{f}: not UTF-8 text ({e.reason} at a byte {e.object[e.start:e.start + 1]!r}); "
                                "prepare-data reads UTF-8 .txt and .jsonl files") from None

    def _docs(self, f: Path) -> Iterator[str]:
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[self.text_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise UserError(f"{f}:{i}: not a JSON object with a {self.text_field!r} field") from None
                    if not isinstance(text, str):
                        raise UserError(f"{f}:{i}: field {self.text_field!r} is a {type(text).__name__}, not text")
                    if text:
                        yield text
        elif self.txt_unit == "file":
            yield f.read_text(encoding="utf-8")
        else:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield line.rstrip("\n")

    def iter_from(self, state):
        skip = int(state["docs"]) if state else 0
        self.docs = 0
        for doc in self._all():
            self.docs += 1
            if self.docs > skip:
                yield doc

    def state(self):
        return {"docs": self.docs}


class FineWebEdu(DocStream):
    """`HuggingFaceFW/fineweb-edu` streamed through `datasets`; resumes with the dataset's own state_dict."""

    def __init__(self, subset: str, revision: str | None, text_field: str):
        self.subset, self.text_field = subset, text_field
        self.revision = resolve_dataset_revision(FINEWEB_REPO, revision)
        self._ds = None
        self.description = {"source": "fineweb-edu", "repo": FINEWEB_REPO, "subset": subset,
                            "revision": self.revision}

    def iter_from(self, state):
        import datasets

        try:
            ds = datasets.load_dataset(FINEWEB_REPO, name=self.subset, split="train", streaming=True,
                                       revision=self.revision)
        except Exception as e:  # offline, unknown subset, hub error: one line for the user
            raise UserError(f"cannot open {FINEWEB_REPO} ({self.subset}): {type(e).__name__}: {e}") from None
        if state and state.get("dataset") is not None:
            ds.load_state_dict(state["dataset"])
        self._ds = ds
        for row in ds:
            text = row[self.text_field]
            if text:
                yield text

    def state(self):
        return {"dataset": self._ds.state_dict() if self._ds is not None else None}


def resolve_dataset_revision(repo: str, revision: str | None) -> str:
    """The commit sha of a hub dataset revision (recorded in the manifest)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo, revision=revision).sha
    except Exception as e:
        raise UserError(f"cannot resolve {repo} revision {revision or 'main'} (offline?): {type(e).__name__}: {e}") \
            from None


def open_source(cfg: PrepareConfig) -> DocStream:
    if cfg.source == "bundled":
        return LocalFiles([CORPORA / f for f in BUNDLED_FILES], "text", "line", "bundled")
    if cfg.source == "fineweb-edu":
        return FineWebEdu(cfg.subset, cfg.revision, cfg.text_field)
    p = Path(cfg.source)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".txt", ".jsonl") and f.is_file())
        if not files:
            raise UserError(f"{p}: no .txt or .jsonl files in this directory")
    elif p.is_file():
        if p.suffix not in (".txt", ".jsonl"):
            raise UserError(f"{p}: unsupported file type (use .txt or .jsonl)")
        files = [p]
    else:
        raise UserError(f"unknown data source {cfg.source!r}: not 'bundled', 'fineweb-edu' or an existing path")
    return LocalFiles(files, cfg.text_field, cfg.txt_unit, str(p.resolve()))


# ---------------------------------------------------------------- tokenization
def _encode_chunk(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The chunk's tokens as one uint16 array (each document preceded by <|endoftext|>) and the length of
    each document in it (with its <|endoftext|>): one array each way between processes, not one per document."""
    from ..model.tokenizer import gpt2

    tok = gpt2()
    encoded = [tok.encode(d) for d in docs]  # tiktoken's encode_ordinary: "<|endoftext|>" in a text is text
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
    out = np.empty(int(lengths.sum()), dtype=DTYPE)
    pos = 0
    for ids, n in zip(encoded, lengths.tolist()):
        out[pos] = EOT
        out[pos + 1: pos + n] = ids
        pos += n
    return out, lengths


def _chunks(stream: Iterator[str], source: DocStream, size: int, states: dict) -> Iterator[list[str]]:
    """Chunks of documents; records the stream position after chunk i in states[i]."""
    i, buf = 0, []
    for doc in stream:
        buf.append(doc)
        if len(buf) == size:
            states[i] = source.state()
            yield buf
            i, buf = i + 1, []
    if buf:
        states[i] = source.state()
        yield buf


# ---------------------------------------------------------------- writer
@dataclass
class _Split:
    name: str
    shards: list[dict] = field(default_factory=list)
    buffer: list[np.ndarray] = field(default_factory=list)
    buffered: int = 0
    documents: int = 0
    done: bool = False

    @property
    def written(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    @property
    def total(self) -> int:
        return self.written + self.buffered


class _Writer:
    """Cuts the splits' token streams into shards. A shard is written to a temporary name and renamed
    (never torn), but not fsynced one by one: `sync` makes every shard written since the last call
    durable, and runs before any progress file or manifest that lists them is written."""

    def __init__(self, out: Path, shard_tokens: int):
        self.out, self.shard_tokens = out, shard_tokens
        self.unsynced: list[Path] = []

    def add(self, split: _Split, toks: np.ndarray) -> None:
        if not len(toks):
            return
        split.buffer.append(toks)
        split.buffered += len(toks)
        while split.buffered >= self.shard_tokens:
            self.flush(split, self.shard_tokens)

    def flush(self, split: _Split, n: int | None = None) -> None:
        """Write the first n buffered tokens (all if None) as the split's next shard."""
        allbuf = (split.buffer[0] if len(split.buffer) == 1 else np.concatenate(split.buffer)) if split.buffer \
            else np.empty(0, DTYPE)
        n = len(allbuf) if n is None else n
        if n == 0:
            return
        data, rest = allbuf[:n], allbuf[n:]
        name = f"{split.name}_{len(split.shards):06d}.bin"
        check_free_space(self.out, data.nbytes + (16 << 20), f"token shard {name}")
        raw = memoryview(np.ascontiguousarray(data)).cast("B")
        _write_bytes_atomic(self.out / name, raw, fsync=False)
        self.unsynced.append(self.out / name)
        split.shards.append({"file": name, "tokens": int(n), "sha256": hashlib.sha256(raw).hexdigest()})
        split.buffer = [rest] if len(rest) else []
        split.buffered = len(rest)

    def sync(self) -> None:
        for f in self.unsynced:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.unsynced:
            fsync_dir(self.out)
        self.unsynced = []


def _write_bytes_atomic(path: Path, data, fsync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_progress(out: Path, cfg: PrepareConfig, stream_state: dict, splits: dict[str, _Split], gen: int) -> None:
    """Buffers first (new generation names), then the JSON that points at them, then drop old ones."""
    for s in splits.values():
        buf = np.concatenate(s.buffer) if s.buffer else np.empty(0, DTYPE)
        _write_bytes_atomic(out / f".progress_{s.name}.{gen}.bin", buf.tobytes())
    state = {
        "config": cfg.fingerprint(),
        "generation": gen,
        "stream": stream_state,
        "splits": {k: {"shards": s.shards, "buffered": s.buffered, "documents": s.documents, "done": s.done}
                   for k, s in splits.items()},
    }
    atomic_write_text(out / PROGRESS, json.dumps(state))
    for f in out.glob(".progress_*.bin"):
        if not f.name.endswith(f".{gen}.bin"):
            f.unlink(missing_ok=True)


def _load_progress(out: Path, cfg: PrepareConfig) -> tuple[dict | None, dict[str, _Split], int]:
    splits = {k: _Split(k) for k in SPLITS}
    p = out / PROGRESS
    if not p.is_file():
        return None, splits, 0
    try:
        state = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{p}: unreadable progress file; delete {out} to start over") from None
    if state.get("config") != cfg.fingerprint():
        raise UserError(f"{out}: holds an unfinished preparation with other settings; "
                        f"use another --out or delete {out}")
    gen = int(state["generation"])
    for k, s in splits.items():
        st = state["splits"][k]
        s.shards, s.documents, s.done = st["shards"], st["documents"], st["done"]
        buf = np.fromfile(out / f".progress_{k}.{gen}.bin", dtype=DTYPE)
        if len(buf) != st["buffered"]:
            raise UserError(f"{out}: progress buffer of {k} is damaged; delete {out} to start over")
        s.buffer, s.buffered = ([buf] if len(buf) else []), len(buf)
        for sh in s.shards:  # shards finished before the interruption must still be intact
            f = out / sh["file"]
            if not f.is_file() or f.stat().st_size != sh["tokens"] * DTYPE.itemsize:
                raise UserError(f"{f}: missing or truncated since the interrupted run; delete {out} to start over")
    return state["stream"], splits, gen


def prepare(cfg: PrepareConfig, out_dir: str | os.PathLike, progress: bool | None = None) -> dict:
    """Tokenize `cfg.source` into shards under `out_dir`; returns the manifest. Resumes unfinished work."""
    from ..model.tokenizer import files_sha256

    cfg = cfg.resolved()
    out = Path(out_dir)
    if (out / MANIFEST).is_file():
        man = read_manifest(out)
        if man.get("config") == cfg.fingerprint():
            return man
        raise UserError(f"{out}: already holds data prepared with other settings; use another --out")
    source = open_source(cfg)  # an unknown source is refused before --out is created
    out.mkdir(parents=True, exist_ok=True)
    stream_state, splits, gen = _load_progress(out, cfg)
    train, val = splits["train"], splits["val"]
    writer = _Writer(out, cfg.shard_tokens)
    doc_index = train.documents + val.documents
    if val.total >= cfg.val_tokens:
        val.done = True

    total = cfg.max_tokens
    if total is None and cfg.source == "fineweb-edu":
        total = FINEWEB_SUBSET_TOKENS.get(cfg.subset)
    bar = _progress_bar(progress, total, train.total + val.total)
    states: dict[int, dict] = {}
    chunks = _chunks(source.iter_from(stream_state), source, cfg.chunk_docs, states)
    pool = None
    if cfg.num_proc > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(cfg.num_proc)
        results = pool.imap(_encode_chunk, chunks)
    else:
        results = map(_encode_chunk, chunks)
    finished = False
    last_save, unsaved = time.monotonic(), False
    try:
        for ci, (toks, lengths) in enumerate(results):
            shards_before = len(train.shards) + len(val.shards)
            starts = np.concatenate(([0], np.cumsum(lengths))).tolist()
            i, n, added = 0, len(lengths), 0
            while i < n and not finished:
                if not val.done and doc_index % cfg.val_every_docs == 0:
                    doc = toks[starts[i]: starts[i + 1]]
                    writer.add(val, doc)
                    val.documents += 1
                    if val.total >= cfg.val_tokens:
                        writer.flush(val)
                        val.done = True
                    i, doc_index, added = i + 1, doc_index + 1, added + len(doc)
                    continue
                # a run of training documents: up to the next validation document or the chunk's end
                j = n if val.done else min(n, i + cfg.val_every_docs - doc_index % cfg.val_every_docs)
                piece, docs = toks[starts[i]: starts[j]], j - i
                if cfg.max_tokens is not None and len(piece) >= cfg.max_tokens - train.total:
                    room = cfg.max_tokens - train.total
                    docs = int(np.searchsorted(np.asarray(starts[i:j]) - starts[i], room, side="left"))
                    piece, finished = piece[:room], True
                writer.add(train, piece)
                train.documents += docs
                i, doc_index, added = i + docs, doc_index + docs, added + len(piece)
            if bar is not None:
                bar.update(added)
            if finished:
                break
            unsaved |= len(train.shards) + len(val.shards) > shards_before
            if unsaved and time.monotonic() - last_save >= PROGRESS_EVERY_S:
                writer.sync()
                gen += 1
                _save_progress(out, cfg, states.pop(ci), splits, gen)
                last_save, unsaved = time.monotonic(), False
            states.pop(ci, None)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    writer.flush(train)
    writer.flush(val)
    writer.sync()
    if not train.shards or not val.shards:
        raise UserError(f"{cfg.source}: too little text for a train and a validation split "
                        f"({train.total} train / {val.total} val tokens)")
    manifest = {
        "format": FORMAT,
        "dtype": "uint16",
        "byteorder": "little",
        "eot": EOT,
        "tokenizer": "gpt2",
        "tokenizer_sha256": files_sha256(),
        "source": source.description,
        "config": cfg.fingerprint(),
        "documents": {k: s.documents for k, s in splits.items()},
        "tokens": {k: s.written for k, s in splits.items()},
        "shards": {k: s.shards for k, s in splits.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    (out / PROGRESS).unlink(missing_ok=True)
    for f in out.glob(".progress_*.bin"):
        f.unlink(missing_ok=True)
    return manifest


def _progress_bar(enabled: bool | None, total: int | None, initial: int):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc="tokenizing", dynamic_ncols=True)


def default_data_dir(source: str) -> str:
    """data/<name>: data/bundled, data/fineweb-edu, or data/<file or directory stem>."""
    name = source if source in ("bundled", "fineweb-edu") else Path(source).stem
    return str(Path("data") / name)
