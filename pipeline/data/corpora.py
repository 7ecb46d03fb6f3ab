"""The corpus registry, and getting a corpus's text onto local disk.

A corpus is either a name in corpus/registry.yaml or a path to a text file or a folder of them. Downloads land
in `<cache>/downloads/<name>/` as train.txt (and val.txt when the source has its own validation split),
checked against the registry's sha256 and written atomically. With $CORPUS_MIRROR set, files are copied from
that folder first, so everything works offline.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from tqdm import tqdm

from pipeline.data import synthetic
from pipeline.errors import CorpusError, first_line
from pipeline.files import atomic_path, cache_root, project_file, sha256_of
from pipeline.memo import file_sha256

REGISTRY_PATH = project_file("corpus/registry.yaml")
DOCUMENT_SEPARATOR = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".md")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class CorpusEntry:
    """One registry entry (see the comment at the top of corpus/registry.yaml)."""

    name: str
    description: str
    license: str
    prompt: str = "The"
    file: str | None = None
    url: str | None = None
    sha256: str | None = None
    hf_dataset: str | None = None
    synthetic: str | None = None  # a corpus the lab writes itself (data/synthetic.py)
    hf_config: str | None = None
    text_field: str = "text"
    join_rows: bool = False
    max_documents: int | None = None
    splits: dict = field(default_factory=dict)
    mirror: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        if self.synthetic:
            return f"pipeline/data/synthetic.py:{self.synthetic}"
        if self.url:
            return self.url
        if self.hf_dataset and Path(self.hf_dataset).is_absolute():  # a dataset folder on this machine
            return self.hf_dataset
        if self.hf_dataset:
            return f"https://huggingface.co/datasets/{self.hf_dataset}"
        return f"corpus/{self.file}"


@dataclass(frozen=True)
class CorpusText:
    """A corpus on local disk, ready to tokenize. Each file is one document or more (split by <|endoftext|>)."""

    name: str
    train: tuple[Path, ...]
    val: tuple[Path, ...] | None  # the source's own validation split, else None: split off the train tail
    prompt: str
    source: str


@dataclass(frozen=True)
class FetchResult:
    corpus: CorpusText
    action: str  # what happened: "downloaded", "copied from mirror", "already present", "local"


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, CorpusEntry]:
    raw = yaml.safe_load(path.read_text())
    entries = {}
    for name, values in raw.items():
        if not _NAME.match(name):
            raise CorpusError(f"registry {path}: corpus name '{name}' must be lowercase letters, digits, _")
        unknown = set(values) - {f.name for f in fields(CorpusEntry)}
        if unknown:
            raise CorpusError(f"registry {path}: corpus '{name}' has unknown field(s) {', '.join(sorted(unknown))}")
        entries[name] = CorpusEntry(name=name, **values)
    return entries


def resolve(spec: str, registry: dict[str, CorpusEntry] | None = None) -> CorpusEntry | Path:
    """A registry entry for a known name, a Path for anything that names a file or folder."""
    registry = registry if registry is not None else load_registry()
    if not spec.strip():  # Path("") is the current folder: never train on it by accident
        raise CorpusError("corpus is empty: give a name from corpus/registry.yaml or a path to a text file or folder")
    if spec in registry:
        return registry[spec]
    path = Path(spec).expanduser()
    if os.sep in spec or path.suffix or path.exists():
        if not path.exists():
            raise CorpusError(f"corpus path not found: {spec}")
        return path
    raise CorpusError(f"unknown corpus '{spec}' (known: {', '.join(registry)}; or a path to a text file or folder)")


def fetch(spec: str, cache: Path | None = None, registry: dict[str, CorpusEntry] | None = None) -> FetchResult:
    """Make the corpus's text local: nothing to do for a path, a download (or mirror copy) for a name."""
    cache = cache or cache_root()
    target = resolve(spec, registry)
    if isinstance(target, Path):
        return FetchResult(_local_corpus(target), "local")
    entry = target
    if entry.file:
        path = REGISTRY_PATH.parent / entry.file
        return FetchResult(CorpusText(entry.name, (path,), None, entry.prompt, entry.source), "local")
    folder = cache / "downloads" / entry.name
    wanted = {"train": folder / "train.txt"}
    if entry.hf_dataset and "val" in entry.splits:
        wanted["val"] = folder / "val.txt"
    corpus = CorpusText(entry.name, (wanted["train"],), (wanted["val"],) if "val" in wanted else None,
                        entry.prompt, entry.source)
    if all(p.exists() for p in wanted.values()) and _checksum_ok(entry, wanted["train"], file_sha256):
        return FetchResult(corpus, "already present")
    if entry.synthetic:
        try:
            synthetic.write(entry.synthetic, wanted["train"])
        except OSError as error:
            raise CorpusError(f"could not write {entry.name} to {folder}: {error.strerror or error}") from None
        return FetchResult(corpus, "written")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if _copy_from_mirror(entry, wanted):
            return FetchResult(corpus, "copied from mirror")
    except OSError as error:  # a full disk or a read-only cache
        raise CorpusError(f"could not write {entry.name} to {folder}: {error.strerror or error}") from None
    if entry.url:
        _download_url(entry, wanted["train"])
    else:
        _download_dataset(entry, wanted)
    return FetchResult(corpus, "downloaded")


def _checksum_ok(entry: CorpusEntry, path: Path, digest=sha256_of) -> bool:
    return entry.sha256 is None or digest(path) == entry.sha256


def _local_corpus(path: Path) -> CorpusText:
    path = path.resolve()
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES))
        if not files:
            raise CorpusError(f"corpus folder {path} holds no {' or '.join(TEXT_SUFFIXES)} files")
    else:
        files = (path,)
    # The shard folder is named after the path, never with it: a path cannot steer where shards are written.
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:40] or "corpus"
    label = f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    return CorpusText(label, files, None, "The", str(path))


def _copy_from_mirror(entry: CorpusEntry, wanted: dict[str, Path]) -> bool:
    mirror = os.environ.get("CORPUS_MIRROR")
    if not mirror or not entry.mirror:
        return False
    sources = {split: Path(mirror) / rel for split, rel in entry.mirror.items() if split in wanted}
    if set(sources) != set(wanted) or not all(p.is_file() for p in sources.values()):
        return False
    for split, source in sources.items():
        with atomic_path(wanted[split]) as tmp:
            shutil.copyfile(source, tmp)
            if split == "train" and not _checksum_ok(entry, tmp):
                raise CorpusError(f"{source} (from CORPUS_MIRROR) does not match the sha256 of {entry.name}")
    return True


def _download_url(entry: CorpusEntry, target: Path) -> None:
    try:
        with urllib.request.urlopen(entry.url, timeout=30) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=entry.name,
                                               disable=None) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
            if not _checksum_ok(entry, tmp):
                raise CorpusError(f"download of {entry.name} from {entry.url} does not match its sha256")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CorpusError(
            f"could not download {entry.name} from {entry.url} ({reason}); "
            f"without network, save that file as {target} or set CORPUS_MIRROR"
        ) from None


def _download_dataset(entry: CorpusEntry, wanted: dict[str, Path]) -> None:
    try:
        import datasets  # heavy import: only when a dataset is really fetched

        for split, target in wanted.items():
            # Streamed: only the rows kept are read (TinyStories' train split is ~1.9 GB, a lab keeps a slice).
            rows = datasets.load_dataset(entry.hf_dataset, entry.hf_config, split=entry.splits[split],
                                         streaming=True)
            limit = entry.max_documents or None
            with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as out:
                for row in tqdm(itertools.islice(rows, limit), total=limit, desc=f"{entry.name} {split}",
                                unit=" docs", disable=None):
                    text = row[entry.text_field]
                    if entry.join_rows:
                        out.write(text)
                    else:
                        out.write(text.strip() + f"\n{DOCUMENT_SEPARATOR}\n")
    except CorpusError:
        raise
    except Exception as error:  # datasets raises many kinds: no network, no such dataset, no such split
        hand = ", ".join(str(p) for p in wanted.values())
        raise CorpusError(
            f"could not load {entry.name} from {entry.source} ({first_line(error, limit=1000)}); "
            f"without network, save its text as {hand} or set CORPUS_MIRROR"
        ) from None
