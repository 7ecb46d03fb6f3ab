"""The report's findings, written from synthetic runs' numbers: each exercise's lesson when the runs show it, and
what to change when they do not."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from pipeline.analysis.findings import best_run, comparable_metric, find, pick_best
from pipeline.analysis.curves import MODEL_SIZE, RunCurves
from pipeline.tracking import PRUNED_TAG

STEPS = list(range(10, 210, 10))


def falling(start: float, end: float) -> list[tuple[int, float]]:
    return [(s, end + (start - end) * math.exp(-5 * s / STEPS[-1])) for s in STEPS]


def run(name: str, params: dict, train, val, status: str = "FINISHED", novelty: float | None = None,
        tags: dict | None = None) -> RunCurves:
    return RunCurves(run_id=name * 4, name=name, status=status, params={k: str(v) for k, v in params.items()},
                     tags=tags or {}, train=train, val=val, tokens=[(s, s * 1024) for s, _ in train],
                     novelty=[(STEPS[-1], novelty)] if novelty is not None else ())


def lr_runs(spike_at: float | None, fail_at: float | None) -> list[RunCurves]:
    finals = {0.001: 4.6, 0.003: 4.1, 0.01: 3.8, 0.03: 4.0, 0.1: 5.0}
    runs = []
    for lr, final in finals.items():
        train = falling(10.8, final - 0.1)
        if spike_at is not None and lr >= spike_at:  # falls, then jumps far above its lowest point
            train, final = train[:10] + [(s, 8.5) for s, _ in train[10:]], 8.6
        status = "FAILED" if fail_at is not None and lr >= fail_at else "FINISHED"
        val = [(s, v + 0.1) for s, v in train if s % 50 == 0][:-1] + [(STEPS[-1], final)]
        runs.append(run(f"lr{lr}", {"lr": lr}, train, [] if status == "FAILED" else val, status))
    return runs


def test_a_diverging_rate_names_where_instability_begins():
    findings = find(lr_runs(spike_at=0.03, fail_at=0.1), ["lr"])
    assert findings.facts["unstable_from"] == 0.03 and findings.facts["best_lr"] == 0.01
    text = findings.text
    assert "Best run: lr0.01 (lr=0.01), final val_loss 3.800." in text
    assert "0.03 -> val 8.600 (unstable)" in text and "0.1 -> no val loss (failed) (diverged)" in text
    assert "Instability begins between 0.01 and 0.03" in text
    assert "The best stable rate is 0.01 (val loss 3.800, 0.300 below the next best)." in text
    assert "extend the range" not in text


def test_no_divergence_says_to_extend_the_range_upward():
    runs = [r for r in lr_runs(spike_at=None, fail_at=None) if float(r.params["lr"]) <= 0.01]
    runs.append(run("lr0.001-seed2", {"lr": 0.001, "seed": 2}, runs[0].train, runs[0].val))  # a rate run twice
    findings = find(runs, ["lr", "seed"])
    assert findings.facts["unstable_from"] is None
    assert "No rate diverged or became unstable: extend the range upward (try 0.1)" in findings.text
    assert "The best rate is the largest tried: the optimum may lie higher still." in findings.text


def scaling_runs(losses: dict[float, float]) -> list[RunCurves]:
    return [run(f"n{n:.0f}", {MODEL_SIZE: int(n)}, falling(10.8, loss - 0.1), [(200, loss)])
            for n, loss in losses.items()]


def test_a_good_power_law_is_set_beside_kaplan_and_chinchilla():
    sizes = [25_000, 100_000, 330_000, 800_000]
    findings = find(scaling_runs({n: (1e9 / n) ** 0.1 * (1 + 0.002 * (-1) ** i) for i, n in enumerate(sizes)}),
                    [MODEL_SIZE])
    assert findings.facts["alpha"] == pytest.approx(0.1, abs=0.01)
    assert findings.facts["r_squared"] > 0.95 and findings.facts["size_span"] == 32
    text = findings.text
    assert "Best run: n800000 (N=800K)" in text
    assert "fits with α = 0.101 ± 0.001 (R² = 1.00) over 4 sizes from 25K to 800K non-embedding" in text
    assert "Kaplan et al. found 0.076 and Chinchilla ~0.34; this is nearer Kaplan's." in text
    assert "every size saw 205K tokens" in text


def test_a_bad_power_law_fit_is_not_read_as_one():
    findings = find(scaling_runs({25_000: 5.0, 100_000: 4.2, 330_000: 5.1, 800_000: 4.4}), [MODEL_SIZE])
    assert findings.facts["r_squared"] < 0.9
    assert "R² under 0.9: the points do not lie on a power law, with or without a floor" in findings.text
    growing = find(scaling_runs({25_000: 4.0, 100_000: 4.5, 330_000: 5.0}), [MODEL_SIZE])
    assert growing.facts["alpha"] < 0 and "The loss does not fall with size" in growing.text


def test_losses_that_bend_toward_the_budgets_floor_are_fitted_with_it():
    # what scaling_cpu measured: the larger sizes all end near 5.3, where 205K tokens stop them
    measured = {6_300: 5.651, 25_000: 5.398, 99_000: 5.336, 333_000: 5.297, 790_000: 5.295}
    findings = find(scaling_runs(measured), [MODEL_SIZE])
    assert findings.facts["r_squared"] < 0.9 and findings.facts["floor_r_squared"] > 0.99
    assert findings.facts["floor"] == pytest.approx(5.29, abs=0.01)
    assert findings.facts["floor_alpha"] == pytest.approx(0.84, abs=0.05)
    text = findings.text
    assert "The points bend toward a floor instead of falling in a straight line." in text
    assert "L(N) = 5.29 + (Nc/N)^α with α = 0.84 ± 0.08 (R² = 1.00)" in text
    assert "Kaplan et al. found 0.076 (no floor) and Chinchilla ~0.34 (with one)" in text
    assert "the floor of 5.29 is this budget's" in text


def test_memorisation_against_generalisation():
    verdict = run("v", {"corpus": "verdict"}, falling(10.8, 0.08), [(200, 7.1)], novelty=0.02)
    stories = run("t", {"corpus": "tinystories"}, falling(10.8, 4.3), [(200, 4.45)], novelty=0.81)
    findings = find([verdict, stories], ["corpus"])
    assert findings.facts["verdict.gap"] == pytest.approx(7.1 - findings.facts["verdict.train_loss"])
    # the final train loss is the median of the last three points, as the diagnosis reads it
    assert findings.facts["verdict.train_loss"] == pytest.approx(verdict.train[-2][1])
    assert "verdict was memorised: train loss 0.17, val loss 7.10 (gap 6.93), novelty 0.02." in findings.text
    assert "tinystories generalises: train loss 4.36, val loss 4.45 (gap 0.09), novelty 0.81." in findings.text
    short = run("v", {"corpus": "verdict"}, falling(10.8, 1.3), [(200, 6.0)], novelty=0.3)
    assert "verdict is between the two" in find([short, stories], ["corpus"]).text


def test_context_length_reads_the_val_losses_in_order():
    runs = [run(f"c{c}", {"context_length": c}, falling(10.8, loss), [(200, loss)])
            for c, loss in ((32, 4.6), (64, 4.4), (128, 4.2))]
    text = find(runs, ["context_length"]).text
    assert "Val loss by context length: 32 -> 4.600, 64 -> 4.400, 128 -> 4.200." in text
    assert "The longest context predicts best, 0.400 below the shortest" in text
    assert "(at equal tokens and steps)" in text
    # equal tokens in fewer, longer windows: the finding names the steps the longer context lost
    fewer_steps = [run("c32", {"context_length": 32}, falling(10.8, 4.2), [(200, 4.2)]),
                   run("c128", {"context_length": 128}, [(s // 4, v) for s, v in falling(10.8, 4.6)], [(50, 4.6)])]
    assert "The longest context did worse by 0.400: at equal tokens it took 4x fewer optimizer steps" in \
        find(fewer_steps, ["context_length"]).text
    middle = [run(f"c{c}", {"context_length": c}, falling(10.8, loss), [(200, loss)])
              for c, loss in ((32, 5.518), (64, 5.336), (128, 5.543))]  # as context_length_cpu measured it
    assert ("Context 64 predicts best (at equal tokens and steps), 0.182 below the shortest and 0.207 below the "
            "longest: more context helps up to 64 here") in find(middle, ["context_length"]).text
    same_steps = [run(f"c{c}", {"context_length": c}, falling(10.8, loss), [(200, loss)])
                  for c, loss in ((32, 4.2), (128, 4.6))]
    assert "did worse by 0.400 at equal tokens and steps: at this budget the model has not learned to use" in \
        find(same_steps, ["context_length"]).text


def test_the_best_run_is_the_finished_one_with_the_best_finite_value_for_the_goal():
    runs = [run("low", {"lr": 0.01}, falling(10.8, 3.0), [(200, 3.0)]),
            run("high", {"lr": 0.03}, falling(10.8, 5.0), [(200, 5.0)]),
            run("nan", {"lr": 0.1}, falling(10.8, 1.0), [(200, math.nan)]),
            run("failed", {"lr": 0.3}, falling(10.8, 1.0), [(200, 1.0)], status="FAILED"),
            run("pruned", {"lr": 0.001}, falling(10.8, 2.0), [(200, 2.0)], tags={PRUNED_TAG: "100"})]
    assert best_run(runs).name == "low"
    assert best_run(runs, goal="maximize").name == "high"
    assert best_run(runs[2:]) is None
    assert pick_best([], lambda value: value) is None


def test_runs_on_different_tokenizers_are_compared_by_bits_per_byte():
    # bpe:4096's lower loss per token is no better model: each of its tokens holds fewer bytes of text
    curve = [(s, 5.0) for s in STEPS]
    gpt2 = replace(run("gpt2", {"tokenizer": "gpt2"}, curve, [(STEPS[-1], 4.0)]), metrics={"val_bpb": 1.9})
    bpe = replace(run("bpe", {"tokenizer": "bpe:4096"}, curve, [(STEPS[-1], 3.0)]), metrics={"val_bpb": 2.1})
    metric = comparable_metric("val_loss", [r.value("tokenizer") for r in (gpt2, bpe)])
    assert metric == "val_bpb" and best_run([gpt2, bpe], metric).name == "gpt2"
    assert best_run([gpt2, bpe], "val_loss").name == "bpe"
    # GPT-2's runs from before the param was logged compare with GPT-2's runs by val_loss, as before
    assert comparable_metric("val_loss", ["gpt2", None]) == "val_loss"
    assert comparable_metric("train_loss", ["gpt2", "bytes"]) == "train_loss"
