"""The launcher page: start training runs and sweeps, watch their loss curves and samples, stop them.

`create_app()` builds the Flask app; `python -m pipeline.dashboard` serves it (on 127.0.0.1:5173 by default) and
`./run-dashboard.sh` starts it beside the MLflow UI. Everything it shows is read from MLflow; everything it starts
is the CLI's own `python -m pipeline.train` or `python -m pipeline.sweep`, in a process of its own session, so
runs go on when the page or the dashboard is closed. The processes it started are listed in
`<state_dir>/processes.json` (default `.dashboard/` in the working folder), which a restarted dashboard reads.

JSON API (every answer is JSON; errors are {"error": "one line"} with a 4xx status):
  GET  /api/runs?limit=N&experiment=ID  runs newest first (summary, process, links) and the sweeps started here
  GET  /api/runs/RUN_ID                 one run with its train_loss/val_loss curves and newest sample
  POST /api/runs                        {setting: value, ...} any TrainSettings field -> 201 {run_id, name, pid}
  POST /api/runs/RUN_ID/stop            SIGINT to the run's trainer (it checkpoints and ends KILLED) -> 202
  POST /api/runs/RUN_ID/resume          continue a stopped run from its last checkpoint -> 201; with
                                        {"max_steps": N} (or max_tokens, epochs): train a run longer
  POST /api/runs/RUN_ID/register        {"name": NAME}: the run's model into the Model Registry -> 201 {name, version}
  POST /api/runs/RUN_ID/inspect         {"prompt": TEXT, "step": N}: a finished or stopped run's checkpoint looked
                                        at -> {tokens, attention[layer][head][row][col], induction, prev_token, lens}
  POST /api/sweeps                      {"name": NAME, "workers": N} -> 201 {id, sweep, workers, pid}
  POST /api/sweeps/ID/stop              SIGINT to the sweep's process group (Ctrl-C) -> 202
"""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, jsonify, redirect, render_template, request, url_for

from model.configs import NAMED_CONFIGS
from pipeline import tracking
from pipeline.data.corpora import load_registry
from pipeline.dashboard import launch, run_list
from pipeline.dashboard.processes import NotOurProcess, ProcessEnded
from pipeline.dashboard.servers import LOOPBACK
from pipeline.dashboard.supervisor import Dashboard
from pipeline.errors import LabError
from pipeline.sweeps.spec import EXPERIMENTS_PATH, load_sweeps
from pipeline.settings import MODEL_FIELDS, TrainSettings, setting_type
from pipeline.tracking.runs import LOCAL_UI

RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
# The fields the form shows up front; every other TrainSettings field is under "More settings".
MAIN_FIELDS = ("config", "corpus", "epochs", "max_steps", "lr", "batch_size", "context_length")
HIDDEN_FIELDS = ("resume",)  # resuming is a button on a stopped run


def create_app(tracking_uri: str | None = None, state_dir: str | Path | None = None,
               workdir: str | Path | None = None, experiments_path: str | Path | None = None,
               mlflow_url: str = LOCAL_UI, allowed_hosts: list[str] | tuple[str, ...] = (),
               python: str | None = None) -> Flask:
    """The launcher app on a tracking store (default: the trainer's own, tracking.tracking_uri()).

    workdir: where spawned processes run (default: the current folder; `mlflow.db`, `mlruns/`, `reports/` are
    relative to it). state_dir: the registry of spawned processes (default: workdir/.dashboard).
    allowed_hosts: Host header names accepted besides localhost/127.0.0.1/::1 ("*" for any)."""
    workdir = Path(workdir or Path.cwd()).resolve()
    dashboard = Dashboard(
        tracking_uri=tracking_uri or tracking.tracking_uri(),
        state_dir=Path(state_dir).resolve() if state_dir else workdir / ".dashboard",
        workdir=workdir,
        experiments_path=Path(experiments_path or EXPERIMENTS_PATH).resolve(),
        mlflow_url=mlflow_url,
        python=python or sys.executable,
    )
    dashboard.check_store()
    hosts = {h.strip().lower().strip("[]") for h in allowed_hosts if h.strip()} | set(LOOPBACK)

    app = Flask(__name__)
    app.json.sort_keys = False
    app.extensions["lab_dashboard"] = dashboard

    @app.before_request
    def _check_origin():
        """DNS rebinding and cross-site requests: only our own Host names, and no POST from another origin."""
        hostname = (urlsplit(f"//{request.host}").hostname or "").lower()
        if "*" not in hosts and hostname not in hosts:
            return _error(f"host '{request.host}' is not allowed (start the dashboard with --allowed-hosts)", 403)
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.host:
                return _error(f"cross-origin request from {origin} refused", 403)
            if origin == "null":
                return _error("cross-origin request refused", 403)

    # --- the page ---------------------------------------------------------------------------------------------

    def page(error: str = "", sweep_error: str = "", status: int = 200, form: dict | None = None):
        try:
            corpora = [(name, entry.description) for name, entry in load_registry().items()]
        except LabError as problem:
            corpora, error = [], error or str(problem)
        try:
            sweeps = [{"name": s.name, "description": s.description, "points": s.size}
                      for s in load_sweeps(dashboard.experiments_path).values()]
            sweeps_problem = ""
        except LabError as problem:
            sweeps, sweeps_problem = [], str(problem)
        html = render_template(
            "index.html", configs=list(NAMED_CONFIGS), corpora=corpora, sweeps=sweeps,
            sweeps_problem=sweeps_problem, main_fields=[_field_view(n) for n in MAIN_FIELDS if n != "config"
                                                         and n != "corpus"],
            more_fields=[_field_view(f.name) for f in fields(TrainSettings)
                         if f.name not in MAIN_FIELDS and f.name not in HIDDEN_FIELDS],
            defaults=TrainSettings(), path_choice=launch.PATH_CHOICE, error=error, sweep_error=sweep_error,
            form=form or {}, mlflow_url=dashboard.mlflow_url, tracking_uri=dashboard.tracking_uri,
        )
        return html, status

    @app.get("/")
    def index():
        return page()

    @app.post("/runs")
    def start_run_form():
        try:
            launch.start_training(dashboard, launch.settings_from_form(request.form))
        except LabError as problem:
            return page(error=str(problem), status=400, form=request.form.to_dict())
        return redirect(url_for("index"), code=303)

    @app.post("/sweeps")
    def start_sweep_form():
        try:
            launch.start_sweep(dashboard, request.form.get("name", ""), request.form.get("workers", "1"))
        except LabError as problem:
            return page(sweep_error=str(problem), status=400, form=request.form.to_dict())
        return redirect(url_for("index"), code=303)

    # --- the JSON API -----------------------------------------------------------------------------------------

    @app.get("/api/runs")
    def list_runs():
        limit = min(max(request.args.get("limit", 30, type=int) or 30, 1), 200)
        names = dashboard.experiment_names()
        wanted = request.args.get("experiment", "")
        ids = [wanted] if wanted in names else list(names)
        processes = dashboard.processes()
        by_run = {}
        for entry in processes:  # newest first: a run's newest process wins
            if entry.get("run_id"):
                by_run.setdefault(entry["run_id"], entry)
        items = []
        for run in run_list.search(dashboard.client, ids, limit):
            item = run_list.summary(run, names.get(run.info.experiment_id, ""), dashboard.mlflow_url)
            entry = by_run.get(run.info.run_id)
            item["process"] = dashboard.process_view(entry) if entry else None
            item["stoppable"] = _stoppable(item)
            items.append(item)
        sweeps = [dashboard.process_view(e) for e in processes if e["kind"] == "sweep"][:10]
        return jsonify(runs=items, sweeps=sweeps,
                       experiments=[{"id": i, "name": n} for i, n in names.items()],
                       mlflow_url=dashboard.mlflow_url)

    @app.get("/api/runs/<run_id>")
    def run_detail(run_id):
        if not RUN_ID.match(run_id):
            return _error("not a run id", 404)
        try:
            run = dashboard.client.get_run(run_id)
        except Exception:
            return _error(f"no run '{run_id}' in {dashboard.tracking_uri}", 404)
        item = run_list.summary(run, dashboard.experiment_name(run.info.experiment_id), dashboard.mlflow_url)
        item.update(dashboard.details.of(run))
        item["last_step"] = max((p[0] for p in item["curves"]["train_loss"]), default=None)
        entry = next((e for e in dashboard.processes() if e.get("run_id") == run_id), None)
        item["process"] = dashboard.process_view(entry) if entry else None
        item["stoppable"] = _stoppable(item)
        return jsonify(item)

    @app.post("/api/runs")
    def start_run_api():
        payload = request.get_json(silent=True)
        try:
            started = launch.start_training(dashboard, launch.settings_from_json(payload))
        except LabError as problem:
            return _error(str(problem), 400)
        started["links"] = {"run": run_list.run_url(dashboard.mlflow_url, _experiment_of(started["run_id"]),
                                                started["run_id"])}
        return jsonify(started), 201

    def _experiment_of(run_id: str) -> str:
        return dashboard.client.get_run(run_id).info.experiment_id

    @app.post("/api/runs/<run_id>/stop")
    def stop_run(run_id):
        return _stop(run_id, "run")

    @app.post("/api/runs/<run_id>/resume")
    def resume_run(run_id):
        if not RUN_ID.match(run_id):
            return _error("not a run id", 404)
        try:
            started = launch.start_training(dashboard, launch.resume_settings(run_id, request.get_json(silent=True)))
        except LabError as problem:
            return _error(str(problem), 400)
        return jsonify(started), 201

    @app.post("/api/runs/<run_id>/register")
    def register_run_model(run_id):
        from pipeline.tracking.models import register

        if not RUN_ID.match(run_id):
            return _error("not a run id", 404)
        payload = request.get_json(silent=True)
        name = payload.get("name") if isinstance(payload, dict) else None
        if not isinstance(name, str):
            return _error('expected a JSON object: {"name": MODEL_NAME}', 400)
        try:
            tracking.get_run(dashboard.client, run_id)
        except LabError as problem:
            return _error(str(problem), 404)
        try:
            version = register(dashboard.client, run_id, name.strip())
        except LabError as problem:
            return _error(str(problem), 400)
        return jsonify(name=name.strip(), version=version), 201

    @app.post("/api/runs/<run_id>/inspect")
    def inspect_run(run_id):
        import torch

        from pipeline.interpret.stored import inspection_data

        if not RUN_ID.match(run_id):
            return _error("not a run id", 404)
        payload = request.get_json(silent=True)
        prompt, step = (payload.get("prompt", ""), payload.get("step")) if isinstance(payload, dict) else (None, None)
        if not isinstance(prompt, str) or not (step is None or (isinstance(step, int) and not isinstance(step, bool))):
            return _error('expected a JSON object: {"prompt": TEXT, "step": N or null (the newest)}', 400)
        try:
            run = tracking.get_run(dashboard.client, run_id)
        except LabError as problem:
            return _error(str(problem), 404)
        if run.info.status not in ("FINISHED", "KILLED"):
            return _error(f"run {run_id} is {run.info.status}: only a finished or stopped run is inspected here", 409)
        try:
            return jsonify(inspection_data(dashboard.client, run_id, step, prompt.strip(), torch.device("cpu")))
        except LabError as problem:
            return _error(str(problem), 400)

    @app.post("/api/sweeps")
    def start_sweep_api():
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            return _error('expected a JSON object: {"name": SWEEP, "workers": N}', 400)
        try:
            started = launch.start_sweep(dashboard, payload.get("name", ""), payload.get("workers", 1))
        except LabError as problem:
            return _error(str(problem), 400)
        return jsonify(started), 201

    @app.post("/api/sweeps/<entry_id>/stop")
    def stop_sweep(entry_id):
        return _stop(entry_id, "sweep")

    def _stop(entry_id: str, kind: str):
        """Signal only a process from the registry, found by the id it was registered under."""
        if not RUN_ID.match(entry_id):
            return _error("not a process of this dashboard", 404)
        try:
            entry = dashboard.registry.get(entry_id, dashboard.on_process_ended)
            if entry["kind"] != ("train" if kind == "run" else "sweep"):
                raise NotOurProcess(entry_id)
            entry = dashboard.registry.stop(entry_id, dashboard.on_process_ended)
        except NotOurProcess:
            return _error(f"{kind} {entry_id} was not started by this dashboard: stop it where it runs (Ctrl-C)", 404)
        except ProcessEnded:
            return _error(f"the process of {kind} {entry_id} has already ended", 409)
        return jsonify(id=entry_id, pid=entry["pid"], stopping=True,
                       already_stopping=bool(entry.get("already_stopping"))), 202

    @app.errorhandler(404)
    def _not_found(problem):
        if request.path.startswith("/api/"):
            return _error("no such endpoint", 404)
        return problem

    @app.errorhandler(405)
    def _not_allowed(problem):
        if request.path.startswith("/api/"):
            return _error(f"method {request.method} not allowed here", 405)
        return problem

    return app


def _stoppable(item: dict) -> bool:
    """A Stop button: for a RUNNING run whose trainer this dashboard started and has not yet been asked to stop."""
    return bool(item["process"] and item["process"]["stoppable"] and item["status"] == "RUNNING")


def _error(message: str, status: int):
    return jsonify(error=message), status


def _field_view(name: str) -> dict:
    """What the template needs to draw one setting's input: its type, default and help."""
    f = next(f for f in fields(TrainSettings) if f.name == name)
    kind = setting_type(name)
    default = f.default
    return {
        "name": name,
        "label": name.replace("_", " "),
        "kind": kind.__name__,
        "help": f.metadata.get("help", ""),
        "default": "" if default is None else (str(default).lower() if isinstance(default, bool) else default),
        "model": name in MODEL_FIELDS,
        "step": "1" if kind is int else "any",
    }
