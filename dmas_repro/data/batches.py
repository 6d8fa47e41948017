"""Deterministic, memory-mapped, rank-strided batches of token windows.

The token stream of a split is cut into windows of `seq_len + 1` tokens (window i starts at
token i * seq_len; input = window[:-1], target = window[1:]). Windows are visited in a fixed
order: in order, or (`shuffle=True`) in a fresh permutation per epoch seeded by (seed, epoch).

The whole position of the loader is one integer, `position`: the number of windows the whole
job (all ranks) has consumed. Optimizer step s uses windows [s*G, (s+1)*G) of that order, G =
global batch in sequences, whatever the world size; rank r's micro-step m takes the chunk
m * world + r of `micro_batch` windows (rank-strided). So a resume, or a resume with another
world size that keeps the global batch, neither repeats nor skips a token.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import UserError


class TokenBatches:
    """This rank's micro-batches (inputs, targets) as int64 CPU tensors [micro_batch, seq_len].

    `next_batch()` returns the next micro-batch; after `grad_accum` calls the global position has
    advanced by one optimizer step. `state_dict()` / `load_state_dict()` hold the position (read at
    step boundaries: they refuse a position inside a step).
    """

    def __init__(self, tokens, seq_len: int, micro_batch: int, grad_accum: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = False, seed: int = 0):
        self.tokens = tokens
        self.seq_len, self.micro_batch, self.grad_accum = seq_len, micro_batch, grad_accum
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.n_windows = (len(tokens) - 1) // seq_len
        self.global_batch = micro_batch * grad_accum * world_size  # sequences per optimizer step
        if self.n_windows < self.global_batch:
            raise UserError(f"only {len(tokens):,} tokens: fewer than one global batch of {self.global_batch} "
                            f"sequences of {seq_len} tokens")
        self.position = 0  # windows consumed by the whole job at the last step boundary
        self.micro_step = 0
        self._perm_epoch, self._perm = -1, None

    @property
    def epoch(self) -> float:
        return self.position / self.n_windows

    def _window_index(self, g: np.ndarray) -> np.ndarray:
        epoch, j = g // self.n_windows, g % self.n_windows
        if not self.shuffle:
            return j
        out = np.empty_like(j)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self._permutation(int(e))[j[sel]]
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def window_ids(self, micro_step: int) -> np.ndarray:
        """Window indices of this rank's `micro_step`-th micro-batch of the current step."""
        chunk = micro_step * self.world_size + self.rank
        g = self.position + chunk * self.micro_batch + np.arange(self.micro_batch, dtype=np.int64)
        return self._window_index(g)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.window_ids(self.micro_step)
        T = self.seq_len
        buf = np.stack([np.asarray(self.tokens[i * T : i * T + T + 1]) for i in ids]).astype(np.int64)
        self.micro_step += 1
        if self.micro_step == self.grad_accum:
            self.micro_step = 0
            self.position += self.global_batch
        t = torch.from_numpy(buf)
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict:
        if self.micro_step:
            raise RuntimeError("loader state read in the middle of an optimizer step")
        return {"position": self.position, "n_windows": self.n_windows, "seq_len": self.seq_len,
                "shuffle": self.shuffle, "seed": self.seed, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        for k in ("n_windows", "seq_len", "shuffle", "seed"):
            if k in state and state[k] != getattr(self, k):
                raise UserError(f"the checkpoint's data loader had {k}={state[k]}, this run has "
                                f"{getattr(self, k)}: the data or its windowing changed since the checkpoint")
        self.position = int(state["position"])
        self.micro_step = 0


def val_window_count(tokens, seq_len: int, val_tokens: int) -> int:
    """Windows in the fixed validation set: the first `val_tokens` tokens of the split cut into windows
    of `seq_len` (fewer when the split is shorter). It depends on neither micro-batch nor world size."""
    n = min(val_tokens // seq_len, (len(tokens) - 1) // seq_len)
    if n < 1:
        raise UserError(f"validation set of {min(val_tokens, max(0, len(tokens) - 1)):,} tokens is shorter than one "
                        f"window of seq_len {seq_len} (val_tokens {val_tokens:,}, val split {len(tokens):,} tokens)")
    return n


def eval_batches(tokens, seq_len: int, n_windows: int, micro_batch: int, rank: int = 0, world_size: int = 1):
    """This rank's share of the fixed validation set, as (inputs, targets, counts).

    Window i is tokens[i*T : i*T + T + 1] for i < n_windows (`val_window_count`); they are cut into
    micro-batches of `micro_batch` windows (the last may be shorter) and micro-batch k goes to rank
    k % world_size. Every rank yields the same number of micro-batches, ceil(n_batches / world_size),
    so collective forwards (FSDP) line up: a rank with none left in the last round gets micro-batch 0
    again with counts=False, whose loss must not be counted."""
    n_batches = -(-n_windows // micro_batch)
    rounds = -(-n_batches // world_size)
    for r in range(rounds):
        b = r * world_size + rank
        counts = b < n_batches
        first = b * micro_batch if counts else 0
        ids = range(first, min(first + micro_batch, n_windows))
        buf = np.stack([np.asarray(tokens[i * seq_len : i * seq_len + seq_len + 1]) for i in ids]).astype(np.int64)
        t = torch.from_numpy(buf)
        yield t[:, :-1], t[:, 1:], counts
