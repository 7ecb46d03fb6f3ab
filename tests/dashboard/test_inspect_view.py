"""The dashboard's inspect view: a finished run's checkpoint looked at through the API (attention of every head
as numbers, head scores, the lens), refused for a run still going or bad input, and drawn by the page's own
script in a real headless Chromium."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline.dashboard.app import create_app
from pipeline.training.trainer import train
from tests.dashboard.test_dashboard import browser, server  # noqa: F401 (a real dashboard and Chromium)
from tests.tracking.test_models import TINY


def test_a_finished_run_is_inspected_through_the_api_and_drawn_by_the_page(
        store, tmp_path, server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    result = train(TINY)
    web = create_app(tracking_uri=store, state_dir=tmp_path / ".api", workdir=tmp_path).test_client()
    answer = web.post(f"/api/runs/{result.run_id}/inspect", json={"prompt": "A language model is"})
    assert answer.status_code == 200, answer.json
    data = answer.json
    T = len(data["tokens"])
    assert T == 4 and data["tokens"][1] == "\u2423language"
    assert len(data["attention"]) == 2 and len(data["attention"][0]) == 2  # layers, heads
    assert all(abs(sum(row) - 1) < 1e-3 for row in data["attention"][1][0]) and len(data["attention"][1][0]) == T
    assert data["attention"][0][1][0][1:] == [0.0] * (T - 1)  # the first token reads nothing after it
    assert len(data["induction"]) == 2 and 0 < data["chance"] < 1 and len(data["lens"]) == 2
    assert data["step"] == data["steps"][-1]

    for body, status, message in [({"prompt": "word " * 40}, 400, "context holds"), ({"prompt": 3}, 400, "expected"),
                                  ({"step": 1}, 400, "no checkpoint of step 1")]:
        refused = web.post(f"/api/runs/{result.run_id}/inspect", json=body)
        assert refused.status_code == status and message in refused.json["error"], (body, refused.json)
    assert web.post(f"/api/runs/{'0' * 32}/inspect", json={}).status_code == 404
    client = MlflowClient(store)
    going = client.create_run(client.get_run(result.run_id).info.experiment_id).info.run_id
    assert web.post(f"/api/runs/{going}/inspect", json={}).status_code == 409

    browser.get(server)
    card = WebDriverWait(browser, 600, 0.5).until(
        lambda d: d.find_elements(By.XPATH, f"//article[@data-run-id='{result.run_id}']"))[0]
    assert not browser.find_element(By.XPATH, f"//article[@data-run-id='{going}']").find_element(
        By.CSS_SELECTOR, "button.inspect").is_displayed()
    card.find_element(By.CSS_SELECTOR, "button.inspect").click()
    heads = WebDriverWait(browser, 600, 0.5).until(
        lambda d: card.find_elements(By.CSS_SELECTOR, "canvas.inspect-head"))
    assert len(heads) == 4  # 2 layers x 2 heads, the run's own prompt
    assert "induction score" in card.find_element(By.CSS_SELECTOR, ".inspect-scores").text
    assert "logit lens" in card.find_element(By.CSS_SELECTOR, ".inspect-scores").text
    browser.save_screenshot(str(tmp_path / "inspect-view.png"))
