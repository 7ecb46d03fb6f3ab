"""A run's model as an MLflow 3 LoggedModel: logged at the end of training (a pyfunc text generator, see
generator.py), linked to the run at its step with its metrics, loaded back by URI, registered by name."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from pipeline.errors import LabError, TrackingError, first_line
from pipeline.settings import check_model_name


MODEL_NAME = "model"
GENERATOR_CODE = Path(__file__).with_name("generator.py")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),  # a list of prompts
    outputs=Schema([ColSpec("string")]),  # their continuations
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 100), ParamSpec("temperature", "double", 0.8),
                        ParamSpec("top_k", "long", 40), ParamSpec("seed", "long", 1337)]),
)
# Given, not inferred: MLflow would otherwise load the model in a subprocess to find its imports, seconds at
# the end of every run. The generator also needs the lab itself: serve it from the lab's virtualenv.
PIP_REQUIREMENTS = [f"mlflow=={mlflow.__version__}", "torch", "tiktoken", "pandas"]


LINKED_METRICS = ("train_loss", "val_loss", "val_bpb")  # a model's metrics: those of its step


def log_generator(client, run_id: str, step: int, weights: dict, model_config: dict, sampling: dict,
                  metrics: list[Metric]) -> str:
    """Log the weights as a LoggedModel of the run at step, with the run's params and the given metric points
    (as the run logged them) linked to it, so that search_logged_models can rank models; returns its id."""
    from pipeline.training import checkpoints

    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       params=run.data.params, model_type="text-generation")
    with tempfile.TemporaryDirectory() as folder:
        weights_path = Path(folder) / "weights.pt"
        checkpoints.save(weights_path, {"model": weights, "step": step})
        config_path = Path(folder) / "config.json"
        config_path.write_text(json.dumps({"model": model_config, "sampling": sampling}, indent=1))
        with warnings.catch_warnings():  # no input example on purpose: MLflow would run the model to check it
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            mlflow.pyfunc.log_model(
                name=MODEL_NAME, model_id=model.model_id, python_model=str(GENERATOR_CODE),
                artifacts={"weights": str(weights_path), "weights_sha256": f"{weights_path}.sha256",
                           "config": str(config_path)},
                signature=SIGNATURE, pip_requirements=PIP_REQUIREMENTS,
                model_config={"device": "auto"},  # load_model(uri, model_config={"device": "cpu"}) picks another
            )
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    # the same points again, now naming the model: the store keeps one copy in the run's history (as Model.log)
    client.log_batch(run_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id,
                                             run_id=run_id) for m in metrics])
    return model.model_id


def model_of(run) -> str | None:
    """The id of the newest model a run logged (its final weights), or None."""
    models = run.outputs.model_outputs if run.outputs else []
    return max(models, key=lambda m: m.step).model_id if models else None


def register(client, run_id: str, name: str) -> int:
    """Register the run's model in the Model Registry under name (a new version); returns the version."""
    check_model_name(name)
    model_id = model_of(client.get_run(run_id))
    if model_id is None:
        raise TrackingError(f"run {run_id} has no logged model: only runs that finished log one")
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
    return int(version.version)


def load_generator(uri: str, device: str = "auto"):
    """The pyfunc text generator at a model URI (models:/m-..., models:/NAME/VERSION, runs:/RUN/model)."""
    try:
        return mlflow.pyfunc.load_model(uri, model_config={"device": device})
    except LabError:  # weights that fail their checksum or are not plain tensors
        raise
    except Exception as error:
        raise TrackingError(f"cannot load model {uri}: {first_line(error)}") from None
