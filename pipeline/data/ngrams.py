"""How much of a generation is copied from the training text: the fraction of its token n-grams (8-grams by
default) found verbatim in the train split, and novelty = 1 - that.

Scanning 100M training tokens per sample would take seconds, so every n-gram of the train split is hashed once
per corpus into a sorted array of unique uint64 hashes, kept beside the shards as `ngrams8.npy` (with
`ngrams8.json` naming the tokens it was built from), memory-mapped, and queried with np.searchsorted: a query
reads about log2(index size) entries per n-gram and never touches the shards.

Building is bounded in memory: the train split is hashed CHUNK_TOKENS at a time; each chunk's sorted hashes are
spread over buckets by their top bits (temporary files), and each bucket is then sorted and deduplicated on its
own and appended to the index. Buckets partition the hash range in order, so the result is globally sorted.

N-grams never span two shards, nor two chunks' seams (chunks overlap by n - 1 tokens). The hash packs four
uint16 tokens per 64-bit word and mixes the words with splitmix64; two different n-grams share a hash with
probability about 2^-64, so over a 100M-token index a false "copied" has odds near 1e-11 per query.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import ShardError
from pipeline.files import atomic_path
from pipeline.data.shards import Shards

log = logging.getLogger(__name__)

DEFAULT_N = 8
INDEX_FORMAT = 1
CHUNK_TOKENS = 8_000_000  # train tokens hashed at a time (~200 MB of working arrays)
BUCKET_HASHES = 16_000_000  # hashes a bucket may hold on average when it is sorted (~128 MB, twice while sorting)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def ngram_hashes(tokens: np.ndarray, n: int = DEFAULT_N) -> np.ndarray:
    """The uint64 hash of every n-gram of tokens (len(tokens) - n + 1 of them, none when shorter than n)."""
    tokens = np.asarray(tokens)
    count = len(tokens) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    wide = tokens.astype(np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    for group in range(0, n, 4):
        word = np.zeros(count, dtype=np.uint64)
        for j in range(group, min(group + 4, n)):
            word <<= np.uint64(16)
            word |= wide[j: j + count]
        h = _splitmix64(h ^ word ^ np.uint64(group))  # the group index tells a short last word from a zero one
    return h


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


@dataclass(frozen=True, eq=False)
class NgramIndex:
    """The sorted unique hashes of every n-gram of a corpus's train split, memory-mapped from disk."""

    path: Path
    n: int
    hashes: np.ndarray  # sorted, unique uint64 (a read-only memmap, or an empty array)
    built: bool  # True when load_or_build had to build it (False: reused from disk)

    @classmethod
    def load_or_build(cls, shards: Shards, n: int = DEFAULT_N) -> "NgramIndex":
        """The index beside the shards (`<folder>/ngrams<n>.npy`), built first when it is missing, damaged, or
        was built from other tokens (the manifest's tokens_sha256 changed). Raises ShardError when it cannot be
        written there."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        path = Path(shards.folder) / f"ngrams{n}.npy"
        meta_path = path.with_suffix(".json")
        expected = {"format": INDEX_FORMAT, "n": n, "tokens_sha256": shards.tokens_sha256}
        loaded = _load(path, meta_path, expected)
        if loaded is not None:
            return cls(path, n, loaded, built=False)
        try:
            count = _build(shards, n, path)
            with atomic_path(meta_path) as tmp:
                tmp.write_text(json.dumps({**expected, "count": count, "train_tokens": shards.train_tokens}))
        except OSError as error:
            raise ShardError(f"cannot write the {n}-gram index beside the shards in {shards.folder}: "
                             f"{error.strerror or error}") from None
        loaded = _load(path, meta_path, expected)
        if loaded is None:
            raise ShardError(f"the {n}-gram index just written to {path} cannot be read back")
        return cls(path, n, loaded, built=True)

    def __len__(self) -> int:
        return len(self.hashes)

    def copied_mask(self, tokens: Sequence[int]) -> np.ndarray:
        """One bool per n-gram of tokens (starting at each position): True when it occurs in the train split."""
        array = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(array) < self.n or len(self.hashes) == 0:
            return np.zeros(max(0, len(array) - self.n + 1), dtype=bool)
        in_range = (array >= 0) & (array < 2**16)  # the train split holds uint16 tokens only
        hashes = ngram_hashes(np.where(in_range, array, 0).astype(np.uint64), self.n)
        found = self.hashes[np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)] == hashes
        if not in_range.all():
            outside = np.convolve(~in_range, np.ones(self.n, dtype=int), mode="valid") > 0
            found &= ~outside
        return np.asarray(found, dtype=bool)

    def copied_fraction(self, tokens: Sequence[int]) -> float | None:
        """The fraction of tokens' n-grams found verbatim in the train split; None when tokens has fewer than n."""
        if len(tokens) < self.n:
            return None
        return float(self.copied_mask(tokens).mean())

    def novelty(self, tokens: Sequence[int]) -> float | None:
        """1 - copied_fraction: the share of the generation's n-grams the train split does not contain."""
        copied = self.copied_fraction(tokens)
        return None if copied is None else 1.0 - copied


def _load(path: Path, meta_path: Path, expected: dict) -> np.ndarray | None:
    try:
        meta = json.loads(meta_path.read_text())
        if any(meta.get(key) != value for key, value in expected.items()):
            return None
        if meta.get("count") == 0:
            return np.empty(0, dtype=np.uint64)
        hashes = np.load(path, mmap_mode="r")
    except (OSError, ValueError):  # missing, unreadable, or not a .npy
        return None
    if hashes.dtype != np.uint64 or hashes.ndim != 1 or len(hashes) != meta.get("count"):
        return None
    return hashes


def _build(shards: Shards, n: int, path: Path) -> int:
    """Write the sorted unique n-gram hashes of the train split to path (atomically); return their number."""
    train = shards.split("train")
    total = sum(max(0, len(shard) - n + 1) for shard in train)
    bits = max(0, math.ceil(math.log2(max(1, total) / BUCKET_HASHES)))
    log.info("indexing the %d-grams of %s train tokens (%d bucket(s))", n, f"{shards.train_tokens:,}", 2**bits)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.stem}."))
    try:
        buckets = [scratch / f"bucket_{b:04d}.u64" for b in range(2**bits)]
        files = [open(bucket, "wb") for bucket in buckets]
        try:
            for chunk in _chunks(train, n):
                hashes = _sorted_unique(ngram_hashes(chunk, n))
                if bits:
                    prefixes = np.arange(2**bits + 1, dtype=np.uint64)
                    edges = np.searchsorted(hashes >> np.uint64(64 - bits), prefixes, side="left")
                else:
                    edges = [0, len(hashes)]
                for b, f in enumerate(files):
                    hashes[edges[b]: edges[b + 1]].tofile(f)
        finally:
            for f in files:
                f.close()
        counts = []
        for bucket in buckets:
            unique = _sorted_unique(np.fromfile(bucket, dtype=np.uint64))
            unique.tofile(bucket)
            counts.append(len(unique))
        count = sum(counts)
        with atomic_path(path) as tmp:
            if count:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint64, shape=(count,))
                start = 0
                for bucket, size in zip(buckets, counts):
                    out[start: start + size] = np.fromfile(bucket, dtype=np.uint64)
                    start += size
                out.flush()
                del out
            else:
                with open(tmp, "wb") as f:
                    np.save(f, np.empty(0, dtype=np.uint64))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return count


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting in place (numpy 2.4's np.unique is ~50x slower on 8M uint64)."""
    values.sort()
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _chunks(train: list[np.ndarray], n: int):
    """Pieces of each shard of CHUNK_TOKENS (plus the n - 1 tokens that the next piece starts with)."""
    for shard in train:
        for start in range(0, max(1, len(shard) - n + 1), CHUNK_TOKENS):
            piece = np.asarray(shard[start: start + CHUNK_TOKENS + n - 1])
            if len(piece) >= n:
                yield piece
