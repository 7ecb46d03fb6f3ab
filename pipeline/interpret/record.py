"""An inspection written to a run: each layer's attention over a prompt as an image under `attention/layer_N` at
its step (the MLflow UI's image view slides through them), every head's scores as `heads/step_N.json`, and the
whole as one self-contained page, `inspect/step_N.html`. The caller logs the scalars (training through its metric
buffer): this returns them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from model import GPT
from pipeline.errors import SettingsError
from pipeline.interpret.attention import attention_patterns
from pipeline.interpret.heads import HeadScores, head_scores
from pipeline.interpret.pictures import layer_image, png_bytes, token_labels
from pipeline.interpret.probe import ProbeReading
from pipeline.interpret.view import inspection_html


# The token ids a run's head scores draw their random sequences from (its val text's), logged by training so that
# `pipeline.inspect` scores a checkpoint on the same sequences and its numbers read as training's.
SCORE_POOL = "heads/score_pool.json"


def log_score_pool(client, run_id: str, pool: torch.Tensor) -> None:
    client.log_dict(run_id, {"token_ids": pool.tolist()}, SCORE_POOL)


def logged_score_pool(client, run_id: str) -> torch.Tensor | None:
    """The pool training logged to the run; None for a run that logged none (older runs)."""
    if SCORE_POOL not in {artifact.path for artifact in client.list_artifacts(run_id, "heads")}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(client.download_artifacts(run_id, SCORE_POOL, folder))
        return torch.tensor(json.loads(path.read_text())["token_ids"])


def score_heads(model: GPT, encoding, pool: torch.Tensor | None, device: torch.device) -> HeadScores:
    """Every head's scores on random tokens from pool; None: from every id of the tokenizer but end-of-text."""
    if pool is None:
        every_id = torch.arange(encoding.n_vocab)
        pool = every_id[every_id != encoding.eot_token]
    return head_scores(model, pool, device)


def prompt_tokens(encoding, prompt: str, context_length: int) -> list[int]:
    """The prompt's token ids; SettingsError for an empty prompt or one longer than the model's context."""
    tokens = encoding.encode_ordinary(prompt)
    if not tokens:
        raise SettingsError("prompt is empty: give some text to look at")
    if len(tokens) > context_length:
        raise SettingsError(f"prompt has {len(tokens)} tokens; the model's context holds {context_length}: "
                            "give a shorter one")
    return tokens


def attention_images(model: GPT, encoding, prompt: str, device: torch.device, title: str) -> list:
    """One picture per layer (numpy RGB) of every head's attention over the prompt."""
    tokens = prompt_tokens(encoding, prompt, model.config.context_length)
    patterns = attention_patterns(model, torch.tensor([tokens], device=device))[0]
    labels = token_labels(encoding, tokens)
    return [layer_image(layer, labels, f"{title}, layer {index}") for index, layer in enumerate(patterns)]


def log_inspection(client, run_id: str, step: int, model: GPT, encoding, prompt: str, device: torch.device,
                   lens: dict[str, float] | None = None, probe: ProbeReading | None = None,
                   pool: torch.Tensor | None = None) -> HeadScores:
    """Attention images, head scores (and a probe's reading, when given) and the page of this step, stored in
    the run; returns the head scores. pool: the token ids the head scores draw from (training passes those of its
    val text); None: every id of the tokenizer but end-of-text, which no text holds twice."""
    images = attention_images(model, encoding, prompt, device, f"step {step}")
    scores = score_heads(model, encoding, pool, device)
    for layer, image in enumerate(images):
        client.log_image(run_id, image, key=f"attention/layer_{layer}", step=step, synchronous=True)
    client.log_dict(run_id, scores.as_json(step), f"heads/step_{step:06d}.json")
    if probe:
        client.log_dict(run_id, probe.as_json(step), f"probe/step_{step:06d}.json")
    page = inspection_html(f"Inside the model at step {step}", prompt, [png_bytes(image) for image in images],
                           scores, lens, probe)
    client.log_text(run_id, page, f"inspect/step_{step:06d}.html")
    return scores
