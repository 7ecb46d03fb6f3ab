"""The dashboard's Register button and its API: a finished run's model into the Model Registry."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline.dashboard.app import create_app
from pipeline.training.trainer import train
from tests.dashboard.test_dashboard import browser, server  # noqa: F401 (a real dashboard and Chromium)
from tests.tracking.test_models import TINY


def test_a_finished_runs_model_is_registered_from_the_api_and_the_button(
        store, tmp_path, server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    result = train(TINY)
    client = MlflowClient(store)
    web = create_app(tracking_uri=store, state_dir=tmp_path / ".api", workdir=tmp_path).test_client()
    listed = web.get("/api/runs").json["runs"]
    assert listed[0]["model_id"] == result.model_id
    assert listed[0]["links"]["run"].endswith("?workflowType=machine_learning")

    done = web.post(f"/api/runs/{result.run_id}/register", json={"name": "tiny-gpt"})
    assert done.status_code == 201 and done.json == {"name": "tiny-gpt", "version": 1}
    for body, status, message in [({"name": "a/b"}, 400, "registered model's name"), ({}, 400, "expected a JSON"),
                                  ({"name": " "}, 400, "registered model's name")]:
        refused = web.post(f"/api/runs/{result.run_id}/register", json=body)
        assert refused.status_code == status and message in refused.json["error"], (body, refused.json)
    assert web.post(f"/api/runs/{'0' * 32}/register", json={"name": "x"}).status_code == 404
    bare = client.create_run(client.get_run(result.run_id).info.experiment_id).info.run_id
    assert "has no logged model" in web.post(f"/api/runs/{bare}/register", json={"name": "x"}).json["error"]

    # the card's button: a name, a click, the version it made
    browser.get(server)
    card = WebDriverWait(browser, 600, 0.5).until(
        lambda d: d.find_elements(By.XPATH, f"//article[@data-run-id='{result.run_id}']"))[0]
    assert card.find_element(By.CSS_SELECTOR, "a.run-link").get_attribute("href").endswith(
        "?workflowType=machine_learning")
    card.find_element(By.CSS_SELECTOR, "input.register-name").send_keys("tiny-gpt")
    card.find_element(By.CSS_SELECTOR, "button.register").click()
    WebDriverWait(browser, 600, 0.5).until(
        lambda d: card.find_element(By.CSS_SELECTOR, ".action-result").text == "registered as tiny-gpt version 2")
    assert client.get_model_version("tiny-gpt", "2").source == f"models:/{result.model_id}"
    bare_card = browser.find_element(By.XPATH, f"//article[@data-run-id='{bare}']")
    assert not bare_card.find_element(By.CSS_SELECTOR, ".register-box").is_displayed()
