"""How long a run trains and how fast it learns: the step budget and the learning rate at each step."""

from __future__ import annotations

import math

from pipeline.settings import TrainSettings


def total_steps_for(settings: TrainSettings, n_windows: int, window_length: int) -> int:
    """The first budget reached of those given: epochs, max_steps or max_tokens (each 0 when not set); with
    none given, one epoch. As Hugging Face Trainer's max_steps, a budget the user gives is the budget."""
    windows_per_step = settings.batch_size * settings.grad_accum
    budgets = []
    if settings.budget_epochs():
        budgets.append(math.ceil(settings.budget_epochs() * n_windows / windows_per_step))
    if settings.max_steps:
        budgets.append(settings.max_steps)
    if settings.max_tokens:
        budgets.append(math.ceil(settings.max_tokens / (windows_per_step * window_length)))
    return max(1, min(budgets))


def warmup_for(settings: TrainSettings, total_steps: int) -> int:
    """The warmup steps, at most half the budget: a warmup longer than the run would never reach the peak."""
    return min(settings.warmup_steps, (total_steps - 1) // 2)


def lr_at(step: int, settings: TrainSettings, total_steps: int) -> float:
    """Linear warmup to lr, then cosine decay from lr at the step after warmup to exactly min_lr at the last
    step (total_steps - 1). step counts from 0."""
    warmup = warmup_for(settings, total_steps)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - 1 - warmup)
    return settings.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (settings.lr - settings.min_lr)

