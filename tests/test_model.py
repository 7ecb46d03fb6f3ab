"""The GPT model: parameter counts of the named sizes, shapes, causality, the loss at initialisation, generation."""

import math

import pytest
import torch

from model import GPT, NAMED_CONFIGS, GPTConfig, UnknownConfigError, load_config, with_overrides
from model.configs import GPT2_VOCAB_SIZE

SMALL = GPTConfig(n_layer=2, n_head=2, n_embd=32, context_length=16)


@pytest.mark.parametrize("name, low, high", [("nano", 9.5e6, 10.5e6), ("small", 50e6, 52e6), ("medium", 123e6, 126e6)])
def test_named_sizes_have_the_documented_parameter_counts(name, low, high):
    with torch.device("meta"):  # shapes only: no memory, no time
        model = GPT(NAMED_CONFIGS[name])
    assert low <= model.num_params() <= high
    embedding = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert model.num_params(non_embedding=True) == model.num_params() - embedding


def test_vocabulary_is_padded_to_a_multiple_of_64():
    assert GPTConfig().vocab_size == 50304 and 50304 % 64 == 0 and 50304 >= GPT2_VOCAB_SIZE


def test_output_head_shares_the_token_embedding():
    model = GPT(SMALL)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_untrained_loss_is_close_to_uniform_guessing():
    torch.manual_seed(0)
    model = GPT(SMALL)
    idx = torch.randint(0, GPT2_VOCAB_SIZE, (4, 16))
    _, loss = model(idx, torch.roll(idx, -1, dims=1))
    assert abs(loss.item() - math.log(SMALL.vocab_size)) < 0.3


def test_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=2, n_embd=64, context_length=8))
    proj = model.transformer.h[0].attn.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert proj == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert fc == pytest.approx(0.02, rel=0.1)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    model.loss_chunk = 0  # the whole logits, returned beside the loss
    idx = torch.randint(0, 1000, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 1000
    logits_a, _ = model(idx, idx)
    logits_b, _ = model(changed, changed)
    assert torch.allclose(logits_a[0, :10], logits_b[0, :10], atol=1e-6)
    assert not torch.allclose(logits_a[0, 10:], logits_b[0, 10:])


def test_longer_input_than_context_is_refused():
    with pytest.raises(ValueError, match="longer than the context"):
        GPT(SMALL)(torch.zeros((1, 17), dtype=torch.long))


def test_greedy_generation_is_deterministic_and_never_emits_padding_ids():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    with torch.no_grad():
        model.lm_head.weight[GPT2_VOCAB_SIZE:] = 10.0  # make the padding rows the likeliest
    start = torch.tensor([[1, 2, 3]])
    a = model.generate(start, 20, temperature=0, vocab_size=GPT2_VOCAB_SIZE)
    b = model.generate(start, 20, temperature=0, vocab_size=GPT2_VOCAB_SIZE)
    assert torch.equal(a, b) and a.shape == (1, 23)
    sampled = model.generate(start, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1),
                             vocab_size=GPT2_VOCAB_SIZE)
    assert sampled.max().item() < GPT2_VOCAB_SIZE


def test_top_k_sampling_draws_every_one_of_the_k_likeliest_tokens_and_no_other():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    start = torch.tensor([[1, 2, 3]] * 3000)  # one draw per row, all from the same distribution
    with torch.no_grad():
        likeliest = set(model(start[:1])[0][0, -1, :GPT2_VOCAB_SIZE].topk(3).indices.tolist())
    # An untrained model's logits are nearly flat: a draw outside the three would come almost every time
    drawn = model.generate(start, 1, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(1),
                           vocab_size=GPT2_VOCAB_SIZE)[:, -1]
    assert set(drawn.tolist()) == likeliest


def test_configs_load_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("n_layer: 3\nn_head: 4\nn_embd: 64\ncontext_length: 128\n")
    config = load_config(str(path))
    assert (config.n_layer, config.n_head, config.n_embd, config.context_length) == (3, 4, 64, 128)
    assert with_overrides(config, {"context_length": 64, "dropout": 0}).context_length == 64


@pytest.mark.parametrize("text, message", [
    ("n_layers: 3\n", "unknown model field 'n_layers'"),
    ("n_layer: three\n", "must be int"),
    ("- 1\n- 2\n", "mapping"),
])
def test_bad_yaml_configs_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UnknownConfigError, match=message):
        load_config(str(path))


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(UnknownConfigError, match="nano, small, medium"):
        load_config("huge")


def test_attention_written_out_gives_the_fused_kernels_output_and_keeps_causal_weights():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(0, GPT2_VOCAB_SIZE, (3, 16))
    fused, _ = model(idx, idx)
    for block in model.transformer.h:
        block.attn.keep_attention = True
    written_out, _ = model(idx, idx)
    torch.testing.assert_close(written_out, fused, rtol=1e-5, atol=1e-5)
    weights = model.transformer.h[1].attn.attention
    assert weights.shape == (3, SMALL.n_head, 16, 16)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, SMALL.n_head, 16))
    assert weights.triu(diagonal=1).abs().max() == 0  # no position reads a later one
