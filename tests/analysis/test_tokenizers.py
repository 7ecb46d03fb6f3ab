"""The tokenizers reading (analysis/tokenizers.py), on synthetic runs: val_bpb against wall time, which tokenizer
learned the most per second, and why in tokens/s x bytes per token and the output layer's share."""

from __future__ import annotations

import pytest

from pipeline.analysis import plots
from pipeline.analysis.curves import RunCurves
from pipeline.analysis.findings import find
from pipeline.analysis.tokenizers import bpb_at, point, time_to_reach

# (tokenizer, context, tokens/s, tokens per byte, vocab, val_bpb every 30 s from 30 to 210)
SHAPES = {
    "gpt2": (64, 1900.0, 0.245, 50304, [2.6, 2.2, 1.9, 1.75, 1.65, 1.6, 1.57]),
    "bpe:4096": (96, 13000.0, 0.30, 4096, [2.0, 1.6, 1.4, 1.3, 1.25, 1.2, 1.18]),
    "bytes": (256, 18500.0, 1.0, 257, [3.3, 2.9, 2.5, 2.2, 2.0, 1.85, 1.75]),
}


def tokenizer_run(tokenizer: str) -> RunCurves:
    context, speed, per_byte, vocab, bpb = SHAPES[tokenizer]
    width, layers = 128, 4
    flops = 6 * (12 * layers * width ** 2 + vocab * width) + 12 * layers * width * context
    params = {"tokenizer": tokenizer, "context_length": context, "val_tokens_per_byte": per_byte,
              "vocab_size": vocab, "n_embd": width, "flops_per_token": flops}
    times = tuple((30.0 * (i + 1), value) for i, value in enumerate(bpb))
    val = [(50 * (i + 1), value * 0.693 / per_byte) for i, value in enumerate(bpb)]
    return RunCurves(run_id=tokenizer * 2, name=tokenizer, status="FINISHED", params={k: str(v) for k, v in
                     params.items()}, tags={}, train=val, val=val, tokens=[], bpb_times=times,
                     metrics={"tokens_per_sec": speed, "val_bpb": bpb[-1]})


def test_the_small_bpe_learned_the_most_per_second_and_the_findings_say_why():
    runs = [tokenizer_run(name) for name in SHAPES]
    findings = find(runs, ["tokenizer", "context_length"], metric="val_bpb")
    assert findings.facts["most_per_second"] == "bpe:4096"
    assert findings.facts["bpb_at_common"] == {"bpe:4096": 1.18, "gpt2": 1.57, "bytes": 1.75}
    text = findings.text
    assert "Best run: bpe:4096" in text
    assert "val_bpb after 3.5 minutes of training (the shortest run's length): bpe:4096 1.180; gpt2 1.570; " \
           "bytes 1.750." in text
    assert "bpe:4096 learned the most per second." in text
    assert "bpe:4096 13,000 tokens/s x 3.33 bytes/token = 43,333 bytes/s" in text
    assert "Val loss by context length" not in text  # the context goes with the tokenizer: not a lesson of its own
    assert findings.facts["head_share"]["gpt2"] == pytest.approx(0.88, abs=0.01)
    assert findings.facts["head_share"]["bytes"] < 0.1


def test_a_near_tie_is_not_called_a_clear_win():
    runs = [tokenizer_run("gpt2"), tokenizer_run("bpe:4096")]
    close = RunCurves(**{**runs[1].__dict__, "bpb_times": tuple((t, v + 0.38) for t, v in runs[1].bpb_times)})
    text = find([runs[0], close], ["tokenizer"], metric="val_bpb").text
    assert "not a clear win" in text


def test_bpb_at_a_time_and_the_time_to_reach_a_value_interpolate_between_evaluations():
    run = tokenizer_run("bpe:4096")
    assert bpb_at(run, 45.0) == pytest.approx(1.8)
    assert bpb_at(run, 10.0) is None and bpb_at(run, 999.0) == 1.18
    assert time_to_reach(run, 1.5) == pytest.approx(75.0)
    assert time_to_reach(run, 2.5) == 30.0 and time_to_reach(run, 1.0) is None
    assert point(run).bytes_per_sec == pytest.approx(13000 / 0.30)


def test_fewer_than_two_timed_runs_say_there_is_nothing_to_compare():
    bare = RunCurves(run_id="x", name="x", status="FINISHED", params={"tokenizer": "bytes"}, tags={}, train=[],
                     val=[], tokens=[])
    text = find([tokenizer_run("gpt2"), bare], ["tokenizer"], metric="val_bpb").text
    assert "nothing to compare across tokenizers" in text


def test_the_bpb_plot_is_drawn_from_the_timed_curves(tmp_path):
    path = tmp_path / "val_bpb_by_time.png"
    plots.bpb_by_time([tokenizer_run(name) for name in SHAPES], ["tokenizer"], path)
    assert path.stat().st_size > 10_000
