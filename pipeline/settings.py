"""Every training setting, with its default and its help, in one dataclass, and its click options.

The CLI (`python -m pipeline.train`), the MLproject and experiments.yaml all build a TrainSettings, so a
setting has one name, one default and one check wherever it comes from. Listing the options imports neither
torch nor MLflow: the model module is loaded only to resolve a config.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

import click

from pipeline.errors import SettingsError

if TYPE_CHECKING:
    from model import GPTConfig

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "context_length", "dropout")
OPTIMIZERS = ("adamw", "muon")
MAX_BPE_TOKENS = 65535  # a bpe:N's end-of-text token is id N, and shards hold uint16 ids


def _setting(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainSettings:
    # what to train on
    config: str = _setting("nano", "Model size: nano, small, medium, or a YAML file of GPTConfig fields.")
    corpus: str = _setting("verdict", "Corpus name from corpus/registry.yaml, or a path to a text file or folder.")
    tokenizer: str = _setting("gpt2", "gpt2 (tiktoken's GPT-2 BPE, 50,257 tokens), bytes (256 byte tokens + "
                                      "end-of-text) or bpe:N (a byte-level BPE of N tokens, 256 to 65535, learned "
                                      "from the corpus's train split).")
    # budget: the one given, or the first reached of those given (0 = not set); with none given, one epoch
    epochs: float = _setting(0.0, "Passes over every window start of the train split (fractions allowed; "
                                  "one epoch when no budget is given).")
    max_steps: int = _setting(0, "Stop after this many optimizer steps (0 = no limit).")
    max_tokens: int = _setting(0, "Stop after this many training tokens (0 = no limit).")
    # batches
    batch_size: int = _setting(8, "Windows per micro-batch.")
    grad_accum: int = _setting(1, "Micro-batches per optimizer step (effective batch = batch_size x grad_accum).")
    stride: int = _setting(1, "Tokens between window starts; 1 visits every start once per epoch.")
    # optimizer and schedule
    lr: float = _setting(1e-3, "Peak learning rate, reached after warmup.")
    min_lr: float = _setting(1e-4, "Learning rate at the end of the cosine decay.")
    warmup_steps: int = _setting(30, "Steps of linear warmup from 0 to lr.")
    weight_decay: float = _setting(0.1, "Weight decay of the weight matrices (under Muon, as much per step as "
                                        "AdamW's at --lr).")
    beta1: float = _setting(0.9, "AdamW beta1.")
    beta2: float = _setting(0.95, "AdamW beta2.")
    grad_clip: float = _setting(1.0, "Clip the gradient norm to this (0 = no clipping).")
    optimizer: str = _setting("adamw", "adamw, or muon: Muon for the blocks' weight matrices and AdamW (at --lr) "
                                       "for the embeddings, norms and biases.")
    muon_lr: float = _setting(0.02, "Muon's peak learning rate (--optimizer muon); warmup and decay follow --lr's.")
    seed: int = _setting(1337, "Seed for weights, window order and dropout.")
    # hardware
    device: str = _setting("auto", "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")
    compile: bool = _setting(False, "Compile the model with torch.compile.")
    # what gets recorded, and how often (in optimizer steps; 0 = only at the end)
    log_interval: int = _setting(10, "Log train_loss, lr, grad_norm and tokens_per_sec every N steps.")
    eval_interval: int = _setting(100, "Measure val_loss every N steps.")
    val_windows: int = _setting(32, "Fixed validation windows scored at each evaluation.")
    eval_corpus: str = _setting("", "Also score this corpus's val split at each evaluation, as val_loss/NAME and "
                                    "val_bpb/NAME (repeatable; a corpus name or path; several joined by commas).",
                                multiple=True)
    sample_interval: int = _setting(200, "Generate samples every N steps.")
    sample_tokens: int = _setting(48, "Tokens generated per sample.")
    inspect_interval: int = _setting(-1, "Log attention maps of the prompt and every head's induction and "
                                         "previous-token scores every N steps (-1 = with the samples).")
    temperature: float = _setting(0.8, "Sampling temperature (0 = greedy).")
    top_k: int = _setting(40, "Sample among the k likeliest tokens (0 = all).")
    prompt: str = _setting("", "Prompt for samples (empty = the corpus's own prompt).")
    checkpoint_interval: int = _setting(500, "Save a checkpoint every N steps (always at the end).")
    # MLflow
    experiment: str = _setting("pretraining", "MLflow experiment name.")
    run_name: str = _setting("", "MLflow run name (empty = CONFIG-CORPUS-lrLR).")
    resume: str = _setting("", "MLflow run id to continue from its last checkpoint, with its own settings; a "
                               "larger --max-steps, --max-tokens or --epochs trains it longer.")
    register: str = _setting("", "Register the finished run's model in the MLflow Model Registry under this "
                                 "name (a new version each time; empty = do not register).")
    init_from: str = _setting("", "Start from these weights with a fresh optimizer and schedule: RUN_ID, "
                                  "RUN_ID@STEP, models:/m-ID, models:/NAME/VERSION, runs:/RUN/model, a folder "
                                  "holding a Hugging Face GPT-2 (config.json, model.safetensors), or gpt2, "
                                  "gpt2-medium, gpt2-large, gpt2-xl (OpenAI's). The shape is the source's.")
    # model overrides: None keeps the value of the chosen config
    n_layer: int | None = _setting(None, "Override the config's number of transformer blocks.", model=True)
    n_head: int | None = _setting(None, "Override the config's attention heads per block.", model=True)
    n_embd: int | None = _setting(None, "Override the config's width (embedding size).", model=True)
    context_length: int | None = _setting(None, "Override the config's context length in tokens.", model=True)
    dropout: float | None = _setting(None, "Override the config's dropout probability.", model=True)

    def __post_init__(self):
        # a blank name, run id or prompt means "not given", as an empty one does
        for name in ("run_name", "resume", "prompt", "register", "init_from", "eval_corpus"):
            if isinstance(getattr(self, name), str) and not getattr(self, name).strip():
                setattr(self, name, "")

    def budget_epochs(self) -> float:
        """The epochs budget: as given, or one epoch when no budget at all was given (not when max_steps is)."""
        if self.epochs or self.max_steps or self.max_tokens:
            return self.epochs
        return 1.0

    def changed_from_defaults(self) -> list[str]:
        """The settings whose values differ from the defaults: what the user gave."""
        defaults = TrainSettings()
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(defaults, f.name)]

    def eval_corpora(self) -> list[str]:
        """The --eval-corpus names, in order, once each."""
        return list(dict.fromkeys(name.strip() for name in self.eval_corpus.split(",") if name.strip()))

    def inspection_interval(self) -> int:
        """Steps between inspections: inspect_interval, or the samples' when it is -1."""
        return self.sample_interval if self.inspect_interval == -1 else self.inspect_interval

    def model_overrides(self) -> dict:
        return {name: getattr(self, name) for name in MODEL_FIELDS if getattr(self, name) is not None}

    def model_config(self) -> "GPTConfig":
        """The named (or YAML) config with this run's overrides applied and checked."""
        from model import GPTConfig, UnknownConfigError, load_config, with_overrides
        from model.configs import padded_vocab_size

        try:
            config = with_overrides(load_config(self.config), self.model_overrides(), source="overrides")
        except UnknownConfigError as error:
            raise SettingsError(str(error)) from None
        vocab = tokenizer_vocab_size(self.tokenizer)
        if config.vocab_size == GPTConfig().vocab_size:  # the named sizes' GPT-2 vocabulary: the tokenizer's instead
            config = replace(config, vocab_size=padded_vocab_size(vocab))
        _check_model(config, vocab)
        return config

    def validate(self) -> "TrainSettings":
        """Raise SettingsError for the first value out of range; return self to allow chaining."""
        positive = ("batch_size", "grad_accum", "stride", "val_windows", "sample_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SettingsError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise SettingsError(f"unknown optimizer '{self.optimizer}' (known: {', '.join(OPTIMIZERS)})")
        if not (self.muon_lr > 0 and math.isfinite(self.muon_lr)):
            raise SettingsError(f"muon_lr must be a positive number, got {self.muon_lr}")
        if not (0 <= self.min_lr <= self.lr):
            raise SettingsError(f"min_lr must be between 0 and lr ({self.lr}), got {self.min_lr}")
        non_negative = ("epochs", "max_steps", "max_tokens", "warmup_steps", "weight_decay", "grad_clip",
                        "log_interval", "eval_interval", "sample_interval", "sample_tokens", "temperature",
                        "top_k", "checkpoint_interval")
        for name in non_negative:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise SettingsError(f"{name} must be zero or more, got {value}")
        if self.inspect_interval < -1:
            raise SettingsError(f"inspect_interval must be -1 (with the samples) or more, got {self.inspect_interval}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise SettingsError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("experiment", "corpus", "config"):
            if not getattr(self, name).strip():
                raise SettingsError(f"{name} must not be empty")
        if self.register:
            check_model_name(self.register)
        if self.eval_corpora() and self.tokenizer.startswith("bpe:"):
            raise SettingsError(f"--eval-corpus needs a tokenizer that is not learned from the run's corpus "
                                f"(gpt2, bytes): {self.tokenizer} learns other tokens from each text")
        if self.init_from:  # the shape is the source's: the trainer checks the options against it
            tokenizer_vocab_size(self.tokenizer)
        else:
            self.model_config()
        return self

    def as_params(self) -> dict[str, str]:
        """Settings as MLflow params; model fields are logged resolved, by the trainer."""
        return {k: _param_text(v) for k, v in asdict(self).items() if k not in MODEL_FIELDS}


def tokenizer_vocab_size(spec: str) -> int:
    """The token ids a tokenizer spec has, end-of-text included (the model's embedding holds at least these);
    SettingsError for a spec that names no tokenizer."""
    from model.configs import GPT2_VOCAB_SIZE

    if spec == "gpt2":
        return GPT2_VOCAB_SIZE
    if spec == "bytes":
        return 256 + 1
    kind, _, count = spec.partition(":")
    # digits written as int() writes them: "bpe:0300" would name a second shard folder for the same tokenizer
    if kind == "bpe" and count.isdigit() and str(int(count)) == count and 256 <= int(count) <= MAX_BPE_TOKENS:
        return int(count) + 1
    raise SettingsError(f"unknown tokenizer '{spec}': give gpt2, bytes, or bpe:N with N from 256 to "
                        f"{MAX_BPE_TOKENS}")


def _check_model(config: "GPTConfig", vocab: int) -> None:
    for name in ("n_layer", "n_head", "n_embd", "context_length"):
        if getattr(config, name) < 1:
            raise SettingsError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.vocab_size < vocab:
        raise SettingsError(f"vocab_size must hold the tokenizer's {vocab} tokens, got {config.vocab_size}")
    if config.n_embd % config.n_head:
        raise SettingsError(f"n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head})")
    if not 0 <= config.dropout < 1:
        raise SettingsError(f"dropout must be in [0, 1), got {config.dropout}")


def check_model_name(name: str) -> None:
    """The Model Registry's rule for a registered model's name, checked before any training."""
    if not name.strip() or any(c in name for c in "/:"):
        raise SettingsError(f"a registered model's name must be non-empty, without '/' or ':', got '{name}'")


def short_number(value: float) -> str:
    """3e-4 rather than 0.0003: how learning rates are written in run names."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _param_text(value) -> str:
    return "" if value is None else str(value)


def setting_type(name: str) -> type:
    """The plain type of a field (int for `int | None`)."""
    hint = typing.get_type_hints(TrainSettings)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def settings_from_mapping(values: dict, base: TrainSettings | None = None, where: str = "settings") -> TrainSettings:
    """Build settings from a plain mapping (experiments.yaml, the dashboard): unknown keys and wrong types
    are refused with the key named."""
    known = {f.name for f in fields(TrainSettings)}
    checked = {}
    for key, value in values.items():
        if key not in known:
            raise SettingsError(f"{where}: unknown setting '{key}'")
        checked[key] = coerce(key, value, where)
    return replace(base or TrainSettings(), **checked)


def coerce(name: str, value, where: str = "settings"):
    """value as the type of setting `name`, accepting ints for floats; refuses anything else."""
    kind = setting_type(name)
    if value is None and name in MODEL_FIELDS:
        return None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise SettingsError(f"{where}: '{name}' must be {kind.__name__}, got {value!r}")


def settings_options(command):
    """Add one option per TrainSettings field: `max_steps` becomes `--max-steps`. Model overrides also accept
    the underscore spelling, which `mlflow run -P n_layer=2` passes for parameters the MLproject leaves out."""
    for f in reversed(fields(TrainSettings)):
        names = [f"--{f.name.replace('_', '-')}"]
        if f.name in MODEL_FIELDS and "_" in f.name:
            names.append(f"--{f.name}")
        kind = setting_type(f.name)
        default = None if f.default is MISSING else f.default
        if f.metadata.get("multiple"):  # repeatable; kept as one text of names joined by commas
            option = click.option(*names, f.name, multiple=True, default=(), callback=_joined,
                                  help=f.metadata["help"])
        elif kind is bool:  # `--compile` alone, or `--compile true/false` as the MLproject passes it
            option = click.option(*names, f.name, type=bool, is_flag=False, flag_value=True, default=default,
                                  show_default=True, help=f.metadata["help"])
        else:
            option = click.option(*names, f.name, type=kind, default=default, show_default=default is not None,
                                  help=f.metadata["help"])
        command = option(command)
    return command


def options_given(context: click.Context) -> frozenset[str]:
    """The settings given on the command line, whatever their values. `mlflow run` passes every parameter of
    the MLproject, so under it ($MLFLOW_RUN_ID set) a value equal to its default counts as not given."""
    from click.core import ParameterSource

    given = {f.name for f in fields(TrainSettings)
             if context.get_parameter_source(f.name) not in (None, ParameterSource.DEFAULT)}
    if os.environ.get("MLFLOW_RUN_ID"):
        defaults = TrainSettings()
        given = {name for name in given if context.params[name] != getattr(defaults, name)}
    return frozenset(given)


def _joined(context, parameter, values) -> str:
    return ",".join(value for value in values if value.strip())


def settings_from_options(options: dict) -> TrainSettings:
    return TrainSettings(**{f.name: options[f.name] for f in fields(TrainSettings)})


def settings_to_args(settings: TrainSettings, names=None) -> list[str]:
    """The `pipeline.train` options that reproduce settings (the inverse of settings_from_options); names: only
    these settings (a resume gives only what it changes)."""
    args = []
    for f in fields(TrainSettings):
        value = getattr(settings, f.name)
        if value is None or (names is not None and f.name not in names):
            continue
        args += [f"--{f.name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args
