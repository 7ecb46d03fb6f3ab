"""Muon for the blocks' weight matrices beside AdamW for everything else, held as one optimizer by the step loop.

Muon (torch.optim.Muon, after Keller Jordan's) steps each matrix by its momentum orthogonalised by a few
Newton-Schulz iterations: every direction of the matrix moves by about as much, where AdamW's update follows the
gradient's few largest directions. It is made for the hidden matrices alone; the embeddings (the tied output
layer among them), norms and biases stay with AdamW, as in modded-nanogpt's speedrun and nanochat.

Learning rates: AdamW's groups at --lr, Muon's at --muon-lr, both scaled by the same warmup and decay. Weight
decay: torch's Muon shrinks a matrix by lr x weight_decay a step, so its weight_decay is scaled by lr / muon_lr
and a matrix decays as much a step as under AdamW. Torch's Muon imports torch._dynamo when made (about a second,
only in runs that choose it).
"""

from __future__ import annotations

import torch

MOMENTUM = 0.95  # torch's and Keller Jordan's default, with Nesterov momentum and 5 Newton-Schulz steps


class MuonWithAdamW:
    """Muon over some matrices and an AdamW (the lab's, training/optimizer.py) over the other parameters."""

    def __init__(self, matrices: list[torch.Tensor], adamw, lr: float, muon_lr: float, weight_decay: float):
        self.adamw = adamw
        self.muon_ratio = muon_lr / lr
        self.muon = torch.optim.Muon(matrices, lr=muon_lr, weight_decay=weight_decay / self.muon_ratio,
                                     momentum=MOMENTUM)

    @property
    def param_groups(self) -> list[dict]:
        """Both optimizers' groups (read by gradient clipping and the GradScaler)."""
        return self.adamw.param_groups + self.muon.param_groups

    def set_lr(self, lr: float) -> None:
        """lr for AdamW's groups, and the same point of the schedule for Muon's."""
        self.adamw.set_lr(lr)
        for group in self.muon.param_groups:
            group["lr"] = lr * self.muon_ratio

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self) -> None:
        self.muon.zero_grad()
        self.adamw.zero_grad()

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        if set(saved) != {"adamw", "muon"}:
            raise ValueError("the saved optimizer state is not Muon's and AdamW's: the run trained with another "
                             "optimizer")
        self.adamw.load_state_dict(saved["adamw"])
        self.muon.load_state_dict(saved["muon"])
