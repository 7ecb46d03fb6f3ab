"""Where a corpus without its own validation split is cut into train and val: whole files at the tail, else a
document or word boundary near the tail of the last file."""

from __future__ import annotations

from pathlib import Path

from pipeline.data.corpora import DOCUMENT_SEPARATOR


def split_plan(files: tuple[Path, ...], val_fraction: float) -> tuple[dict, str]:
    """Byte ranges of the train and val splits: whole files where there are several (unless the last file alone
    is over twice val_fraction), else within the one file at the first document boundary past the split point,
    else at the first whitespace past it."""
    sizes = [p.stat().st_size for p in files]
    total = sum(sizes)
    if len(files) > 1:
        start = 0
        for index, size in enumerate(sizes):
            if start >= total * (1 - val_fraction) and index > 0:
                return ({"train": [(p, 0, None) for p in files[:index]],
                         "val": [(p, 0, None) for p in files[index:]]}, "files (documents) at the tail")
            start += size
        if sizes[-1] <= 2 * val_fraction * total:
            return ({"train": [(p, 0, None) for p in files[:-1]], "val": [(files[-1], 0, None)]},
                    "the last file (document)")
        # the last file alone is far more than val_fraction: hold out only its tail
        cut, rule = _cut_point(files[-1], int(total * (1 - val_fraction)) - (total - sizes[-1]))
        return ({"train": [(p, 0, None) for p in files[:-1]] + [(files[-1], 0, cut)],
                 "val": [(files[-1], cut, None)]}, f"within the last file: {rule}")
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
        cut = found + len(marker)
        cut += window[cut:cut + 1] == b"\n"  # the separator's own line end stays with it, as in encoding._SEPARATOR
        if window[cut:].strip() or len(window) == 1 << 22:  # a document follows: not the file's last separator
            return target + cut, "document boundary near the tail"
    for offset, byte in enumerate(window):
        if byte in b" \n\t\r":
            return target + offset, "the tail, at a word boundary"
    while target > 0 and window and (window[0] & 0xC0) == 0x80:  # never inside a multi-byte character
        target -= 1
        with open(path, "rb") as f:
            f.seek(target)
            window = f.read(1)
    return target, "the tail"
