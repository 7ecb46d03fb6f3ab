"""Windows of tokens out of a split: a shuffled pass over every window start per epoch, and a fixed val set.

A window is context_length + 1 tokens: x is the first context_length, y the same shifted by one. Window starts
are every `stride` tokens; where a split is shorter than the context, windows shrink to fit it. The order of
an epoch is a seeded pseudo-random permutation computed on the fly (a Feistel network), so the sampler holds
no per-window array: memory does not grow with the corpus, and a position in the stream is one integer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch



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

    def starts(self, window_ids: np.ndarray) -> list[tuple[int, int]]:
        """(shard index, token offset) of each window id."""
        shard = np.searchsorted(self.offsets, window_ids, side="right") - 1
        return [(int(s), int((w - self.offsets[s]) * self.stride)) for s, w in zip(shard, window_ids)]

    def window_ids(self, position: int, count: int) -> np.ndarray:
        """The window ids at stream positions position..position+count-1 (epoch after epoch)."""
        stream = np.arange(position, position + count, dtype=np.int64)
        epochs, offsets = np.divmod(stream, self.n_windows)
        ids = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            ids[mask] = feistel_permute(offsets[mask], self.n_windows, key=(self.seed, int(epoch)))
        return ids

    def batch(self, position: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.window_ids(position, batch_size)
        return stack_windows(self.shards, self.starts(ids), self.length)


def stack_windows(shards, starts: list[tuple[int, int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(shards[s][o : o + length + 1], dtype=np.int64) for s, o in starts])
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
    round_keys = [np.uint64(_mix(key[0] * 1_000_003 + key[1] * 7919 + r) & 0xFFFFFFFFFFFFFFFF) for r in range(4)]

    def once(v: np.ndarray) -> np.ndarray:
        left, right = v >> np.uint64(half_bits), v & half_mask
        for k in round_keys:
            left, right = right, left ^ (_hash(right ^ k) & half_mask)
        return (left << np.uint64(half_bits)) | right

    out = once(values.astype(np.uint64))
    outside = out >= n
    while outside.any():
        out[outside] = once(out[outside])
        outside = out >= n
    return out.astype(np.int64)


def _hash(v: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit."""
    with np.errstate(over="ignore"):
        v = (v ^ (v >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        v = (v ^ (v >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return v ^ (v >> np.uint64(31))


def _mix(x: int) -> int:
    return int(_hash(np.array([x & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0])
