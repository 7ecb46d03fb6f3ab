"""Which bytes of a text file are the text: without a UTF-8 byte order mark, and, for a Project Gutenberg book,
without the licence header and footer around its `*** START OF ... ***` / `*** END OF ... ***` lines (a model
would learn and sample them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BOM = "\ufeff".encode()
# Gutenberg's header is a few hundred lines and its footer a licence of ~20 KB: look that far from each end
GUTENBERG_WINDOW = 1 << 18
_START = re.compile(rb"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|TEXT)[^\n]*\n", re.M | re.I)
_END = re.compile(rb"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|TEXT)", re.M | re.I)


@dataclass(frozen=True)
class Extent:
    """The bytes [start, end) of path that hold its text."""

    path: Path
    start: int
    end: int
    gutenberg: bool = False  # a Gutenberg book's header and footer were left out

    @property
    def size(self) -> int:
        return self.end - self.start


def text_extent(path: Path, trim_gutenberg: bool = True) -> Extent:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(GUTENBERG_WINDOW)
        f.seek(max(0, size - GUTENBERG_WINDOW))
        tail_offset = f.tell()
        tail = f.read()
    start = len(BOM) if head.startswith(BOM) else 0
    if trim_gutenberg:
        opening = _START.search(head)
        closing = None
        for closing in _END.finditer(tail):
            pass  # the last END marker: a book may quote one earlier
        if opening and closing and tail_offset + closing.start() > opening.end():
            return Extent(path, opening.end(), tail_offset + closing.start(), gutenberg=True)
    return Extent(path, start, size)


def extents_note(extents: list[Extent]) -> str | None:
    """One line on what was left out, for the user: None when nothing was."""
    trimmed = [e for e in extents if e.gutenberg]
    if not trimmed:
        return None
    kept = sum(e.size for e in trimmed)
    total = sum(e.path.stat().st_size for e in trimmed)
    return (f"Project Gutenberg header and footer left out of {len(trimmed)} file(s): training on the "
            f"{kept:,} bytes between their START and END markers of {total:,} (tokenize --gutenberg keep "
            f"keeps everything)")
