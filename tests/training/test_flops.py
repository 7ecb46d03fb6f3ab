"""FLOPs per token against a count by hand, the CPU probe, and the GPU table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model import GPT, GPTConfig
from pipeline.training.flops import flops_per_token, lookup_gpu, matmul_probe, mfu, n_matmul_params, peak_flops


def test_flops_per_token_matches_a_count_by_hand():
    config = GPTConfig(n_layer=2, n_head=2, n_embd=8, context_length=16, vocab_size=64)
    # per block: ln_1 and ln_2 (8 gains + 8 biases each) = 32; c_attn 8x24 + 24 = 216; attn c_proj 8x8 + 8 = 72;
    # c_fc 8x32 + 32 = 288; mlp c_proj 32x8 + 8 = 264: 872 per block, 1744 for two. ln_f 16. Head 8x64 = 512.
    n = 1744 + 16 + 512
    assert n_matmul_params(config) == n == 2272
    # attention: 12 x n_layer x n_embd x T = 12 x 2 x 8 x 10 = 1920
    assert flops_per_token(config, 10) == 6 * 2272 + 1920 == 15552


def test_no_bias_and_the_model_agree():
    for config in (GPTConfig(n_layer=3, n_head=4, n_embd=32, context_length=16, vocab_size=128),
                   GPTConfig(n_layer=1, n_head=2, n_embd=16, context_length=8, vocab_size=64, bias=False)):
        model = GPT(config)
        head = config.n_embd * config.vocab_size  # tied to wte, so num_params(non_embedding) leaves it out
        assert n_matmul_params(config) == model.num_params(non_embedding=True) + head


def test_nano_is_about_62_mflops_per_token():
    from model.configs import NAMED_CONFIGS

    nano = NAMED_CONFIGS["nano"]
    # 6 x (1.86M blocks + 8.05M head) + 12 x 6 x 160 x 256
    assert flops_per_token(nano, 256) == pytest.approx(62.38e6, rel=1e-3)


def test_mfu_is_achieved_over_peak():
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(1000.0, 1e9, 0.0) == 0.0


def test_cpu_probe_is_measured_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS_CACHE", str(tmp_path))
    peak, source = peak_flops(torch.device("cpu"))
    assert math.isfinite(peak) and peak > 1e8
    assert source == "cpu matmul probe"
    memo = tmp_path / "peak-flops.json"
    kept = json.loads(memo.read_text())
    (entry,) = kept.values()
    assert entry["value"] == peak
    # what is kept is what later runs use: a planted value comes back unmeasured
    entry["value"] = 1234.0
    memo.write_text(json.dumps(kept))
    assert peak_flops(torch.device("cpu"))[0] == 1234.0
    # another thread count is another machine as far as the probe is concerned: measured again
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert peak_flops(torch.device("cpu"))[0] != 1234.0
    finally:
        torch.set_num_threads(threads)


def test_probe_of_a_small_size():
    assert matmul_probe(torch.device("cpu"), size=64, repeats=2) > 0


@pytest.mark.parametrize("name, peak, label", [
    ("NVIDIA H100 80GB HBM3", 989e12, "H100 SXM"),
    ("NVIDIA H100 PCIe", 756e12, "H100 PCIe"),
    ("NVIDIA H200", 989e12, "H200"),
    ("NVIDIA A100-SXM4-80GB", 312e12, "A100"),
    ("NVIDIA A100-PCIE-40GB", 312e12, "A100"),
    ("NVIDIA A10", 125e12, "A10"),
    ("NVIDIA L4", 121e12, "L4"),
    ("NVIDIA L40S", 362e12, "L40S"),
    ("NVIDIA GeForce RTX 4090", 165.2e12, "RTX 4090"),
    ("NVIDIA GeForce RTX 3090", 71e12, "RTX 3090"),
    ("NVIDIA GeForce RTX 5060 Ti", 47.4e12, "RTX 5060 Ti"),
    ("Tesla T4", 65e12, "T4"),
    ("Tesla V100-SXM2-16GB", 125e12, "V100"),
])
def test_gpu_table_lookup_by_name(name, peak, label):
    found, source = lookup_gpu(name)
    assert found == peak
    assert source.startswith(label + " ")


def test_unknown_gpu_is_none():
    assert lookup_gpu("NVIDIA GeForce GTX 1080") is None
    assert lookup_gpu("NVIDIA A1000") is None  # not an A100 nor an A10
