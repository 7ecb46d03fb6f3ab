"""Checkpoints: everything needed to continue a run exactly, saved atomically and loaded safely.

A checkpoint is a plain dict of tensors and primitives (model and optimizer state, step, data position, RNG
state, settings), so it loads with `torch.load(weights_only=True)`: no pickled code is ever executed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from pipeline.errors import CheckpointError
from pipeline.files import atomic_path

FORMAT = 1
ARTIFACT_DIR = "checkpoints"
ARTIFACT_NAME = "last.pt"


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as error:  # truncated zip, pickled objects refused by weights_only, ...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (format {FORMAT})")
    return state


def log(client, run_id: str, state: dict) -> None:
    """Save the state and log it as the run's checkpoints/last.pt."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ARTIFACT_NAME
        save(path, state)
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)


def load_from_run(run_id: str) -> dict:
    """The last checkpoint a run logged."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{ARTIFACT_NAME}", dst_path=folder
            )
        except Exception:
            raise CheckpointError(f"run {run_id} has no checkpoint ({ARTIFACT_DIR}/{ARTIFACT_NAME})") from None
        return load(Path(path))
