"""The dashboard's "Train longer": a finished run resumed through the API with a larger budget."""

from __future__ import annotations

from pipeline.settings import TrainSettings
from pipeline.training.trainer import train
from tests.conftest import TINY_MODEL_FIELDS, wait_for
from tests.dashboard.test_dashboard import dashboard, detail  # noqa: F401 (the fixture)

FOUR_STEPS = TrainSettings(corpus="tiny", **TINY_MODEL_FIELDS, epochs=1000, max_steps=4, log_interval=1,
                           eval_interval=0, sample_interval=0, checkpoint_interval=0)


def test_a_finished_run_is_trained_longer_with_a_new_budget(dashboard, store):  # noqa: F811
    run_id = train(FOUR_STEPS).run_id
    web = dashboard.test_client()
    for body, message in [({}, "is finished: give a larger budget"), ({"lr": 1.0}, "takes only a new budget"),
                          ({"max_steps": -1}, "max_steps must be zero or more")]:
        refused = web.post(f"/api/runs/{run_id}/resume", json=body)
        assert refused.status_code == 400 and message in refused.json["error"], (body, refused.json)

    started = web.post(f"/api/runs/{run_id}/resume", json={"max_steps": 8})
    assert started.status_code == 201, started.json
    assert started.json["resumed"]
    done = wait_for(lambda: (d := detail(web, run_id))["status"] == "FINISHED" and d["last_step"] == 8 and d,
                    what="the run trained to step 8")
    assert done["total_steps"] == "8"
    assert [p[0] for p in done["curves"]["train_loss"]] == list(range(1, 9))
