"""Cost as the store grows: the launcher's run list and one run's curves over a store of 1,000 finished runs, a
report over a 100-run sweep, and the dashboard's memory while it polls.

    python bench/store_scale.py [--runs 1000] [--steps 2000] [--sweep-runs 100] [--poll-seconds 600]
                                [--poll-interval 2] [--store DIR] [--rebuild]

The store (built once, ~8 min, then reused from DIR, default $TMPDIR/lab-bench/store-scale-...): an MLflow
SQLite store of --runs finished runs in the `pretraining` experiment, each with the trainer's params and tags, a
sample artifact, and --steps logged steps of the six metrics the trainer logs at every step on a CPU (val_loss and
val_perplexity every 100 steps): 12 million metric rows, 3 GB. --sweep-runs of them are the children of one sweep
(lr x seed), logged with MlflowClient.log_batch 1,000 points a call as the trainer's buffer logs them; the other
runs' metric rows are copied from the first child in SQL (see build_store). Each measurement starts from the store
as MLflow leaves it: the planner statistics the lab writes (pipeline/tracking/statistics.py) are removed first.

Measured in this process, one after the other, the median of --repeats calls each:
  reference   a bare MlflowClient.search_runs of the page the launcher shows (the 30 newest runs)
  run list    GET /api/runs?limit=30 of the dashboard's Flask app (pipeline.dashboard.app)
  curves      GET /api/runs/RUN_ID, a different finished run each call (the first time a card opens)
  report      runs_of_parent + build_report over the sweep's children, into a temporary folder (once)
Then `python -m pipeline.dashboard` on the store, polled as its page polls (the run list every --poll-interval
seconds, and a run's detail whenever its status, end time or diagnosis changes) for --poll-seconds; its RSS is
read from /proc after every poll.

Targets: the run list and the curves each under 1 s and at most 2x the reference; the report under 30 s; the
dashboard's RSS at the end within 5% of its RSS after the first tenth of the polling.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import benchlib

PAGE = 30  # the run list's page: dashboard.js asks for /api/runs?limit=30
MAX_SECONDS = 1.0
MAX_RATIO = 2.0
MAX_REPORT_SECONDS = 30.0
MAX_RSS_GROWTH = 0.05
EXPERIMENT = "pretraining"
STEP_METRICS = ("train_loss", "lr", "grad_norm", "tokens_per_sec", "tokens_seen", "mfu")
EVAL_EVERY = 100
BATCH = 1000  # MLflow's most metrics in one log_batch
HOUR_MS = 3_600_000  # runs start an hour apart
COMPLETE = "COMPLETE"
FORMAT = "v2"  # bump when the store's contents change: a cached store of another format is rebuilt


# ---------------------------------------------------------------- the store


def build_store(folder: Path, runs: int, steps: int, sweep_runs: int) -> None:
    """runs finished runs in folder/mlflow.db (artifacts in folder/artifacts); the file COMPLETE is written last,
    so an interrupted build is never reused.

    The sweep's children are logged point by point with log_batch, as the trainer's buffer logs them. Every other
    run is made through MLflow too (run, params, tags, sample, end), but its metric rows are copied in SQL from
    the first child, shifted in time: logging 12,000 points through MLflow costs 2-4 s a run on a 2-core machine,
    which would make the build an hour, and the rows are the same either way."""
    from mlflow.tracking import MlflowClient

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment(EXPERIMENT, artifact_location=str(folder / "artifacts"))
    first_sweep = (runs - sweep_runs) // 2  # the sweep sits in the middle: the newest page is single runs
    t0 = int(time.time() * 1000) - runs * HOUR_MS
    parent = client.create_run(experiment, start_time=t0 + first_sweep * HOUR_MS - 1000, run_name="sweep-lr-seed",
                               tags={"lab.role": "sweep", "lab.sweep": "lr-seed"}).info.run_id
    start = time.perf_counter()
    logged = [_log_run(client, experiment, first_sweep + point, t0, steps, point, parent) for point in range(sweep_runs)]
    client.set_terminated(parent, "FINISHED", end_time=t0 + (first_sweep + sweep_runs) * HOUR_MS)
    print(f"   logged the sweep's {sweep_runs} runs in {time.perf_counter() - start:.0f} s", flush=True)
    copies = [(index, _log_run(client, experiment, index, t0, steps, None, None)) for index in range(runs)
              if not first_sweep <= index < first_sweep + sweep_runs]
    with sqlite3.connect(folder / "mlflow.db") as db:
        for index, run_id in copies:
            shift = (index - first_sweep) * HOUR_MS
            for table in ("metrics", "latest_metrics"):
                db.execute(f"INSERT INTO {table} (key, value, timestamp, step, is_nan, run_uuid) SELECT key, value, "
                           f"timestamp + ?, step, is_nan, ? FROM {table} WHERE run_uuid = ?", (shift, run_id, logged[0]))
    print(f"   made the other {len(copies)} runs", flush=True)
    (folder / COMPLETE).write_text(f"{runs} runs x {steps} steps\n")


def _log_run(client, experiment: str, index: int, t0: int, steps: int, point: int | None, parent: str | None) -> str:
    """Run number index (a sweep child when point is not None, with its metrics); its id."""
    from mlflow.entities import Metric, Param

    from pipeline.settings import TrainSettings

    rng = random.Random(index)
    start_ms = t0 + index * HOUR_MS
    lr = 10 ** rng.uniform(-4, -2) if point is None else 10 ** (-4 + (point // 10) * 2 / 9)
    seed = index if point is None else point % 10
    name = f"run-{index:04d}" if point is None else f"lr-seed-{point:03d}"
    tags = {"lab.config": "nano", "lab.corpus": "verdict", "diagnosis": "healthy",
            "diagnosis_detail": "val loss still falling at the end"}
    if parent:
        tags.update({"lab.role": "sweep_child", "lab.sweep": "lr-seed", "mlflow.parentRunId": parent})
    run_id = client.create_run(experiment, start_time=start_ms, run_name=name, tags=tags).info.run_id
    settings = {k: ("" if v is None else str(v)) for k, v in vars(TrainSettings()).items()}
    params = {**settings, "lr": f"{lr:.6g}", "seed": str(seed), "max_steps": str(steps), "total_steps": str(steps),
              "tokens_per_step": "4096", "n_params_non_embedding": "7077888"}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])  # 40 of MLflow's 100 a call

    floor = 3.0 + 2 * abs(math.log10(lr) + 2.7) + rng.uniform(-0.05, 0.05)  # best near lr 2e-3
    metrics = []
    for step in range(1, steps + 1) if point is not None else ():
        at = start_ms + step * 500
        loss = floor + 7.8 * math.exp(-step / 300) + rng.gauss(0, 0.05)
        values = (loss, lr * min(1.0, step / 100), 1.0 + rng.random(), 8000.0 + rng.gauss(0, 200),
                  float(step * 4096), 0.02)
        metrics += [Metric(key, value, at, step) for key, value in zip(STEP_METRICS, values)]
        if step % EVAL_EVERY == 0 or step == steps:
            val = floor + 0.1 + 7.8 * math.exp(-step / 300)
            metrics += [Metric("val_loss", val, at, step), Metric("val_perplexity", math.exp(val), at, step)]
    for chunk in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[chunk:chunk + BATCH])
    client.log_text(run_id, f"Once upon a time ({name})", f"samples/step_{steps:06d}.txt")
    client.set_terminated(run_id, "FINISHED", end_time=start_ms + steps * 500 + 1000)
    return run_id


def _forget_statistics(folder: Path) -> None:
    """The store as MLflow leaves it: without the planner statistics an earlier run of the lab wrote into it."""
    with sqlite3.connect(folder / "mlflow.db") as db:
        if db.execute("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone():
            db.execute("DELETE FROM sqlite_stat1")


def open_store(args) -> Path:
    folder = Path(args.store or Path(tempfile.gettempdir()) / "lab-bench"
                  / f"store-scale-{FORMAT}-{args.runs}x{args.steps}-{args.sweep_runs}")
    if args.rebuild:
        shutil.rmtree(folder, ignore_errors=True)
    if (folder / COMPLETE).exists():
        print(f"   the store: {folder} (built before; --rebuild to build it again)")
        _forget_statistics(folder)
        return folder
    print(f"   building the store in {folder}: {args.runs} runs x {args.steps} steps ...", flush=True)
    seconds, _ = benchlib.timed(build_store, folder, args.runs, args.steps, args.sweep_runs)
    print(f"   built in {seconds:.0f} s")
    return folder


# ---------------------------------------------------------------- measurements


def measure_requests(uri: str, repeats: int) -> dict[str, list[float]]:
    """Seconds of each call: the bare search, the run list, and one run's detail (a different run each time),
    interleaved so that a burst of other work on the machine slows all three alike. One warm-up call each first."""
    from mlflow.tracking import MlflowClient

    from pipeline.dashboard.app import create_app
    from pipeline.tracking.statistics import keep_statistics

    seconds, _ = benchlib.timed(keep_statistics, uri)  # what the lab's first client on the store does
    print(f"   planner statistics written in {seconds * 1000:.0f} ms")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    oldest = [r.info.run_id for r in client.search_runs([experiment], order_by=["attributes.start_time ASC"],
                                                        max_results=repeats + 1)]
    times = {"reference": [], "run list": [], "curves": []}
    with tempfile.TemporaryDirectory(prefix="store-scale-state") as state:
        web = create_app(tracking_uri=uri, state_dir=state, workdir=state).test_client()
        for index, run_id in enumerate(oldest):
            bare, found = benchlib.timed(client.search_runs, [experiment], order_by=["attributes.start_time DESC"],
                                         max_results=PAGE)
            listed, page = benchlib.timed(web.get, f"/api/runs?limit={PAGE}")
            shown, detail = benchlib.timed(web.get, f"/api/runs/{run_id}")
            assert page.status_code == 200 and len(page.json["runs"]) == len(found) == PAGE, page.json
            assert detail.status_code == 200 and detail.json["curves"]["train_loss"], detail.json
            if index:  # the first round warms up
                for name, seconds in zip(times, (bare, listed, shown)):
                    times[name].append(seconds)
    return times


def measure_report(uri: str, sweep_runs: int) -> float:
    """Seconds to load the sweep's children and write its report (plots and tables) into a temporary folder."""
    from pipeline import tracking
    from pipeline.analysis.comparison import build_report
    from pipeline.analysis.curves import runs_of_parent

    client = tracking.client_for(uri)  # as `python -m pipeline.report` makes it
    [parent] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                  filter_string="tags.`lab.role` = 'sweep'")
    with tempfile.TemporaryDirectory(prefix="store-scale-report") as out:
        seconds, report = benchlib.timed(lambda: build_report(client, runs_of_parent(client, parent.info.run_id),
                                                              Path(out)))
    assert len(report.table) == sweep_runs, len(report.table)
    return seconds


def measure_polling(uri: str, seconds: float, interval: float) -> list[tuple[float, int]]:
    """(seconds since the start, RSS in bytes) of `python -m pipeline.dashboard` after each poll, polled as
    dashboard.js polls: the run list, and a run's detail when its status, end time or diagnosis changed."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="store-scale-dashboard") as state:
        env = {**benchlib.offline_environment(), "MLFLOW_TRACKING_URI": uri}
        server = subprocess.Popen([sys.executable, "-m", "pipeline.dashboard", "--port", str(port), "--state-dir",
                                   state], cwd=state, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_for(base, server)
            shown: dict[str, str] = {}
            samples = []
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                for run in _get(f"{base}/api/runs?limit={PAGE}")["runs"]:
                    key = f"{run['status']}|{run['end_time']}|{run['diagnosis']}"
                    if run["status"] == "RUNNING" or shown.get(run["run_id"]) != key:
                        _get(f"{base}/api/runs/{run['run_id']}")
                        shown[run["run_id"]] = key
                samples.append((time.monotonic() - start, _rss(server.pid)))
                time.sleep(interval)
        finally:
            server.terminate()
            server.wait(timeout=60)
    return samples


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as answer:
        return json.load(answer)


def _wait_for(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the dashboard exited: {server.stderr.read().decode()[-2000:]}")
        try:
            _get(f"{base}/api/runs?limit=1")
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the dashboard did not answer within 300 s")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sweep-runs", type=int, default=100)
    parser.add_argument("--store", help="where the built store is kept (default: under the temp folder)")
    parser.add_argument("--rebuild", action="store_true", help="build the store again even if it was built")
    parser.add_argument("--repeats", type=int, default=7, help="calls of each request (the median is compared)")
    parser.add_argument("--poll-seconds", type=float, default=600.0, help="how long the dashboard is polled")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="seconds between polls (the page's 2 s)")
    args = parser.parse_args()
    benchlib.offline_environment()
    benchlib.quiet_logging()
    benchlib.header(f"store scale: {args.runs} runs x {args.steps} steps, a sweep of {args.sweep_runs}")
    uri = f"sqlite:///{open_store(args) / 'mlflow.db'}"

    raw = measure_requests(uri, args.repeats)
    times = {name: benchlib.median(values) for name, values in raw.items()}
    for name, values in raw.items():
        print(f"   {name:10s} {times[name] * 1000:8.1f} ms median ({benchlib.spread([v * 1000 for v in values])} ms)"
              + ("" if name == "reference" else f"   {times[name] / times['reference']:.2f}x the bare search"))
    report = measure_report(uri, args.sweep_runs)
    print(f"   report of the {args.sweep_runs}-run sweep: {report:.1f} s")
    samples = measure_polling(uri, args.poll_seconds, args.poll_interval)
    settled = next(rss for at, rss in samples if at >= args.poll_seconds / 10)
    final, peak = samples[-1][1], max(rss for _, rss in samples)
    growth = final / settled - 1
    print(f"   dashboard RSS over {len(samples)} polls in {samples[-1][0]:.0f} s: {samples[0][1] / 2**20:.1f} MB "
          f"after the first, {settled / 2**20:.1f} MB after a tenth of the time, {final / 2**20:.1f} MB at the end "
          f"(peak {peak / 2**20:.1f} MB): {growth:+.1%}")

    return benchlib.verdict([
        (f"run list under {MAX_SECONDS:g} s and at most {MAX_RATIO:g}x the bare search",
         times["run list"] < MAX_SECONDS and times["run list"] <= MAX_RATIO * times["reference"]),
        (f"one run's curves under {MAX_SECONDS:g} s and at most {MAX_RATIO:g}x the bare search",
         times["curves"] < MAX_SECONDS and times["curves"] <= MAX_RATIO * times["reference"]),
        (f"report of a {args.sweep_runs}-run sweep under {MAX_REPORT_SECONDS:g} s", report < MAX_REPORT_SECONDS),
        (f"dashboard RSS flat while polling (within {MAX_RSS_GROWTH:.0%})", growth <= MAX_RSS_GROWTH),
    ], result=f"list {times['run list'] / times['reference']:.2f}x, curves "
              f"{times['curves'] / times['reference']:.2f}x, report {report:.1f} s, RSS {growth:+.1%}")


if __name__ == "__main__":
    sys.exit(main())
