"""A corpus's text into token shards: the run's tokenizer (tiktoken) into train and val shards, skipped when they are
up to date (shard_cache.py says when). A tokenizer learned from the corpus (bpe:N) is learned from the train split
alone, so no val text shapes it, and is kept beside the shards.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from pipeline.data.cleaning import extents_note, text_extent
from pipeline.data.corpora import DOCUMENT_SEPARATOR, CorpusText
from pipeline.data.shard_cache import build_key, build_lock, check_setting, record_stamps, reusable, wanted_key
from pipeline.data.shards import Shards, ShardWriter, load_shards
from pipeline.data.splitting import split_plan
from pipeline.data.bpe import train_bpe
from pipeline.data.tokenizer import RANKS_FILE, TOKENIZER, encoding_for, ranks_data
from pipeline.errors import CorpusError
from pipeline.files import cache_root
from pipeline.machine import usable_cpus
from pipeline.settings import tokenizer_vocab_size

PIECE_BYTES = 1 << 20  # text handed to the tokenizer at a time
BATCH_PIECES = 16  # pieces encoded together, spread over the cores
_SEPARATOR = re.compile(r"\n?" + re.escape(DOCUMENT_SEPARATOR) + r"\n?")


def tokens_per_byte(split: list[np.ndarray], enc, chunk: int = 1 << 20) -> float:
    """Tokens per byte of UTF-8 text in a split's shards (made with enc): how val_loss (nats per token) becomes
    bits per byte. Decoded a chunk at a time (a token's bytes do not depend on its neighbours), so memory stays
    small."""
    tokens = sum(len(shard) for shard in split)
    text_bytes = sum(len(enc.decode_bytes(shard[start : start + chunk].tolist()))
                     for shard in split for start in range(0, len(shard), chunk))
    return tokens / max(text_bytes, 1)


@dataclass(frozen=True)
class ShardingResult:
    shards: Shards
    skipped: bool  # True when the shards were already up to date


def shard_corpus(
    corpus: CorpusText,
    cache: Path | None = None,
    val_fraction: float | None = None,
    shard_tokens: int | None = None,
    trim_gutenberg: bool | None = None,
    tokenizer: str = TOKENIZER,
) -> ShardingResult:
    """Tokenize a local corpus into train and val shards, unless shards of the same content and settings exist.
    Each tokenizer has its own folder, so switching between them rebuilds nothing.

    A setting left None accepts existing shards whatever value made them; a new build then takes the value of
    the shards it replaces, else the default. Processes calling this at once take turns: one builds, the
    others then reuse.
    """
    for name, value in (("val_fraction", val_fraction), ("shard_tokens", shard_tokens),
                        ("trim_gutenberg", trim_gutenberg)):
        if value is not None:
            check_setting(name, value)
    n_vocab = tokenizer_vocab_size(tokenizer)
    folder = shard_folder(cache or cache_root(), corpus.name, tokenizer)
    for path in corpus.train + (corpus.val or ()):
        if not path.is_file():
            raise CorpusError(f"corpus file not found: {path}")
        if path.stat().st_size == 0:
            raise CorpusError(f"corpus file {path} is empty")
    wanted = wanted_key(corpus, tokenizer, val_fraction, shard_tokens, trim_gutenberg)
    with build_lock(folder):
        existing = reusable(folder, wanted)  # built meanwhile, maybe, by the process we waited for
        if existing:
            if existing.stamps_changed:
                record_stamps(existing)
            return ShardingResult(existing, skipped=True)
        key = build_key(folder, wanted)
        extents = {split: [text_extent(p, key["trim_gutenberg"]) for p in paths]
                   for split, paths in (("train", corpus.train), ("val", corpus.val or ()))}
        if corpus.val:
            plan = {split: [(e.path, e.start, e.end) for e in extents[split]] for split in ("train", "val")}
            split_rule = "the source's own validation split"
        else:
            plan, split_rule = split_plan(extents["train"], key["val_fraction"])
        note = extents_note(extents["train"] + extents["val"])
        enc = encoding_for(tokenizer, _learned_ranks(corpus, plan["train"], n_vocab - 1)
                           if tokenizer.startswith("bpe:") else None)
        try:
            shards = _write_shards(enc, corpus, plan, split_rule, key, folder, note)
        except OSError as error:  # a full disk, a read-only folder: the old shards, if any, are untouched
            raise CorpusError(f"could not write the shards of {corpus.name} to {folder}: "
                              f"{error.strerror or error}") from None
    return ShardingResult(shards, skipped=False)


def shard_folder(cache: Path, corpus_name: str, tokenizer: str) -> Path:
    """shards/NAME for GPT-2's tokens (as before tokenizers could be chosen), shards/NAME.bpe-4096 for others."""
    suffix = "" if tokenizer == TOKENIZER else "." + tokenizer.replace(":", "-")
    return cache / "shards" / f"{corpus_name}{suffix}"


def _learned_ranks(corpus: CorpusText, train_parts, n_tokens: int) -> bytes:
    """The ranks of a BPE of n_tokens learned from the train split. A split too small to give that many is
    refused: ids it never learned would still have rows in the model, and a sample could draw one that no text
    decodes to."""
    ranks = train_bpe(_train_texts(train_parts), n_tokens)
    if len(ranks) < n_tokens:
        raise CorpusError(f"the train split of {corpus.name} runs out of byte pairs to merge at {len(ranks)} "
                          f"tokens: choose bpe:N with N at most {len(ranks)}")
    return ranks_data(ranks)


def _train_texts(parts) -> Iterator[str]:
    """The train split's text, document by document within each piece: what a learned BPE is trained on."""
    for path, start, end in parts:
        for piece, _ in _pieces(path, start, end):
            yield from (text for text in piece.split(DOCUMENT_SEPARATOR) if text)


def _write_shards(enc, corpus: CorpusText, plan: dict, split_rule: str, key: dict, folder: Path,
                  note: str | None) -> Shards:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{corpus.name}."))
    try:
        total_bytes = sum(end - start for parts in plan.values() for _, start, end in parts)
        splits = {}
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize {corpus.name}",
                  disable=None) as bar:
            for split, parts in plan.items():
                splits[split] = _tokenize_split(enc, parts, staging, split, key["shard_tokens"], bar)
        counts = {split: sum(s["tokens"] for s in shards) for split, shards in splits.items()}
        for split, count in counts.items():
            if count < 2:
                raise CorpusError(
                    f"the {split} split of {corpus.name} has {count} token(s); each split needs at least 2"
                )
        tokenizer_sha256 = None
        if key["tokenizer"] != TOKENIZER:  # GPT-2's is kept once per machine by tokenizer.py
            ranks = ranks_data(enc._mergeable_ranks)
            (staging / RANKS_FILE).write_bytes(ranks)
            tokenizer_sha256 = hashlib.sha256(ranks).hexdigest()
        manifest = {
            "corpus": corpus.name,
            "source": corpus.source,
            "key": key,
            "tokenizer_sha256": tokenizer_sha256,
            "split_rule": split_rule,
            "cleaning": note,
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
    return load_shards(folder)


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
        shards.append({"file": writer.path.name, "tokens": writer.tokens, "sha256": writer.digest.hexdigest(),
                       "mtime_ns": writer.path.stat().st_mtime_ns})  # load_shards hashes a shard only when it moves
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
    """Encode pieces on every core; <|endoftext|> in the text separates documents and becomes the EOT token.

    One task per piece, not per document: a thread-pool task per document costs more than encoding it. The
    newline on either side of a separator is dropped first (what _SEPARATOR matches, found with str.replace,
    which is far faster than the regex), then tiktoken encodes the separator itself as the EOT token."""
    texts = [piece.replace("\n" + DOCUMENT_SEPARATOR, DOCUMENT_SEPARATOR)
             .replace(DOCUMENT_SEPARATOR + "\n", DOCUMENT_SEPARATOR) for piece in pieces]
    with ThreadPoolExecutor(min(len(texts), usable_cpus()) or 1) as pool:
        arrays = list(pool.map(lambda text: _encode_text(enc, text), texts))
    return np.concatenate(arrays).astype(np.uint16) if arrays else np.empty(0, dtype=np.uint16)


def _encode_text(enc, text: str) -> np.ndarray:
    allowed = {DOCUMENT_SEPARATOR}
    if hasattr(enc, "encode_to_numpy"):  # tiktoken >= 0.9: no Python list of ints in between
        return enc.encode_to_numpy(text, allowed_special=allowed)
    return np.array(enc.encode(text, allowed_special=allowed), dtype=np.uint32)


def _pieces(path: Path, start: int, end: int) -> Iterator[tuple[str, int]]:
    """(text, bytes) pieces of path[start:end], cut after a newline so no line is split.
    A line longer than a piece is cut after a separator or at a character boundary instead."""
    with open(path, "rb") as f:
        f.seek(start)
        offset, carry = start, b""
        while offset < end or carry:
            block = f.read(min(PIECE_BYTES, end - offset))
            offset += len(block)
            data = carry + block
            cut = _piece_end(data) if offset < end else len(data)
            piece, carry = data[:cut], data[cut:]
            try:
                yield piece.decode("utf-8"), len(piece)
            except UnicodeDecodeError as error:
                piece_start = offset - len(data)
                raise CorpusError(
                    f"{path} is not UTF-8 text: invalid byte 0x{piece[error.start]:02x} at byte offset "
                    f"{piece_start + error.start}"
                ) from None


def _piece_end(data: bytes) -> int:
    """Where a piece of data that the text goes on after ends: after its last line end, else after its last
    separator, else at a character boundary. Never inside a separator, nor between it and the line ends that
    _SEPARATOR takes with it: a document boundary gives the same tokens wherever the pieces are cut."""
    marker = DOCUMENT_SEPARATOR.encode()
    cut = data.rfind(b"\n") + 1
    if cut and marker.startswith(data[cut:cut + len(marker)]) and not data.endswith(marker, 0, cut - 1):
        cut -= 1  # the line end before a separator (maybe one in the next block) stays with it
    if cut:
        return cut
    found = data.rfind(marker, 0, len(data) - 1)  # not the last bytes: a line end may follow in the next block
    if found >= 0:
        return found + len(marker)
    cut = _whole_characters(data)
    # nor in or right after a separator: the next block may finish it, or hold the line end that goes with it
    for size in range(len(marker), 0, -1):
        if data.endswith(marker[:size], 0, cut):
            return cut - size
    return cut


def _whole_characters(data: bytes) -> int:
    """Length of the longest prefix of data that does not end inside a UTF-8 multi-byte character."""
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead & 0xC0 != 0x80:  # an ASCII byte or the first byte of a character
            needed = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return len(data) if needed <= back else len(data) - back
    return len(data)
