"""AdamW: PyTorch's own update (`torch.optim.adamw.adamw`, the same kernels as `torch.optim.AdamW`), held by a
small optimizer of our own.

Why not `torch.optim.AdamW` itself: any `torch.optim.Optimizer` imports `torch._dynamo` when it is made and at
its first step, about a second of every run's start on a laptop CPU (a third of importing torch and MLflow),
though a run never compiles its optimizer. The update is torch's, so a step is bit for bit the same, and the
state dict has torch's layout, so checkpoints load into either. `make_optimizer` gives it a run's groups, or
hands the blocks' matrices to Muon (training/muon.py) for --optimizer muon.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adamw import adamw

from model import GPT
from pipeline.settings import TrainSettings
from pipeline.training.muon import MuonWithAdamW

# torch.optim.AdamW's group keys, saved alongside ours so that torch's AdamW can load our state dicts
TORCH_GROUP_FLAGS = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                     "differentiable": False, "decoupled_weight_decay": True}
GROUP_SETTINGS = ("lr", "betas", "eps", "weight_decay")


class AdamW:
    """AdamW over parameter groups (each a dict with "params" and, optionally, its own "weight_decay").

    fused: torch's fused kernel (CUDA); otherwise what torch.optim.AdamW picks for the device (on a CPU, its
    per-tensor loop)."""

    def __init__(self, groups: Iterable[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, fused: bool = False):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in groups]
        self.fused = fused
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def set_lr(self, lr: float) -> None:
        """The step's learning rate, for every group."""
        for group in self.param_groups:
            group["lr"] = lr

    def _parameters(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state_of(p) for p in params]
            beta1, beta2 = group["betas"]
            adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                  [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                  foreach=None, fused=self.fused or None,  # None: torch's choice for the device, as AdamW's
                  amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                  weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _step_device(self, p: torch.Tensor) -> torch.device | str:
        """Where torch keeps a parameter's step count: on the CPU, unless the fused kernel reads it on the device."""
        return p.device if self.fused else "cpu"

    def _state_of(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        if p not in self.state:
            self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=self._step_device(p)),
                             "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return self.state[p]

    def zero_grad(self) -> None:
        """Drop the gradients (torch's default, set_to_none)."""
        for p in self._parameters():
            p.grad = None

    def state_dict(self) -> dict:
        """torch.optim.Optimizer's layout: parameters by their index over all groups, in order."""
        index = {p: i for i, p in enumerate(self._parameters())}
        groups = [{**TORCH_GROUP_FLAGS, "fused": self.fused, **{key: group[key] for key in GROUP_SETTINGS},
                   "params": [index[p] for p in group["params"]]} for group in self.param_groups]
        return {"state": {index[p]: dict(state) for p, state in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """A state dict of this optimizer or of torch.optim.AdamW over the same groups of parameters."""
        groups = saved["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups than this model")
        by_index = dict(enumerate(self._parameters()))
        for group, saved_group in zip(self.param_groups, groups):
            group.update({key: saved_group[key] for key in GROUP_SETTINGS})
            group["betas"] = tuple(group["betas"])
        self.state = {}
        for i, state in saved["state"].items():
            p = by_index[int(i)]
            self.state[p] = {  # copies: the saved dict may still belong to a live optimizer
                "step": state["step"].to(device=self._step_device(p), dtype=torch.float32, copy=True),
                "exp_avg": state["exp_avg"].to(device=p.device, dtype=p.dtype, copy=True),
                "exp_avg_sq": state["exp_avg_sq"].to(device=p.device, dtype=p.dtype, copy=True),
            }


def make_optimizer(model: GPT, settings: TrainSettings, device: torch.device) -> AdamW | MuonWithAdamW:
    """AdamW with weight decay on weight matrices only (biases, LayerNorm gains are left alone); or, for
    --optimizer muon, Muon on the blocks' weight matrices and that AdamW on the other parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    block_matrices = [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]
    if settings.optimizer == "muon":
        params = [p for p in params if all(p is not m for m in block_matrices)]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2), fused=device.type == "cuda")
    if settings.optimizer == "muon":
        return MuonWithAdamW(block_matrices, adamw, settings.lr, settings.muon_lr, settings.weight_decay)
    return adamw
