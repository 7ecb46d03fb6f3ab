"""What this machine already worked out, kept between runs in small JSON files in the corpus cache: a file's
sha256 while its size and times stay the same, and the CPU's measured FLOP/s.

A start that finds its inputs unchanged then reads a stat instead of every byte. Writing is best effort: a lost
or unwritable memo only means the value is worked out again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from pipeline.files import atomic_path, cache_root, sha256_of

T = TypeVar("T")


def remembered(memo: str, key: str, fingerprint: list, compute: Callable[[], T],
               still_wanted: Callable[[str], bool] = lambda key: True) -> T:
    """The value kept under key in the memo file while fingerprint is the same as when it was kept; else
    compute(), kept for next time, with the entries still_wanted no longer wants dropped."""
    path = cache_root() / memo
    entries = _read(path)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("fingerprint") == fingerprint:
        return entry["value"]
    value = compute()
    entries = {k: v for k, v in entries.items() if still_wanted(k)}
    entries[key] = {"fingerprint": fingerprint, "value": value}
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(entries, indent=1))
    except OSError:
        pass  # a read-only cache: worked out again next time
    return value


def file_sha256(path: Path) -> str:
    """sha256 of a file, hashed again only when its size, mtime, ctime or inode changed (ctime moves with any
    write, even one that puts the old mtime back)."""
    path = Path(path).resolve()
    stat = path.stat()
    fingerprint = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    return remembered("file-sha256.json", str(path), fingerprint, lambda: sha256_of(path),
                      still_wanted=lambda kept: Path(kept).exists())  # a deleted file's hash is never asked again


def _read(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}

