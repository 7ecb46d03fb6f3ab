"""Taking over the run made for us ($MLFLOW_RUN_ID): kept where the user asked for it, replaced where not."""

from __future__ import annotations

import multiprocessing
import shlex

import pytest
from mlflow.entities import Param, ViewType
from mlflow.tracking import MlflowClient

from pipeline import tracking
from tests.conftest import wait_for


def made_run(client: MlflowClient, experiment: str, params: dict[str, str], by_mlflow_run: bool = True) -> str:
    """A run as `mlflow run` makes one (its tags, its shell-quoted params), or as a sweep or the dashboard does."""
    experiment_id = "0" if experiment == "Default" else tracking.experiment_id(client, experiment)
    tags = {"mlflow.project.entryPoint": "train", "mlflow.source.type": "PROJECT"} if by_mlflow_run else {}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, shlex.quote(v) if by_mlflow_run else v) for k, v in params.items()])
    return run_id


@pytest.mark.parametrize("value", ["", "I had", "it's", "'x'", "2", "0.001", "a\nb"])
def test_unquoted_is_what_the_program_received(value):
    assert tracking.unquoted(shlex.quote(value)) == value
    assert shlex.split(f"--prompt {shlex.quote(value)}") == ["--prompt", value]  # what bash hands the program


@pytest.mark.parametrize("filed_under, asked, lands_in", [
    ("Default", "pretraining", "pretraining"),  # `mlflow run` without --experiment-name: our default
    ("lab-x", "pretraining", "lab-x"),          # --experiment-name lab-x
    ("lab-x", "lab-y", "lab-y"),                # -P experiment=lab-y wins over --experiment-name
    ("Default", "Default", "Default"),          # -P experiment=Default, asked for on purpose
])
def test_a_run_made_by_mlflow_run_lands_where_the_user_asked(store, monkeypatch, filed_under, asked, lands_in):
    client = MlflowClient(store)
    given = made_run(client, filed_under, {"max_steps": "2", "experiment": asked, "prompt": "I had"})
    monkeypatch.setenv("MLFLOW_RUN_ID", given)
    run_id = tracking.start_run(client, asked, "mine", tags={"lab.config": "nano"})
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == lands_in
    assert run.info.status == "RUNNING" and run.info.run_name == "mine" and run.data.tags["lab.config"] == "nano"
    assert run.data.params == {"max_steps": "2", "experiment": asked, "prompt": "I had"}  # as the program got them
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    placeholder = client.get_run(given)
    assert run_id != given and run.data.tags["lab.replaces"] == given  # quoted params: replaced even in place
    assert placeholder.data.tags["lab.replaced_by"] == run_id
    assert placeholder.data.params["prompt"] == "'I had'"  # MLflow's own record, left as it was
    assert placeholder.info.status == "RUNNING"  # for `mlflow run` to end: it fails on a deleted run


def test_the_replaced_run_is_deleted_once_mlflow_run_has_ended_it(store, monkeypatch):
    client = MlflowClient(store)
    given = made_run(client, "Default", {"prompt": ""})
    monkeypatch.setenv("MLFLOW_RUN_ID", given)
    run_id = tracking.start_run(client, "pretraining", "", tags={})
    tracking.finish_run(client, run_id, tracking.STATUS_FINISHED)
    assert client.get_run(given).info.lifecycle_stage == "active"
    client.set_terminated(given, "FINISHED")  # what `mlflow run` does when the program has exited
    wait_for(lambda: client.get_run(given).info.lifecycle_stage == "deleted", timeout=300, every=0.2,
             what="the replaced run to be deleted")
    assert client.get_run(run_id).info.lifecycle_stage == "active"


def test_a_run_in_the_right_place_with_plain_params_is_kept(store, monkeypatch):
    client = MlflowClient(store)
    for experiment, asked, by_mlflow_run in [("lab-x", "pretraining", True), ("pretraining", "pretraining", False),
                                             ("lab-y", "lab-y", False)]:
        given = made_run(client, experiment, {"max_steps": "2", "name": "smoke"}, by_mlflow_run)
        monkeypatch.setenv("MLFLOW_RUN_ID", given)
        assert tracking.given_run(client, asked, "sweep-smoke") == (given, experiment)
        run = client.get_run(given)
        assert run.info.status == "RUNNING" and run.info.run_name == "sweep-smoke"
    # a run made by a sweep or the dashboard holds whatever params it holds: never taken for shell-quoted
    odd = made_run(client, "pretraining", {"prompt": "''"}, by_mlflow_run=False)
    monkeypatch.setenv("MLFLOW_RUN_ID", odd)
    assert tracking.given_run(client, "pretraining")[0] == odd
    monkeypatch.delenv("MLFLOW_RUN_ID")
    assert tracking.given_run(client, "pretraining") is None
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  run_view_type=ViewType.DELETED_ONLY)


def _log_tiny_after(barrier, uri: str, run_id: str, errors) -> None:
    try:
        client = MlflowClient(uri)
        client.get_run(run_id)  # the store is open: the two processes now differ by microseconds
        barrier.wait(timeout=120)
        tracking.log_dataset(client, run_id, "tiny", "/data/tiny.txt", "0123456789abcdef")
    except BaseException as error:  # reported to the test, which names it
        errors.put(f"{type(error).__name__}: {str(error)[:300]}")


def test_runs_starting_together_both_log_a_dataset_new_to_their_experiment(store):
    # MLflow looks for the dataset, then inserts it: without log_dataset's second try one of two processes
    # released together fails on the datasets table's unique key nearly every time
    client = MlflowClient(store)
    forked = multiprocessing.get_context("fork")
    for trial in range(3):
        experiment_id = tracking.experiment_id(client, f"together-{trial}")
        run_ids = [client.create_run(experiment_id).info.run_id for _ in range(2)]
        barrier, errors = forked.Barrier(2), forked.Queue()
        processes = [forked.Process(target=_log_tiny_after, args=(barrier, store, run_id, errors))
                     for run_id in run_ids]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=300)
        reported = []
        while not errors.empty():
            reported.append(errors.get())
        assert not reported and [process.exitcode for process in processes] == [0, 0], reported
        for run_id in run_ids:
            [dataset] = client.get_run(run_id).inputs.dataset_inputs
            assert (dataset.dataset.name, dataset.dataset.digest) == ("tiny", "0123456789abcdef")
