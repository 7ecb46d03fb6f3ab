"""Windows of tokens out of a split: a shuffled pass over every window start per epoch, and a fixed val set.

A window is context_length + 1 tokens: x is the first context_length, y the same shifted by one. Window starts
are every `stride` tokens; where a split is shorter than the context, windows shrink to fit it. The order of
an epoch is a seeded pseudo-random permutation computed on the fly (a Feistel network), so the sampler holds
no per-window array: memory does not grow with the corpus, and a position in the stream is one integer.

The permutation is computed a block of BLOCK_POSITIONS stream positions at a time and the latest blocks are kept:
one vectorised call per block instead of one per batch, which costs little more than a batch's own (numpy's cost
is per call, not per value). Memory stays a few blocks of int64, whatever the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

BLOCK_POSITIONS = 4096  # stream positions whose window ids are computed together
CACHED_BLOCKS = 4  # blocks kept: the current one and its neighbours (a batch may straddle two)


def window_length(shards: list[np.ndarray], context_length: int) -> int:
    """The context itself, or less where no shard holds context_length + 1 tokens."""
    longest = max(len(s) for s in shards)
    return max(1, min(context_length, longest - 1))


class WindowSampler:
    """Batches of (x, y) windows; a batch is addressed by its position, the number of windows drawn before it."""

    def __init__(self, shards: list[np.ndarray], context_length: int, stride: int = 1, seed: int = 0):
        self.shards = shards
        self.length = window_length(shards, context_length)
        self.stride = stride
        self.seed = seed
        # window starts per shard: 0, stride, ... while start + length + 1 <= len(shard)
        per_shard = [max(0, (len(s) - self.length - 1) // stride + 1) for s in shards]
        self.offsets = np.cumsum([0] + per_shard)
        self.n_windows = int(self.offsets[-1])
        self._blocks: dict[int, np.ndarray] = {}  # block index: window ids of its BLOCK_POSITIONS positions

    def starts(self, window_ids: np.ndarray) -> list[tuple[int, int]]:
        """(shard index, token offset) of each window id."""
        shard = np.searchsorted(self.offsets, window_ids, side="right") - 1
        return [(int(s), int((w - self.offsets[s]) * self.stride)) for s, w in zip(shard, window_ids)]

    def window_ids(self, position: int, count: int) -> np.ndarray:
        """The window ids at stream positions position..position+count-1 (epoch after epoch)."""
        if count <= 0 or count > BLOCK_POSITIONS:
            return self._compute_ids(position, max(0, count))
        first, last = position // BLOCK_POSITIONS, (position + count - 1) // BLOCK_POSITIONS
        ids = np.concatenate([self._block(b) for b in range(first, last + 1)]) if last > first else self._block(first)
        start = position - first * BLOCK_POSITIONS
        return ids[start : start + count].copy()

    def _block(self, index: int) -> np.ndarray:
        ids = self._blocks.get(index)
        if ids is None:
            ids = self._compute_ids(index * BLOCK_POSITIONS, BLOCK_POSITIONS)
            if len(self._blocks) >= CACHED_BLOCKS:
                self._blocks.pop(next(iter(self._blocks)))  # the oldest
            self._blocks[index] = ids
        return ids

    def _compute_ids(self, position: int, count: int) -> np.ndarray:
        stream = np.arange(position, position + count, dtype=np.int64)
        epochs, offsets = np.divmod(stream, self.n_windows)
        if count and epochs[0] == epochs[-1]:  # all in one epoch: no masks needed
            return feistel_permute(offsets, self.n_windows, key=(self.seed, int(epochs[0])))
        ids = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            ids[mask] = feistel_permute(offsets[mask], self.n_windows, key=(self.seed, int(epoch)))
        return ids

    def batch(self, position: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.window_ids(position, batch_size)
        return stack_windows(self.shards, self.starts(ids), self.length)


def stack_windows(shards, starts: list[tuple[int, int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of each (shard, offset) window start, as int64 (rows of length tokens)."""
    span = np.arange(length + 1, dtype=np.int64)
    by_shard: dict[int, list[int]] = {}
    for row, (s, _) in enumerate(starts):
        by_shard.setdefault(s, []).append(row)
    rows = np.empty((len(starts), length + 1), dtype=np.int64)
    for s, members in by_shard.items():  # one gather per shard (a memmap reads only the pages it touches)
        offsets = np.fromiter((starts[r][1] for r in members), dtype=np.int64, count=len(members))
        gathered = np.asarray(shards[s])[offsets[:, None] + span]
        if len(members) == len(starts):
            rows[:] = gathered
        else:
            rows[members] = gathered
    data = torch.from_numpy(rows)
    return data[:, :-1], data[:, 1:]


@dataclass(frozen=True)
class ValWindows:
    """The same val windows every evaluation, spread evenly over the split, so val curves compare."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def build(cls, shards: list[np.ndarray], context_length: int, count: int) -> "ValWindows":
        sampler = WindowSampler(shards, context_length, stride=1)
        chosen = np.unique(np.linspace(0, sampler.n_windows - 1, num=min(count, sampler.n_windows)).astype(np.int64))
        x, y = stack_windows(shards, sampler.starts(chosen), sampler.length)
        return cls(x, y)

    def __len__(self) -> int:
        return len(self.x)


def feistel_permute(values: np.ndarray, n: int, key: tuple[int, int]) -> np.ndarray:
    """A bijection of range(n) onto itself chosen by key, applied to values (vectorised).

    A 4-round Feistel network permutes the smallest even-bit domain 2^(2h) >= n; values that land outside
    range(n) are sent through again ("cycle walking") until they land inside, which keeps it a bijection.
    """
    if n <= 1:
        return values.copy()
    half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
    half_mask = np.uint64((1 << half_bits) - 1)
    shift = np.uint64(half_bits)
    round_keys = _round_keys(key[0], key[1])

    def once(v: np.ndarray) -> np.ndarray:
        left, right = v >> shift, v & half_mask
        for k in round_keys:
            left, right = right, left ^ (_hash(right ^ k) & half_mask)
        return (left << shift) | right

    with np.errstate(over="ignore"):
        out = once(values.astype(np.uint64))
        outside = out >= n
        while outside.any():
            out[outside] = once(out[outside])
            outside = out >= n
    return out.astype(np.int64)


_MASK64 = 0xFFFFFFFFFFFFFFFF
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash(v: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit (uint64 arithmetic wraps around)."""
    v = (v ^ (v >> _S30)) * _M1
    v = (v ^ (v >> _S27)) * _M2
    return v ^ (v >> _S31)


@lru_cache(maxsize=64)
def _round_keys(seed: int, epoch: int) -> tuple[np.uint64, ...]:
    return tuple(np.uint64(_mix(seed * 1_000_003 + epoch * 7919 + r)) for r in range(4))


def _mix(x: int) -> int:
    """_hash of one value, in Python integers."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)
