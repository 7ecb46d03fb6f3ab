"""Where the lab's own files are (in a checkout or an installed package), and writing files so that a crash
never leaves half of one behind."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PROJECT_DIR = Path(__file__).resolve().parents[1]
# `pip install .` (no -e) puts experiments.yaml and corpus/ here, as the wheel's data files (pyproject.toml)
INSTALLED_DATA_DIR = Path(sys.prefix) / "share" / "gpt-pretraining-lab"


def child_python_path() -> str:
    """PYTHONPATH for a child process of the lab: the project first, then what this process was given (packages
    installed with pip --target, say), so the child imports this checkout and still finds those packages."""
    return os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))


def in_checkout() -> bool:
    return (PROJECT_DIR / "MLproject").is_file()


def project_file(relative: str) -> Path:
    """A file the project ships (experiments.yaml, corpus/registry.yaml): the checkout's copy, else the installed
    one."""
    return (PROJECT_DIR if in_checkout() else INSTALLED_DATA_DIR) / relative


def cache_root() -> Path:
    """Where downloads and shards go: $CORPUS_CACHE, else corpus/ in a checkout, else the user's cache folder."""
    if os.environ.get("CORPUS_CACHE"):
        return Path(os.environ["CORPUS_CACHE"])
    if in_checkout():
        return PROJECT_DIR / "corpus"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt-pretraining-lab"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside target; it replaces target (after fsync) only if the block ends without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
