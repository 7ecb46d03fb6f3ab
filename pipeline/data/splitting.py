"""Where a corpus without its own validation split is cut into train and val: whole files at the tail, else a
document or word boundary near the tail of the last file."""

from __future__ import annotations

from pipeline.data.cleaning import Extent
from pipeline.data.corpora import DOCUMENT_SEPARATOR


def split_plan(extents: list[Extent], val_fraction: float) -> tuple[dict, str]:
    """Byte ranges of the train and val splits: whole files where there are several (unless the last file alone
    is over twice val_fraction), else within the one file at the first document boundary past the split point,
    else at the first whitespace past it."""
    sizes = [e.size for e in extents]
    total = sum(sizes)
    whole = [(e.path, e.start, e.end) for e in extents]
    if len(extents) > 1:
        start = 0
        for index, size in enumerate(sizes):
            if start >= total * (1 - val_fraction) and index > 0:
                return {"train": whole[:index], "val": whole[index:]}, "files (documents) at the tail"
            start += size
        if sizes[-1] <= 2 * val_fraction * total:
            return {"train": whole[:-1], "val": whole[-1:]}, "the last file (document)"
        # the last file alone is far more than val_fraction: hold out only its tail
        last = extents[-1]
        cut, rule = _cut_point(last, last.start + int(total * (1 - val_fraction)) - (total - sizes[-1]))
        return ({"train": whole[:-1] + [(last.path, last.start, cut)], "val": [(last.path, cut, last.end)]},
                f"within the last file: {rule}")
    [only] = extents
    cut, rule = _cut_point(only, only.start + int(total * (1 - val_fraction)))
    return {"train": [(only.path, only.start, cut)], "val": [(only.path, cut, only.end)]}, rule


def _cut_point(extent: Extent, target: int) -> tuple[int, str]:
    marker = DOCUMENT_SEPARATOR.encode()
    with open(extent.path, "rb") as f:
        f.seek(target)
        window = f.read(min(1 << 22, extent.end - target))
    found = window.find(marker)
    if found >= 0:
        cut = found + len(marker)
        cut += window[cut:cut + 1] == b"\n"  # the separator's own line end stays with it, as in encoding._SEPARATOR
        if window[cut:].strip() or len(window) == 1 << 22:  # a document follows: not the file's last separator
            return target + cut, "document boundary near the tail"
    for offset, byte in enumerate(window):
        if byte in b" \n\t\r":
            return target + offset, "the tail, at a word boundary"
    while target > 0 and window and (window[0] & 0xC0) == 0x80:  # never inside a multi-byte character
        target -= 1
        with open(extent.path, "rb") as f:
            f.seek(target)
            window = f.read(1)
    return target, "the tail"
