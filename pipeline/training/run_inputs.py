"""A new run's inputs, logged once as params and a dataset input: every setting, the resolved model, the corpus
and its shards, the plan and the machine, so that a run's page says what it was trained on, and how."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict

import torch

from pipeline import tracking
from pipeline.files import PROJECT_DIR
from pipeline.settings import TrainSettings
from pipeline.training.distributed import World
from pipeline.training.state import Corpus, Data, Learner, Plan, Tracked


def log_run_inputs(tracked: Tracked, settings: TrainSettings, learner: Learner, corpus: Corpus, data: Data,
                   plan: Plan, world: World, device: torch.device, peak: tuple[float, str]) -> None:
    """Every setting, the resolved model, the corpus and its shards, and the machine (peak: one process's FLOP/s
    and where that comes from, as flops.peak_flops gives them), as params and a dataset."""
    client, run_id, shards = tracked.client, tracked.run_id, corpus.shards
    peak_flops_per_sec, peak_source = peak
    tracking.log_params_once(client, run_id, {
        **settings.as_params(),
        **{k: str(v) for k, v in asdict(learner.model.config).items()},
        "corpus_name": corpus.name,
        "shards_sha256": shards.tokens_sha256,
        "train_tokens": str(shards.train_tokens),
        "val_tokens": str(shards.val_tokens),
        "val_tokens_per_byte": f"{data.val_tokens_per_byte:.6g}",
        # how the shards were made (they are reused whatever made them): what a val loss is measured on
        "tokenizer": shards.tokenizer,
        "val_fraction": "the corpus's own val split" if shards.val_fraction is None else str(shards.val_fraction),
        "window_length": str(data.sampler.length),
        "train_windows": str(data.sampler.n_windows),
        "total_steps": str(plan.total_steps),
        "tokens_per_step": str(plan.tokens_per_step),
        "world_size": str(world.world_size),
        "n_params": str(learner.model.num_params()),
        "n_params_non_embedding": str(learner.model.num_params(non_embedding=True)),
        "device": str(device),
        "flops_per_token": f"{plan.flops_per_token:.4g}",
        "peak_flops": f"{peak_flops_per_sec:.4g}",
        "peak_flops_source": peak_source,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "git_commit": _git_commit(),
    })
    tracking.log_dataset(client, run_id, corpus.name, corpus.source, shards.tokens_sha256)


def _git_commit() -> str:
    """The code a run was trained with; "unknown" where the lab is installed rather than checked out."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
