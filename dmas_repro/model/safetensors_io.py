"""Reading .safetensors files straight into existing tensors, with plain file reads.

`safetensors.safe_open` memory-maps the whole file; every page it touches counts in the process's
resident memory until the file is closed, so reading a 5 GB shard into a model that already holds
its parameters peaks near model + shard. Here the header is parsed (the format: an 8-byte
little-endian length, a JSON header of dtype/shape/byte offsets, then the raw little-endian
data) and each tensor's bytes are read with `readinto` into the destination parameter itself,
so loading peaks at the model plus, at most, one tensor (when a dtype cast or a device copy needs
a staging buffer).

`write_safetensors` is the other direction for tensors made one at a time (a cast, a rename, a
file converted into another): the header is computed from names, dtypes and shapes alone, then
each tensor is asked for, written and dropped, so a file of any size is written holding one
tensor. Its bytes are those `safetensors.torch.save_file` writes for the same tensors
(tests/model/test_hf.py compares them); for tensors already in memory `save_file` is used.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import UserError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
# The library's file order: by dtype (its enum order, last first), then by name.
_DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64",
                "I64", "U64"]
MAX_HEADER = 100 * 2**20  # the library's own limit
_READ_BLOCK = 1 << 30  # bytes per read() call (Linux returns at most ~2 GiB per call)


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class SafetensorsReader:
    """The tensors of one .safetensors file, read on demand; a damaged file is one `UserError`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb", buffering=0)
        except OSError as e:
            raise UserError(f"{self.path}: cannot read ({e.strerror or e})") from None
        try:
            self.entries, self.metadata = self._parse()
        except BaseException:
            self._fh.close()
            raise

    def _bad(self, why: str) -> UserError:
        return UserError(f"{self.path}: corrupt or truncated safetensors file ({why})")

    def _parse(self) -> tuple[dict[str, Entry], dict]:
        size = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(8)
        if len(head) < 8:
            raise self._bad(f"{size} bytes, no header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or 8 + n > size:
            raise self._bad(f"header length {n} does not fit a file of {size} bytes")
        try:
            header = json.loads(self._fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._bad(f"header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        base = 8 + n
        entries = {}
        for name, info in header.items():
            try:
                dtype = DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                start, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise self._bad(f"tensor {name!r}: unreadable entry {info!r}") from None
            numel = 1
            for s in shape:
                numel *= s
            if end - start != numel * dtype.itemsize or start < 0:
                raise self._bad(f"tensor {name!r}: offsets {start}..{end} do not hold shape {list(shape)} "
                                f"of {info['dtype']}")
            if base + end > size:
                raise self._bad(f"tensor {name!r} ends at byte {base + end}, the file has {size}")
            entries[name] = Entry(name, dtype, shape, base + start, base + end)
        return dict(sorted(entries.items(), key=lambda kv: kv[1].start)), metadata

    # ------------------------------------------------------------------ reading
    def keys(self) -> list[str]:
        """Tensor names in file order (reading in this order reads the file front to back)."""
        return list(self.entries)

    def _readinto(self, entry: Entry, buf: memoryview) -> None:
        pos, done = entry.start, 0
        while done < entry.nbytes:
            try:
                got = os.preadv(self._fh.fileno(), [buf[done: done + _READ_BLOCK]], pos)
            except OSError as e:
                raise UserError(f"{self.path}: cannot read ({e.strerror or e})") from None
            if got <= 0:
                raise self._bad(f"tensor {entry.name!r}: the file ends early")
            done += got
            pos += got

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Copy tensor `name` into `out` (same shape; any dtype and device: cast/copied through one
        staging tensor when `out` is not a contiguous CPU tensor of the file's dtype)."""
        e = self.entries[name]
        if tuple(out.shape) != e.shape:
            raise UserError(f"{self.path}: tensor {name} has shape {list(e.shape)}, expected {list(out.shape)}")
        if out.dtype == e.dtype and out.device.type == "cpu" and out.is_contiguous() and sys.byteorder == "little":
            if e.nbytes:
                self._readinto(e, memoryview(out.detach().reshape(-1).view(torch.uint8).numpy()))
            return
        with torch.no_grad():
            out.copy_(self.read(name))

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name` as a new CPU tensor."""
        e = self.entries[name]
        if sys.byteorder != "little":  # the data is little-endian: let the library convert it
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as st:
                return st.get_tensor(name)
        t = torch.empty(e.shape, dtype=e.dtype)
        if e.nbytes:
            self._readinto(e, memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        return t

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def write_safetensors(path: str | os.PathLike, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                      tensor: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file of the tensors named in `specs` (name -> (dtype, shape)), asking
    `tensor(name)` for each one only when its turn comes (a CPU tensor of that dtype and shape)."""
    order = sorted(specs, key=lambda n: (-_DTYPE_ORDER.index(NAMES[specs[n][0]]), n))
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        dtype, shape = specs[name]
        numel = 1
        for d in shape:
            numel *= d
        end = offset + numel * dtype.itemsize
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb", buffering=0) as fh:
        _write_all(fh, len(text).to_bytes(8, "little") + text)
        for name in order:
            t = tensor(name)
            dtype, shape = specs[name]
            if t.dtype != dtype or tuple(t.shape) != tuple(shape) or t.device.type != "cpu":
                raise ValueError(f"{name}: got {t.dtype} {list(t.shape)} on {t.device}, the header says {dtype} "
                                 f"{list(shape)} on cpu")
            if t.numel():
                _write_all(fh, memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
            del t


def _write_all(fh, data) -> None:
    mv = memoryview(data)
    while len(mv):
        n = fh.write(mv[:_READ_BLOCK])
        mv = mv[n:]
