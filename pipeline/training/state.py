"""What a run's phases hand on (Corpus, Learner, Data, Plan, Tracked: made by training/trainer.py) and what a run
returns."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from model import GPT
from pipeline.data.ngrams import NgramIndex
from pipeline.data.batches import ValWindows, WindowSampler
from pipeline.data.shards import Shards
from pipeline.settings import TrainSettings
from pipeline.tracking import MetricBuffer
from pipeline.training.device import mixed_precision
from pipeline.training.distributed import World
from pipeline.training.muon import MuonWithAdamW
from pipeline.training.optimizer import AdamW
from pipeline.training.schedule import total_steps_for


@dataclass(frozen=True)
class TrainResult:
    main_process: bool  # False on the other processes of a torchrun group, which report nothing
    run_id: str
    steps: int
    tokens_seen: int
    train_loss: float
    val_loss: float | None
    status: str
    pruned_at: int | None = None  # the step where a trial of a bayes sweep was stopped as behind the others
    model_id: str | None = None  # the LoggedModel of the final weights
    ui_url: str = ""  # the run's page in the MLflow UI


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the run was checkpointed and ended KILLED."""

    def __init__(self, run_id: str, step: int):
        super().__init__(f"interrupted at step {step}; checkpoint saved: resume with --resume {run_id}")
        self.run_id = run_id
        self.step = step


@dataclass(frozen=True)
class Corpus:
    """What phase one found: the corpus's names and its token shards."""

    name: str
    label: str  # the name in run names and tags: a local file's name without its hash
    source: str
    prompt: str
    shards: Shards


@dataclass
class Learner:
    """The model, the module the steps call (compiled and/or DDP-wrapped), its optimizer and its precision."""

    model: GPT
    step_model: torch.nn.Module
    optimizer: AdamW | MuonWithAdamW
    autocast: object
    scaler: torch.amp.GradScaler | None

    @classmethod
    def on(cls, device: torch.device, model: GPT, step_model, optimizer) -> "Learner":
        autocast, scaler = mixed_precision(device)
        return cls(model, step_model, optimizer, autocast, scaler)


@dataclass(frozen=True)
class EvalSet:
    """Another corpus's fixed val windows (--eval-corpus), scored at each evaluation beside the run's own."""

    name: str
    val: ValWindows
    tokens_per_byte: float


@dataclass(frozen=True)
class Data:
    sampler: WindowSampler
    val: ValWindows
    prompt: str
    val_tokens_per_byte: float = 1.0  # of the val text: turns val_loss (nats per token) into bits per byte
    shards: Shards | None = None
    eval_sets: tuple[EvalSet, ...] = ()

    @cached_property
    def encoding(self):
        """The tiktoken encoding of the run's tokenizer, as the shards keep it: prompts and samples are read and
        written with it."""
        return self.shards.encoding

    @cached_property
    def ngrams(self) -> NgramIndex:
        """The train split's 8-grams (how much of a sample is copied), loaded or built when the first sample
        needs them: a run that samples nothing never pays for them."""
        return NgramIndex.load_or_build(self.shards)


@dataclass(frozen=True)
class Plan:
    total_steps: int
    tokens_per_step: int  # all processes together
    flops_per_token: float
    peak_flops_per_sec: float  # of every process together
    epochs: float  # passes over the train split's window starts that total_steps make
    train_tokens: int  # in the train split

    @classmethod
    def make(cls, settings: TrainSettings, sampler: WindowSampler, world: World, flops_per_token: float,
             peak_flops_per_sec: float, train_tokens: int) -> "Plan":
        total_steps = total_steps_for(settings, sampler.n_windows, sampler.length)
        windows_per_step = settings.batch_size * settings.grad_accum
        return cls(total_steps, windows_per_step * sampler.length, flops_per_token, peak_flops_per_sec,
                   epochs=total_steps * windows_per_step / sampler.n_windows, train_tokens=train_tokens)

    def describe(self) -> str:
        # An epoch of window starts sees each token about context_length times: what memorisation depends on
        # is how often each token comes back, so the plan says both.
        tokens = self.total_steps * self.tokens_per_step
        return (f"{self.total_steps:,} steps x {self.tokens_per_step:,} tokens = {tokens:,} tokens, "
                f"{tokens / self.train_tokens:.3g} passes over the {self.train_tokens:,} train tokens "
                f"({self.epochs:.3g} epochs of window starts)")


@dataclass(frozen=True)
class Tracked:
    client: object  # MlflowClient on rank 0, None elsewhere
    run_id: str
    metrics: MetricBuffer | None
    skip_through: int  # a resumed run's last logged step: its samples are not logged twice
    ui_url: str = ""  # the run's page in the MLflow UI (rank 0)
