"""What a learner sees in the MLflow UI: a finished tiny run's page, opened through the link the trainer prints,
in a real headless Chromium against a real `mlflow ui`: its overview, a loss chart, the attention images, the
samples and the system metrics. Screenshots are saved beside the test's files."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.tracking import run_ui_url
from pipeline.training.trainer import train
from tests.conftest import NO_JOB_RUNNER, free_port, stop_server, wait_until_listening
from tests.dashboard.test_dashboard import browser  # noqa: F401 (the headless Chromium fixture)
from tests.tracking.test_models import TINY

WAIT = 600  # seconds: a loaded 2-core machine draws MLflow's pages slowly; a quiet one takes seconds

CHART_DRAWN = """
const title = [...document.querySelectorAll('*')].find(e => e.children.length === 0 && e.textContent === arguments[0]);
if (!title) return 0;
title.scrollIntoView({block: 'start'});  // charts are drawn when in view, and the screenshot shows this one
let card = title;
while (card && !card.querySelector('.scatterlayer')) card = card.parentElement;
if (!card) return 0;
return Math.max(0, ...[...card.querySelectorAll('.scatterlayer path.js-line')].map(p => (p.getAttribute('d') || '').length));
"""

IMAGE_SHOWN = """
const title = [...document.querySelectorAll('*')].find(e => e.children.length === 0 && e.textContent === arguments[0]);
if (!title) return 0;
title.scrollIntoView({block: 'start'});
return [...document.querySelectorAll('img')].filter(i => i.src.includes('get-artifact') && i.naturalWidth > 0).length;
"""


@pytest.mark.slow
def test_a_finished_runs_page_shows_its_curves_samples_dataset_system_metrics_and_model(
        store, tmp_path, monkeypatch, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # samples within a tiny run
    result = train(replace(TINY, sample_interval=10, sample_tokens=8))
    port = free_port()
    env = {**os.environ, **NO_JOB_RUNNER}  # as the README's command
    ui = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store,
                           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_listening(ui, port)
        run_page = result.ui_url.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}")
        assert run_page == run_ui_url("1", result.run_id, base=f"http://127.0.0.1:{port}")
        page = run_page.split("?")[0]
        wait = WebDriverWait(browser, WAIT, 0.5)

        def body() -> str:
            return browser.find_element(By.TAG_NAME, "body").text

        def shot(name: str) -> None:
            path = tmp_path / f"mlflow-{name}.png"
            browser.save_screenshot(str(path))
            print(f"screenshot: {path}")
            assert path.stat().st_size > 10_000

        # Overview, in the "Model training" view: the dataset input and the logged model at its step
        browser.get(run_page)
        wait.until(lambda d: "Datasets" in body() and "Logged models (1)" in body())
        text = body()
        assert "Model metrics" in text and "System metrics" in text  # the training view's tabs, not GenAI's
        assert "tiny (" in text and "Training" in text
        shot("overview")

        # the train_loss chart drawn: a line with points, not a spinner
        browser.get(page + "/model-metrics?workflowType=machine_learning")
        search = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[placeholder*='Search metric']"))[0]
        search.send_keys("train_loss", Keys.ENTER)
        wait.until(lambda d: d.execute_script(CHART_DRAWN, "train_loss") > 100)
        shot("train-loss")

        # the attention images: the image view opens at step 0, which training inspects before its first step
        browser.get(page + "/model-metrics?workflowType=machine_learning")
        search = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[placeholder*='Search metric']"))[0]
        search.send_keys("attention", Keys.ENTER)
        wait.until(lambda d: d.execute_script(IMAGE_SHOWN, "attention/layer_0") > 0)
        shot("attention")

        # the samples table, step by step
        browser.get(page + "/artifacts/samples.json?workflowType=machine_learning")
        wait.until(lambda d: "generation" in body() and body().count("A language model") >= 2)
        shot("samples")

        # system metrics: CPU utilisation over time
        browser.get(page + "/system-metrics?workflowType=machine_learning")
        wait.until(lambda d: d.execute_script(CHART_DRAWN, "cpu_utilization_percentage") > 0)
        shot("system-metrics")
    finally:
        stop_server(ui)
