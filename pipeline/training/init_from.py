"""--init-from: a new run's first weights, with a fresh optimizer and schedule, from another run's checkpoint
(RUN_ID, RUN_ID@STEP), a logged or registered model (models:/m-..., models:/NAME/VERSION, runs:/RUN/model), a
folder holding a Hugging Face GPT-2 (config.json + model.safetensors), or OpenAI's GPT-2 (gpt2, gpt2-medium,
gpt2-large, gpt2-xl) through huggingface_hub's cache, downloaded once.

The model's shape is the source's: a shorter --context-length crops the position embeddings, --dropout may be
set, and any other shape option that differs is refused. The run reads the source's tokenizer.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from model.configs import GPTConfig, UnknownConfigError, config_from_hf, load_config, state_from_hf
from pipeline.data.tokenizer import TOKENIZER
from pipeline.errors import CheckpointError, SettingsError, first_line
from pipeline.settings import TrainSettings, tokenizer_vocab_size
from pipeline.tracking import checkpoints
from pipeline.tracking.runs import connect, get_run

OPENAI_GPT2 = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HF_FILES = ("config.json", "model.safetensors")
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd")
RUN_SOURCE = re.compile(r"^(?P<run>[0-9a-f]{32})(@(?P<step>\d+))?$")
LINEAGE_TAG = "lab.init_from"  # the source as given; beside it lab.init_from_run and lab.init_from_model


@dataclass(frozen=True)
class Source:
    """Weights to start from, in the lab's layout, with the shape and tokenizer they were trained with."""

    spec: str  # as given
    config: GPTConfig
    weights: dict
    tokenizer: dict  # checkpoints.tokenizer_state's {"spec", "ranks"}
    run_id: str = ""  # the run the weights come from, when known
    model_id: str = ""  # the logged model they come from, when one
    step: int | None = None

    def lineage_tags(self) -> dict[str, str]:
        tags = {LINEAGE_TAG: self.spec, f"{LINEAGE_TAG}_run": self.run_id, f"{LINEAGE_TAG}_model": self.model_id}
        return {key: value for key, value in tags.items() if value}

    def model_config(self, settings: TrainSettings) -> GPTConfig:
        """The source's shape with the run's dropout and a shorter context; SettingsError for any other shape
        setting that differs, and for a tokenizer that is not the source's."""
        given = load_config(settings.config) if settings.config != TrainSettings().config else None
        conflicts = [f"--{name.replace('_', '-')} {value}" for name in SHAPE_FIELDS
                     for value in (getattr(settings, name), getattr(given, name, None))
                     if value is not None and value != getattr(self.config, name)]
        if conflicts:
            raise SettingsError(f"--init-from {self.spec} trains its own shape ({_shape(self.config)}): drop "
                                f"{', '.join(dict.fromkeys(conflicts))}, or --config {settings.config}")
        context = settings.context_length or self.config.context_length
        if context > self.config.context_length:
            raise SettingsError(f"--context-length {context} is longer than --init-from {self.spec}'s "
                                f"{self.config.context_length} positions")
        if settings.tokenizer != self.tokenizer["spec"]:
            raise SettingsError(f"--init-from {self.spec} reads {self.tokenizer['spec']} tokens: give --tokenizer "
                                f"{self.tokenizer['spec']}")
        if tokenizer_vocab_size(settings.tokenizer) > self.config.vocab_size:
            raise SettingsError(f"--init-from {self.spec} has {self.config.vocab_size} token embeddings, fewer than "
                                f"{settings.tokenizer}'s {tokenizer_vocab_size(settings.tokenizer)} tokens")
        dropout = self.config.dropout if settings.dropout is None else settings.dropout
        return replace(self.config, context_length=context, dropout=dropout)

    def weights_for(self, config: GPTConfig) -> dict:
        """The weights with the position embeddings cropped to config's context."""
        weights = dict(self.weights)
        weights["transformer.wpe.weight"] = weights["transformer.wpe.weight"][: config.context_length]
        return weights

    def check_ranks(self, ranks: dict) -> None:
        """A learned tokenizer must be the very one the source learned: the same spec from other text has other
        tokens. ranks: the run's own, as checkpoints.tokenizer_state gives them."""
        if ranks["ranks"] != self.tokenizer["ranks"]:
            raise SettingsError(f"--init-from {self.spec} reads a {self.tokenizer['spec']} learned from another "
                                "text than this corpus's: fine-tune it with a tokenizer that is not learned "
                                "(gpt2, bytes)")


def load_source(spec: str) -> Source:
    """The weights --init-from names; SettingsError (one line) for a source that does not exist or is not a
    GPT of this lab or GPT-2."""
    spec = spec.strip()
    if spec in OPENAI_GPT2:
        return _from_huggingface_folder(spec, _openai_download(spec))
    if Path(spec).is_dir():
        return _from_huggingface_folder(spec, Path(spec))
    if spec.startswith(("models:/", "runs:/")):
        return _from_logged_model(spec)
    matched = RUN_SOURCE.match(spec)
    if matched:
        return _from_run(spec, matched["run"], int(matched["step"]) if matched["step"] else None)
    raise SettingsError(f"--init-from {spec}: not a run id (RUN_ID or RUN_ID@STEP), a model URI (models:/..., "
                        f"runs:/...), a folder holding {' and '.join(HF_FILES)}, or one of {', '.join(OPENAI_GPT2)}")


def model_from_source(spec: str, device):
    """The model a source holds, and the tiktoken encoding it reads and writes (as checkpoints.model_from_run)."""
    from model import GPT

    source = load_source(spec)
    model = GPT(source.config)
    model.load_state_dict(source.weights)
    return model.to(device), checkpoints.encoding_from_state(source.tokenizer)


def _from_run(spec: str, run_id: str, step: int | None) -> Source:
    """A run's newest checkpoint, or the one of step; a step whose checkpoint is gone may have a logged model
    (the best weights' are kept so)."""
    run = get_run(connect(), run_id)
    try:
        state = checkpoints.load_from_run(run_id, step=step)
    except CheckpointError:
        models = {output.step: output.model_id for output in (run.outputs.model_outputs if run.outputs else [])}
        if step not in models:
            raise
        return replace(_from_logged_model(f"models:/{models[step]}"), spec=spec)
    return Source(spec, GPTConfig(**state["model_config"]), state["model"],
                  state.get("tokenizer") or {"spec": TOKENIZER, "ranks": ""}, run_id=run_id, step=state["step"])


def _from_logged_model(uri: str) -> Source:
    import mlflow

    connect()
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))
        except Exception as error:
            raise SettingsError(f"--init-from {uri}: no such model ({first_line(error)})") from None
        files = local / "artifacts"
        if not (files / "weights.pt").is_file() or not (files / "config.json").is_file():
            raise SettingsError(f"--init-from {uri} is not a model of this lab (no artifacts/weights.pt)")
        state = checkpoints.load(files / "weights.pt")
        config = json.loads((files / "config.json").read_text())
        ranks = (files / "tokenizer.tiktoken").read_text() if (files / "tokenizer.tiktoken").is_file() else ""
        logged = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
    model_id = logged.get("model_id") or ""
    run_id = mlflow.get_logged_model(model_id).source_run_id if model_id else ""
    return Source(uri, GPTConfig(**config["model"]), state["model"],
                  {"spec": config.get("tokenizer", TOKENIZER), "ranks": ranks}, run_id=run_id or "",
                  model_id=model_id, step=state.get("step"))


def _from_huggingface_folder(spec: str, folder: Path) -> Source:
    from safetensors.torch import load_file

    missing = [name for name in HF_FILES if not (folder / name).is_file()]
    if missing:
        raise SettingsError(f"--init-from {spec}: {folder} has no {' and no '.join(missing)} (a Hugging Face "
                            "GPT-2 folder holds both)")
    try:
        config = config_from_hf(json.loads((folder / "config.json").read_text()))
        weights = state_from_hf(load_file(str(folder / "model.safetensors")))
    except (UnknownConfigError, KeyError, ValueError, OSError) as error:
        raise SettingsError(f"--init-from {spec}: {first_line(error)}") from None
    return Source(spec, config, weights, {"spec": TOKENIZER, "ranks": ""})


def _openai_download(name: str) -> Path:
    """OpenAI's GPT-2 from the Hugging Face Hub, through huggingface_hub's cache: a second run reads the cache."""
    from huggingface_hub import constants, hf_hub_download

    repo = f"openai-community/{name}"
    try:
        paths = [hf_hub_download(repo, filename) for filename in HF_FILES]
    except Exception as error:
        raise SettingsError(
            f"--init-from {name}: OpenAI's weights are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"could not be downloaded ({first_line(error)[:120]}): with network, run once to fill the cache; "
            f"without, put {' and '.join(HF_FILES)} from https://huggingface.co/{repo} in a folder and give "
            "--init-from FOLDER") from None
    return Path(paths[0]).parent


def _shape(config: GPTConfig) -> str:
    return ", ".join(f"{name} {getattr(config, name)}" for name in (*SHAPE_FIELDS, "context_length"))

