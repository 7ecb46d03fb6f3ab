"""The launcher dashboard: its JSON API against a real SQLite store and real training processes, the page in a
real headless Chromium, and run-dashboard.sh starting and stopping both servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import checkpoints
from pipeline.dashboard.app import create_app
from pipeline.files import child_python_path
from tests.conftest import PROJECT_DIR, TINY_MODEL_FIELDS, free_port, run_command, wait_for

# A run that finishes in a few seconds, with a point every step and a sample every 5 steps.
TINY_RUN = {"corpus": "tiny", **TINY_MODEL_FIELDS, "epochs": 1000, "max_steps": 20, "lr": 1e-2, "warmup_steps": 2,
            "log_interval": 1, "eval_interval": 5, "sample_interval": 5, "sample_tokens": 8,
            "checkpoint_interval": 0}
LONG_RUN = {**TINY_RUN, "max_steps": 100_000, "sample_interval": 0, "eval_interval": 0, "run_name": "long"}


@pytest.fixture
def dashboard(store, tmp_path):
    app = create_app(tracking_uri=store, state_dir=tmp_path / ".dashboard", workdir=tmp_path)
    app.testing = True
    yield app
    app.extensions["lab_dashboard"].registry.kill_all()


def detail(client, run_id: str) -> dict:
    response = client.get(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.json
    return response.json


# --- (a) the JSON API, real store, real processes -------------------------------------------------------------


def test_a_run_started_through_the_api_shows_its_curve_and_sample_and_another_is_stopped(dashboard, store, tmp_path):
    web = dashboard.test_client()
    started = web.post("/api/runs", json=TINY_RUN)
    assert started.status_code == 201, started.json
    tiny_id = started.json["run_id"]
    assert started.json["name"] == "nano-tiny-lr1e-2"
    assert started.json["links"]["run"].startswith("http://127.0.0.1:5000/#/experiments/")
    long = web.post("/api/runs", json=LONG_RUN)
    assert long.status_code == 201, long.json
    long_id = long.json["run_id"]
    # the trainer, not the page, reads a corpus path: this one fails before it starts its run
    broken = web.post("/api/runs", json={**TINY_RUN, "corpus": "no/such/file.txt", "run_name": "broken"})
    assert broken.status_code == 201, broken.json
    broken_id = broken.json["run_id"]

    # the run exists at once (the dashboard made it), newest first, with the process that trains it
    listed = web.get("/api/runs").json
    assert [r["run_id"] for r in listed["runs"]] == [broken_id, long_id, tiny_id]
    assert listed["runs"][1]["status"] == "RUNNING" and listed["runs"][1]["stoppable"]
    assert listed["runs"][1]["process"]["pid"] == long.json["pid"]

    # the curve and the first sample appear while it trains, then it finishes
    seen = wait_for(lambda: (d := detail(web, tiny_id))["curves"]["train_loss"] and d["sample"] and d,
                    what="the tiny run's first loss points and sample")
    assert seen["sample"]["text"].startswith("A language model")
    assert seen["sample"]["step"] % 5 == 0
    done = wait_for(lambda: (d := detail(web, tiny_id))["status"] == "FINISHED" and d, what="the tiny run to finish")
    assert [p[0] for p in done["curves"]["train_loss"]] == list(range(1, 21))
    assert [p[0] for p in done["curves"]["val_loss"]] == [0, 5, 10, 15, 20]
    assert done["curves"]["train_loss"][-1][1] < done["curves"]["train_loss"][0][1]
    assert done["sample"]["step"] == 20 and done["last_step"] == 20
    assert done["metrics"]["tokens_per_sec"] > 0
    assert done["total_steps"] == "20"

    # a trainer that ended without ending its run: the dashboard ends it FAILED, with the trainer's error line
    failed = wait_for(lambda: (d := detail(web, broken_id))["status"] != "RUNNING" and d, what="the broken run")
    assert failed["status"] == "FAILED", failed
    assert failed["error"] == "corpus path not found: no/such/file.txt"
    assert failed["process"]["exit_code"] == 2

    # a dashboard started again on the same folder finds the long run in its registry, and stops it
    wait_for(lambda: detail(web, long_id)["process"]["last_line"].startswith("step "), what="the long run's steps")
    assert "still being trained" in web.post(f"/api/runs/{long_id}/resume").json["error"]
    restarted = create_app(tracking_uri=store, state_dir=tmp_path / ".dashboard", workdir=tmp_path).test_client()
    stop = restarted.post(f"/api/runs/{long_id}/stop")
    assert stop.status_code == 202, stop.json
    again = restarted.post(f"/api/runs/{long_id}/stop")  # no second SIGINT: that would skip the checkpoint
    assert again.status_code == 202 and again.json["already_stopping"]
    stopped = wait_for(lambda: (d := detail(web, long_id))["status"] == "KILLED" and d, what="the long run KILLED")
    client = MlflowClient(store)
    assert client.list_artifacts(long_id, "checkpoints"), "a checkpoint artifact"
    assert checkpoints.load_from_run(long_id)["step"] == stopped["last_step"] >= 1
    wait_for(lambda: not detail(web, long_id)["process"]["running"], what="the trainer to exit")
    view = detail(web, long_id)
    assert view["process"]["exit_code"] == 130 and not view["stoppable"]
    assert web.post(f"/api/runs/{long_id}/stop").status_code == 409
    assert (tmp_path / ".dashboard" / "processes.json").is_file()


def test_bad_settings_get_the_cli_message_and_stop_signals_only_its_own_processes(dashboard, store, tmp_path):
    web = dashboard.test_client()
    cli = run_command("pipeline.train", "--corpus", "tiny", "--lr", "0", cwd=tmp_path)
    cli_line = cli.stderr.strip().splitlines()[-1]
    api = web.post("/api/runs", json={**TINY_RUN, "lr": 0})
    assert api.status_code == 400
    assert f"error: {api.json['error']}" == cli_line == "error: lr must be a positive number, got 0.0"

    for fields, message in [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"config": "huge"}, "unknown config 'huge' (known: nano, small, medium, or a .yaml file)"),
        ({"n_embd": 33, "n_head": 2}, "n_embd (33) must be a multiple of n_head (2)"),
        ({"corpus": " "}, "corpus must not be empty"),
        ({"lr": None}, "settings: 'lr' must be float, got None"),
        ({"max_tokens": -1}, "max_tokens must be zero or more, got -1"),
        ({"n_layers": 2}, "settings: unknown setting 'n_layers'"),
        ({"lr": "fast"}, "settings: 'lr' must be float, got 'fast'"),
        ({"config": "/etc/model.yaml"}, "the dashboard trains the named configs"),
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd' (known: adamw, muon)"),
        ({"optimizer": "muon", "muon_lr": -1}, "muon_lr must be a positive number, got -1.0"),
    ]:
        response = web.post("/api/runs", json={**TINY_RUN, **fields})
        assert response.status_code == 400, fields
        assert response.json["error"].startswith(message), (fields, response.json)
    assert web.post("/api/runs", json=[1, 2]).status_code == 400

    # the HTML form: the same line on the page, HTTP 400, the form kept
    page = web.post("/runs", data={"config": "nano", "corpus": "tiny", "lr": "0", "epochs": "1"})
    assert page.status_code == 400
    assert b"lr must be a positive number, got 0.0" in page.data
    # nothing was started, nothing was written to the store
    assert web.get("/api/runs").json["runs"] == []
    assert not (tmp_path / ".dashboard" / "processes.json").exists()

    # Stop signals only processes of the dashboard's own registry
    client = MlflowClient(store)
    outside = client.create_run(client.create_experiment("elsewhere")).info.run_id
    response = web.post(f"/api/runs/{outside}/stop")
    assert response.status_code == 404 and "not started by this dashboard" in response.json["error"]
    assert web.post("/api/runs/..%2F..%2Fetc/stop").status_code == 404
    assert web.post("/api/sweeps/sweep-nope/stop").status_code == 404
    assert client.get_run(outside).info.status == "RUNNING"
    listed = web.get("/api/runs").json["runs"]
    assert [r["run_id"] for r in listed] == [outside] and not listed[0]["stoppable"]
    # requests from other sites or by other host names are refused
    assert web.post("/api/runs", json=TINY_RUN, headers={"Origin": "http://evil.example"}).status_code == 403
    assert web.get("/api/runs", headers={"Host": "evil.example"}).status_code == 403


def test_a_sweep_is_checked_started_as_the_cli_and_stopped_like_ctrl_c(store, tmp_path):
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(
        "sweeps:\n  two:\n    description: two long tiny runs\n    base: {corpus: tiny, n_layer: 2, n_head: 2,"
        " n_embd: 32, context_length: 32, epochs: 1000, max_steps: 100000, log_interval: 1, sample_interval: 0,"
        " eval_interval: 0}\n    method: grid\n    parameters: {lr: {values: [0.01, 0.003]}}\n")
    app = create_app(tracking_uri=store, state_dir=tmp_path / ".dashboard", workdir=tmp_path,
                     experiments_path=experiments)
    web = app.test_client()
    try:
        assert b"two long tiny runs" in web.get("/").data
        unknown = web.post("/api/sweeps", json={"name": "nope", "workers": 1})
        assert unknown.status_code == 400 and unknown.json["error"] == "unknown sweep 'nope' (known: two)"
        workers = web.post("/api/sweeps", json={"name": "two", "workers": 0})
        assert workers.status_code == 400 and workers.json["error"] == "workers must be at least 1, got 0"
        started = web.post("/api/sweeps", json={"name": "two", "workers": 1})
        assert started.status_code == 201, started.json
        sweep_id = started.json["id"]

        def training():
            sweeps = web.get("/api/runs").json["sweeps"]
            return sweeps and any("] step " in line for line in sweeps[0]["log_tail"])

        wait_for(training, what="the sweep's first run to train")
        first = [r for r in web.get("/api/runs").json["runs"] if r["role"] == "sweep_child"][-1]  # oldest: point 1
        assert first["sweep"] == "two" and not first["stoppable"]  # a sweep's runs are stopped through it
        assert web.post(f"/api/sweeps/{sweep_id}/stop").status_code == 202

        def ended():
            sweeps = web.get("/api/runs").json["sweeps"]
            return sweeps and not sweeps[0]["running"] and sweeps[0]

        sweep = wait_for(ended, what="the sweep to end")
        assert sweep["id"] == sweep_id and sweep["exit_code"] == 130, sweep
        runs = web.get("/api/runs").json["runs"]
        assert {r["role"]: r["status"] for r in runs} == {"sweep": "KILLED", "sweep_child": "KILLED"}
        assert len([r for r in runs if r["role"] == "sweep_child"]) == 2  # the one never started as well
        assert checkpoints.load_from_run(first["run_id"])["step"] >= 1
        assert web.post(f"/api/sweeps/{sweep_id}/stop").status_code == 409
    finally:
        app.extensions["lab_dashboard"].registry.kill_all()


# --- (b) the page in a real browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def server(store, tmp_path):
    """`python -m pipeline.dashboard` on a free port, in its own session; killed with everything it started."""
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.dashboard", "--port", str(port)], cwd=tmp_path,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: process.poll() is not None or _status(url) == 200, timeout=600, what="the dashboard")
        assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
        yield url
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
        app = create_app(tracking_uri=store, state_dir=tmp_path / ".dashboard", workdir=tmp_path)
        app.extensions["lab_dashboard"].registry.kill_all()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except OSError:
        return None


@pytest.fixture
def browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1300", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


CARDS_JS = """
const cards = {};
for (const el of document.querySelectorAll('#runs article.card')) {
  cards[el.querySelector('.run-name').textContent] = {
    status: el.querySelector('.status').textContent,
    points: Number(el.querySelector('svg.chart').dataset.points || 0),
    sample: el.querySelector('pre.sample').textContent,
    note: el.querySelector('.run-note').textContent,
    stop: !el.querySelector('button.stop').hidden,
    runLink: el.querySelector('a.run-link').href,
    compareLink: el.querySelector('a.compare-link').href,
  };
}
return cards;
"""


@pytest.mark.slow
def test_the_page_starts_a_run_draws_its_curve_and_sample_and_stops_another(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server)
    assert "GPT Pretraining Lab" in browser.title
    form = browser.find_element(By.ID, "train-form")
    Select(form.find_element(By.NAME, "config")).select_by_value("nano")
    Select(form.find_element(By.NAME, "corpus")).select_by_value("tiny")
    browser.find_element(By.CSS_SELECTOR, "#more-settings summary").click()

    def fill(**values):
        for name, value in values.items():
            field = form.find_element(By.NAME, name)
            field.clear()
            field.send_keys(str(value))

    def submit_and_read():
        form.find_element(By.ID, "train-submit").click()
        return WebDriverWait(browser, 20).until(
            lambda d: d.find_element(By.ID, "train-ok").text or d.find_element(By.ID, "train-error").text)

    fill(**{k: v for k, v in TINY_RUN.items() if k != "corpus"}, run_name="browser-tiny")
    fill(lr=0)
    assert submit_and_read() == "lr must be a positive number, got 0.0"  # the CLI's message, on the page
    fill(lr=0.01)
    assert submit_and_read().startswith("started browser-tiny")
    fill(max_steps=100_000, sample_interval=0, eval_interval=0, run_name="browser-long")
    assert submit_and_read().startswith("started browser-long")

    def cards():
        return browser.execute_script(CARDS_JS)

    WebDriverWait(browser, 60, 0.5).until(
        lambda d: (c := cards().get("browser-tiny")) and c["points"] > 0 and c["sample"])
    tiny = cards()["browser-tiny"]
    assert tiny["sample"].startswith("A language model")
    assert "/#/experiments/" in tiny["runLink"] and "/#/compare-runs?runs=" in tiny["compareLink"]

    WebDriverWait(browser, 60, 0.5).until(
        lambda d: (c := cards().get("browser-long")) and c["note"].startswith("step "))
    long_card = browser.find_element(By.XPATH, "//article[.//h3[text()='browser-long']]")
    long_card.find_element(By.CSS_SELECTOR, "button.stop").click()
    WebDriverWait(browser, 60, 0.5).until(lambda d: cards()["browser-long"]["status"] == "KILLED")
    WebDriverWait(browser, 60, 0.5).until(lambda d: cards()["browser-tiny"]["status"] == "FINISHED")
    final = cards()
    assert not final["browser-long"]["stop"] and not final["browser-tiny"]["stop"]
    assert final["browser-tiny"]["points"] == 20

    polled = browser.find_element(By.ID, "updated").text
    browser.execute_script("window.scrollTo(0, 0)")
    # the screenshot once the page is at its top and a poll since has painted it (the poll's time stamp moved)
    WebDriverWait(browser, 300, 0.2).until(lambda d: d.execute_script("return window.scrollY") == 0 and (
        (stamp := d.find_element(By.ID, "updated").text) != polled and stamp.startswith("updated ")))
    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


# --- (c) run-dashboard.sh -------------------------------------------------------------------------------------

SCRIPT = PROJECT_DIR / "run-dashboard.sh"


def _session_processes(sid: int) -> list[str]:
    """Command lines of the processes still in session sid (everything the script started is in it)."""
    left = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline()))
        except (psutil.Error, OSError):
            continue
    return left


def _start_dashboard(port: int, mlflow_port: int, folder: Path) -> subprocess.Popen:
    """run-dashboard.sh in a session of its own, once both pages answer."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(["bash", str(SCRIPT), "--port", str(port), "--mlflow-port", str(mlflow_port)],
                               cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    for url in (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{mlflow_port}/"):
        wait_for(lambda url=url: process.poll() is not None or _status(url) == 200, timeout=600, what=url)
        assert process.poll() is None, process.stdout.read()
    return process


@pytest.mark.slow
def test_run_dashboard_servers_die_with_it_even_on_sigkill_and_ctrl_c_stops_both(store, tmp_path):
    port, mlflow_port = free_port(), free_port()
    killed = _start_dashboard(port, mlflow_port, tmp_path)
    try:
        killed.kill()  # SIGKILL to the script itself: no trap, no clean-up of its own runs
        killed.wait(timeout=60)
        wait_for(lambda: not _session_processes(killed.pid), timeout=300, what="the servers to end")
        assert _status(f"http://127.0.0.1:{port}/") is None and _status(f"http://127.0.0.1:{mlflow_port}/") is None
    finally:
        if _session_processes(killed.pid):
            os.killpg(killed.pid, signal.SIGKILL)

    process = _start_dashboard(port, mlflow_port, tmp_path)  # both ports are free again: a fresh start works
    try:
        assert _status(f"http://127.0.0.1:{port}/api/runs") == 200
        started = _session_processes(process.pid)
        assert any(" ui " in line for line in started), started
        assert not any("_job_runner" in line or "huey" in line for line in started), started  # MLflow's GenAI jobs
        process.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, out
    assert f"launcher: http://127.0.0.1:{port}/" in out and f"MLflow UI: http://127.0.0.1:{mlflow_port}/" in out
    assert f"store: {store}" in out and "stopping the MLflow UI and the launcher" in out
    assert _session_processes(process.pid) == []
    assert _status(f"http://127.0.0.1:{port}/") is None and _status(f"http://127.0.0.1:{mlflow_port}/") is None


def test_run_dashboard_refuses_a_busy_port_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for args, option in ([("--port", busy), ("--mlflow-port", free_port())], "--port"), \
                             ([("--port", free_port()), ("--mlflow-port", busy)], "--mlflow-port"):
            flat = [str(x) for pair in args for x in pair]
            result = subprocess.run(["bash", str(SCRIPT), *flat], cwd=tmp_path, capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 2, result
            lines = result.stderr.strip().splitlines()
            assert lines == [f"error: port {busy} ({'launcher' if option == '--port' else 'MLflow UI'}) is already "
                             f"in use on 127.0.0.1; choose another with {option}"], result.stderr
            assert result.stdout == ""  # nothing was started
    helped = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "--host" in helped.stdout and "WARNING" in helped.stdout
    assert "--allowed-hosts" in helped.stdout and "basic-auth" in helped.stdout
