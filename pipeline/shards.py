"""GPT-2 BPE tokenization into llm.c-style .bin shards, and reading them back without loading them whole.

A shard is a header of 256 int32 (magic 20240520, version 1, token count) followed by the tokens as uint16.
A corpus's shards live in `<cache>/shards/<corpus>/` as train_NNN.bin, val_NNN.bin and manifest.json.
Text is streamed in pieces cut at line ends, so memory stays bounded whatever the corpus size, and each batch
of pieces is encoded on every core with tiktoken.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from pipeline.corpora import DOCUMENT_SEPARATOR, CorpusText, cache_dir, sha256_of
from pipeline.errors import CorpusError, ShardError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKENIZER = "gpt2"
MANIFEST_FORMAT = 1
DEFAULT_SHARD_TOKENS = 100_000_000
PIECE_BYTES = 1 << 20  # text handed to the tokenizer at a time
BATCH_PIECES = 16  # pieces encoded together, spread over the cores
_SEPARATOR = re.compile(r"\n?" + re.escape(DOCUMENT_SEPARATOR) + r"\n?")


def encoding():
    """tiktoken's GPT-2 BPE. Offline, it reads its files from $TIKTOKEN_CACHE_DIR."""
    import tiktoken

    try:
        return tiktoken.get_encoding(TOKENIZER)
    except Exception as error:  # no network and no cache: requests or tiktoken errors of many kinds
        raise CorpusError(
            f"could not load tiktoken's {TOKENIZER} files ({type(error).__name__}); "
            "without network, point TIKTOKEN_CACHE_DIR at a folder holding them"
        ) from None


# ---------------------------------------------------------------- shard files


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write one shard atomically (used for small shards and tests; tokenization streams instead)."""
    with ShardWriter(path) as writer:
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


def load_shards(folder: Path) -> Shards:
    manifest_path = Path(folder) / "manifest.json"
    if not manifest_path.is_file():
        raise ShardError(f"no manifest.json in {folder}: tokenize the corpus first")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ShardError(f"{manifest_path} is not valid JSON ({error})") from None
    shards = Shards(Path(folder), manifest)
    for split in ("train", "val"):
        shards.split(split)  # checks every header and size now rather than mid-run
    return shards


# ---------------------------------------------------------------- tokenization


@dataclass(frozen=True)
class TokenizeResult:
    shards: Shards
    skipped: bool  # True when the shards were already up to date


def tokenize(
    corpus: CorpusText,
    cache: Path | None = None,
    val_fraction: float = 0.1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
) -> TokenizeResult:
    """Tokenize a local corpus into train and val shards, unless shards of the same input and settings exist."""
    if not 0 < val_fraction < 1:
        raise CorpusError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if shard_tokens < 2:
        raise CorpusError(f"shard_tokens must be at least 2, got {shard_tokens}")
    folder = (cache or cache_dir()) / "shards" / corpus.name
    files = corpus.train + (corpus.val or ())
    for path in files:
        if not path.is_file():
            raise CorpusError(f"corpus file not found: {path}")
        if path.stat().st_size == 0:
            raise CorpusError(f"corpus file {path} is empty")
    key = {
        "format": MANIFEST_FORMAT,
        "tokenizer": TOKENIZER,
        "source_sha256": {str(p): sha256_of(p) for p in files},
        "val_fraction": None if corpus.val else val_fraction,
        "shard_tokens": shard_tokens,
    }
    if (folder / "manifest.json").is_file():
        try:
            existing = load_shards(folder)
            if existing.manifest.get("key") == key:
                return TokenizeResult(existing, skipped=True)
        except ShardError:
            pass  # damaged: tokenize again
    enc = encoding()
    if corpus.val:
        plan = {"train": [(p, 0, None) for p in corpus.train], "val": [(p, 0, None) for p in corpus.val]}
        split_rule = "the source's own validation split"
    else:
        plan, split_rule = _split_plan(corpus.train, val_fraction)

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{corpus.name}."))
    try:
        total_bytes = sum((end if end is not None else p.stat().st_size) - start
                          for parts in plan.values() for p, start, end in parts)
        splits = {}
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize {corpus.name}",
                  disable=None) as bar:
            for split, parts in plan.items():
                splits[split] = _tokenize_split(enc, parts, staging, split, shard_tokens, bar)
        counts = {split: sum(s["tokens"] for s in shards) for split, shards in splits.items()}
        for split, count in counts.items():
            if count < 2:
                raise CorpusError(
                    f"the {split} split of {corpus.name} has {count} token(s); each split needs at least 2"
                )
        manifest = {
            "corpus": corpus.name,
            "source": corpus.source,
            "key": key,
            "split_rule": split_rule,
            "splits": splits,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "tokens_sha256": hashlib.sha256(
                "".join(s["sha256"] for split in ("train", "val") for s in splits[split]).encode()
            ).hexdigest(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TokenizeResult(load_shards(folder), skipped=False)


def _replace_folder(staging: Path, folder: Path) -> None:
    """Swap the finished staging folder in for the old one; the old one is gone only once the new is in place."""
    if folder.exists():
        retired = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(folder, retired)
        os.replace(staging, folder)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, folder)


def _split_plan(files: tuple[Path, ...], val_fraction: float) -> tuple[dict, str]:
    """Byte ranges of the train and val splits: whole files where there are several, else within the one file
    at the first document boundary past the split point, else at the first whitespace past it."""
    sizes = [p.stat().st_size for p in files]
    total = sum(sizes)
    if len(files) > 1:
        start = 0
        for index, size in enumerate(sizes):
            if start >= total * (1 - val_fraction) and index > 0:
                return ({"train": [(p, 0, None) for p in files[:index]],
                         "val": [(p, 0, None) for p in files[index:]]}, "files (documents) at the tail")
            start += size
        return ({"train": [(p, 0, None) for p in files[:-1]], "val": [(files[-1], 0, None)]},
                "the last file (document)")
    path = files[0]
    cut, rule = _cut_point(path, int(total * (1 - val_fraction)))
    return {"train": [(path, 0, cut)], "val": [(path, cut, None)]}, rule


def _cut_point(path: Path, target: int) -> tuple[int, str]:
    marker = DOCUMENT_SEPARATOR.encode()
    with open(path, "rb") as f:
        f.seek(target)
        window = f.read(1 << 22)
    found = window.find(marker)
    if found >= 0:
        return target + found + len(marker), "document boundary near the tail"
    for offset, byte in enumerate(window):
        if byte in b" \n\t\r":
            return target + offset, "the tail, at a word boundary"
    while target > 0 and window and (window[0] & 0xC0) == 0x80:  # never inside a multi-byte character
        target -= 1
        with open(path, "rb") as f:
            f.seek(target)
            window = f.read(1)
    return target, "the tail"


def _tokenize_split(enc, parts, staging: Path, split: str, shard_tokens: int, bar) -> list[dict]:
    shards: list[dict] = []
    writer: ShardWriter | None = None

    def write(tokens: np.ndarray) -> None:
        nonlocal writer
        while tokens.size:
            if writer is None:
                writer = ShardWriter(staging / f"{split}_{len(shards):03d}.bin")
            room = shard_tokens - writer.tokens
            writer.append(tokens[:room])
            tokens = tokens[room:]
            if writer.tokens == shard_tokens:
                finish()

    def finish() -> None:
        nonlocal writer
        writer.close()
        shards.append({"file": writer.path.name, "tokens": writer.tokens, "sha256": writer.digest.hexdigest()})
        writer = None

    eot = np.array([enc.eot_token], dtype=np.uint16)
    for index, (path, start, end) in enumerate(parts):
        if index:
            write(eot)  # files are documents too
        batch: list[str] = []
        for piece, size in _pieces(path, start, end):
            batch.append(piece)
            bar.update(size)
            if len(batch) == BATCH_PIECES:
                write(_encode(enc, batch))
                batch = []
        if batch:
            write(_encode(enc, batch))
    if writer is not None:
        finish()
    return shards


def _encode(enc, pieces: list[str]) -> np.ndarray:
    """Encode pieces on every core; <|endoftext|> in the text separates documents and becomes the EOT token."""
    segments: list[str] = []
    boundaries: list[bool] = []  # True where a document ends after the segment
    for piece in pieces:
        parts = _SEPARATOR.split(piece)
        segments.extend(parts)
        boundaries.extend([True] * (len(parts) - 1) + [False])
    encoded = enc.encode_ordinary_batch(segments, num_threads=os.cpu_count() or 1)
    out: list[int] = []
    for ids, ends_document in zip(encoded, boundaries):
        out.extend(ids)
        if ends_document:
            out.append(enc.eot_token)
    return np.array(out, dtype=np.uint16)


def _pieces(path: Path, start: int, end: int | None) -> Iterator[tuple[str, int]]:
    """(text, bytes) pieces of path[start:end], cut after a newline so no line is split.
    A line longer than a piece is cut at a character boundary instead."""
    end = path.stat().st_size if end is None else end
    with open(path, "rb") as f:
        f.seek(start)
        offset, carry = start, b""
        while offset < end or carry:
            block = f.read(min(PIECE_BYTES, end - offset))
            offset += len(block)
            data = carry + block
            if offset < end:
                cut = data.rfind(b"\n") + 1 or _whole_characters(data)
            else:
                cut = len(data)
            piece, carry = data[:cut], data[cut:]
            try:
                yield piece.decode("utf-8"), len(piece)
            except UnicodeDecodeError as error:
                piece_start = offset - len(data)
                raise CorpusError(
                    f"{path} is not UTF-8 text: invalid byte 0x{piece[error.start]:02x} at byte offset "
                    f"{piece_start + error.start}"
                ) from None


def _whole_characters(data: bytes) -> int:
    """Length of the longest prefix of data that does not end inside a UTF-8 multi-byte character."""
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead & 0xC0 != 0x80:  # an ASCII byte or the first byte of a character
            needed = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return len(data) if needed <= back else len(data) - back
    return len(data)
