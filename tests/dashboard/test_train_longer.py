"""The dashboard's "Train longer": a finished run resumed through the API with a larger budget."""

from __future__ import annotations

import os

from mlflow.tracking import MlflowClient

from tests.conftest import TINY_MODEL, run_module, wait_for
from tests.dashboard.test_dashboard import browser, dashboard, detail, server  # noqa: F401 (fixtures)

FOUR_STEPS = ["--corpus", "tiny", *TINY_MODEL, "--max-steps", "4", "--log-interval", "1", "--eval-interval", "0",
              "--sample-interval", "0", "--checkpoint-interval", "0"]


def trained_longer_or_failed(web, run_id: str):
    view = detail(web, run_id)
    process = view.get("process") or {}
    assert process.get("exit_code") in (None, 0), (process, view.get("error"))
    return view["status"] == "FINISHED" and view["last_step"] == 8 and view


def test_a_finished_run_is_trained_longer_with_a_new_budget(dashboard, store):  # noqa: F811
    # a trainer of its own: a run trained in this process would name it, alive, as its trainer
    trained = run_module("pipeline.train", *FOUR_STEPS, cwd=os.getcwd())
    assert trained.returncode == 0, trained.stderr
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    run_id = run.info.run_id
    web = dashboard.test_client()
    for body, message in [({}, "is finished: give a larger budget"), ({"lr": 1.0}, "takes only a new budget"),
                          ({"max_steps": -1}, "max_steps must be zero or more")]:
        refused = web.post(f"/api/runs/{run_id}/resume", json=body)
        assert refused.status_code == 400 and message in refused.json["error"], (body, refused.json)

    started = web.post(f"/api/runs/{run_id}/resume", json={"max_steps": 8})
    assert started.status_code == 201, started.json
    assert started.json["resumed"]
    done = wait_for(lambda: trained_longer_or_failed(web, run_id), what="the run trained to step 8")
    assert done["total_steps"] == "8"
    assert [p[0] for p in done["curves"]["train_loss"]] == list(range(1, 9))


def test_the_cards_train_longer_button_extends_a_finished_run(store, server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    trained = run_module("pipeline.train", *FOUR_STEPS, "--run-name", "four", cwd=os.getcwd())
    assert trained.returncode == 0, trained.stderr
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    browser.get(server)
    card = WebDriverWait(browser, 600, 0.5).until(
        lambda d: d.find_elements(By.XPATH, f"//article[@data-run-id='{run.info.run_id}']"))[0]
    assert not card.find_element(By.CSS_SELECTOR, "button.resume").is_displayed()  # finished: only longer
    card.find_element(By.CSS_SELECTOR, "input.longer-steps").send_keys("6")
    card.find_element(By.CSS_SELECTOR, "button.longer").click()
    WebDriverWait(browser, 600, 0.5).until(
        lambda d: card.find_element(By.CSS_SELECTOR, ".action-result").text == "training longer")
    wait_for(lambda: (r := client.get_run(run.info.run_id)).info.status == "FINISHED"
             and r.data.tags.get("lab.total_steps") == "6", what="the run trained to step 6")
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == [1, 2, 3, 4, 5, 6]
