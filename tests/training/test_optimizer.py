"""The lab's AdamW: torch.optim.AdamW's steps bit for bit, its state dicts in both directions, and no torch._dynamo."""

import copy
import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig
from pipeline.files import PROJECT_DIR
from pipeline.training.optimizer import AdamW

CONFIG = GPTConfig(vocab_size=64, context_length=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def groups(model):
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def twin_models(count: int, device: str = "cpu"):
    torch.manual_seed(0)
    first = GPT(CONFIG).to(device)
    others = [GPT(CONFIG).to(device) for _ in range(count - 1)]
    for other in others:
        other.load_state_dict(first.state_dict())
    return [first, *others]


def train(pairs, steps: int, first_lr: float = 1e-3):
    """Steps of every (model, optimizer) pair on the first model's gradients: only the optimizers can then make
    the weights differ (a GPU's backward pass is not repeatable bit for bit)."""
    first = pairs[0][0]
    device = next(first.parameters()).device
    x, y = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1)).to(device).split(2)
    for step in range(steps):
        _, loss = first(x, y)
        loss.backward()
        grads = [p.grad.clone() for p in first.parameters()]
        for model, optimizer in pairs:
            for group in optimizer.param_groups:  # as the step loop sets its schedule
                group["lr"] = first_lr * (step + 1)
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad.clone()
            optimizer.step()
            optimizer.zero_grad()


def same_weights(*models) -> bool:
    return all(all(torch.equal(p, q) for p, q in zip(models[0].parameters(), other.parameters()))
               for other in models[1:])


ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; PyTorch sees none here")


# fused: the kernel a CUDA run uses (fused=True there), also built for CPUs
@pytest.mark.parametrize("device, fused", [("cpu", False), ("cpu", True), pytest.param("cuda", True, marks=ON_CUDA)])
def test_steps_equal_torch_adamw_bit_for_bit_and_state_dicts_load_both_ways(device, fused):
    ours_model, torch_model, from_torch, from_ours = twin_models(4, device)
    ours = AdamW(groups(ours_model), lr=1e-3, betas=(0.9, 0.95), fused=fused)
    reference = torch.optim.AdamW(groups(torch_model), lr=1e-3, betas=(0.9, 0.95), fused=fused)
    train([(ours_model, ours), (torch_model, reference)], steps=4)
    assert same_weights(ours_model, torch_model)
    assert not same_weights(ours_model, from_torch)  # the steps moved the weights

    # a checkpoint of either optimizer resumes in the other, and all four go on in step
    from_torch.load_state_dict(torch_model.state_dict())
    from_ours.load_state_dict(ours_model.state_dict())
    continued_ours = AdamW(groups(from_torch), lr=1e-3, betas=(0.9, 0.95), fused=fused)
    continued_ours.load_state_dict(copy.deepcopy(reference.state_dict()))
    continued_torch = torch.optim.AdamW(groups(from_ours), lr=1e-3, betas=(0.9, 0.95), fused=fused)
    continued_torch.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert ours.state_dict()["state"][0]["step"].item() == 4
    pairs = [(ours_model, ours), (torch_model, reference), (from_torch, continued_ours), (from_ours, continued_torch)]
    train(pairs, steps=3, first_lr=5e-4)
    assert same_weights(ours_model, torch_model, from_torch, from_ours)


def test_a_state_dict_of_other_groups_is_refused():
    model, = twin_models(1)
    optimizer = AdamW(groups(model), lr=1e-3)
    other = torch.optim.AdamW(list(model.parameters()), lr=1e-3)  # one group, not two
    with pytest.raises(ValueError, match="other parameter groups"):
        optimizer.load_state_dict(other.state_dict())


def test_a_training_step_never_imports_torch_dynamo():
    # torch.optim.Optimizer imports torch._dynamo, about a second of every run's start: the step must not
    code = """
import sys, torch
from model import GPT, GPTConfig
from pipeline.settings import TrainSettings
from pipeline.training.optimizer import make_optimizer
model = GPT(GPTConfig(vocab_size=64, context_length=8, n_layer=1, n_head=2, n_embd=16))
optimizer = make_optimizer(model, TrainSettings(), torch.device("cpu"))
_, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
loss.backward()
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
optimizer.step()
optimizer.zero_grad()
optimizer.load_state_dict(optimizer.state_dict())
print(sorted(name for name in sys.modules if name.startswith("torch._dynamo")))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
