"""Planner statistics of SQLite stores: with them a run's metric history is read through the run's index, not
through every run's points of that metric."""

from __future__ import annotations

import sqlite3

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.tracking.statistics import keep_statistics

# The filter of MLflow's get_metric_history
HISTORY = "SELECT * FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY timestamp, step, value"


def plan(path, run_id: str) -> str:
    with sqlite3.connect(path) as db:
        return " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {HISTORY}", (run_id, "train_loss")))


def log_runs(client: MlflowClient, experiment: str, count: int, steps: int = 20) -> list[str]:
    ids = []
    for _ in range(count):
        run_id = client.create_run(experiment).info.run_id
        client.log_batch(run_id, metrics=[Metric(key, 1.0, step, step) for step in range(steps)
                                          for key in ("train_loss", "lr", "tokens_seen")])
        ids.append(run_id)
    return ids


def test_a_run_history_is_read_through_the_run_index_once_statistics_are_written(store, tmp_path):
    client = MlflowClient(store)
    run_id, *_ = log_runs(client, client.create_experiment("stats"), 20)
    path = tmp_path / "mlflow.db"
    assert "sqlite_autoindex_metrics_1" in plan(path, run_id)  # as MLflow leaves it: every run's train_loss

    keep_statistics(store)
    assert "index_metrics_run_uuid_key_step (run_uuid=? AND key=?)" in plan(path, run_id)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(20))


def test_statistics_are_written_again_only_when_the_store_grew_tenfold(store, tmp_path):
    client = MlflowClient(store)
    experiment = client.create_experiment("growing")
    log_runs(client, experiment, 2)
    keep_statistics(store)

    def written() -> dict[str, str]:
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            return dict(db.execute("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'metrics'"))

    first = written()
    assert first["index_metrics_run_uuid_key_step"] == "120 60 20 1"  # rows, per run, per run and metric
    log_runs(client, experiment, 2)
    keep_statistics(store)
    assert written() == first
    log_runs(client, experiment, 16)
    keep_statistics(store)
    assert written()["index_metrics_run_uuid_key_step"] == "1200 60 20 1"


def test_other_stores_are_left_alone(tmp_path):
    keep_statistics(f"sqlite:///{tmp_path / 'not-yet.db'}")  # MLflow makes a new store, not this
    assert not (tmp_path / "not-yet.db").exists()
    keep_statistics("sqlite://")  # in memory
    keep_statistics("http://127.0.0.1:9/")  # a tracking server keeps its own database
