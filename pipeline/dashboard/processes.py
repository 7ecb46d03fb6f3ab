"""The processes the dashboard started: a small JSON registry in a folder the dashboard owns.

Each entry records what was started (a training run or a sweep), its PID, when the OS started that PID (psutil's
create time, so a PID reused by another program is never signalled), its log file and, once it ended, how. The
registry outlives the dashboard: the processes run in sessions of their own, so they keep going when the page or
the dashboard is closed, and a dashboard started later finds them here again.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

from pipeline.files import atomic_path

REGISTRY_FILE = "processes.json"
LOG_DIR = "logs"
KEEP_ENDED = 200  # ended entries kept in the registry, newest first
LOG_TAIL_BYTES = 8192


class NotOurProcess(LookupError):
    """The id names no process this dashboard started."""


class ProcessEnded(RuntimeError):
    """The process already ended: there is nothing to signal."""


def _started(pid: int) -> float | None:
    """When pid started (seconds since the epoch, as the OS records it); None once it is gone or a zombie."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return process.create_time()
    except psutil.Error:
        return None


class ProcessRegistry:
    """Spawn, list, signal and reap the dashboard's processes; thread-safe within one dashboard."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / REGISTRY_FILE
        self.log_dir = self.folder / LOG_DIR
        self._lock = threading.RLock()
        self._children: dict[int, subprocess.Popen] = {}  # the processes this very dashboard started

    # --- the file -------------------------------------------------------------------------------------------

    def _load(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):  # unreadable or damaged: start over rather than fail every request
            return []
        entries = data.get("processes", []) if isinstance(data, dict) else []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("pid"), int) and e.get("id")]

    def _save(self, entries: list[dict]) -> None:
        running = [e for e in entries if e.get("ended_at") is None]
        ended = [e for e in entries if e.get("ended_at") is not None][:KEEP_ENDED]
        kept = sorted(running + ended, key=lambda e: e.get("started_at", 0), reverse=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"version": 1, "processes": kept}, indent=1))

    # --- starting -------------------------------------------------------------------------------------------

    def spawn(self, entry_id: str, kind: str, command: list[str], env: dict, cwd: Path, **info) -> dict:
        """Start command in a new session (so Ctrl-C of the dashboard does not reach it), output to a log."""
        with self._lock:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_name = f"{LOG_DIR}/{entry_id}-{time.time_ns() // 1_000_000}.log"
            log_path = self.folder / log_name
            with open(log_path, "ab") as log:
                process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            self._children[process.pid] = process
            entry = {"id": entry_id, "kind": kind, "pid": process.pid, "create_time": _started(process.pid),
                     "log": log_name, "command": command, "started_at": time.time(), "stop_requested_at": None,
                     "ended_at": None, "exit_code": None, **info}
            entries = [e for e in self._load() if not (e["id"] == entry_id and e.get("ended_at") is not None)]
            self._save([entry, *entries])
            return dict(entry)

    # --- reading --------------------------------------------------------------------------------------------

    def _alive(self, entry: dict) -> tuple[bool, int | None]:
        """(running, exit code if known)."""
        pid = entry["pid"]
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()  # also reaps it: an ended child is never left a zombie
            return code is None, code
        started = _started(pid)
        known = entry.get("create_time")
        return started is not None and (known is None or math.isclose(started, known, abs_tol=0.01)), None

    def refresh(self, on_ended: Callable[[dict], None] | None = None) -> list[dict]:
        """All entries, newest first, with those whose process ended marked so (on_ended called once each)."""
        with self._lock:
            entries = self._load()
            changed = False
            for entry in entries:
                if entry.get("ended_at") is not None:
                    continue
                running, code = self._alive(entry)
                if running:
                    continue
                entry["ended_at"] = time.time()
                entry["exit_code"] = code
                self._children.pop(entry["pid"], None)
                changed = True
                if on_ended is not None:
                    try:
                        on_ended(entry)
                    except Exception as error:  # a view must not fail over the clean-up of one run
                        entry["cleanup_error"] = f"{type(error).__name__}: {error}"[:300]
            if changed:
                self._save(entries)
            return [dict(e) for e in entries]

    def get(self, entry_id: str, on_ended: Callable[[dict], None] | None = None) -> dict:
        for entry in self.refresh(on_ended):
            if entry["id"] == entry_id:
                return entry
        raise NotOurProcess(entry_id)

    def log_tail(self, entry: dict, lines: int = 5) -> list[str]:
        path = self.folder / entry["log"]
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - LOG_TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        kept = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
        return kept[-lines:]

    def last_error(self, entry: dict) -> str:
        """The process's own one-line error ('error: ...', as the CLI prints it), else its last line."""
        tail = self.log_tail(entry, lines=40)
        for line in reversed(tail):
            if line.startswith("error: "):
                return line[len("error: "):]
        return tail[-1] if tail else ""

    # --- stopping -------------------------------------------------------------------------------------------

    def stop(self, entry_id: str, on_ended: Callable[[dict], None] | None = None) -> dict:
        """SIGINT to the process group of a process from this registry: what Ctrl-C in its terminal would do.

        A second request while the first is in progress sends nothing (a second Ctrl-C would stop a training
        run at once, without its checkpoint)."""
        with self._lock:
            entry = self.get(entry_id, on_ended)
            if entry.get("ended_at") is not None:
                raise ProcessEnded(entry_id)
            if entry.get("stop_requested_at") is not None:
                return {**entry, "already_stopping": True}
            running, _ = self._alive(entry)
            if not running:
                raise ProcessEnded(entry_id)
            try:
                os.killpg(entry["pid"], signal.SIGINT)  # its own session: pgid == pid
            except ProcessLookupError:
                raise ProcessEnded(entry_id) from None
            entries = self._load()
            for stored in entries:
                if stored["id"] == entry_id and stored["pid"] == entry["pid"]:
                    stored["stop_requested_at"] = time.time()
                    entry = dict(stored)
            self._save(entries)
            return entry

    def kill_all(self) -> None:
        """SIGKILL every live process of the registry (tests clean up with it)."""
        with self._lock:
            for entry in self.refresh():
                if entry.get("ended_at") is None:
                    try:
                        os.killpg(entry["pid"], signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            for child in list(self._children.values()):
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self.refresh()
