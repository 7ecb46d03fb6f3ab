"""A linear probe (Alain & Bengio, 2016): can a logistic regression read, from one layer's residual stream at a
position, which token came just before it? The answer is taken from the text itself: the label is which of the
TOP_TOKENS most frequent tokens of the windows came before (positions after any other are left out). The
control is the same probe trained on shuffled labels: what a probe finds in any features, so the learner reads
how much the layer adds, not the raw accuracy. The token embedding alone holds only the current token; a layer
that lifts the accuracy well above the control has moved the previous token into this position (a
previous-token head's work)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from model import GPT

TOP_TOKENS = 20
MAX_EXAMPLES = 4000  # positions a probe trains on: enough for 20 classes in a stream of a few hundred dims


@dataclass(frozen=True)
class ProbeReading:
    """Held-out accuracy per stream (the embedding, then after each block) and its shuffled-label control."""

    accuracy: dict[str, float]
    control: dict[str, float]

    def scalars(self) -> dict[str, float]:
        return {**{f"probe/prev_token_{name}": value for name, value in self.accuracy.items()},
                "probe/prev_token_control": max(self.control.values())}

    def as_json(self, step: int) -> dict:
        return {"step": step, "property": f"which of the {TOP_TOKENS} most frequent tokens came just before",
                "accuracy": self.accuracy, "control": self.control}


@torch.no_grad()
def residual_streams(model: GPT, x: torch.Tensor, autocast=None) -> dict[str, torch.Tensor]:
    """The residual stream of windows x (B, T): 'embed' (tokens plus positions), then 'layer_N' after block N."""
    streams, hooks = {}, []

    def keep(name):
        return lambda _module, _inputs, output: streams.__setitem__(name, output.float())

    hooks.append(model.transformer.drop.register_forward_hook(keep("embed")))
    hooks += [block.register_forward_hook(keep(f"layer_{n}")) for n, block in enumerate(model.transformer.h)]
    was_training = model.training
    model.eval()
    try:
        with autocast or nullcontext():
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return streams


def previous_token_probe(model: GPT, x: torch.Tensor, device: torch.device, autocast=None,
                         seed: int = 0) -> ProbeReading | None:
    """Probe every stream on windows x (N, T): the first half of the windows trains, the second half tests.
    None when the windows hold too few labelled positions to split."""
    if len(x) < 2:
        return None
    tokens = x.numpy()
    top = np.bincount(tokens.ravel()).argsort()[::-1][:TOP_TOKENS]
    label_of = {int(token): index for index, token in enumerate(top)}
    labels = np.vectorize(lambda t: label_of.get(int(t), -1))(tokens[:, :-1])  # what came before positions 1..T-1
    train_rows = np.arange(len(tokens)) < len(tokens) // 2
    streams = {name: stream[:, 1:].cpu().numpy() for name, stream in residual_streams(
        model, x.to(device), autocast).items()}
    rng = np.random.default_rng(seed)
    accuracy, control = {}, {}
    for name, stream in streams.items():
        parts = []
        for rows in (train_rows, ~train_rows):
            kept = labels[rows] >= 0
            parts.append((stream[rows][kept][:MAX_EXAMPLES], labels[rows][kept][:MAX_EXAMPLES]))
        (train_x, train_y), (test_x, test_y) = parts
        if len(set(train_y)) < 2 or not len(test_y):
            return None
        accuracy[name] = _fit_and_score(train_x, train_y, test_x, test_y)
        control[name] = _fit_and_score(train_x, rng.permutation(train_y), test_x, test_y)
    return ProbeReading(accuracy, control)


def _fit_and_score(train_x, train_y, test_x, test_y) -> float:
    """Held-out accuracy of a logistic regression on standardised features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    # one BLAS thread: beside torch's threads on a small CPU, BLAS's own spin against them (1 s a fit, not 20 ms)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe stopped at max_iter still reads
        return float(probe.fit(train_x, train_y).score(test_x, test_y))
