"""The corpus registry and fetch(): real files, the offline mirror, a local `datasets` folder, real sockets."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.data.corpora import (
    DOCUMENT_SEPARATOR,
    REGISTRY_PATH,
    CorpusEntry,
    fetch,
    load_registry,
    resolve,
    sha256_of,
)
from pipeline.errors import CorpusError
from tests.conftest import PROJECT_DIR, assert_one_line_error, run_module

VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
SEP = DOCUMENT_SEPARATOR


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the registry


def test_registry_entries_are_complete():
    registry = load_registry()
    assert {"verdict", "tiny", "shakespeare", "tinystories", "wikitext2"} <= set(registry)
    for name, entry in registry.items():
        assert entry.name == name
        assert entry.description.strip() and entry.license.strip() and entry.prompt.strip(), name
        assert sum(bool(x) for x in (entry.file, entry.url, entry.hf_dataset, entry.synthetic)) == 1, name
        if entry.file:
            assert (REGISTRY_PATH.parent / entry.file).is_file(), name
            continue
        if entry.synthetic:
            assert entry.source == f"pipeline/data/synthetic.py:{entry.synthetic}", name
            continue
        assert entry.source.startswith("https://"), name  # every downloadable entry names where it comes from
        if entry.url:
            assert entry.source == entry.url
            assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256 or ""), f"{name} has no sha256"
        if entry.hf_dataset:
            assert entry.splits.get("train"), name
            assert entry.source == f"https://huggingface.co/datasets/{entry.hf_dataset}"
        assert set(entry.mirror) <= {"train", "val"}, name


def test_mirror_copies_match_the_registry_checksums():
    mirror = Path(os.environ["CORPUS_MIRROR"])
    checked = 0
    for entry in load_registry().values():
        if entry.url and entry.mirror:
            assert sha256_of(mirror / entry.mirror["train"]) == entry.sha256, entry.name
            checked += 1
    assert checked >= 2  # verdict and shakespeare


def test_registry_rejects_a_bad_corpus_name(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("Bad-Name:\n  description: x\n  license: x\n  file: x.txt\n")
    with pytest.raises(CorpusError, match="Bad-Name"):
        load_registry(path)


# ---------------------------------------------------------------- named corpora from the mirror


def test_fetch_verdict_copies_from_the_mirror_then_does_no_work(tmp_path, monkeypatch):
    first = fetch("verdict", cache=tmp_path)
    target = tmp_path / "downloads" / "verdict" / "train.txt"
    assert first.action == "copied from mirror"
    assert first.corpus.train == (target,) and first.corpus.val is None
    assert first.corpus.prompt == "I HAD always thought Jack Gisburn"
    assert first.corpus.source.startswith("https://raw.githubusercontent.com/")
    assert sha256_of(target) == VERDICT_SHA256
    stamp = (target.stat().st_mtime_ns, target.stat().st_ino)

    monkeypatch.delenv("CORPUS_MIRROR")  # the second call needs neither mirror nor network
    second = fetch("verdict", cache=tmp_path)
    assert second.action == "already present"
    assert second.corpus == first.corpus
    assert (target.stat().st_mtime_ns, target.stat().st_ino) == stamp
    assert files_under(tmp_path) == ["downloads/verdict/train.txt"]  # no .part left anywhere


def test_cached_file_with_a_wrong_checksum_is_replaced(tmp_path):
    target = tmp_path / "downloads" / "verdict" / "train.txt"
    target.parent.mkdir(parents=True)
    target.write_text("not the verdict")
    result = fetch("verdict", cache=tmp_path)
    assert result.action == "copied from mirror"
    assert sha256_of(target) == VERDICT_SHA256
    assert files_under(tmp_path) == ["downloads/verdict/train.txt"]


def test_mirror_file_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "the-verdict.txt").write_text("a different text")
    monkeypatch.setenv("CORPUS_MIRROR", str(mirror))
    with pytest.raises(CorpusError, match="does not match the sha256 of verdict"):
        fetch("verdict", cache=tmp_path / "cache")
    assert files_under(tmp_path / "cache") == []


def test_tinystories_copies_both_splits_from_the_mirror(tmp_path):
    result = fetch("tinystories", cache=tmp_path)
    folder = tmp_path / "downloads" / "tinystories"
    assert result.action == "copied from mirror"
    assert result.corpus.train == (folder / "train.txt",) and result.corpus.val == (folder / "val.txt",)
    mirror = Path(os.environ["CORPUS_MIRROR"]) / "tinystories"
    assert sha256_of(folder / "train.txt") == sha256_of(mirror / "train-sample-large.txt")
    assert sha256_of(folder / "val.txt") == sha256_of(mirror / "validation-sample.txt")
    assert fetch("tinystories", cache=tmp_path).action == "already present"


def test_committed_file_corpus_is_local(tmp_path):
    result = fetch("tiny", cache=tmp_path)
    assert result.action == "local"
    assert result.corpus.train == (PROJECT_DIR / "corpus" / "tiny.txt",)
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------- paths


def test_unknown_name_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CorpusError) as caught:
        fetch("no_such_corpus", cache=tmp_path)
    message = str(caught.value)
    assert "unknown corpus 'no_such_corpus'" in message
    for name in load_registry():
        assert name in message


def test_an_empty_or_blank_name_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file in the current folder")
    for spec in ("", "   "):
        with pytest.raises(CorpusError, match="corpus is empty"):
            fetch(spec, cache=tmp_path)


def test_missing_path_is_refused(tmp_path):
    missing = tmp_path / "nowhere" / "text.txt"
    with pytest.raises(CorpusError, match="corpus path not found") as caught:
        fetch(str(missing), cache=tmp_path)
    assert str(missing) in str(caught.value)


def test_folder_without_text_files_is_refused(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "table.csv").write_text("a,b\n")
    (folder / "sub" / "rows.json").write_text("{}")
    with pytest.raises(CorpusError, match=r"holds no \.txt or \.md files"):
        fetch(str(folder), cache=tmp_path)


def test_folder_corpus_gives_each_text_file_as_a_document(tmp_path):
    folder = tmp_path / "my notes"
    (folder / "deeper").mkdir(parents=True)
    for name in ("b.md", "a.txt", "deeper/c.txt", "skip.csv", "deeper/skip.py"):
        (folder / name).write_text(f"text of {name}\n")
    result = fetch(str(folder), cache=tmp_path / "cache")
    assert result.action == "local"
    assert result.corpus.train == tuple(folder / n for n in ("a.txt", "b.md", "deeper/c.txt"))
    assert result.corpus.val is None
    assert result.corpus.source == str(folder)
    # named after the path but never with it: no separator or space that could steer where shards go
    assert re.fullmatch(r"[A-Za-z0-9_-]+-[0-9a-f]{8}", result.corpus.name), result.corpus.name
    assert result.corpus.name.startswith("my_notes-")
    assert fetch(str(folder), cache=tmp_path / "cache").corpus.name == result.corpus.name
    assert files_under(tmp_path / "cache") == []


def test_single_file_path_is_one_document(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Chapter one.\n")
    assert resolve(str(path)) == path
    result = fetch(str(path), cache=tmp_path)
    assert result.action == "local" and result.corpus.train == (path,) and result.corpus.val is None


# ---------------------------------------------------------------- Hugging Face datasets, from a local folder


@pytest.fixture
def dataset_folder(tmp_path, monkeypatch):
    """A dataset folder `datasets.load_dataset` reads as is: train and validation JSON lines."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    if "datasets" in sys.modules:  # already imported: its cache folder was read from the environment then
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "dataset"
    folder.mkdir()

    def write(split: str, rows: list[str], file: str | None = None) -> None:
        with open(folder / (file or f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"text": row, "id": len(row)}) + "\n")

    return folder, write


def dataset_entry(folder: Path, **fields) -> CorpusEntry:
    return CorpusEntry(name="local_set", description="a dataset folder", license="test data",
                       hf_dataset=str(folder), splits={"train": "train", "val": "validation"}, **fields)


def test_dataset_rows_become_documents(tmp_path, dataset_folder):
    folder, write = dataset_folder
    write("train", ["  First story.\nIt has two lines.  ", "Second story.", "Third story ünïcode 🎉.",
                    "Fourth."])
    write("validation", ["A val story.", "\nAnother val story.\n"])
    entry = dataset_entry(folder, max_documents=3)
    registry = {"local_set": entry}
    result = fetch("local_set", cache=tmp_path / "cache", registry=registry)
    out = tmp_path / "cache" / "downloads" / "local_set"
    assert result.action == "downloaded"
    assert result.corpus.train == (out / "train.txt",) and result.corpus.val == (out / "val.txt",)
    assert (out / "train.txt").read_text(encoding="utf-8") == (
        f"First story.\nIt has two lines.\n{SEP}\nSecond story.\n{SEP}\nThird story ünïcode 🎉.\n{SEP}\n"
    )  # stripped rows, one document each, and only max_documents of them
    assert (out / "val.txt").read_text(encoding="utf-8") == f"A val story.\n{SEP}\nAnother val story.\n{SEP}\n"
    assert files_under(out) == ["train.txt", "val.txt"]
    stamp = (out / "train.txt").stat().st_mtime_ns
    assert fetch("local_set", cache=tmp_path / "cache", registry=registry).action == "already present"
    assert (out / "train.txt").stat().st_mtime_ns == stamp


def test_dataset_is_streamed_so_only_the_rows_kept_are_read(tmp_path, dataset_folder):
    folder, write = dataset_folder
    write("train", [f"Story {i}: a cat sat." for i in range(6)], file="train-00000-of-00002.jsonl")
    # the split's second file is not even JSON: loading the whole split fails, streaming never reaches it
    (folder / "train-00001-of-00002.jsonl").write_text("not JSON, and never read\n")
    write("validation", ["A val story."])
    entry = dataset_entry(folder, max_documents=4)
    result = fetch("local_set", cache=tmp_path / "cache", registry={"local_set": entry})
    assert result.action == "downloaded"
    out = tmp_path / "cache" / "downloads" / "local_set"
    assert (out / "train.txt").read_text(encoding="utf-8") == "".join(
        f"Story {i}: a cat sat.\n{SEP}\n" for i in range(4))
    assert (out / "val.txt").read_text(encoding="utf-8") == f"A val story.\n{SEP}\n"
    assert files_under(out) == ["train.txt", "val.txt"]


def test_dataset_rows_joined(tmp_path, dataset_folder):
    folder, write = dataset_folder
    rows = [" = Heading = \n", "\n", " A line of the article . \n", "", " Another line .\n"]
    write("train", rows)
    write("validation", [" = Val = \n", " text \n"])
    entry = dataset_entry(folder, join_rows=True)
    fetch("local_set", cache=tmp_path / "cache", registry={"local_set": entry})
    out = tmp_path / "cache" / "downloads" / "local_set"
    assert (out / "train.txt").read_text(encoding="utf-8") == "".join(rows)
    assert (out / "val.txt").read_text(encoding="utf-8") == " = Val = \n text \n"


def test_dataset_without_val_split_gives_train_only(tmp_path, dataset_folder):
    folder, write = dataset_folder
    write("train", ["Only story."])
    entry = replace(dataset_entry(folder), splits={"train": "train"})
    result = fetch("local_set", cache=tmp_path / "cache", registry={"local_set": entry})
    assert result.corpus.val is None
    assert files_under(tmp_path / "cache") == ["downloads/local_set/train.txt"]


def test_dataset_that_cannot_load_is_a_corpus_error(tmp_path, dataset_folder):
    folder, write = dataset_folder
    write("train", ["Only story."])  # no validation split
    entry = dataset_entry(folder)
    with pytest.raises(CorpusError) as caught:
        fetch("local_set", cache=tmp_path / "cache", registry={"local_set": entry})
    message = str(caught.value)
    assert "could not load local_set" in message and str(tmp_path / "cache" / "downloads" / "local_set") in message
    assert not (tmp_path / "cache" / "downloads" / "local_set" / "val.txt").exists()
    assert not [n for n in files_under(tmp_path / "cache") if n.endswith(".part")]


# ---------------------------------------------------------------- URL downloads, over real sockets


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv("CORPUS_MIRROR")


def url_entry(url: str, sha256: str | None) -> dict[str, CorpusEntry]:
    return {"remote": CorpusEntry(name="remote", description="a text on a server", license="test", url=url,
                                  sha256=sha256, mirror={"train": "the-verdict.txt"})}


def test_download_failure_names_the_url_and_the_target(tmp_path, no_proxy):
    url = "http://127.0.0.1:9/x.txt"  # the discard port: nothing listens, the connection is refused
    with pytest.raises(CorpusError) as caught:
        fetch("remote", cache=tmp_path, registry=url_entry(url, VERDICT_SHA256))
    message = str(caught.value)
    assert url in message
    assert str(tmp_path / "downloads" / "remote" / "train.txt") in message
    assert "CORPUS_MIRROR" in message
    assert files_under(tmp_path) == []  # no file, no .part


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on a free loopback port, serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_over_http_checks_the_sha256(tmp_path, no_proxy, http_server):
    root, base = http_server
    text = "A text served over a real socket.\n" * 100
    (root / "book.txt").write_text(text)
    good = url_entry(f"{base}/book.txt", sha256_of(root / "book.txt"))
    result = fetch("remote", cache=tmp_path / "cache", registry=good)
    assert result.action == "downloaded"
    assert result.corpus.train[0].read_text() == text
    assert fetch("remote", cache=tmp_path / "cache", registry=good).action == "already present"

    bad = url_entry(f"{base}/book.txt", "0" * 64)
    with pytest.raises(CorpusError, match="does not match its sha256"):
        fetch("remote", cache=tmp_path / "other", registry=bad)
    assert files_under(tmp_path / "other") == []

    missing = url_entry(f"{base}/missing.txt", None)
    with pytest.raises(CorpusError, match=re.escape(f"{base}/missing.txt")):
        fetch("remote", cache=tmp_path / "third", registry=missing)
    assert files_under(tmp_path / "third") == []


# ---------------------------------------------------------------- the CLI


def test_cli_download_twice(tmp_path):
    env = {"CORPUS_CACHE": str(tmp_path)}
    first = run_module("pipeline.download", "--corpus", "verdict", env=env)
    assert first.returncode == 0, first.stderr
    assert "verdict: copied from mirror" in first.stdout
    target = tmp_path / "downloads" / "verdict" / "train.txt"
    assert str(target) in first.stdout and sha256_of(target) == VERDICT_SHA256
    second = run_module("pipeline.download", "--corpus", "verdict", env=env)
    assert second.returncode == 0, second.stderr
    assert "verdict: already present" in second.stdout


def test_cli_unknown_corpus_is_one_line(tmp_path):
    result = run_module("pipeline.download", "--corpus", "nope", cwd=tmp_path, env={"CORPUS_CACHE": str(tmp_path)})
    assert_one_line_error(result, "unknown corpus 'nope'", "verdict", "tinystories")
    assert files_under(tmp_path) == []


def test_cli_help_explains_corpus():
    result = run_module("pipeline.download", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # as click wrapped it, on one line
    assert "--corpus TEXT Corpus name from corpus/registry.yaml, or a path to a text file or folder." in text
    assert "[default: verdict]" in text
    for name in ("verdict", "tiny", "shakespeare", "tinystories", "wikitext2"):
        assert name in text
