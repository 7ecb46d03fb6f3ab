"""A run's model as an MLflow 3 LoggedModel (logged at the end of training by training/logged_model.py): found
on its run, loaded back by URI, registered by name."""

from __future__ import annotations

import mlflow

from pipeline.errors import LabError, OutdatedModelError, TrackingError, first_line
from pipeline.settings import check_model_name


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
    except ImportError as error:  # its generator.py, copied in when it was logged, imports a module since moved
        raise OutdatedModelError(f"model {uri} was logged by an older version of the lab, whose loading code no "
                                 f"longer imports ({first_line(error)})") from None
    except Exception as error:
        raise TrackingError(f"cannot load model {uri}: {first_line(error)}") from None
