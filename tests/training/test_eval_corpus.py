"""--eval-corpus: other corpora's val splits scored at each evaluation, beside the run's own."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_MODEL, assert_one_line_error, run_command

FOUR_STEPS = ["--corpus", "tiny", *TINY_MODEL, "--max-steps", "4", "--eval-interval", "2", "--sample-interval", "0",
              "--checkpoint-interval", "0"]


def test_other_corpora_are_scored_at_each_evaluation(store, tmp_path):
    trained = run_command("pipeline.train", *FOUR_STEPS, "--eval-corpus", "verdict", "--eval-corpus", "tiny",
                          cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])

    def curve(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    assert run.data.params["eval_corpus"] == "verdict,tiny"
    # the run's own corpus as an extra: the very windows of val_loss, the same numbers
    assert curve("val_loss/tiny") == pytest.approx(curve("val_loss"), rel=1e-6)
    assert curve("val_bpb/tiny") == pytest.approx(curve("val_bpb"), rel=1e-6)
    verdict, verdict_bpb = curve("val_loss/verdict"), curve("val_bpb/verdict")
    assert sorted(verdict) == sorted(verdict_bpb) == [0, 2, 4]
    assert all(math.isfinite(v) and v > 0 for v in verdict.values()) and verdict != curve("val_loss")


@pytest.mark.parametrize("args, message", [
    (["--eval-corpus", "no-such-corpus"], "unknown corpus"),
    (["--tokenizer", "bpe:300", "--eval-corpus", "verdict"], "--eval-corpus needs a tokenizer that is not learned"),
])
def test_an_eval_corpus_it_cannot_score_is_one_line(store, tmp_path, args, message):
    assert_one_line_error(run_command("pipeline.train", *FOUR_STEPS, *args, cwd=tmp_path), message)
