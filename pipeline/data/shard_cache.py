"""The shard cache's rules: what identifies a corpus's shards, when existing ones are reused, and the lock that
lets one process build them while the others wait.

Shards are keyed on content, never on paths, so a moved or re-cloned project keeps them: the tokenizer, each
source file's split, name and sha256, and the settings that shape the tokens. A setting left unsaid (None)
accepts whatever value made the existing shards: training calls shard_corpus(corpus) with no settings, and so
keeps the val split that `pipeline.tokenize --val-fraction 0.2` chose.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from pipeline.data.corpora import CorpusText
from pipeline.data.shards import Shards, load_shards, read_manifest
from pipeline.errors import CorpusError, ShardError
from pipeline.files import atomic_path
from pipeline.memo import file_sha256

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 3  # 3: a byte order mark and Gutenberg's licence are no longer tokens
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SHARD_TOKENS = 100_000_000


def check_setting(name: str, value) -> None:
    if name == "val_fraction" and not (isinstance(value, (int, float)) and 0 < value < 1):
        raise CorpusError(f"val_fraction must be between 0 and 1, got {value}")
    if name == "shard_tokens" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
        raise CorpusError(f"shard_tokens must be at least 2, got {value}")
    if name == "trim_gutenberg" and not isinstance(value, bool):
        raise CorpusError(f"trim_gutenberg must be true or false, got {value}")


def wanted_key(corpus: CorpusText, tokenizer: str, val_fraction: float | None, shard_tokens: int | None,
               trim_gutenberg: bool | None = None) -> dict:
    """What existing shards must match to be reused: their content, and only the settings asked for."""
    key = {"format": MANIFEST_FORMAT, "tokenizer": tokenizer, "sources": source_list(corpus)}
    if corpus.val:
        key["val_fraction"] = None  # the source's own split: no fraction applies
    elif val_fraction is not None:
        key["val_fraction"] = val_fraction
    if shard_tokens is not None:
        key["shard_tokens"] = shard_tokens
    if trim_gutenberg is not None:
        key["trim_gutenberg"] = trim_gutenberg
    return key


def source_list(corpus: CorpusText) -> list[list[str]]:
    """[split, name, sha256] of each source file in order, named relative to the folder they share."""
    files = [("train", p.resolve()) for p in corpus.train] + [("val", p.resolve()) for p in corpus.val or ()]
    root = Path(os.path.commonpath([p.parent for _, p in files]))
    return [[split, p.relative_to(root).as_posix(), file_sha256(p)] for split, p in files]


def reusable(folder: Path, wanted: dict) -> Shards | None:
    """The shards in folder when their key matches wanted and they pass load_shards' checks, else None."""
    try:
        key = read_manifest(folder).get("key")
        if not isinstance(key, dict) or any(key.get(name) != value for name, value in wanted.items()):
            return None
        return load_shards(folder)
    except ShardError:
        return None  # missing or damaged: built again


def build_key(folder: Path, wanted: dict) -> dict:
    """The key of a new build: the settings asked for, else those of the shards it replaces (a changed source
    or a damaged shard keeps the user's choice), else the defaults."""
    try:
        recorded = read_manifest(folder).get("key")
    except ShardError:
        recorded = None
    recorded = recorded if isinstance(recorded, dict) else {}
    key = dict(wanted)
    for name, default in (("val_fraction", DEFAULT_VAL_FRACTION), ("shard_tokens", DEFAULT_SHARD_TOKENS),
                          ("trim_gutenberg", True)):
        if name not in key:
            try:
                check_setting(name, recorded.get(name))
                key[name] = recorded[name]
            except CorpusError:
                key[name] = default
    return key


def record_stamps(shards: Shards) -> None:
    """Write the manifest with the shards' new mtimes, once load_shards found their tokens unchanged."""
    try:
        with atomic_path(shards.folder / "manifest.json") as tmp:
            tmp.write_text(json.dumps(shards.manifest, indent=2))
    except OSError:
        pass  # a read-only cache: each start hashes those shards again, nothing worse


@contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Held while a corpus's shards are checked or built: one process tokenizes, the others wait for it.

    The lock file stays beside the shard folder: deleting it on release would let a third process lock a new
    file while a second still waits on the old one."""
    lock: FileLock | None = FileLock(folder.parent / f"{folder.name}.lock")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("%s: waiting for another process that is tokenizing it", folder.name)
            lock.acquire()
    except OSError:
        lock = None  # a read-only cache: its shards can be reused, and nothing can be built there anyway
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
