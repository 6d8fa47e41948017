"""Instruction data for the SFT stage: records in, masked token batches out.

records (bundled sample | `yahma/alpaca-cleaned` via `datasets` | local JSON/JSONL)
  -> `Record(instruction, input, output)`, validated
  -> (prompt text, answer text) pairs, formatted by `dmas_repro.model.chat_format.chat_prompt`
  -> `TokenizedSet`: token ids per example and how many of them are prompt
  -> `SFTBatches`: padded (inputs, targets) CPU micro-batches where every prompt position and every
     padding position is -100, so only the answer and its final <|endoftext|> count in the loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import UserError
from ..model.tokenizer import EOT

BUNDLED = "bundled"
BUNDLED_FILE = Path(__file__).resolve().parents[1] / "assets" / "sft" / "alpaca_en_demo.json"
ALPACA_CLEANED = "yahma/alpaca-cleaned"
REQUIRED_FIELDS = ("instruction", "output")  # "input" may be absent or null: it then counts as ""
IGNORE = -100


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str


# ---------------------------------------------------------------- records
def load_records(source: str, revision: str | None = None, cache_dir: str | None = None) -> list[Record]:
    """Instruction records from `bundled`, a local .json/.jsonl file, or a hub dataset id."""
    if source == BUNDLED:
        return validate_records(_read_json_file(BUNDLED_FILE), f"bundled sample {BUNDLED_FILE.name}")
    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir():
            raise UserError(f"{p}: a directory; --data takes a .json or .jsonl file, 'bundled' or a hub dataset id")
        return validate_records(_read_json_file(p), str(p))
    parts = source.split("/")
    if len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~")):
        return validate_records(_load_hub_dataset(source, revision, cache_dir), source)
    raise UserError(f"{source}: no such file (and not 'bundled' or a hub dataset id like {ALPACA_CLEANED})")


def _read_json_file(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from None
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); use a list of records or a .jsonl file") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return data


def _load_hub_dataset(repo_id: str, revision: str | None, cache_dir: str | None) -> list:
    """The `train` split of a hub dataset (e.g. yahma/alpaca-cleaned), downloaded by `datasets`."""
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split="train", revision=revision, cache_dir=cache_dir)
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise UserError(
            f"{repo_id}: cannot load the dataset ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "offline, use a local .json/.jsonl file or 'bundled'"
        ) from None
    return list(ds)


def validate_records(rows, source: str) -> list[Record]:
    """Every row needs string `instruction` and `output`; `input` is optional. One error names all."""
    out, problems = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"record {i} is a {type(row).__name__}, not an object")
            continue
        missing = [k for k in REQUIRED_FIELDS if row.get(k) is None]
        bad = [k for k in ("instruction", "input", "output") if row.get(k) is not None and not isinstance(row[k], str)]
        if missing or bad:
            what = []
            if missing:
                what.append("missing " + ", ".join(repr(k) for k in missing))
            if bad:
                what.append("not text: " + ", ".join(repr(k) for k in bad))
            problems.append(f"record {i} ({'; '.join(what)})")
            continue
        out.append(Record(row["instruction"], row.get("input") or "", row["output"]))
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(
            f"{source}: {len(problems)} of {len(rows)} records are not instruction records: "
            + "; ".join(problems[:3]) + more
            + " (each needs text fields 'instruction' and 'output'; 'input' is optional)"
        )
    if not out:
        raise UserError(f"{source}: no records")
    return out


def split_records(records: list[Record], val_size: int, seed: int) -> tuple[list[Record], list[Record]]:
    """A fixed, seeded train/validation split (the same for every run with the same seed)."""
    if not 0 < val_size < len(records):
        raise UserError(f"val_size {val_size} must be between 1 and {len(records) - 1} ({len(records)} records)")
    order = np.random.default_rng(seed).permutation(len(records))
    val = sorted(order[:val_size].tolist())
    train = sorted(order[val_size:].tolist())
    return [records[i] for i in train], [records[i] for i in val]


# ---------------------------------------------------------------- tokens
if TYPE_CHECKING:
    import torch


@dataclass
class TokenizedSet:
    """Token ids of each example (prompt + answer + <|endoftext|>) and its prompt length."""

    ids: list[np.ndarray]
    prompt_lens: list[int]
    n_truncated: int = 0
    n_dropped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def stats(self) -> dict:
        n_tok = int(sum(len(x) for x in self.ids))
        return {
            "examples": len(self.ids),
            "truncated": self.n_truncated,
            "dropped": self.n_dropped,
            "tokens": n_tok,
            "answer_tokens": n_tok - int(sum(self.prompt_lens)),
        }


def tokenize(tok, prompts: list[str], answers: list[str], max_tokens: int, overlong: str = "truncate") -> TokenizedSet:
    """Encode prompt and answer separately (the prompt exactly as chat encodes it at inference),
    append <|endoftext|> to the answer, and fit each example into `max_tokens`.

    An example over `max_tokens`: with overlong="truncate" its answer is cut at the end (it then
    has no <|endoftext|>); with "drop", or when the prompt leaves no room for one answer token,
    it is dropped. Both are counted.
    """
    if overlong not in ("truncate", "drop"):
        raise UserError(f"overlong must be 'truncate' or 'drop', not {overlong!r}")
    p_ids = tok.encode_batch(prompts)
    a_ids = tok.encode_batch(answers)
    out = TokenizedSet([], [])
    for p, a in zip(p_ids, a_ids):
        a = a + [EOT]
        if len(p) + len(a) > max_tokens:
            if overlong == "drop" or len(p) + 1 >= max_tokens:
                out.n_dropped += 1
                continue
            a = a[: max_tokens - len(p)]
            out.n_truncated += 1
        out.ids.append(np.asarray(p + a, dtype=np.int32))
        out.prompt_lens.append(len(p))
    return out


def labels_for(ids: np.ndarray, prompt_len: int) -> np.ndarray:
    """Per-token labels: -100 on the prompt, the token itself on the answer."""
    labels = ids.astype(np.int64).copy()
    labels[:prompt_len] = IGNORE
    return labels


def collate(ids: list[np.ndarray], prompt_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [B, L-1] for next-token training, right-padded to the longest example:
    inputs pad with <|endoftext|>, targets with -100; target t is label t+1."""
    import torch

    L = max(len(x) for x in ids)
    x = torch.full((len(ids), L - 1), EOT, dtype=torch.long)
    y = torch.full((len(ids), L - 1), IGNORE, dtype=torch.long)
    for i, (seq, n_p) in enumerate(zip(ids, prompt_lens)):
        n = len(seq) - 1
        x[i, :n] = torch.from_numpy(seq[:-1].astype(np.int64))
        y[i, :n] = torch.from_numpy(labels_for(seq, n_p)[1:])
    return x, y


class SFTBatches:
    """Shuffled micro-batches of examples, epoch after epoch, resumable and rank-strided.

    Epoch e's micro-batches come from a permutation seeded by (seed, e). With `group_by_length`
    the permutation is cut into windows of 64 micro-batches, each window is sorted by length and
    cut into micro-batches, and the micro-batches are shuffled again: batches then hold examples
    of similar length (little padding) in a random order. Rank r of W takes micro-batches
    cursor + r, then the cursor moves by W, so W ranks together see exactly what one process
    sees. `state_dict()` is the position (epoch, cursor): a resumed run continues with the very
    next micro-batch.
    """

    GROUP_WINDOW = 64  # micro-batches per length-sorted window

    def __init__(self, data: TokenizedSet, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 group_by_length: bool = True):
        if len(data) == 0:
            raise UserError("no training examples left after tokenization (all dropped as too long?)")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size, self.group_by_length = rank, world_size, group_by_length
        self.per_epoch = -(-len(data) // batch_size)  # micro-batches per epoch (one may be smaller)
        if self.per_epoch < world_size:
            raise UserError(f"{len(data)} examples make {self.per_epoch} micro-batches of {batch_size}: "
                            f"fewer than the {world_size} ranks")
        self.epoch, self.cursor = 0, 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The example indices of every micro-batch of `epoch`, in order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.data))
        B = self.batch_size
        if not self.group_by_length:
            batches = [perm[i : i + B] for i in range(0, len(perm), B)]
        else:
            lengths = np.array([len(x) for x in self.data.ids])
            W = B * self.GROUP_WINDOW
            batches = []
            for i in range(0, len(perm), W):
                window = perm[i : i + W]
                window = window[np.argsort(-lengths[window], kind="stable")]
                batches += [window[j : j + B] for j in range(0, len(window), B)]
            batches = [batches[k] for k in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cursor + self.world_size > self.per_epoch:  # every rank must get a batch of this round
            self.epoch, self.cursor = self.epoch + 1, 0
        idx = self.epoch_batches(self.epoch)[self.cursor + self.rank]
        self.cursor += self.world_size
        return collate([self.data.ids[i] for i in idx], [self.data.prompt_lens[i] for i in idx])

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.cursor / self.per_epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "batch_size": self.batch_size,
                "examples": len(self.data), "group_by_length": self.group_by_length, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        now = {"seed": self.seed, "batch_size": self.batch_size, "examples": len(self.data),
               "group_by_length": self.group_by_length}
        for k, v in now.items():
            if state.get(k) != v:
                raise UserError(f"cannot resume the SFT data position: {k} was {state.get(k)}, now {v} "
                                "(resume needs the same data and config)")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def eval_batches(data: TokenizedSet, batch_size: int, rank: int = 0, world_size: int = 1):
    """This rank's share of the validation set, as (inputs, targets, counts): every example, sorted by
    length (little padding) and cut into micro-batches of `batch_size`; micro-batch k goes to rank
    k % world_size. Every rank yields the same number of micro-batches, ceil(n_batches / world_size),
    so collective forwards (FSDP) line up: a rank with none left in the last round gets micro-batch 0
    again with counts=False, whose loss must not be counted."""
    n_ex = len(data)
    order = sorted(range(n_ex), key=lambda i: (len(data.ids[i]), i))
    n_batches = -(-n_ex // batch_size)
    for r in range(-(-n_batches // world_size)):
        k = r * world_size + rank
        counts = k < n_batches
        idx = order[k * batch_size : (k + 1) * batch_size] if counts else order[:batch_size]
        yield (*collate([data.ids[i] for i in idx], [data.prompt_lens[i] for i in idx]), counts)
