"""The output head and the cross-entropy, a chunk of positions at a time: the (positions, vocab) logits never
exist whole.

With GPT-2's 50,304-way vocabulary the logits are the largest tensors of a step (nano at batch 8 x 256: 412 MB in
fp32), and the plain path holds three of them: the logits, the log-softmax kept for the backward pass and its
gradient. Here each chunk's logits are made, turned into the loss and into their own gradient (softmax minus
one-hot), multiplied into the gradients of the hidden states and of the head's weight, and freed, all in the
forward pass, as Liger-Kernel's fused linear cross-entropy does; the backward pass only scales what the forward
kept. Nothing is computed twice, so a step costs the plain path's matmuls, and only one chunk's logits exist at
once: their log-softmax and then their gradient are made in place over them.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# 256 MB of fp32 logits at most a chunk: 1,334 positions of GPT-2's vocabulary, so nano's 2,048 are two chunks.
# Chunks of half that saved another 100 MB of nano's 1.4 GB peak but ran 2-3% slower on the CPU.
LOGITS_PER_CHUNK = 2**26


def chunk_positions(vocab_size: int) -> int:
    """The most positions a chunk holds, so its logits stay under LOGITS_PER_CHUNK whatever the vocabulary."""
    return max(1, LOGITS_PER_CHUNK // vocab_size)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk: int) -> torch.Tensor:
    """The mean cross-entropy of F.linear(hidden, weight) against targets, computed at most chunk positions at a
    time.

    hidden (..., n_embd), weight (vocab, n_embd), targets (...) of token ids."""
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    chunks = -(-targets.numel() // chunk)
    chunk = -(-targets.numel() // chunks)  # equal chunks (nano's 2,048 positions: 2 x 1,024), no short last one
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)
    # evaluation: the loss alone, one chunk's logits at a time
    total = sum(F.cross_entropy(F.linear(h, weight).float(), t, reduction="sum")
                for h, t in zip(hidden.split(chunk), targets.split(chunk)))
    return total / targets.numel()


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward: the loss and both gradients, chunk by chunk. Backward: those gradients times the incoming one."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logits = h @ weight.t()  # bf16 under CUDA autocast, as the plain head's matmul
            autocast = logits.dtype != torch.float32
            logits = logits.float()
            # in place: one chunk-sized tensor, not two, and one fewer pass over memory (2-3% of a nano step on
            # the CPU)
            log_probs = torch.log_softmax(logits, dim=1, out=logits)
            loss -= log_probs.gather(1, t.unsqueeze(1)).sum()
            # d(sum of losses)/d(logits) = softmax - one-hot, made in place over the log-softmax
            grad_logits = log_probs.exp_()
            grad_logits[torch.arange(t.numel(), device=t.device), t] -= 1.0
            grad_hidden[start : start + chunk] = grad_logits @ weight
            if not autocast:
                grad_weight.addmm_(grad_logits.t(), h)  # in place: no (vocab, n_embd) temporary per chunk
            else:  # autocast runs the matmul in its low precision; the weight's gradient adds up in fp32
                grad_weight += grad_logits.t() @ h
        count = targets.numel()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.count, ctx.weight_dtype = count, weight.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.count  # the mean's 1/count, and whatever scaled the loss afterwards
        return grad_hidden * scale.to(grad_hidden.dtype), (grad_weight * scale).to(ctx.weight_dtype), None, None
