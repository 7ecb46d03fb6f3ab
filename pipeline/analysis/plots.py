"""The report's plots, drawn with matplotlib's object API on the Agg canvas: no display, no GPU, no global
backend change. Each function draws one PNG from a list of runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.analysis.curves import MODEL_SIZE, RunCurves, follows, number, sort_key
from pipeline.analysis.fits import PowerLaw, best_loss_by_size, floor_fit, scaling_fit
from pipeline.errors import ReportError
from pipeline.tracking import PRUNED_TAG

DPI = 120
PRUNED_GREY = "0.6"  # curves of trials a bayes sweep stopped early
# x axes drawn on a log scale, with their base
LOG_AXES = {"lr": 10, "min_lr": 10, MODEL_SIZE: 10, "max_tokens": 10, "context_length": 2, "batch_size": 2,
            "grad_accum": 2}


def _figure(width: float = 9.0, height: float = 5.5):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def _save(figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")


def _colours(count: int) -> list:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    return [colormaps["viridis"](i / max(1, count - 1)) for i in range(count)]


def loss_curves(runs: Sequence[RunCurves], swept: Sequence[str], path: Path) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    by_tokens = all(run.tokens_at([1]) is not None for run in runs if run.train or run.val)
    figure, ax = _figure()
    handles = []
    kept = [run for run in runs if not run.pruned]
    colours = dict(zip((run.run_id for run in kept), _colours(len(kept))))
    for run in sorted(runs, key=lambda run: not run.pruned):  # pruned trials first, under the others, in grey
        colour = colours.get(run.run_id, PRUNED_GREY)
        for curve, style in ((run.train, "-"), (run.val, "--")):
            if not curve:
                continue
            steps = [s for s, _ in curve]
            x = run.tokens_at(steps) if by_tokens else steps
            ax.plot(x, [v for _, v in curve], linestyle=style, color=colour, linewidth=1.0 if run.pruned else 1.4,
                    marker="o" if style == "--" else None, markersize=3, alpha=0.6 if run.pruned else 1.0)
    for run in runs:
        notes = [note for note in (run.trouble, "" if run.train or run.val else "no losses logged",
                                   f"pruned at step {run.tags[PRUNED_TAG]}" if run.pruned else "") if note]
        label = run.label(swept) + (f" ({', '.join(notes)})" if notes else "")
        handles.append(Line2D([], [], color=colours.get(run.run_id, PRUNED_GREY), linewidth=2, label=label))
    handles += [Line2D([], [], color="none", label=""),
                Line2D([], [], color="black", linestyle="-", label="train loss"),
                Line2D([], [], color="black", linestyle="--", marker="o", markersize=3, label="val loss")]
    ax.set_xlabel("tokens seen" if by_tokens else "optimizer step")
    if by_tokens:
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("loss (nats per token)")
    varied = f" by {', '.join('N' if key == MODEL_SIZE else key for key in swept)}" if swept else ""
    ax.set_title(f"Train (solid) and val (dashed) loss{varied}")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    _save(figure, path)


def final_val(runs: Sequence[RunCurves], swept: Sequence[str], path: Path) -> None:
    with_val = [run for run in runs if run.final_val is not None and not run.pruned]
    x_key = swept[0] if swept else None
    with_val = [run for run in with_val if x_key is None or run.value(x_key) is not None]
    numeric = x_key is not None and all(number(run.value(x_key)) is not None for run in with_val)
    # a setting that changes with x (the layers of a size, the batch that keeps a step's tokens) is not a series
    others = [key for key in swept[1:] if not follows(with_val, x_key, key)]
    groups: dict[str, list[RunCurves]] = {}
    for run in with_val:
        label = ", ".join(f"{key}={run.value(key)}" for key in others)
        groups.setdefault(label, []).append(run)

    figure, ax = _figure()
    categories = sorted({run.value(x_key) or "" for run in with_val}, key=sort_key) if x_key else []
    for (label, members), colour in zip(sorted(groups.items()), _colours(len(groups))):
        if numeric:
            points = sorted((number(run.value(x_key)), run.final_val) for run in members)
        elif x_key:
            points = sorted((categories.index(run.value(x_key) or ""), run.final_val) for run in members)
        else:
            points = [(with_val.index(run), run.final_val) for run in members]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=label or None)
    if numeric:  # runs that spiked or diverged are marked where they ended (diverged ones with no val loss on top)
        top = ax.get_ylim()[1]
        for run in runs:
            x = number(run.value(x_key))
            if not run.trouble or x is None:
                continue
            ended = run.final_val is not None and math.isfinite(run.final_val)
            y = run.final_val if ended else top
            if ended:
                ax.scatter([x], [y], s=120, facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=4)
            else:
                ax.scatter([x], [y], marker="x", s=80, color="tab:red", zorder=4)
            ax.annotate(run.trouble, (x, y), textcoords="offset points", xytext=(8, -4), color="tab:red",
                        fontsize="small")
    if numeric and x_key in LOG_AXES:
        ax.set_xscale("log", base=LOG_AXES[x_key])
    if numeric:  # a tick at every value swept, labelled as logged (sizes in k/M)
        from matplotlib.ticker import EngFormatter, NullFormatter

        values = {number(run.value(x_key)): run.value(x_key) for run in runs if number(run.value(x_key)) is not None
                  and (run.final_val is not None or run.trouble)}
        if len(values) <= 12:
            engineering = EngFormatter(sep="")
            ax.set_xticks(sorted(values), [engineering(v) if x_key == MODEL_SIZE else values[v]
                                           for v in sorted(values)])
            ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ticks = categories if x_key else [run.name for run in with_val]
        ax.set_xticks(range(len(ticks)), ticks, rotation=30 if len(ticks) > 4 else 0, ha="right")
    names = {MODEL_SIZE: "non-embedding parameters", "lr": "peak learning rate (lr)"}
    ax.set_xlabel(names.get(x_key, x_key) if x_key else "run")
    ax.set_ylabel("final val loss (nats per token)")
    ax.set_title(f"Final val loss by {names.get(x_key, x_key)}" if x_key else "Final val loss by run")
    ax.grid(True, alpha=0.3, which="both")
    if any(groups) and len(groups) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    _save(figure, path)


def bpb_by_time(runs: Sequence[RunCurves], swept: Sequence[str], path: Path) -> None:
    """val_bpb against minutes of training, one line a run: runs on different tokenizers compare at equal wall
    time in bits per byte of the same val text (val loss in nats per token would not compare); runs on different
    optimizers by the time each took."""
    figure, ax = _figure()
    timed = [run for run in runs if run.bpb_times and not run.pruned]
    for run, colour in zip(timed, _colours(len(timed))):
        ax.plot([t / 60 for t, _ in run.bpb_times], [v for _, v in run.bpb_times], marker="o", markersize=3,
                color=colour, label=run.label(swept[:1] if "tokenizer" in swept[:1] else swept))
    ax.set_xlabel("minutes of training (since the run's first step)")
    ax.set_ylabel("val bits per byte (val_bpb)")
    ax.set_title("val_bpb against wall time" + (f" by {swept[0]}" if swept else ""))
    ax.grid(True, alpha=0.3)
    if timed:
        ax.legend(loc="upper right", fontsize="small", frameon=False)
    _save(figure, path)


def scaling(runs: Sequence[RunCurves], path: Path) -> PowerLaw | None:
    """Best final val loss at each model size on log-log axes, with the fitted power law when there is one, and the
    power law with a floor when that fits better."""
    try:
        fit = scaling_fit(runs)
    except ReportError:
        fit = None
    try:
        floor = floor_fit(runs)
    except ReportError:
        floor = None
    if fit is None or (floor is not None and floor.r_squared <= fit.r_squared):
        floor = None  # drawn only where it fits better than the plain power law
    best = best_loss_by_size(runs)
    sizes, losses = np.array(list(best)), np.array(list(best.values()))

    figure, ax = _figure(7.5, 5.5)
    ax.scatter(sizes, losses, color="tab:blue", zorder=3, label="best final val loss at each size")
    title = "Scaling: no power law could be fitted"
    if fit is not None:
        grid = np.geomspace(sizes.min() / 1.5, sizes.max() * 1.5, 100)
        spread = f" ± {fit.alpha_stderr:.3f}" if fit.alpha_stderr is not None else ""
        ax.plot(grid, fit.loss(grid), color="tab:red", linestyle="--",
                label=f"(Nc/N)^α: α = {fit.alpha:.3f}{spread}, R² = {fit.r_squared:.2f}")
        title = f"Scaling law: L(N) = (Nc/N)^α, α = {fit.alpha:.3f}{spread}, R² = {fit.r_squared:.2f}"
        if floor is not None:
            floor_spread = f" ± {floor.alpha_stderr:.2f}" if floor.alpha_stderr is not None else ""
            ax.plot(grid, floor.loss(grid), color="tab:green",
                    label=f"E + (Nc/N)^α: E = {floor.floor:.2f}, α = {floor.alpha:.2f}{floor_spread}, "
                          f"R² = {floor.r_squared:.2f}")
            ax.axhline(floor.floor, color="tab:green", linestyle=":", linewidth=1,
                       label="the floor E this token budget sets")
            title = f"Scaling at a fixed budget: L(N) = E + (Nc/N)^α, α = {floor.alpha:.2f}{floor_spread}"
    ax.set_title(title)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    # plain numbers on the loss axis: 3.2, not 3.2 x 10^0
    low, high = min(losses.min(), floor.floor if floor else np.inf), losses.max()
    ticks = np.geomspace(low, high, 5) if high > low else np.array([low])
    ax.set_yticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("non-embedding parameters N (log scale)")
    ax.set_ylabel("final val loss L (nats per token, log scale)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="best", fontsize="small")
    _save(figure, path)
    return fit


def fine_tuning(pairs: Sequence, path: Path) -> None:
    """Each fine-tuned run's val loss beside its corpus's run from scratch (solid), and both runs' val loss on the
    other corpora they scored (dashed: what the fine-tuned run forgets), against the optimizer step.
    pairs: analysis.finetuning.Pair."""
    figure, ax = _figure()
    runs = list({run.run_id: run for pair in pairs for run in (pair.tuned, pair.scratch) if run is not None}.values())
    for run, colour in zip(runs, _colours(len(runs))):
        curves = [(run.val, "-", f"{run.name}: val loss")]
        curves += [(curve, "--", f"{run.name}: val loss on {name}") for name, curve in run.other_val.items()]
        for curve, style, label in curves:
            if curve:
                ax.plot([s for s, _ in curve], [v for _, v in curve], linestyle=style, marker="o", markersize=3,
                        color=colour, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("val loss (nats per token)")
    ax.set_title("Fine-tuned against from scratch (solid), and on the other corpora (dashed)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    _save(figure, path)


def loss_by_position(runs: Sequence[RunCurves], curves: dict, swept: Sequence[str], path: Path) -> None:
    """The newest val loss at each position of the context, one colour a run (curves: run id -> PositionCurve):
    each position faint, their means over quarter-octave bins bold."""
    figure, ax = _figure()
    shown = [run for run in runs if run.run_id in curves]
    for run, colour in zip(shown, _colours(len(shown))):
        losses = curves[run.run_id].losses
        ax.plot(range(1, len(losses) + 1), losses, color=colour, linewidth=0.8, alpha=0.25)
        ax.plot(*curves[run.run_id].binned(), color=colour, linewidth=2.0, marker="o", markersize=3,
                label=run.label(swept))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens of context read (position + 1)")
    ax.set_ylabel("val loss at that position (nats per token)")
    ax.set_title("Loss by position in the context, at each run's last evaluation")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small", frameon=False)
    _save(figure, path)


def inside_over_training(runs: Sequence[RunCurves], readings: dict, swept: Sequence[str], path: Path) -> None:
    """Val loss, in_context_gain and the best head's induction score against tokens seen, one colour a run
    (readings: run id -> the run's inspections, interpret.heads.Reading)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    figure = Figure(figsize=(9.0, 9.0))
    axes = figure.subplots(3, 1, sharex=True)
    shown = [run for run in runs if run.run_id in readings]
    for run, colour in zip(shown, _colours(len(shown))):
        found = readings[run.run_id]
        steps = [reading.step for reading in found]
        tokens = run.tokens_at(steps)
        x = tokens if tokens is not None else steps
        label = run.label(swept)
        if run.val:
            val_tokens = run.tokens_at([s for s, _ in run.val])
            axes[0].plot(val_tokens if val_tokens is not None else [s for s, _ in run.val],
                         [v for _, v in run.val], color=colour, marker="o", markersize=3, label=label)
        gains = [(xi, r.in_context_gain) for xi, r in zip(x, found) if r.in_context_gain is not None]
        axes[1].plot([g[0] for g in gains], [g[1] for g in gains], color=colour, marker="o", markersize=3)
        axes[2].plot(x, [r.scores.best("induction")[2] for r in found], color=colour, marker="o", markersize=3)
        axes[2].axhline(found[-1].scores.chance, color=colour, linestyle=":", linewidth=1)
    axes[0].set_ylabel("val loss")
    axes[1].set_ylabel("in_context_gain\n(early - late loss)")
    axes[2].set_ylabel("best induction score\n(dotted: chance)")
    axes[2].set_xlabel("tokens seen")
    axes[2].xaxis.set_major_formatter(EngFormatter())
    axes[0].set_title("The phase change: loss, in-context learning and the induction head, over training")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small", frameon=False)
    _save(figure, path)
