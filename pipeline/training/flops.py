"""Model FLOPs per token, the device's peak FLOP/s, and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / peak FLOP/s, where achieved = tokens/s x FLOPs per token. FLOPs per token follow
the PaLM paper (appendix B) and nanoGPT's estimate_mfu: 6N for the forward and backward matmuls of N weights
(2 per weight forward, 4 backward), plus the attention scores and their weighted sum, 12 x n_layer x n_embd x T.

N counts the weights that are multiplied per token: every non-embedding weight plus the output projection
(n_embd x vocab). The head shares its weight with the token embedding, but its matmul is computed all the same;
the embedding lookups themselves are gathers, not matmuls, and count nothing.
"""

from __future__ import annotations

import os
import platform
import time

import torch

from model.gpt import GPTConfig
from pipeline.memo import remembered

# bf16 dense tensor-core peaks (FLOP/s), no sparsity, from the vendors' datasheets and whitepapers. Matched in
# order, first hit wins, on the words of torch.cuda.get_device_name() ("NVIDIA A100-SXM4-80GB" -> nvidia a100 sxm4
# 80gb): a fragment matches whole words, so "a10" is not "a100"; the more specific names come first.
# GeForce cards: bf16 with fp32 accumulate, which is what autocast uses.
_BF16_PEAKS: list[tuple[str, float, str]] = [
    ("gh200", 989e12, "GH200"),
    ("h200 nvl", 835e12, "H200 NVL"),
    ("h200", 989e12, "H200"),
    ("h100 pcie", 756e12, "H100 PCIe"),
    ("h100 nvl", 835e12, "H100 NVL"),
    ("h100", 989e12, "H100 SXM"),
    ("h800", 989e12, "H800"),
    ("b200", 2250e12, "B200"),
    ("a100", 312e12, "A100"),
    ("a800", 312e12, "A800"),
    ("l40s", 362e12, "L40S"),
    ("l40", 181e12, "L40"),
    ("l4", 121e12, "L4"),
    ("a10", 125e12, "A10"),
    ("rtx 5090", 209.5e12, "RTX 5090"),
    ("rtx 5060 ti", 47.4e12, "RTX 5060 Ti"),  # 759 "AI TOPS" (fp4, sparse) / 16, as for the 5090's 3352 / 209.5
    ("rtx 4090", 165.2e12, "RTX 4090"),
    ("rtx 3090", 71e12, "RTX 3090"),
]
# GPUs without bf16, where the trainer's autocast runs fp16 (with a GradScaler): their fp16 tensor-core peak.
_FP16_PEAKS: list[tuple[str, float, str]] = [
    ("v100", 125e12, "V100"),
    ("t4", 65e12, "T4"),
]

def n_matmul_params(config: GPTConfig) -> int:
    """The N of 6N: weights multiplied per token, i.e. non-embedding parameters plus the (tied) output head."""
    c, bias = config.n_embd, config.bias
    layer_norm = 2 * c if bias else c
    per_layer = (
        2 * layer_norm  # ln_1, ln_2
        + 3 * c * c + (3 * c if bias else 0)  # c_attn: q, k, v
        + c * c + (c if bias else 0)  # attention c_proj
        + 4 * c * c + (4 * c if bias else 0)  # mlp c_fc
        + 4 * c * c + (c if bias else 0)  # mlp c_proj
    )
    return config.n_layer * per_layer + layer_norm + c * config.vocab_size  # + ln_f + lm_head


def flops_per_token(config: GPTConfig, window_length: int) -> float:
    """Training FLOPs (forward + backward) per token for windows of window_length tokens."""
    return 6.0 * n_matmul_params(config) + 12.0 * config.n_layer * config.n_embd * window_length


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float) -> float:
    """The fraction of peak FLOP/s that the model's own arithmetic uses (0..1; 0 when peak is unknown)."""
    if peak <= 0:
        return 0.0
    return tokens_per_sec * flops_per_token / peak


def peak_flops(device: torch.device) -> tuple[float, str]:
    """(FLOP/s, where the number comes from) for the precision the trainer uses on device.

    CUDA: the datasheet bf16 dense peak of a known GPU (fp16 for those without bf16), else a matmul probe on the
    GPU. CPU and MPS: a short fp32 matmul probe (the trainer runs fp32 there). A probe is measured once per
    machine and kept in the corpus cache's peak-flops.json (delete it to measure again)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = lookup_gpu(name)
        if found is not None:
            return found
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return _kept_probe(device, dtype, 4096, name), f"cuda matmul probe ({name}: not in the table)"
    if device.type == "mps":
        return _kept_probe(device, torch.float32, 1024, platform.machine()), "mps matmul probe"
    return _kept_probe(torch.device("cpu"), torch.float32, 1024, platform.processor() or platform.machine()), \
        "cpu matmul probe"


def _kept_probe(device: torch.device, dtype: torch.dtype, size: int, hardware: str) -> float:
    """matmul_probe's result as measured on this machine before, with the same hardware, torch and threads."""
    fingerprint = [platform.node(), hardware, os.cpu_count(), torch.__version__, torch.get_num_threads()]
    return remembered("peak-flops.json", f"{device.type}:{dtype}:{size}", fingerprint,
                      lambda: matmul_probe(device, dtype, size))


def lookup_gpu(name: str) -> tuple[float, str] | None:
    """The table's peak for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None."""
    key = f" {' '.join(name.lower().replace('-', ' ').replace('_', ' ').split())} "
    for fragment, peak, label in _BF16_PEAKS:
        if f" {fragment} " in key:
            return peak, f"{label} bf16 dense peak (datasheet)"
    for fragment, peak, label in _FP16_PEAKS:
        if f" {fragment} " in key:
            return peak, f"{label} fp16 dense peak (datasheet; no bf16 there)"
    return None


def matmul_probe(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024,
                 repeats: int = 4) -> float:
    """Measured FLOP/s of size x size matmuls on device: the best of `repeats` (after one warm-up). About
    0.1-0.3 s on a 2-core CPU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for attempt in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if attempt:  # the first is a warm-up
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
