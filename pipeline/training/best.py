"""The weights of a run's lowest val loss so far: kept on the CPU from evaluation to evaluation, carried in its
checkpoints, and logged at the end as a model of their own when they are not the last weights (MLflow 3's model
per checkpoint), so that a run that overfits offers its best weights too, ranked by search_logged_models."""

from __future__ import annotations

import torch
from mlflow.entities import Metric

BEST_TAG = "lab.best"  # on a logged model: its weights had the run's lowest val loss


class BestWeights:
    """The lowest val loss seen, its step, its metric points (as the run logged them) and a CPU copy of its
    weights (rank 0 only)."""

    def __init__(self):
        self.step: int | None = None
        self.val_loss = float("inf")
        self.metrics: list[Metric] = []
        self.weights: dict | None = None

    def observe(self, step: int, val_loss: float, model: torch.nn.Module, metrics: list[Metric]) -> None:
        """Keep the model's weights when val_loss is the lowest so far."""
        if not val_loss < self.val_loss:
            return
        self.step, self.val_loss, self.metrics = step, val_loss, metrics
        self.weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}

    def state(self, step: int) -> dict:
        """What a checkpoint of step carries; the weights only when they are not that step's own."""
        if self.step is None:
            return {}
        return {"step": self.step, "val_loss": self.val_loss,
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self.metrics],
                "model": self.weights if self.step != step else {}}

    def restore(self, state: dict, model: torch.nn.Module) -> None:
        """From a checkpoint's state(); weights it left out are the checkpoint's own (the model's, now)."""
        if not state:
            return
        self.step, self.val_loss = state["step"], state["val_loss"]
        self.metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in state["metrics"]]
        weights = state["model"] or model.state_dict()
        self.weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights.items()}
