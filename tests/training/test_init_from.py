"""--init-from: a new run starts from another run's checkpoint, a logged model or a Hugging Face GPT-2 folder,
records where it came from, and refuses a source it cannot use in one line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from model import GPT
from pipeline.settings import TrainSettings
from pipeline.tracking import checkpoints
from pipeline.tracking.models import register
from pipeline.training.init_from import load_source
from pipeline.training.trainer import train
from tests.conftest import TINY_MODEL_FIELDS, assert_one_line_error, run_command, run_module

# a step at a learning rate of ~0: the run's weights stay its source's, to float precision
STILL = ["--corpus", "tiny", "--max-steps", "1", "--lr", "1e-12", "--min-lr", "0", "--log-interval", "1",
         "--eval-interval", "0", "--sample-interval", "0", "--checkpoint-interval", "0"]
SOURCE = TrainSettings(corpus="tiny", **TINY_MODEL_FIELDS, epochs=1000, max_steps=4, lr=1e-2, warmup_steps=1,
                       eval_interval=0, sample_interval=0, checkpoint_interval=2)


def hugging_face_gpt2(folder, vocab_size: int, seed: int = 0):
    """A small GPT-2 made by transformers with random weights (biases and LayerNorms too), saved as HF saves."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_head=2, n_embd=32, n_positions=48, vocab_size=vocab_size))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.eval().save_pretrained(folder)
    return model


def test_a_hugging_face_gpt2_gives_transformers_logits(tmp_path):
    hf_model = hugging_face_gpt2(tmp_path / "hf", vocab_size=300)
    source = load_source(str(tmp_path / "hf"))
    assert (source.config.n_layer, source.config.n_embd, source.config.context_length) == (3, 32, 48)
    model = GPT(source.config).eval()
    model.load_state_dict(source.weights)
    model.loss_chunk = 0  # the whole logits, returned beside the loss
    tokens = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(tokens, tokens)
        theirs = hf_model(tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()

    short_config = replace(source.config, context_length=16)  # a shorter context: the first positions' embeddings
    short = GPT(short_config).eval()
    short.load_state_dict(source.weights_for(short_config))
    short.loss_chunk = 0
    with torch.no_grad():
        assert torch.allclose(short(tokens[:, :16], tokens[:, :16])[0], theirs[:, :16], atol=1e-5, rtol=0)


def test_a_run_starts_from_a_hugging_face_folder_and_refuses_what_it_cannot_use(store, tmp_path):
    client = MlflowClient(store)
    hugging_face_gpt2(tmp_path / "hf", vocab_size=50257)
    folder = str(tmp_path / "hf")
    for args, message in [
        (["--init-from", folder, "--n-layer", "2"], "trains its own shape (n_layer 3, n_head 2, n_embd 32"),
        (["--init-from", folder, "--config", "small"], "drop --n-layer 8, --n-head 8, --n-embd 512"),
        (["--init-from", folder, "--context-length", "64"], "--context-length 64 is longer than"),
        (["--init-from", folder, "--tokenizer", "bytes"], "reads gpt2 tokens: give --tokenizer gpt2"),
        (["--init-from", str(tmp_path)], "has no config.json and no model.safetensors"),
        (["--init-from", "no-such-thing"], "not a run id (RUN_ID or RUN_ID@STEP)"),
        (["--init-from", "0" * 32], "no MLflow run with id"),
        (["--init-from", "models:/m-00000000000000000000000000000000"], "no such model"),
    ]:
        assert_one_line_error(run_command("pipeline.train", *STILL, *args, cwd=tmp_path), message)
    # no network and no cached copy: what to download, and where to put it (a process of its own: huggingface_hub
    # reads its cache's place when imported)
    offline = run_module("pipeline.train", *STILL, "--init-from", "gpt2", cwd=tmp_path,
                         env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert_one_line_error(offline, "not in the Hugging Face cache", "put config.json and model.safetensors from "
                          "https://huggingface.co/openai-community/gpt2 in a folder and give --init-from FOLDER")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])

    started = run_command("pipeline.train", *STILL, "--init-from", folder, "--context-length", "32", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    assert run.data.tags["lab.init_from"] == folder
    assert (run.data.params["n_layer"], run.data.params["context_length"], run.data.params["gelu"]) == ("3", "32",
                                                                                                        "tanh")
    trained = checkpoints.load_from_run(run.info.run_id)["model"]
    expected = load_source(folder).weights
    for name in ("transformer.h.2.mlp.c_fc.weight", "transformer.h.0.attn.c_attn.weight", "lm_head.weight"):
        assert torch.allclose(trained[name], expected[name], atol=1e-6), name
    assert torch.allclose(trained["transformer.wpe.weight"], expected["transformer.wpe.weight"][:32], atol=1e-6)


def test_a_run_starts_from_another_runs_checkpoint_or_model_and_records_it(store, tmp_path):
    client = MlflowClient(store)
    source = train(SOURCE)
    source_weights = checkpoints.load_from_run(source.run_id)["model"]
    at_step_2 = checkpoints.load_from_run(source.run_id, step=2)["model"]
    assert register(client, source.run_id, "tiny-source") == 1
    missing = run_command("pipeline.train", *STILL, "--init-from", f"{source.run_id}@3", cwd=tmp_path)
    assert_one_line_error(missing, "keeps no checkpoint of step 3 (it keeps those of steps 2, 4)")

    for spec, weights, tags in [
        (f"{source.run_id}@2", at_step_2, {"lab.init_from_run": source.run_id}),
        (f"models:/{source.model_id}", source_weights,
         {"lab.init_from_run": source.run_id, "lab.init_from_model": source.model_id}),
        (f"runs:/{source.run_id}/model", source_weights, {"lab.init_from_model": source.model_id}),
        ("models:/tiny-source/1", source_weights, {"lab.init_from_model": source.model_id}),
    ]:
        tuned = run_command("pipeline.train", *STILL, "--init-from", spec, "--run-name", spec, cwd=tmp_path)
        assert tuned.returncode == 0, (spec, tuned.stderr)
        [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id],
                                   filter_string=f"attributes.run_name = '{spec}'")
        assert run.data.tags["lab.init_from"] == spec
        assert tags.items() <= run.data.tags.items(), run.data.tags
        assert run.data.params["n_layer"] == "2" and run.data.params["init_from"] == spec
        trained = checkpoints.load_from_run(run.info.run_id)["model"]
        for name, tensor in weights.items():
            assert torch.allclose(trained[name], tensor, atol=1e-6), (spec, name)
        [model] = [m for m in client.search_logged_models([run.info.experiment_id])
                   if m.source_run_id == run.info.run_id]
        assert model.tags["lab.init_from"] == spec  # the model says what it was fine-tuned from



def test_a_model_logged_before_its_loader_moved_still_generates(store, tmp_path):
    import mlflow

    from pipeline.training.logged_model import GENERATOR_CODE

    result = train(SOURCE)
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{result.model_id}", dst_path=str(tmp_path))) / "artifacts"
    old_code = tmp_path / "generator.py"  # as models logged before the move import it
    old_code.write_text(GENERATOR_CODE.read_text().replace("from pipeline.tracking import checkpoints",
                                                           "from pipeline.training import checkpoints"))
    with mlflow.start_run():
        old = mlflow.pyfunc.log_model(name="model", python_model=str(old_code), artifacts={
            name: str(files / file) for name, file in (("weights", "weights.pt"), ("config", "config.json"),
                                                      ("weights_sha256", "weights.pt.sha256"))})
    args = ["--prompt", "A language model", "--max-new-tokens", "6", "--temperature", "0"]
    current = run_command("pipeline.generate", "--model", f"models:/{result.model_id}", *args, cwd=tmp_path)
    outdated = run_command("pipeline.generate", "--model", old.model_uri, *args, cwd=tmp_path)
    assert current.returncode == outdated.returncode == 0, outdated.stderr
    assert "was logged by an older version of the lab" in outdated.stderr
    assert outdated.stdout == current.stdout
