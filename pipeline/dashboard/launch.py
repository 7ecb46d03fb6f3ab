"""Turning the page's forms into the same settings and commands the CLI uses, and starting them.

There is no second training code path: a run is `python -m pipeline.train <settings_to_args(settings)>`, a sweep
is `python -m pipeline.sweep --name NAME --workers N`, each a process of its own. The settings are checked here
first with the same code, and so the same messages, as the CLI (`settings_from_mapping(...).validate()`).
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from dataclasses import fields
from pathlib import Path, PurePath
from typing import Mapping

from model.configs import NAMED_CONFIGS
from pipeline import tracking
from pipeline.files import child_python_path
from pipeline.data.corpora import load_registry
from pipeline.errors import SettingsError
from pipeline.sweeps.children import train_command
from pipeline.sweeps.spec import load_sweep
from pipeline.settings import TrainSettings, setting_type, settings_from_mapping
from pipeline.training.resuming import BUDGET_FIELDS
from pipeline.training.trainer import default_run_name

PATH_CHOICE = ":path"  # the corpus select's "a file or folder" option; the path is in the field corpus_path
LAUNCHER_TAG = "lab.launcher"


def settings_from_json(payload) -> TrainSettings:
    """Settings from the JSON API: any TrainSettings field, typed as JSON types (numbers, strings, booleans)."""
    if not isinstance(payload, dict):
        raise SettingsError("expected a JSON object of training settings, e.g. {\"corpus\": \"tiny\"}")
    return checked(settings_from_mapping(payload))


def settings_from_form(form: Mapping[str, str]) -> TrainSettings:
    """Settings from the HTML form: text fields, empty ones left at their defaults."""
    values = {}
    for f in fields(TrainSettings):
        raw = form.get(f.name)
        if raw is None or str(raw).strip() == "":
            continue
        values[f.name] = _typed(f.name, str(raw).strip())
    if form.get("corpus") == PATH_CHOICE:
        path = str(form.get("corpus_path", "")).strip()
        if not path:
            raise SettingsError("corpus: choose a corpus, or give the path of a text file or folder")
        values["corpus"] = path
    return checked(settings_from_mapping(values))


def _typed(name: str, raw: str):
    """A form's text as the setting's type; text that does not parse is kept, for coerce() to refuse by name."""
    kind = setting_type(name)
    if kind is bool:
        return raw.lower() in ("1", "true", "on", "yes")
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        return raw
    return raw


def checked(settings: TrainSettings) -> TrainSettings:
    """settings.validate(), after refusing what the dashboard does not take: a config file path (the page reads
    no file a form names; the CLI trains YAML configs)."""
    if settings.config not in NAMED_CONFIGS and PurePath(settings.config).suffix in (".yaml", ".yml"):
        raise SettingsError(f"the dashboard trains the named configs ({', '.join(NAMED_CONFIGS)}); "
                            "train a YAML config with python -m pipeline.train --config FILE")
    return settings.validate()


def corpus_label(spec: str) -> str:
    """The corpus as the trainer names runs after it, worked out from the text alone (no file is touched)."""
    try:
        if spec in load_registry():
            return spec
    except Exception:  # a broken registry: the trainer will report it
        pass
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", PurePath(spec).stem)[:40] or "corpus"
    return stem.split("-")[0] or "corpus"


def child_env(tracking_uri: str, run_id: str | None = None) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": child_python_path()}
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    if run_id:
        env["MLFLOW_RUN_ID"] = run_id
    return env


def sweep_command(name: str, workers: int, experiments_path: Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", "pipeline.sweep", "--name", name, "--file", str(experiments_path),
            "--workers", str(workers)]


def resume_settings(run_id: str, payload) -> TrainSettings:
    """A resume's settings from the JSON API: the run, and optionally a larger budget to train it longer
    ({"max_steps": N}, {"max_tokens": N} or {"epochs": E}); the trainer keeps every other setting of the run."""
    payload = payload or {}
    if not isinstance(payload, dict) or set(payload) - set(BUDGET_FIELDS):
        raise SettingsError(f"a resume takes only a new budget: {', '.join(BUDGET_FIELDS)}")
    return checked(settings_from_mapping({**payload, "resume": run_id}))


def start_training(dashboard, settings: TrainSettings) -> dict:
    """Create the MLflow run (so its id is known at once), then start the trainer in it ($MLFLOW_RUN_ID).

    With settings.resume, the trainer continues that run, given only the run id and a budget set: no run is
    created, and the run's own settings are kept."""
    client = dashboard.client
    names = None
    if settings.resume:
        names = ["resume", *(name for name in BUDGET_FIELDS if getattr(settings, name))]
        run = tracking.get_run(client, settings.resume)
        if run.info.status == tracking.STATUS_FINISHED and len(names) == 1:
            raise SettingsError(f"run {settings.resume} is finished: give a larger budget to train it longer")
        for entry in dashboard.registry.refresh(dashboard.on_process_ended):
            if entry.get("run_id") == settings.resume and entry.get("ended_at") is None:
                raise SettingsError(f"run {settings.resume} is still being trained (pid {entry['pid']})")
        run_id, name, env = settings.resume, run.info.run_name, child_env(dashboard.tracking_uri)
    else:
        label = corpus_label(settings.corpus)
        name = settings.run_name or default_run_name(settings, label)
        experiment_id = tracking.experiment_id(client, settings.experiment)
        run_id = client.create_run(experiment_id, run_name=name, tags={
            LAUNCHER_TAG: "dashboard", "lab.config": settings.config, "lab.corpus": label}).info.run_id
        env = child_env(dashboard.tracking_uri, run_id)
    try:
        entry = dashboard.registry.spawn(run_id, "train", train_command(settings, dashboard.python, names), env,
                                         dashboard.workdir, run_id=run_id, name=name)
    except OSError as error:
        if not settings.resume:
            client.set_tag(run_id, "error", f"the dashboard could not start the trainer: {error}"[:5000])
            tracking.finish_run(client, run_id, tracking.STATUS_FAILED)
        raise
    return {"run_id": run_id, "name": name, "pid": entry["pid"], "resumed": bool(settings.resume)}


def parse_workers(value) -> int:
    if isinstance(value, bool):
        raise SettingsError(f"workers must be a whole number, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip() or "1")
        except ValueError:
            raise SettingsError(f"workers must be a whole number, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise SettingsError(f"workers must be a whole number, got {value!r}")
    if value < 1:
        raise SettingsError(f"workers must be at least 1, got {value}")
    return value


def start_sweep(dashboard, name, workers) -> dict:
    """Check the sweep (the whole experiments file, as the CLI does), then start `pipeline.sweep`."""
    if not isinstance(name, str) or not name:
        raise SettingsError("choose a sweep")
    workers = parse_workers(workers)
    sweep = load_sweep(name, dashboard.experiments_path)
    entry_id = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    command = sweep_command(sweep.name, workers, dashboard.experiments_path, dashboard.python)
    entry = dashboard.registry.spawn(entry_id, "sweep", command, child_env(dashboard.tracking_uri),
                                     dashboard.workdir, sweep=sweep.name, workers=workers,
                                     points=sweep.size, experiment=sweep.experiment,
                                     name=f"sweep {sweep.name}")
    return {"id": entry_id, "sweep": sweep.name, "workers": workers, "pid": entry["pid"]}
