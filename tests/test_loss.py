"""The chunked cross-entropy (model/loss.py) on a real GPT: the loss and every gradient, the tied embedding's
included, equal the whole logits' path, in training and evaluation, eager and compiled, on the CPU and CUDA."""

import pytest
import torch

from model import GPT, GPTConfig

# GPT-2's 50,304-way head; 2 x 40 positions in chunks of at most 32: three, of 27, 27 and 26
CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, context_length=40, dropout=0.0)
CHUNK = 32
ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; PyTorch sees none here")
DEVICES = ["cpu", pytest.param("cuda", marks=ON_CUDA)]


def model_and_batch(device: str):
    torch.manual_seed(0)
    model = GPT(CONFIG).to(device)
    idx = torch.randint(0, CONFIG.vocab_size, (2, CONFIG.context_length + 1), device=device)
    return model, idx[:, :-1], idx[:, 1:]


def loss_and_grads(model: GPT, chunk: int, x, y, step_model=None, autocast=None):
    """The loss at this chunk size (0: the whole logits), and the gradients of half of it (as gradient
    accumulation scales each micro-batch's loss)."""
    model.loss_chunk = chunk
    model.zero_grad()
    with autocast or torch.autocast("cpu", enabled=False):
        _, loss = (model if step_model is None else step_model)(x, y)
    (loss * 0.5).backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_close_grads(expected: dict, got: dict, rtol: float, atol: float) -> None:
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_loss_and_gradients_equal_the_whole_logits(device):
    model, x, y = model_and_batch(device)
    whole_loss, whole_grads = loss_and_grads(model, 0, x, y)
    loss, grads = loss_and_grads(model, CHUNK, x, y)
    assert model.transformer.wte.weight is model.lm_head.weight and grads["transformer.wte.weight"].abs().sum() > 0
    torch.testing.assert_close(loss, whole_loss, rtol=1e-6, atol=1e-6)
    assert_close_grads(whole_grads, grads, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_loss_equals_the_whole_logits(device):
    model, x, y = model_and_batch(device)
    model.eval()
    with torch.no_grad():
        model.loss_chunk = 0
        logits, whole = model(x, y)
        model.loss_chunk = CHUNK
        none, chunked = model(x, y)
    assert logits.shape == (2, CONFIG.context_length, CONFIG.vocab_size) and none is None
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_compiled_chunked_loss_and_gradients_equal_the_eager_whole_logits():
    model, x, y = model_and_batch("cpu")
    whole_loss, whole_grads = loss_and_grads(model, 0, x, y)
    # aot_eager: Dynamo traces the loss whole (no graph break) and AOTAutograd builds its backward, as under
    # --compile; inductor's C++ code generation (80 s here) is left to bench/compile.py
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss, grads = loss_and_grads(model, CHUNK, x, y, step_model=compiled)
    torch.testing.assert_close(loss, whole_loss, rtol=1e-5, atol=1e-5)
    assert_close_grads(whole_grads, grads, rtol=1e-3, atol=1e-6)
    with torch.no_grad():  # the trainer evaluates through the compiled model too
        torch.testing.assert_close(compiled(x, y)[1], whole_loss, rtol=1e-5, atol=1e-5)


@ON_CUDA
def test_under_bf16_autocast_the_chunked_loss_stays_as_close_as_the_whole_logits_path():
    model, x, y = model_and_batch("cuda")
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16)
    exact_loss, exact_grads = loss_and_grads(model, 0, x, y)
    whole_loss, whole_grads = loss_and_grads(model, 0, x, y, autocast=bf16)
    loss, grads = loss_and_grads(model, CHUNK, x, y, autocast=bf16)
    torch.testing.assert_close(loss, whole_loss, rtol=1e-2, atol=1e-2)
    for name, exact in exact_grads.items():  # no further from fp32 than the plain path under autocast
        plain_error = (whole_grads[name] - exact).norm()
        assert (grads[name] - exact).norm() <= 2 * plain_error + 1e-3 * exact.norm(), name


def test_generation_gets_the_last_positions_logits_only():
    model, x, _ = model_and_batch("cpu")
    logits, loss = model(x)
    assert logits.shape == (2, 1, CONFIG.vocab_size) and loss is None
