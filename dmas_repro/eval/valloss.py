"""Validation loss of a checkpoint on a held-out token split, with a fixed token budget.

The split is the `val` split of a data directory written by `dmas-repro prepare-data` (uint16
GPT-2 tokens, documents separated by <|endoftext|>). Every checkpoint sees exactly the same
windows: the first `budget` tokens cut into non-overlapping windows of `seq_len` (inputs
tokens[i*T : i*T+T], targets shifted by one). The loss is the mean next-token cross-entropy in
nats over GPT-2's 50257-token vocabulary; bpb divides the summed loss by ln 2 and by the UTF-8
bytes of the target tokens (<|endoftext|> counts 0 bytes).

Every number says what it measured: the corpus (`corpus_name` of the split's manifest, e.g.
`fineweb-edu/sample-100BT` or `bundled`) and the sha256 of the manifest file go into every
val_loss row. The paper's validation loss is on FineWeb-Edu (the authors' shard 0): numbers on any
other corpus are not comparable with it (`comparable_with_paper`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..model.tokenizer import EOT, N_VOCAB, gpt2

DEFAULT_TOKENS = 20 * 32 * 1024  # the authors' in-loop validation: 20 micro-batches of 32 x 1024 tokens


@dataclass(frozen=True)
class ValTokens:
    """The first `budget` + 1 tokens of a validation split (the same for every checkpoint)."""

    tokens: np.ndarray  # uint16
    source: str
    sha: str  # sha256 of `tokens`
    corpus: str = "unknown"  # what the tokens are (`corpus_name` of the manifest)
    manifest_sha256: str | None = None  # sha256 of the data directory's manifest.json

    def windows(self, seq_len: int) -> np.ndarray:
        """[n, seq_len + 1] overlapping-by-one windows: inputs w[:, :-1], targets w[:, 1:]."""
        n = (len(self.tokens) - 1) // seq_len
        if n < 1:
            raise UserError(f"{self.source}: {len(self.tokens)} validation tokens are fewer than one window of "
                            f"{seq_len + 1}; prepare more validation data, raise --val-tokens or lower --val-seq-len")
        idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
        return self.tokens[idx]


PAPER_CORPUS = "fineweb-edu"  # the corpus of the paper's validation loss (`prepare-data --source fineweb-edu`)


def corpus_name(manifest: dict) -> str:
    """A prepared corpus by name: 'fineweb-edu/<subset>', 'bundled', or the local file/directory name."""
    src = manifest.get("source") or {}
    label = str(src.get("source", "unknown"))
    if label == PAPER_CORPUS:
        return f"{PAPER_CORPUS}/{src['subset']}" if src.get("subset") else PAPER_CORPUS
    return label if label == "bundled" else Path(label).name or label


def comparable_with_paper(vt: ValTokens) -> bool:
    """Whether a validation loss on `vt` measures what the paper's does (a FineWeb-Edu split)."""
    return vt.corpus.split("/")[0] == PAPER_CORPUS


def load_val_tokens(data_dir: str | os.PathLike, budget: int = DEFAULT_TOKENS, split: str = "val") -> ValTokens:
    from ..core.files import file_sha256
    from ..data.shards import MANIFEST, load_split_tokens, read_manifest

    if budget < 1:
        raise UserError(f"--val-tokens must be positive, got {budget}")
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    tokens = np.array(load_split_tokens(data_dir, split)[: budget + 1], dtype=np.uint16)
    if len(tokens) < 2:
        raise UserError(f"{data_dir}: the {split} split holds {len(tokens)} tokens")
    if int(tokens.max()) >= N_VOCAB:
        raise UserError(f"{data_dir}: token ids >= {N_VOCAB} in the {split} split (not GPT-2 tokens)")
    return ValTokens(tokens=tokens, source=str(data_dir), sha=hashlib.sha256(tokens.tobytes()).hexdigest(),
                     corpus=corpus_name(manifest), manifest_sha256=file_sha256(data_dir / MANIFEST))


@functools.lru_cache(maxsize=1)
def token_bytes() -> np.ndarray:
    """UTF-8 byte length of every GPT-2 token (0 for <|endoftext|>)."""
    tok = gpt2()
    lens = np.array([len(tok.decode_bytes([i])) for i in range(N_VOCAB)], dtype=np.int64)
    lens[EOT] = 0
    return lens


ACTIVATION_BUDGET = 512 * 2**20  # bytes of logits and MLP activations one forward pass may hold


def windows_per_pass(model, seq_len: int, batch_size: int, budget: int = ACTIVATION_BUDGET) -> int:
    """`batch_size` windows per forward pass, or fewer (at least one) when their logits (float32, plus the
    model-dtype copy they are cast from) and MLP activations would exceed `budget` bytes: at the paper's
    size that is one 1024-token window (262 KB a token), which keeps eval-all within 1.2x the weights;
    the tiny preset's 8 x 256 tokens fit (422 MB)."""
    item = next(model.parameters()).element_size()
    per_token = model.cfg.vocab_size * (4 + (item if item != 4 else 0)) + 3 * model.cfg.ffn_dim * item
    return max(1, min(batch_size, budget // (per_token * seq_len)))


@torch.no_grad()
def val_loss(model, vt: ValTokens, seq_len: int | None = None, batch_size: int = 8,
             device: str | torch.device = "cpu") -> dict:
    """{"loss", "bpb", "n_tokens", "n_bytes", "seq_len", "windows_sha"} of `model` (our Transformer).

    `seq_len` None: min(1024, the model's context). Windows go through the model `batch_size` at a time
    (fewer for a large model: `windows_per_pass`); each pass's summed cross-entropy is added in float64.
    The log-softmax is taken in place over the logits, which with `nll_loss` is `F.cross_entropy` bit for
    bit without its second logits-sized tensor."""
    ctx = model.cfg.context_length
    seq_len = seq_len or min(1024, ctx)
    if seq_len > ctx:
        raise UserError(f"validation windows of {seq_len} tokens exceed the model's context {ctx}; "
                        "pass a smaller --val-seq-len")
    windows = vt.windows(seq_len)
    model.eval()
    step = windows_per_pass(model, seq_len, batch_size)
    total = torch.zeros((), dtype=torch.float64, device=device)  # read once at the end: no sync per batch
    for i in range(0, len(windows), step):
        w = torch.from_numpy(windows[i: i + step].astype(np.int64)).to(device)
        logits = model(w[:, :-1])[..., :N_VOCAB].float()
        logits = logits.reshape(-1, logits.shape[-1])
        if not logits.is_contiguous():
            logits = logits.contiguous()
        torch.log_softmax(logits, dim=-1, out=logits)
        total += torch.nn.functional.nll_loss(logits, w[:, 1:].reshape(-1), reduction="sum")
        del logits
    total = total.item()
    n_tokens = windows.shape[0] * seq_len
    n_bytes = int(token_bytes()[windows[:, 1:].astype(np.int64)].sum())
    return {
        "loss": total / n_tokens,
        "bpb": total / math.log(2) / n_bytes if n_bytes else None,
        "n_tokens": n_tokens,
        "n_bytes": n_bytes,
        "seq_len": seq_len,
        "windows_sha": hashlib.sha256(f"{seq_len}\n".encode() + windows.tobytes()).hexdigest(),
    }
