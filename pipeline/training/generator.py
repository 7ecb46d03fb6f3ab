"""The code of the lab's logged models ("models from code"): MLflow copies this file into every logged model and
runs it to load one, so a model is the lab's own code plus two artifacts, never a pickled object.

Artifacts: `weights` (the GPT's state dict, read with torch.load(weights_only=True) after its `weights_sha256`
is checked), `config` (the GPTConfig, the run's sampling settings and its tokenizer's name, JSON) and, for a
tokenizer learned from the corpus, `tokenizer` (its ranks, tiktoken's format). Input: prompts; output: each
prompt's continuation. Params: max_new_tokens, temperature, top_k, seed (defaults: the run's sampling settings).
Loading needs the lab importable (its virtualenv: `mlflow models serve --env-manager local`).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TextGenerator(PythonModel):
    def load_context(self, context) -> None:
        from model import GPT, GPTConfig
        from pipeline.data.tokenizer import TOKENIZER, encoding_for
        from pipeline.errors import CheckpointError
        from pipeline.tracking import checkpoints
        from pipeline.training.device import pick_device

        weights = Path(context.artifacts["weights"])
        if not Path(context.artifacts["weights_sha256"]).is_file():
            raise CheckpointError(f"model weights {weights} have no checksum beside them")
        state = checkpoints.load(weights)  # checked against weights.pt.sha256, weights_only=True
        config = json.loads(Path(context.artifacts["config"]).read_text())
        self.device = pick_device((context.model_config or {}).get("device", "auto"))
        self.model = GPT(GPTConfig(**config["model"]))
        self.model.load_state_dict(state["model"])
        self.model.to(self.device).eval()
        self.sampling = config["sampling"]
        ranks = Path(context.artifacts["tokenizer"]).read_bytes() if "tokenizer" in context.artifacts else None
        self.encoding = encoding_for(config.get("tokenizer", TOKENIZER), ranks)  # models from before: GPT-2's

    # model_input is typed as a DataFrame so that MLflow keeps the logged signature (with its params) rather
    # than inferring one without params from the hint; lists of prompts arrive as a one-column DataFrame.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from pipeline.errors import LabError
        from pipeline.training.sampling import complete

        given = {**self.sampling, **{k: v for k, v in (params or {}).items() if v is not None}}
        prompts = model_input.iloc[:, 0].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        try:
            return [complete(self.model, self.encoding, str(prompt), int(given["max_new_tokens"]),
                             float(given["temperature"]), int(given["top_k"]), int(given["seed"]), self.device).text
                    for prompt in prompts]
        except LabError as error:  # a prompt longer than the context: the caller's to fix (HTTP 400 when served)
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(error)) from None


mlflow.models.set_model(TextGenerator())
