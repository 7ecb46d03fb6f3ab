"""A stored model looked at: a run's checkpoint (its newest, or the one of a step) or a logged model, inspected
over a prompt and written back to the run it came from (`python -m pipeline.inspect`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.data.corpora import CorpusEntry, resolve
from pipeline.errors import CorpusError, TrackingError
from pipeline.interpret.attention import attention_patterns
from pipeline.interpret.heads import HeadScores
from pipeline.interpret.lens import losses_by_layer
from pipeline.interpret.pictures import token_labels
from pipeline.interpret.record import log_inspection, logged_score_pool, prompt_tokens, score_heads
from pipeline.tracking import connect, get_run, run_ui_url
from pipeline.tracking.checkpoints import load_from_run, logged_steps, model_from_state


@dataclass(frozen=True)
class Inspected:
    run_id: str
    step: int
    prompt: str
    scores: HeadScores
    scored_on_val_text: bool  # the head scores drew from the run's val tokens, as training's; else from every id
    page: str  # the artifact path of the HTML view
    ui_url: str


def inspect_stored(run_id: str, step: int | None, model_uri: str, prompt: str, device: torch.device) -> Inspected:
    """Inspect the run's checkpoint (of step, else its newest) or the logged model at model_uri, over prompt (empty:
    the run's own sample prompt), and log the inspection to the run at that step."""
    client = connect()
    if model_uri:
        model, encoding, run_id, step = _logged_model(client, model_uri, device)
    else:
        get_run(client, run_id)
        state = load_from_run(run_id, client, step)
        model, encoding = model_from_state(state, device)
        step = int(state["step"])
    run = get_run(client, run_id)
    prompt = prompt or _run_prompt(run.data.params)
    model.eval()
    pool = logged_score_pool(client, run_id)
    scores = log_inspection(client, run_id, step, model, encoding, prompt, device, pool=pool)
    client.log_batch(run_id, metrics=_metrics(scores.scalars(), step))
    return Inspected(run_id, step, prompt, scores, pool is not None, f"inspect/step_{step:06d}.html",
                     run_ui_url(run.info.experiment_id, run_id))


def inspection_data(client, run_id: str, step: int | None, prompt: str, device: torch.device) -> dict:
    """What the dashboard's inspect view draws, stored nowhere: the attention of every head over the prompt (as
    numbers), the head scores, and the logit lens over the prompt's own next tokens, for a run's checkpoint."""
    run = get_run(client, run_id)
    state = load_from_run(run_id, client, step)
    model, encoding = model_from_state(state, device)
    prompt = prompt or _run_prompt(run.data.params)
    tokens = prompt_tokens(encoding, prompt, model.config.context_length)
    ids = torch.tensor([tokens], device=device)
    patterns = attention_patterns(model, ids)[0]
    scores = score_heads(model, encoding, logged_score_pool(client, run_id), device)
    lens = (losses_by_layer(model.eval(), ids[:, :-1], ids[:, 1:]).mean(dim=(1, 2)).tolist()
            if len(tokens) > 1 else [])
    return {"run_id": run_id, "step": int(state["step"]), "steps": logged_steps(client, run_id), "prompt": prompt,
            "tokens": token_labels(encoding, tokens),
            "attention": [[[[round(w, 4) for w in row] for row in head] for head in layer]
                          for layer in patterns.tolist()],
            **scores.as_json(int(state["step"])), "lens": lens}


def _logged_model(client, uri: str, device: torch.device):
    """A logged model's GPT, encoding, source run and step (the step its run linked it at)."""
    from mlflow.models import get_model_info

    from pipeline.tracking.models import load_generator

    generator = load_generator(uri, str(device)).unwrap_python_model()
    model_id = get_model_info(uri).model_id
    run_id = client.get_logged_model(model_id).source_run_id if model_id else None
    if not run_id:
        raise TrackingError(f"model {uri} names no run to log the inspection to")
    run = get_run(client, run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    step = max((output.step for output in outputs if output.model_id == model_id), default=0)
    return generator.model, generator.encoding, run_id, step


def _run_prompt(params: dict[str, str]) -> str:
    """The prompt the run sampled from: its own, else its corpus's, else "The"."""
    if params.get("prompt"):
        return params["prompt"]
    try:
        entry = resolve(params.get("corpus", ""))
    except CorpusError:
        return "The"
    return entry.prompt if isinstance(entry, CorpusEntry) else "The"


def _metrics(scalars: dict[str, float], step: int) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for key, value in scalars.items()]
