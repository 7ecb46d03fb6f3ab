"""Checkpoints: everything needed to continue a run exactly, saved atomically, checked and loaded safely; kept as
the run's MLflow artifacts, and a run's model loaded back from its newest one.

A checkpoint is a plain dict of tensors and primitives (model and optimizer state, step, data position, RNG
state, settings, the tokenizer's spec and a learned one's ranks), so it loads with
`torch.load(weights_only=True)`: no pickled code is ever executed. Each file has its sha256 beside it
(`.sha256`); a run keeps its newest KEEP checkpoints, so when the newest turns out truncated or corrupt,
resuming falls back to the one before.
"""

from __future__ import annotations

import errno
import logging
import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from model import GPT, GPTConfig
from pipeline.data.shards import Shards
from pipeline.data.tokenizer import TOKENIZER, encoding_for
from pipeline.errors import CheckpointError, first_line
from pipeline.files import atomic_path, sha256_of
from pipeline.tracking.runs import connect, get_run

log = logging.getLogger(__name__)

FORMAT = 1
ARTIFACT_DIR = "checkpoints"
KEEP = 2
_NAME = re.compile(r"^step_(\d+)\.pt$")
_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def file_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def save(path: Path, state: dict) -> None:
    """Write the checkpoint and its .sha256 atomically; a full disk raises CheckpointError, old files intact."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, **state}, tmp)
            digest = sha256_of(tmp)
        with atomic_path(_checksum_path(path)) as tmp:
            tmp.write_text(f"{digest}  {path.name}\n")
    except OSError as error:
        raise CheckpointError(f"could not write checkpoint {path}: {error.strerror or error}") from None
    except RuntimeError as error:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        reason = (str(error).strip().splitlines() or ["write failed"])[-1][:200]
        raise CheckpointError(f"could not write checkpoint {path} (is the disk full?): {reason}") from None


def load(path: Path) -> dict:
    """A checkpoint checked against its .sha256 (when present) and loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    checksum = _checksum_path(path)
    if checksum.is_file():
        expected = (checksum.read_text().split() or [""])[0]
        if sha256_of(path) != expected:
            raise CheckpointError(f"checkpoint {path} is corrupt: its sha256 does not match {checksum.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickled objects refused by weights_only, ...
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line(error)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (format {FORMAT})")
    return state


def store(client, run_id: str, state: dict) -> None:
    """Save the state as the run's checkpoints/step_NNNNNNNN.pt (+ .sha256) and drop all but the newest KEEP."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / file_name(state["step"])
        save(path, state)
        try:
            client.log_artifact(run_id, str(path), ARTIFACT_DIR)
            client.log_artifact(run_id, str(_checksum_path(path)), ARTIFACT_DIR)
        except OSError as error:
            if error.errno not in _DISK_FULL:  # e.g. a tracking server that is away: the caller decides
                raise
            raise CheckpointError(f"could not store checkpoint {path.name}: {error.strerror}") from None
    steps = logged_steps(client, run_id)
    if len(steps) > KEEP:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repository = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
        for step in steps[:-KEEP]:
            for name in (file_name(step), file_name(step) + ".sha256"):
                repository.delete_artifacts(f"{ARTIFACT_DIR}/{name}")


def load_from_run(run_id: str, client=None, step: int | None = None) -> dict:
    """The newest checkpoint of a run that passes its checks (a corrupt one is reported and skipped), or the one
    of the given step."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    steps = logged_steps(client, run_id)
    if not steps:
        raise CheckpointError(f"run {run_id} has no checkpoint: it is not a training run, or it never saved one")
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"run {run_id} keeps no checkpoint of step {step} (it keeps those of steps "
                                  f"{', '.join(map(str, steps))})")
        steps = [step]
    problems = []
    in_place = _local_artifact_dir(client.get_run(run_id).info.artifact_uri)
    with tempfile.TemporaryDirectory() as folder:
        for step in reversed(steps):
            try:
                if in_place:  # a store on this machine: read the file where it is, no copy
                    return load(in_place / ARTIFACT_DIR / file_name(step))
                local = {}
                for name in (file_name(step), file_name(step) + ".sha256"):
                    local[name] = mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{name}", dst_path=folder)
                return load(Path(local[file_name(step)]))
            except CheckpointError as error:
                log.warning("%s; trying the one before", error)
                problems.append(str(error))
            except Exception as error:  # a file missing from the store
                problems.append(f"{file_name(step)}: {first_line(error)}")
    raise CheckpointError(f"run {run_id} has no usable checkpoint ({problems[0]})")


def model_from_run(run_id: str, device: torch.device):
    """The model of a run's last checkpoint, and the tiktoken encoding it reads and writes."""
    client = connect()
    get_run(client, run_id)
    return model_from_state(load_from_run(run_id, client), device)


def model_from_state(state: dict, device: torch.device):
    """The model a checkpoint holds, on device, and the tiktoken encoding it reads and writes."""
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device), encoding_from_state(state.get("tokenizer"))


def tokenizer_state(shards: Shards) -> dict:
    """What rebuilds a run's tokenizer anywhere: its spec, and the ranks of one learned from the corpus (text)."""
    ranks = shards.tokenizer_ranks()
    return {"spec": shards.tokenizer, "ranks": "" if ranks is None else ranks.decode()}


def encoding_from_state(tokenizer: dict | None):
    """The encoding tokenizer_state describes; GPT-2's for checkpoints from before the tokenizer was a choice."""
    tokenizer = tokenizer or {"spec": TOKENIZER, "ranks": ""}
    return encoding_for(tokenizer["spec"], tokenizer["ranks"].encode() or None)


def logged_steps(client, run_id: str) -> list[int]:
    """The steps of the checkpoints a run keeps, oldest first."""
    names = [Path(a.path).name for a in client.list_artifacts(run_id, ARTIFACT_DIR)]
    return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)


def _local_artifact_dir(artifact_uri: str) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")
