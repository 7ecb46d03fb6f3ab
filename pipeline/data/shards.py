"""llm.c-style .bin token shards: writing them, and reading them back without loading them whole.

A shard is a header of 256 int32 (magic 20240520, version 1, token count) followed by the tokens as uint16.
A corpus's shards live in `<cache>/shards/<corpus>/` (`<corpus>.bpe-4096/` for tokenizers other than GPT-2's)
as train_NNN.bin, val_NNN.bin and manifest.json, with a learned tokenizer's ranks in tokenizer.tiktoken.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.data.tokenizer import RANKS_FILE, TOKENIZER, encoding_for
from pipeline.errors import ShardError
from pipeline.files import atomic_path

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write one shard atomically (used for small shards and tests; tokenization streams instead)."""
    with atomic_path(path) as tmp, ShardWriter(tmp) as writer:
        writer.append(np.asarray(tokens))


class ShardWriter:
    """Appends tokens to one .bin file; the header's count is filled in on close."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tokens = 0
        self.digest = hashlib.sha256()
        self._file = open(self.path, "wb")
        self._file.write(b"\0" * HEADER_BYTES)

    def append(self, tokens: np.ndarray) -> None:
        if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
            raise ShardError(f"token ids must fit in uint16, got range {tokens.min()}..{tokens.max()}")
        data = tokens.astype(np.uint16).tobytes()
        self._file.write(data)
        self.digest.update(data)
        self.tokens += tokens.size

    def close(self) -> None:
        header = np.zeros(HEADER_INTS, dtype=np.int32)
        header[:3] = (MAGIC, VERSION, self.tokens)
        self._file.seek(0)
        self._file.write(header.tobytes())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_shard(path: Path) -> np.memmap:
    """The tokens of one shard as a read-only memmap, after checking magic, version and size."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"shard {path} is truncated: {size} bytes, shorter than its {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ShardError(f"shard {path} has magic {header[0]}, expected {MAGIC}: not an llm.c token shard")
    if header[1] != VERSION:
        raise ShardError(f"shard {path} has version {header[1]}, expected {VERSION}")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        raise ShardError(f"shard {path} is truncated or padded: {size} bytes, its header promises {expected}")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(count,))


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Shards:
    """A tokenized corpus: its folder and manifest."""

    folder: Path
    manifest: dict
    # Some shard's mtime moved though its tokens did not (a copy, a touch): the manifest holds the new mtimes,
    # for tokenize to record so that the next check is cheap again.
    stamps_changed: bool = field(default=False, compare=False)

    def split(self, name: str) -> list[np.memmap]:
        return [read_shard(self.folder / shard["file"]) for shard in self.manifest["splits"][name]]

    @property
    def train_tokens(self) -> int:
        return self.manifest["train_tokens"]

    @property
    def val_tokens(self) -> int:
        return self.manifest["val_tokens"]

    @property
    def tokens_sha256(self) -> str:
        return self.manifest["tokens_sha256"]

    @property
    def tokenizer(self) -> str:
        return self.manifest["key"]["tokenizer"]

    def tokenizer_ranks(self) -> bytes | None:
        """The ranks file of the tokenizer that made these shards (None for GPT-2's, which tiktoken keeps),
        checked against the manifest's sha256."""
        if self.tokenizer == TOKENIZER:
            return None
        path = self.folder / RANKS_FILE
        try:
            data = path.read_bytes()
        except OSError:
            raise ShardError(f"{path} is missing: tokenize the corpus again") from None
        if hashlib.sha256(data).hexdigest() != self.manifest.get("tokenizer_sha256"):
            raise ShardError(f"{path} differs from the one that made these shards: tokenize the corpus again")
        return data

    @cached_property
    def encoding(self):
        """The tiktoken encoding these shards were made with: what reads their tokens back (built once: a learned
        tokenizer's ranks are read and checked, then tiktoken builds its tables)."""
        return encoding_for(self.tokenizer, self.tokenizer_ranks())

    @property
    def val_fraction(self) -> float | None:
        """The share of the text held out for validation; None where the corpus has its own val split."""
        return self.manifest["key"]["val_fraction"]


def read_manifest(folder: Path) -> dict:
    manifest_path = Path(folder) / "manifest.json"
    if not manifest_path.is_file():
        raise ShardError(f"no manifest.json in {folder}: tokenize the corpus first")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ShardError(f"{manifest_path} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{manifest_path} is not a shard manifest")
    return manifest


def load_shards(folder: Path) -> Shards:
    """The shards in folder, each checked against the manifest now rather than mid-run.

    Training loads its shards at every start, so the check is cheap: every shard's header and size always, its
    sha256 only where its mtime differs from the one recorded when it was written. That catches a truncated
    shard, and one edited in place (which moves its mtime), for the cost of a stat per untouched shard.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    stamps_changed = False
    try:
        for split in ("train", "val"):
            for entry in manifest["splits"][split]:
                stamps_changed |= _check_shard(folder / entry["file"], entry)
    except (KeyError, TypeError) as error:
        where = folder / "manifest.json"
        raise ShardError(f"{where} does not list its shards (missing or malformed {error})") from None
    return Shards(folder, manifest, stamps_changed)


def _check_shard(path: Path, entry: dict) -> bool:
    """Raise ShardError unless path holds the tokens entry describes; True when only its mtime changed (entry
    then takes the new one)."""
    count = len(read_shard(path))
    if count != entry["tokens"]:
        raise ShardError(f"shard {path} holds {count} tokens, its manifest says {entry['tokens']}: "
                         "tokenize the corpus again")
    mtime = path.stat().st_mtime_ns
    if mtime == entry.get("mtime_ns"):
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        raise ShardError(f"shard {path} was changed after it was written (its sha256 differs from the "
                         "manifest's): tokenize the corpus again")
    entry["mtime_ns"] = mtime
    return True
