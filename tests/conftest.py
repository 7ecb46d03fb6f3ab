"""Shared fixtures: the offline mirror, a temporary MLflow store and corpus cache, and a test-sized model."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.machine import usable_cpus
from pipeline.files import child_python_path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"

# Small enough that a training step takes milliseconds on a CPU; the 50,304-wide output layer stays.
TINY_MODEL = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--context-length", "32"]
TINY_MODEL_FIELDS = {"n_layer": 2, "n_head": 2, "n_embd": 32, "context_length": 32}


# `-n auto` (pyproject's addopts): a worker per core, at most this many; each worker's tests start torch and MLflow
# processes of their own, and more of them than this outgrow a laptop's memory for no gain.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
    return min(MAX_WORKERS, usable_cpus())


def pytest_collection_modifyitems(config, items):
    """The tests marked slow first (a stable sort: the rest keep their order), so that no long test is the last
    to start; `-m "not slow"` leaves them out for a quick check while editing."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    # a share of the cores each: OpenMP threads that outnumber the cores spin against each other. torch reads this
    # when first imported, so this file must not import torch: in-process runs would keep more threads than their
    # subprocesses and differ from them in the last bits (the exact-resume test compares the two)
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // workers)))
    # absolute, as the README's `export CORPUS_MIRROR=../shared/data` is not: tests run in folders of their own
    for name, default in (("CORPUS_MIRROR", SHARED_DATA), ("TIKTOKEN_CACHE_DIR", SHARED_DATA / "tiktoken-cache")):
        os.environ[name] = str(Path(os.environ.get(name) or default).resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """One corpus cache for the whole session: corpora are downloaded (copied) and tokenized once."""
    path = tmp_path_factory.mktemp("corpus-cache")
    os.environ["CORPUS_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once: MLflow's schema migrations cost 1-2 s per new file."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, corpus_cache, store_template) -> str:
    """A fresh MLflow SQLite store (a copy of the template; artifacts beside it) and a working folder of its own."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(store_template, tmp_path / "mlflow.db")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the Default experiment keeps its artifacts here too
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(tmp_path / "mlruns" / "0"),))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


def run_module(module: str, *args: str, cwd: Path | None = None, env: dict | None = None,
               timeout: int = 900, preexec_fn=None) -> subprocess.CompletedProcess:
    """`python -m module args` in a real subprocess, with the project importable (preexec_fn: see limited)."""
    full_env = {**os.environ, "PYTHONPATH": child_python_path(), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or PROJECT_DIR, env=full_env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def run_command(module: str, *args: str, cwd: Path | None = None, env: dict | None = None
                ) -> subprocess.CompletedProcess:
    """`python -m module args` run in this process (its click command through run_cli, as __main__ runs it), for
    checks of bad input: no second interpreter importing torch and MLflow. Stdout, stderr and the exit code come
    back as a subprocess's would; the working folder and environment are restored after."""
    import contextlib
    import importlib
    import io

    from pipeline.errors import run_cli

    command = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    code = 0
    try:
        os.environ.update(env or {})
        os.chdir(cwd or saved_cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(command, list(args))
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def limited(kind: int, limit: int):
    """A preexec_fn that sets a resource limit (resource.RLIMIT_FSIZE, RLIMIT_AS...) in the child: the full disk
    or the full memory of a real machine, without filling one."""
    def apply():
        resource.setrlimit(kind, (limit, limit))
    return apply


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Bad input: exit code 2, one line on stderr that starts with 'error:', no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def wait_for(check, timeout: float = 600, every: float = 0.5, what: str = "condition"):
    """check() until it returns something truthy; that value. The deadline is generous: a loaded 2-core machine
    is slow, and a test waits on a condition, never on a guess of how long it takes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# As run-tracking-server.sh starts it: without MLflow's GenAI job runner, seven Python processes (17 s of CPU)
# that the lab never uses.
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), ready to answer."""
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env={**os.environ, **NO_JOB_RUNNER}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return wait_until_listening(process, port)


def serve_model(uri: str, store: str, cwd: Path) -> tuple[subprocess.Popen, int]:
    """A real `mlflow models serve` of a logged model, from this virtualenv, answering on its port; stop it with
    stop_server."""
    port = free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    # as from the activated virtualenv: MLflow starts its `uvicorn` by name
    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store,
           "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", uri, "--env-manager", "local",
                                "-h", "127.0.0.1", "-p", str(port)], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return wait_until_listening(process, port), port


def post_invocation(port: int, body: dict) -> dict:
    """A served model's answer to body (an HTTPError for a refusal)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def wait_until_listening(process: subprocess.Popen, port: int) -> subprocess.Popen:
    """The server process once it accepts connections on 127.0.0.1:port; stopped, and the test failed, if it
    exits or does not listen within 600 s (a loaded 2-core machine is slow; a
    quiet one takes ~13 s)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.5)
    stop_server(process)
    raise AssertionError(f"the server did not start (exit code {process.returncode})")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server by its PID (its whole process group: the workers too)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited on its own, workers and all
        pass
    process.wait(timeout=300)


@pytest.fixture
def server(tmp_path, corpus_cache):
    """The URI of a real MLflow tracking server for this test, stopped afterwards."""
    port = free_port()
    process = start_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(process)
