"""The device a run trains on: choosing it, mixed precision on GPUs, and what it reports about memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource
from contextlib import nullcontext

import torch

from pipeline.errors import SettingsError


def pick_device(name: str) -> torch.device:
    """auto picks CUDA, else MPS, else the CPU; a named device that is missing is a SettingsError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device cuda asked for, but PyTorch sees no CUDA GPU here (use --device auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError("device mps asked for, but it is not available here (use --device auto)")
    return device


def mixed_precision(device: torch.device):
    """bf16 autocast on CUDA (fp16 with a GradScaler where bf16 is missing); full fp32 elsewhere."""
    if device.type != "cuda":
        return nullcontext(), None
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Let glibc keep the memory of freed tensors for the next step instead of returning it to the OS.

    PyTorch's CPU allocator has no cache: each step's large tensors (nano's 2048 x 50,304 logits are 400 MB)
    are fresh mmaps, faulted in page by page and unmapped when freed, which took a third of a nano step here.
    Served from the heap and never trimmed, the same pages are reused: peak memory grows by about a tenth (the
    heap fragments a little) and then stays flat. False where the C library is not glibc (macOS, musl): those
    allocators are left as they are."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(M_MMAP_THRESHOLD, INT_MAX) and libc.mallopt(M_TRIM_THRESHOLD, INT_MAX))


def is_out_of_memory(error: Exception) -> bool:
    """torch.OutOfMemoryError on GPUs; a plain RuntimeError from the CPU allocator; numpy's MemoryError."""
    text = str(error)
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text


def check_model_fits(config, device: torch.device) -> None:
    """Refuse a model whose weights, gradients and AdamW moments (16 bytes a parameter) exceed the device's
    memory, before allocating it: the kernel's OOM killer would end the process without a word."""
    # embeddings, then per block attention (4 C^2) and MLP (8 C^2); biases and norms are too small to matter
    n_params = (config.vocab_size + config.context_length) * config.n_embd + 12 * config.n_layer * config.n_embd**2
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:
        return
    needed = 16 * n_params
    if needed > total:
        raise SettingsError(f"the model has {n_params:,} parameters: {needed / 2**30:,.0f} GiB for its weights, "
                            f"gradients and AdamW state, more than the {total / 2**30:,.0f} GiB of {device.type} "
                            "memory here; lower --n-layer, --n-embd or --context-length")


def memory_used(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process, and peak allocated GPU memory on CUDA, in MB."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    memory = {"peak_rss_mb": peak_kb / (1024 * 1024 if platform.system() == "Darwin" else 1024)}
    if device.type == "cuda":
        memory["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return memory
