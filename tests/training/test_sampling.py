"""A run trained on a learned tokenizer (bpe:300) reads and writes text with it everywhere: its embedding is
sized to it, and its checkpoint, its logged model and that model served all give the same continuation. Real
tiny runs on the-verdict, a real store, a real `mlflow models serve`."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from model.configs import padded_vocab_size
from pipeline.settings import TrainSettings
from pipeline.tracking.checkpoints import model_from_run
from pipeline.training.sampling import complete
from pipeline.training.trainer import train
from tests.conftest import (TINY_MODEL, TINY_MODEL_FIELDS, assert_one_line_error, post_invocation, run_command,
                            run_module, serve_model, stop_server)

BPE = TrainSettings(corpus="verdict", tokenizer="bpe:300", epochs=100, max_steps=6, lr=1e-2, warmup_steps=2,
                    log_interval=1, eval_interval=6, sample_interval=6, sample_tokens=8, checkpoint_interval=0,
                    **TINY_MODEL_FIELDS)
PROMPT = "I HAD always thought"
PARAMS = {"max_new_tokens": 12, "temperature": 0.8, "top_k": 40, "seed": 7}


def test_a_bpe_run_generates_the_same_text_from_its_checkpoint_and_its_logged_model(store, tmp_path):
    result = train(BPE)
    run = MlflowClient(store).get_run(result.run_id)
    assert run.data.params["tokenizer"] == "bpe:300" and run.data.params["vocab_size"] == str(padded_vocab_size(301))
    # a 300-token BPE cuts English finer than GPT-2's 50,257 tokens (about 0.23 tokens a byte on this text)
    assert 0.4 < float(run.data.params["val_tokens_per_byte"]) < 0.9

    model, enc = model_from_run(result.run_id, torch.device("cpu"))
    assert model.transformer.wte.weight.shape[0] == padded_vocab_size(301) == 320 and enc.n_vocab == 301
    expected = complete(model, enc, PROMPT, 12, 0.8, 40, 7, torch.device("cpu"))
    assert all(token < 301 for token in expected.tokens) and expected.text

    generated = run_module("pipeline.generate", "--run-id", result.run_id, "--prompt", PROMPT,
                           "--max-new-tokens", "12", "--seed", "7", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.rstrip("\n") == PROMPT + expected.text

    assert mlflow.pyfunc.load_model(f"models:/{result.model_id}").predict([PROMPT], params=PARAMS) == [expected.text]


@pytest.mark.slow
def test_a_served_bpe_model_decodes_with_its_own_tokenizer(store, tmp_path):
    trained = run_command("pipeline.train", "--corpus", "verdict", "--tokenizer", "bpe:300", *TINY_MODEL,
                          "--max-steps", "4", "--sample-interval", "0", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    uri = next(line for line in trained.stdout.splitlines() if line.startswith("model: ")).split()[1]
    expected = mlflow.pyfunc.load_model(uri).predict([PROMPT], params=PARAMS)[0]

    server, port = serve_model(uri, store, tmp_path)
    try:
        assert post_invocation(port, {"inputs": [PROMPT], "params": PARAMS}) == {"predictions": [expected]}
    finally:
        stop_server(server)


def test_resuming_with_another_tokenizer_is_one_line(store, tmp_path):
    result = train(BPE)
    # gpt2 is the default: a resume is refused what the user gave, not only what differs from the defaults
    resumed = run_command("pipeline.train", "--resume", result.run_id, "--tokenizer", "gpt2", cwd=tmp_path)
    assert_one_line_error(resumed, "--tokenizer is bpe:300 there, gpt2 given",
                          f"continues run {result.run_id} with its own settings")
