"""Does the bayes search find a learning rate as good as a grid's, for fewer training tokens?

    python bench/lr_search.py [--workers 1]

On one fresh MLflow store, runs experiments.yaml's `lr_search` (TPE over lr and warmup_steps, hyperband pruning)
and, beside it, a grid over the rates lr_sensitivity-style sweeps use (GRID_RATES, the same base settings, the
base's warmup). Prints each one's total training tokens (every child, pruned trials up to where they stopped)
and best rate by the sweep's metric. Targets: the search's best rate within a factor of two of the grid's, and
fewer tokens in all than the grid.
"""

from __future__ import annotations

import argparse
import sys

import benchlib

GRID_RATES = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def measured(client, result, sweep) -> tuple[int, float, float, int]:
    """Total tokens of the sweep's children, the best child's lr and metric, and how many were pruned."""
    from pipeline.sweeps.runner import best_child
    from pipeline.tracking import PRUNED_TAG

    runs = [client.get_run(child.run_id) for child in result.children]
    for run in runs:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        stopped = f"pruned at step {tags[PRUNED_TAG]}" if PRUNED_TAG in tags else "trained to the end"
        print(f"     lr {float(params['lr']):.3g}  warmup {params['warmup_steps']:>2}  "
              f"{int(metrics.get('tokens_seen', 0)):>7,} tokens  "
              f"{sweep.metric} {metrics.get(sweep.metric, float('nan')):.4f}  {stopped}")
    tokens = sum(int(run.data.metrics.get("tokens_seen", 0)) for run in runs)
    best = best_child(client, sweep, result.children)
    run = client.get_run(best.run_id)
    return tokens, float(run.data.params["lr"]), run.data.metrics[sweep.metric], sum(c.pruned for c in
                                                                                    result.children)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="trials (and grid runs) trained at once")
    args = parser.parse_args()

    benchlib.header("bayes lr_search against a grid over lr, on one store")
    with benchlib.scratch("bench-lr-search-"):
        benchlib.quiet_logging()
        from pipeline import tracking
        from pipeline.sweeps.runner import run_sweep
        from pipeline.sweeps.spec import load_sweep, parse_sweep

        client = tracking.connect()
        search = load_sweep("lr_search")
        grid = parse_sweep("lr_grid", {"base": search.spec["base"], "method": "grid", "metric": search.spec["metric"],
                                       "parameters": {"lr": {"values": GRID_RATES}}})
        results = {}
        for sweep in (grid, search):
            result = run_sweep(client, sweep, workers=args.workers)
            results[sweep.name] = measured(client, result, sweep)
            tokens, lr, value, pruned = results[sweep.name]
            print(f"   {sweep.name:10s} {len(result.children)} runs ({pruned} pruned): {tokens:,} tokens, best lr "
                  f"{lr:.3g} ({sweep.metric} {value:.4f})")
    grid_tokens, grid_lr, _, _ = results["lr_grid"]
    search_tokens, search_lr, _, _ = results["lr_search"]
    print(f"   tokens: search / grid = {search_tokens / grid_tokens:.2f}; best rates: search / grid = "
          f"{search_lr / grid_lr:.2f}")
    return benchlib.verdict([
        ("the search's best lr is within a factor of two of the grid's", 0.5 <= search_lr / grid_lr <= 2.0),
        ("the search trains fewer tokens in all than the grid", search_tokens < grid_tokens),
    ], result=f"{search_tokens / grid_tokens:.2f}x the tokens, best lr {search_lr / grid_lr:.2f}x the grid's")


if __name__ == "__main__":
    sys.exit(main())
