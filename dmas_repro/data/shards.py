"""Prepared token data on disk, read back: `manifest.json` and uint16 shards, memory-mapped.

A data directory (written by `dmas_repro.data.prepare`) holds `manifest.json` and raw little-endian
uint16 token files (no header) named `{split}_{index:06d}.bin` for split in {train, val}. Every
document is preceded by <|endoftext|> (50256). `open_split` maps a split without copying;
`load_split_tokens` gives it as one array; `verify` rechecks every shard's sha256.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import file_sha256

MANIFEST = "manifest.json"
PROGRESS = ".progress.json"  # an unfinished preparation (see prepare.py)
FORMAT = "dmas-repro-tokens-v1"
DTYPE = np.dtype("<u2")
SPLITS = ("train", "val")
EOT = 50256


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """The manifest of a prepared data directory, checked against the files on disk (sizes, dtype)."""
    d = Path(data_dir)
    f = d / MANIFEST
    if not f.is_file():
        hint = " (an unfinished preparation is there: rerun prepare-data)" if (d / PROGRESS).is_file() else ""
        raise UserError(f"{d}: no prepared data ({MANIFEST} missing){hint}; run `dmas-repro prepare-data --out {d}`")
    try:
        man = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: not valid JSON ({e})") from None
    if man.get("format") != FORMAT or man.get("dtype") != "uint16":
        raise UserError(f"{f}: not a dmas-repro token manifest of uint16 tokens "
                        f"(format {man.get('format')!r}, dtype {man.get('dtype')!r})")
    for split in SPLITS:
        for sh in man["shards"].get(split, []):
            p = d / sh["file"]
            if not p.is_file():
                raise UserError(f"{p}: shard listed in {MANIFEST} is missing")
            size = p.stat().st_size
            if size != sh["tokens"] * DTYPE.itemsize:
                raise UserError(f"{p}: {size} bytes, but {MANIFEST} says {sh['tokens']} uint16 tokens "
                                f"({sh['tokens'] * DTYPE.itemsize} bytes): wrong size or dtype")
    return man


class ShardedTokens:
    """A read-only 1-D view over the memory-mapped shards of one split: len() and [a:b] slices."""

    dtype = DTYPE

    def __init__(self, maps: list[np.memmap]):
        self.maps = maps
        self.starts = np.cumsum([0] + [len(m) for m in maps])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            i = int(np.searchsorted(self.starts, k, side="right")) - 1
            return self.maps[i][k - self.starts[i]]
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError("ShardedTokens supports contiguous slices only")
        parts = []
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            m, off = self.maps[i], start - self.starts[i]
            take = min(stop - start, len(m) - off)
            parts.append(m[off : off + take])
            start += take
            i += 1
        if len(parts) == 1:
            return np.asarray(parts[0])
        return np.concatenate(parts) if parts else np.empty(0, DTYPE)

    def __array__(self, dtype=None, copy=None):
        a = self[0 : len(self)]
        return a.astype(dtype) if dtype is not None else a


def open_split(data_dir: str | os.PathLike, split: str) -> ShardedTokens:
    """Memory-mapped tokens of one split, shards in order, without copying (use this for big data)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {SPLITS}")
    d = Path(data_dir)
    man = read_manifest(d)
    shards = man["shards"].get(split) or []
    if not shards:
        raise UserError(f"{d}: no {split} shards")
    return ShardedTokens([np.memmap(d / s["file"], dtype=DTYPE, mode="r") for s in shards])


def load_split_tokens(data_dir: str | os.PathLike, split: str) -> np.ndarray:
    """All tokens of a split as one uint16 array: the memmap itself for one shard, else a concatenation
    (in memory; fine for validation splits and small data, use `open_split` for big training splits)."""
    t = open_split(data_dir, split)
    return t.maps[0] if len(t.maps) == 1 else np.concatenate(t.maps)


def verify(data_dir: str | os.PathLike) -> dict:
    """Recompute every shard's sha256 against the manifest (slow on big data)."""
    d = Path(data_dir)
    man = read_manifest(d)
    for split in SPLITS:
        for sh in man["shards"].get(split, []):
            if file_sha256(d / sh["file"]) != sh["sha256"]:
                raise UserError(f"{d / sh['file']}: sha256 differs from {MANIFEST} (corrupt shard)")
    return man
