"""The shared tracking server on a real PostgreSQL, run-tracking-server.sh's default: a throw-away cluster in a
temporary folder, a training run, a sweep and a report through the server, and all of it still there after the
server is stopped and started again."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_DIR, free_port, stop_server, wait_until_listening
from tests.test_server import train_sweep_and_report

DEBIAN_POSTGRES = Path("/usr/lib/postgresql")  # Debian keeps initdb and pg_ctl here, off PATH
SMALL_FILE = 1_000_000  # artifacts up to this size are compared byte for byte, larger ones by size


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: from PATH, else Debian's newest version; None when not installed."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    versions = [p.parent for p in DEBIAN_POSTGRES.glob("*/bin/initdb")]
    return max(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, default=None)


@pytest.fixture(scope="module")
def postgres_uri():
    """A database URI on a PostgreSQL cluster of its own for this module: initdb in a temporary folder, started on
    a free loopback port (as `nobody` when the tests run as root: PostgreSQL refuses root), removed afterwards."""
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver is in the server extra: "
                                           "pip install -c constraints.txt -e '.[test,server]'")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                    "apt-get install postgresql (.ci/run does)")
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="lab-postgres-"))  # not under pytest's root-only tmp folders
    (folder / "password").write_text("mlflow\n")
    as_owner = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in (folder, folder / "password"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        as_owner = ["runuser", "-u", "nobody", "--"]
    port = free_port()
    data, log = folder / "data", folder / "postgres.log"

    def pg(*args: str) -> None:
        done = subprocess.run([*as_owner, str(bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "PGPASSWORD": "mlflow"})
        assert done.returncode == 0, f"{args[0]}: {done.stderr}{log.read_text() if log.exists() else ''}"

    pg("initdb", "--pgdata", str(data), "--username", "mlflow", "--pwfile", str(folder / "password"),
       "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync")
    # fsync off: a throw-away cluster need not survive the machine crashing, only the tracking server restarting
    pg("pg_ctl", "--pgdata", str(data), "--log", str(log), "--wait", "--timeout", "600", "start", "--options",
       f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off")
    try:
        pg("createdb", "--host", "127.0.0.1", "--port", str(port), "--username", "mlflow", "mlflow")
        print(f"PostgreSQL {bindir.parent.name} ready in {time.monotonic() - started:.1f} s")
        yield f"postgresql://mlflow:mlflow@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "--pgdata", str(data), "--mode", "fast", "--wait", "stop")
        shutil.rmtree(folder)


def start_script_server(backend: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """./run-tracking-server.sh on a free port against backend; the process and its URL once it listens."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "a") as out:
        process = subprocess.Popen(
            ["bash", str(PROJECT_DIR / "run-tracking-server.sh"), "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)],
            env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        return wait_until_listening(process, port), f"http://127.0.0.1:{port}"
    except AssertionError as failed:
        raise AssertionError(f"{failed}; its log ends: {log.read_text()[-3000:]}") from None


def everything(server: str, folder: Path) -> dict:
    """Every experiment, run (info, params, tags), metric point and artifact (bytes, or size when large) the
    server holds."""
    client = MlflowClient(server)
    store = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            run_id = run.info.run_id
            store[run_id] = {
                "experiment": experiment.name, "name": run.info.run_name, "status": run.info.status,
                "start": run.info.start_time, "end": run.info.end_time, "params": run.data.params,
                "tags": run.data.tags,
                "metrics": {key: [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]
                            for key in run.data.metrics},
                "artifacts": artifacts(client, run_id, folder / run_id),
            }
    return store


def artifacts(client: MlflowClient, run_id: str, folder: Path, path: str = "") -> dict[str, str | int]:
    found = {}
    for entry in client.list_artifacts(run_id, path or None):
        if entry.is_dir:
            found.update(artifacts(client, run_id, folder, entry.path))
        elif entry.file_size > SMALL_FILE:
            found[entry.path] = entry.file_size
        else:
            local = client.download_artifacts(run_id, entry.path, str(folder))
            found[entry.path] = hashlib.sha256(Path(local).read_bytes()).hexdigest()
    return found


@pytest.mark.slow
def test_postgresql_store_keeps_every_run_metric_and_artifact_across_a_restart(postgres_uri, tmp_path,
                                                                            corpus_cache):
    log = tmp_path / "server.log"
    process, server = start_script_server(postgres_uri, tmp_path / "artifacts", log)
    try:
        (tmp_path / "work").mkdir()
        parent_run_id = train_sweep_and_report(server, tmp_path / "work")
        before = everything(server, tmp_path / "before")
    finally:
        stop_server(process)
    assert len(before) == 4 and before[parent_run_id]["artifacts"]  # the run, the sweep and its two children
    assert all(points for run in before.values() for points in run["metrics"].values())

    process, server = start_script_server(postgres_uri, tmp_path / "artifacts", log)
    try:
        after = everything(server, tmp_path / "after")
    finally:
        stop_server(process)
    assert after == before
    import psycopg2

    with psycopg2.connect(postgres_uri) as db, db.cursor() as rows:  # the runs are in PostgreSQL itself
        rows.execute("SELECT run_uuid FROM runs")
        assert {run_id for (run_id,) in rows.fetchall()} == set(before)
