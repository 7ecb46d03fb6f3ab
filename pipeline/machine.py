"""What this machine lends the lab: the cores a process may use, for the tokenizer's threads and the test
workers alike."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on (os.cpu_count() counts the machine's, even where fewer are allowed)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
