"""The CPU's memory between steps: freed tensors' pages are reused, not faulted in again each step."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from pipeline.files import child_python_path
from tests.conftest import PROJECT_DIR

# A step's worth of large tensors, made and freed 40 times: the page faults of steps 16-20 are counted, and the
# resident memory after steps 20 and 40 (the heap settles within the first ten steps).
FAULTS_OF_REPEATED_STEPS = """
import json, resource, sys, torch
from pipeline.training.device import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else False
def step():
    logits = torch.ones(256, 50304)  # 51 MB, as the logits of a small batch
    return float((logits * 2).sum())
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
seen = {}
for number in range(1, 41):
    if number == 16:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    if number == 20:
        seen["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    if number in (20, 40):
        seen[f"rss_mb_{number}"] = resident_mb()
print(json.dumps({"kept": kept, **seen}))
"""


def faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_STEPS, mode], cwd=PROJECT_DIR, text=True,
                          capture_output=True, env={"PYTHONPATH": child_python_path(), "OMP_NUM_THREADS": "1",
                                                    "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_tensors_are_reused_without_faulting_their_pages_in_again():
    default, kept = faults("glibc"), faults("kept")
    assert kept["kept"] and not default["kept"]
    # 5 steps x 2 tensors x 12,500 pages under glibc's defaults; a handful once the memory is kept
    assert default["faults"] > 100_000, default
    assert kept["faults"] < default["faults"] / 20, (kept, default)
    assert kept["rss_mb_40"] < 1.05 * kept["rss_mb_20"], kept  # kept for reuse, not piling up
