"""What the dashboard keeps between polls: a finished run's curves and sample are read once, and read again when
the run is resumed; what it keeps is bounded."""

from __future__ import annotations

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.dashboard.app import create_app
from pipeline.dashboard.run_list import Recent


def steps(web, run_id: str) -> list[int]:
    response = web.get(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.json
    return [step for step, _ in response.json["curves"]["train_loss"]]


def test_a_finished_run_is_read_once_and_again_once_resumed(store, tmp_path):
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("kept")).info.run_id
    client.log_batch(run_id, metrics=[Metric("train_loss", 5.0 - step, 1000 + step, step) for step in (1, 2, 3)])
    client.log_text(run_id, "Once upon", "samples/step_000003.txt")
    client.set_terminated(run_id, "FINISHED")
    web = create_app(tracking_uri=store, state_dir=tmp_path / ".dashboard", workdir=tmp_path).test_client()
    assert steps(web, run_id) == [1, 2, 3]
    assert web.get(f"/api/runs/{run_id}").json["sample"] == {"step": 3, "text": "Once upon",
                                                             "path": "samples/step_000003.txt"}

    client.log_metric(run_id, "train_loss", 1.5, timestamp=1004, step=4)  # a finished run is never written to,
    assert steps(web, run_id) == [1, 2, 3]  # so the dashboard does not read it again

    client.update_run(run_id, status="RUNNING")  # what --resume does
    assert steps(web, run_id) == [1, 2, 3, 4]
    client.log_metric(run_id, "train_loss", 1.0, timestamp=1005, step=5)
    client.set_terminated(run_id, "FINISHED")  # a new end time: read once more
    assert steps(web, run_id) == [1, 2, 3, 4, 5]


def test_recent_keeps_only_the_most_recently_used():
    kept = Recent(2)
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # now "b" is the oldest
    kept.put("c", 3)
    assert (kept.get("a"), kept.get("b"), kept.get("c")) == (1, None, 3)
