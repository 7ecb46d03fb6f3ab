"""The lab's AdamW (pipeline/training/optimizer.py) against torch.optim.AdamW: the same update, no slower.

    python bench/optimizer_step.py [--config nano] [--steps 10] [--reps 6] [--device cpu]

Both optimizers hold their own copy of one model's weights (make_optimizer's two groups: weight decay on the
matrices only) and step on the same fixed gradients, fused on CUDA as the trainer runs them. In one process,
alternating blocks of --steps steps, --reps times each; compared: the median seconds per step. Afterwards both
copies must hold the same weights, bit for bit. Target: the lab's step at most 1.05x torch's.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import benchlib

MAX_RATIO = 1.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="nano")
    parser.add_argument("--steps", type=int, default=10, help="steps in a timed block (default 10)")
    parser.add_argument("--reps", type=int, default=6, help="blocks of each optimizer, alternating (default 6)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from model import GPT
    from pipeline.settings import TrainSettings
    from pipeline.training.optimizer import make_optimizer

    benchlib.header(f"optimizer step: the lab's AdamW against torch.optim.AdamW, {args.config}, {args.device}")
    device = torch.device(args.device)
    settings = TrainSettings(config=args.config)
    torch.manual_seed(0)
    ours_model = GPT(settings.model_config()).to(device)
    torch_model = copy.deepcopy(ours_model)
    ours = make_optimizer(ours_model, settings, device)
    # the same groups over torch_model's copies of the parameters (a deepcopy keeps their order)
    position = {p: i for i, p in enumerate(ours_model.parameters())}
    twins = list(torch_model.parameters())
    groups = [{**group, "params": [twins[position[p]] for p in group["params"]]} for group in ours.param_groups]
    reference = torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2),
                                  fused=device.type == "cuda")
    gradients = [torch.randn_like(p) * 1e-3 for p in ours_model.parameters()]
    for model in (ours_model, torch_model):
        for p, grad in zip(model.parameters(), gradients):
            p.grad = grad.clone()

    seconds = {"lab": [], "torch": []}
    contenders = {"lab": ours, "torch": reference}
    for rep in range(args.reps):
        for name in (("lab", "torch") if rep % 2 == 0 else ("torch", "lab")):
            benchlib.sync(device)
            started = time.perf_counter()
            for _ in range(args.steps):
                contenders[name].step()
            benchlib.sync(device)
            seconds[name].append((time.perf_counter() - started) / args.steps)
    same = all(torch.equal(p, q) for p, q in zip(ours_model.parameters(), torch_model.parameters()))
    lab, theirs = benchlib.median(seconds["lab"]), benchlib.median(seconds["torch"])
    print(f"lab AdamW:         {lab * 1000:7.2f} ms a step (blocks {benchlib.spread(seconds['lab'])} s)")
    print(f"torch.optim.AdamW: {theirs * 1000:7.2f} ms a step (blocks {benchlib.spread(seconds['torch'])} s)")
    return benchlib.verdict([
        (f"the lab's step {lab / theirs:.2f}x torch's (target at most {MAX_RATIO}x)", lab <= MAX_RATIO * theirs),
        ("the same weights after the same steps, bit for bit", same),
    ], result=f"{lab / theirs:.2f}x ({args.config}), {'same' if same else 'different'} weights")


if __name__ == "__main__":
    sys.exit(main())
