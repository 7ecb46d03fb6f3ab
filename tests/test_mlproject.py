"""The MLflow Project: `mlflow run` files runs where the user asked, and conda.yaml builds what pip installs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from packaging.utils import canonicalize_name

from tests.conftest import PROJECT_DIR, wait_for

TINY = ["-P", "n_layer=2", "-P", "n_head=2", "-P", "n_embd=32", "-P", "context_length=32", "-P", "max_steps=2",
        "-P", "corpus=tiny"]


def mlflow_run(entry_point: str, *args: str, uri: str) -> subprocess.CompletedProcess:
    """`mlflow run . -e ENTRY_POINT` from the project root, with this virtualenv's `python` first on PATH."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for inherited in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(inherited, None)
    return subprocess.run([str(bin_dir / "mlflow"), "run", ".", "-e", entry_point, "--env-manager", "local", *args],
                          cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600)


def experiments_with_artifacts_in(client: MlflowClient, folder: Path, *names: str) -> None:
    """`mlflow run` works in the project folder: experiments made there would keep their artifacts in its mlruns/."""
    for name in names:
        client.create_experiment(name, artifact_location=str(folder / name))


def runs_by_experiment(client: MlflowClient) -> dict[str, list]:
    """Every run, deleted ones too, by experiment name, once the runs `mlflow run` made and the lab replaced are
    deleted (by a process of their own, after `mlflow run` ended them)."""
    def settled():
        found = {e.name: client.search_runs([e.experiment_id], run_view_type=ViewType.ALL)
                 for e in client.search_experiments()}
        replaced = [r for runs in found.values() for r in runs if "lab.replaced_by" in r.data.tags]
        return all(r.info.lifecycle_stage == "deleted" for r in replaced) and found

    return wait_for(settled, timeout=300, every=0.2, what="the runs mlflow run made to be deleted")


def test_mlflow_run_train_lands_in_our_experiment_with_the_params_as_given(store, tmp_path):
    client = MlflowClient(store)
    experiments_with_artifacts_in(client, tmp_path, "pretraining")
    done = mlflow_run("train", *TINY, "-P", "prompt=I had", "-P", "optimizer=muon", "-P", "muon_lr=0.05",
                      uri=store)  # no --experiment-name: MLflow's Default
    assert done.returncode == 0, done.stderr[-3000:]

    runs = runs_by_experiment(client)
    [placeholder] = runs["Default"]  # the run `mlflow run` made, handed over, then ended by it and deleted
    [run] = runs["pretraining"]
    assert placeholder.info.status == run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
    assert placeholder.data.tags["lab.replaced_by"] == run.info.run_id
    assert run.data.tags["lab.replaces"] == placeholder.info.run_id
    assert run.data.tags["mlflow.project.entryPoint"] == "train" and run.data.tags["lab.corpus"] == "tiny"
    as_given = {"prompt": "I had", "run_name": "", "resume": "", "max_steps": "2", "n_layer": "2",
                "experiment": "pretraining", "optimizer": "muon", "muon_lr": "0.05"}
    assert {key: run.data.params[key] for key in as_given} == as_given
    assert (placeholder.data.params["prompt"], placeholder.data.params["resume"]) == ("'I had'", "''")  # mlflow#6811
    assert run.info.run_name == "nano-tiny-muon5e-2-lr1e-3" and client.get_metric_history(run.info.run_id, "train_loss")


@pytest.mark.slow
def test_mlflow_run_sweep_keeps_parent_and_children_in_one_experiment(store, tmp_path):
    client = MlflowClient(store)
    experiments_with_artifacts_in(client, tmp_path, "pretraining")
    reports = PROJECT_DIR / "reports"  # a sweep writes its report there: `mlflow run` works in the project folder
    existed = reports.is_dir()
    before = set(reports.iterdir()) if existed else set()
    try:
        swept = mlflow_run("sweep", "-P", "name=smoke", "-P", "workers=2", uri=store)
        assert swept.returncode == 0, swept.stderr[-3000:]
        assert "report: reports/smoke-" in swept.stdout
    finally:
        for folder in set(reports.iterdir()) - before if reports.is_dir() else ():
            shutil.rmtree(folder)
        if not existed and reports.is_dir():
            reports.rmdir()

    runs = runs_by_experiment(client)
    statuses = {(experiment, r.info.run_name): r.info.status for experiment, rs in runs.items() for r in rs}
    assert set(statuses.values()) == {"FINISHED"}, statuses
    [placeholder] = runs["Default"]
    [parent] = [r for r in runs["pretraining"] if r.data.tags.get("lab.role") == "sweep"]
    children = [r for r in runs["pretraining"] if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs["pretraining"]) == 3 and len(children) == 2
    assert placeholder.info.lifecycle_stage == "deleted"
    assert placeholder.data.tags["lab.replaced_by"] == parent.info.run_id
    assert parent.info.run_name == "sweep-smoke" and parent.data.params["name"] == "smoke"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/runs.csv"}


def requirements(lines) -> dict[str, Requirement]:
    parsed = [Requirement(line) for line in lines]
    return {canonicalize_name(r.name): r for r in parsed}


def constraints() -> dict[str, Requirement]:
    return requirements(line.strip() for line in (PROJECT_DIR / "constraints.txt").read_text().splitlines()
                        if line.strip() and not line.startswith("#"))


def installed_closure(root: str, extras: set[str]) -> dict[str, str]:
    """Every distribution that installing root[extras] pulls in here, with its installed version (the project
    itself and pip's own tools left out, as `pip freeze` leaves them out)."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    wanted = [(root, frozenset(extras))]
    while wanted:
        name, asked = wanted.pop()
        for line in metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in asked | {""}):
                continue
            found[canonicalize_name(requirement.name)] = metadata.version(requirement.name)
            step = (canonicalize_name(requirement.name), frozenset(requirement.extras))
            if step not in seen:  # mlflow and mlflow[auth] are two steps: the extra pulls in more
                seen.add(step)
                wanted.append((requirement.name, step[1]))
    return {k: v for k, v in found.items() if k not in ("pip", "setuptools", "wheel")}


def test_constraints_pin_exactly_what_the_test_install_brings():
    """A newcomer's install is the set this suite ran with: every package `pip install -e '.[test,server]'`
    pulls in is pinned in constraints.txt at the installed version, and nothing else is."""
    pulled_in = installed_closure("gpt-pretraining-lab", {"test", "server"})
    pins = constraints()
    assert set(pins) == set(pulled_in), (set(pulled_in) - set(pins), set(pins) - set(pulled_in))
    for name, version in pulled_in.items():
        [pin] = pins[name].specifier
        assert pin.operator == "==" and Version(pin.version) == Version(Version(version).public), name  # torch 2.13.0+cpu


def test_conda_env_lists_pyprojects_dependencies_with_the_constraints_pins():
    """`mlflow run` with conda builds conda.yaml: the dependencies pip installs from pyproject.toml, each pinned
    as constraints.txt pins it (what CI tests against), inside the range pyproject.toml allows, on a Python it
    allows."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python's standard library from 3.11")
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    needed = requirements(project["dependencies"])
    pins = constraints()
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())["dependencies"]
    [pip_section] = [d["pip"] for d in conda if isinstance(d, dict)]
    [python] = [d.split("=", 1)[1] for d in conda if isinstance(d, str) and d.startswith("python=")]
    built = requirements(pip_section)

    assert set(built) == set(needed)
    for name, requirement in needed.items():
        assert built[name].specifier == pins[name].specifier, name
        assert built[name].extras == requirement.extras, name
        [pin] = pins[name].specifier
        assert requirement.specifier.contains(pin.version), name
    assert SpecifierSet(project["requires-python"]).contains(python)
