"""`python -m pipeline.dashboard.keeper COMMAND...`: run COMMAND in a process group of its own, and end that whole
group when this process's parent dies, however it died (SIGKILL too), or when this process is told to stop.

run-dashboard.sh starts each server under a keeper. A server's workers (the MLflow UI's uvicorn) are its own
children, which no parent-death signal reaches; their process group is. On Linux the kernel tells the keeper at
once that its parent died (prctl PR_SET_PDEATHSIG); elsewhere it sees its parent PID change within a second.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 10  # for a clean exit after SIGTERM, before SIGKILL
PR_SET_PDEATHSIG = 1


def _signal_me_when_parent_dies() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def end_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group (pgid == its pid), SIGKILL to what is left after GRACE_SECONDS."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def keep(command: list[str]) -> int:
    """Run command until it exits, this process is signalled, or its parent dies; its group ends with it."""
    parent = os.getppid()
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    _signal_me_when_parent_dies()
    if os.getppid() != parent:  # the parent died before the kernel was asked to tell us
        return 1
    server = subprocess.Popen(command, preexec_fn=os.setpgrp)  # a group of its own, in the caller's session
    while server.poll() is None and not stop and os.getppid() == parent:
        try:
            server.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    end_group(server)  # also the workers of a server that exited on its own
    code = server.wait()
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says it


if __name__ == "__main__":
    sys.exit(keep(sys.argv[1:]))
