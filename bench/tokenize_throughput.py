"""Throughput and peak memory of the tokenize step, side by side with bare tiktoken.

    python bench/tokenize_throughput.py [--size-mb 200]

Builds a corpus of at least --size-mb MB (10^6 bytes) by repeating TinyStories' train-sample.txt from
$CORPUS_MIRROR (default: ../shared/data beside the repository) in a temporary folder, then runs, each in a
child process of its own so that its peak RSS is its alone:

  (a) pipeline.data.sharding.shard_corpus on that file (a fresh temporary cache), what `python -m pipeline.tokenize` does;
  (b) bare `enc.encode_ordinary_batch` over the same text, cut into the same pieces (PIECE_BYTES, at a line
      end) and batched BATCH_PIECES at a time, with tiktoken's default thread count; the tokens are dropped.

Each child times its own work (reading the file included, loading tiktoken's files not) and the parent reads
the child's peak RSS from os.wait4's resource usage. Exits 1 when tokenize runs at less than 0.9x the bare
encoder's MB/s or peaks at 1 GB of RSS or more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import benchlib

PROJECT_DIR = Path(__file__).resolve().parents[1]
MIN_RATIO = 0.9
MAX_RSS_BYTES = 1_000_000_000
SAMPLE = Path("tinystories") / "train-sample.txt"


def mirror() -> Path:
    return Path(os.environ.get("CORPUS_MIRROR") or PROJECT_DIR.parent / "shared" / "data")


def build_corpus(folder: Path, size_mb: float) -> Path:
    """The sample repeated until the file holds at least size_mb MB; it ends at a document boundary."""
    sample = (mirror() / SAMPLE).read_bytes()
    wanted = int(size_mb * 1_000_000)
    path = folder / "corpus.txt"
    with open(path, "wb") as out:
        written = 0
        while written < wanted:
            out.write(sample)
            written += len(sample)
    return path


# ---------------------------------------------------------------- children


def child_tokenize(path: Path, cache: Path) -> dict:
    from pipeline.data.corpora import CorpusText
    from pipeline.data.sharding import shard_corpus
    from pipeline.data.tokenizer import encoding

    encoding()  # tiktoken's files are loaded once per process: not part of the measurement
    corpus = CorpusText("bench", (path,), None, "The", str(path))
    start = time.perf_counter()
    result = shard_corpus(corpus, cache=cache)
    seconds = time.perf_counter() - start
    assert not result.skipped
    return {"seconds": seconds, "tokens": result.shards.train_tokens + result.shards.val_tokens}


def child_bare(path: Path) -> dict:
    from pipeline.data.sharding import BATCH_PIECES, PIECE_BYTES
    from pipeline.data.tokenizer import encoding

    enc = encoding()
    tokens = 0
    start = time.perf_counter()
    with open(path, "rb") as f:
        carry, batch = b"", []
        while True:
            block = f.read(PIECE_BYTES)
            data = carry + block
            if not data:
                break
            cut = (data.rfind(b"\n") + 1 or len(data)) if block else len(data)
            batch.append(data[:cut].decode("utf-8"))
            carry = data[cut:]
            if len(batch) == BATCH_PIECES or not block:
                tokens += sum(len(ids) for ids in enc.encode_ordinary_batch(batch))
                batch = []
        if batch:
            tokens += sum(len(ids) for ids in enc.encode_ordinary_batch(batch))
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def run_child(kind: str, path: Path, cache: Path) -> dict:
    """Run one measurement in a child process; its timing from its stdout, its peak RSS from wait4."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--file", str(path),
               "--cache", str(cache)]
    env = {**benchlib.offline_environment(), "TQDM_DISABLE": "1"}
    output, code, peak = benchlib.run_measured(command, env, PROJECT_DIR)
    if code != 0:
        raise SystemExit(f"the {kind} child failed with exit code {code}")
    result = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    result["peak_rss"] = peak
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200, help="corpus size in MB (10^6 bytes), default 200")
    parser.add_argument("--child", choices=("tokenize", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(mirror() / "tiktoken-cache"))
    if args.child:
        result = child_tokenize(args.file, args.cache) if args.child == "tokenize" else child_bare(args.file)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="tokenize-bench-") as tmp:
        path = build_corpus(Path(tmp), args.size_mb)
        megabytes = path.stat().st_size / 1e6
        print(f"corpus: {megabytes:.1f} MB ({path.stat().st_size:,} bytes), "
              f"{benchlib.cpus()} CPUs")
        bare = run_child("bare", path, Path(tmp) / "unused")
        project = run_child("tokenize", path, Path(tmp) / "cache")

    rows = [("bare encode_ordinary_batch", bare), ("pipeline shard_corpus()", project)]
    for label, result in rows:
        print(f"{label:28s} {megabytes / result['seconds']:7.2f} MB/s  {result['seconds']:7.1f} s  "
              f"{result['tokens']:>12,} tokens  peak RSS {result['peak_rss'] / 1e6:7.1f} MB")
    ratio = (megabytes / project["seconds"]) / (megabytes / bare["seconds"])
    print(f"ratio tokenize/bare: {ratio:.2f}x (target >= {MIN_RATIO}x); "
          f"tokenize peak RSS {project['peak_rss'] / 1e6:.0f} MB (target < {MAX_RSS_BYTES / 1e6:.0f} MB)")
    failures = []
    if ratio < MIN_RATIO:
        failures.append(f"throughput ratio {ratio:.2f}x is below {MIN_RATIO}x")
    if project["peak_rss"] >= MAX_RSS_BYTES:
        failures.append(f"peak RSS {project['peak_rss'] / 1e6:.0f} MB is not below {MAX_RSS_BYTES / 1e6:.0f} MB")
    for failure in failures:
        print(f"MISSED: {failure}")
    print(f"result: {ratio:.2f}x, peak RSS {project['peak_rss'] / 1e6:.0f} MB ({megabytes:.0f} MB)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
