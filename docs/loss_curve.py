"""Draw docs/loss-curve.png, the README's picture: train and val loss against step of one run.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python docs/loss_curve.py RUN_ID

The run is the README's main job (nano on The Verdict, 300 steps at lr 3e-3); the date and the machine it ran on
go in the title's second line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id")
    parser.add_argument("--where", default="", help="machine and date, for the title")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "loss-curve.png")
    args = parser.parse_args()
    client = MlflowClient()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for metric, style in (("train_loss", "-"), ("val_loss", "o-")):
        points = sorted((m.step, m.value) for m in client.get_metric_history(args.run_id, metric))
        ax.plot([s for s, _ in points], [v for _, v in points], style, label=f"{metric} (last {points[-1][1]:.2f})")
    ax.set_xlabel("step (8 windows of 256 tokens each)", fontsize=12)
    ax.set_ylabel("cross-entropy loss (nats per token)", fontsize=12)
    ax.set_title("nano on The Verdict, 300 steps, lr 3e-3" + (f"\n{args.where}" if args.where else ""), fontsize=13)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=12)
    fig.tight_layout()
    fig.savefig(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
