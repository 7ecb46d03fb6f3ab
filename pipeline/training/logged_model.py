"""The run's final weights as an MLflow 3 LoggedModel: a pyfunc text generator whose code is generator.py beside
this file, linked to the run at its step with its metrics. tracking/models.py finds, loads and registers it."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from pipeline.tracking import checkpoints
from pipeline.training.init_from import LINEAGE_TAG

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
                  metrics: list[Metric], tokenizer: dict, tags: dict | None = None) -> str:
    """Log the weights as a LoggedModel of the run at step, with the run's params and the given metric points
    (as the run logged them) linked to it, so that search_logged_models can rank models, and tags besides
    the run's lineage; returns its id.
    tokenizer: checkpoints.tokenizer_state's spec and ranks; a learned tokenizer's ranks travel as an artifact."""
    run = client.get_run(run_id)
    # a fine-tuned model says what it was fine-tuned from: the run's --init-from tags
    lineage = {key: value for key, value in run.data.tags.items() if key.startswith(LINEAGE_TAG)}
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       params=run.data.params, tags={**lineage, **(tags or {})},
                                       model_type="text-generation")
    with tempfile.TemporaryDirectory() as folder:
        weights_path = Path(folder) / "weights.pt"
        checkpoints.save(weights_path, {"model": weights, "step": step})
        config_path = Path(folder) / "config.json"
        config_path.write_text(json.dumps({"model": model_config, "sampling": sampling,
                                           "tokenizer": tokenizer["spec"]}, indent=1))
        artifacts = {"weights": str(weights_path), "weights_sha256": f"{weights_path}.sha256",
                     "config": str(config_path)}
        if tokenizer["ranks"]:
            artifacts["tokenizer"] = str(Path(folder) / "tokenizer.tiktoken")
            Path(artifacts["tokenizer"]).write_text(tokenizer["ranks"])
        with warnings.catch_warnings():  # no input example on purpose: MLflow would run the model to check it
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            mlflow.pyfunc.log_model(
                name=MODEL_NAME, model_id=model.model_id, python_model=str(GENERATOR_CODE),
                artifacts=artifacts,
                signature=SIGNATURE, pip_requirements=PIP_REQUIREMENTS,
                model_config={"device": "auto"},  # load_model(uri, model_config={"device": "cpu"}) picks another
            )
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    # the same points again, now naming the model: the store keeps one copy in the run's history (as Model.log)
    client.log_batch(run_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id,
                                             run_id=run_id) for m in metrics])
    return model.model_id
