"""MLflow's system metrics as the lab starts them: a sample at the start and the end of every run."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline.tracking import start_system_metrics


def test_a_run_shorter_than_the_sampling_interval_still_has_system_metrics(store, monkeypatch):
    # MLflow's own thread samples only at the end of each interval and drops the one it is in when stopped
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "3600")
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("short")).info.run_id
    monitor = start_system_metrics(run_id, resumed=False)
    monitor.finish()
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        history = client.get_metric_history(run_id, key)
        assert sorted(point.step for point in history) == [0, 1], key
    assert all(point.value > 0 for point in client.get_metric_history(run_id, "system/system_memory_usage_megabytes"))

    # a resumed run goes on after the steps already there
    monitor = start_system_metrics(run_id, resumed=True)
    monitor.finish()
    steps = sorted(p.step for p in client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
    assert steps == [0, 1, 2, 3]
