"""Head scores: a head whose weights are set by hand to read the previous token scores ~1 at that role and nothing
at induction; a head that attends evenly, and an untrained model's heads, score chance at induction."""

from __future__ import annotations

import torch

from model import GPT, GPTConfig
from pipeline.interpret.attention import attention_patterns
from pipeline.interpret.heads import (FORMED, PERIODS, HeadScores, Reading, head_scores, induction_scores, phase_change,
                                       repeated_random_tokens)

CPU = torch.device("cpu")
VOCAB = 1000


def previous_token_model(context: int = 16) -> GPT:
    """Layer 0 head 0 reads the previous position; head 1 attends evenly. Tokens embed to nothing, positions to
    e_p - e_(T+p): after ln_1 a scaled one-hot of the position, which head 0's query shifts back by one."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=4 * context, context_length=context, vocab_size=VOCAB)
    model = GPT(config)
    width, head_size = config.n_embd, config.n_embd // 2
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.zero_()
        for position in range(context):
            model.transformer.wpe.weight[position, position] = 1.0
            model.transformer.wpe.weight[position, context + position] = -1.0
        attn = model.transformer.h[0].attn
        attn.c_attn.weight.zero_()
        attn.c_attn.bias.zero_()
        for channel in range(context - 1):
            attn.c_attn.weight[channel, channel + 1] = 5.0  # head 0's query at position p: e_(p-1)
        for channel in range(context):
            attn.c_attn.weight[width + channel, channel] = 1.0  # head 0's key at position p: e_p
        assert head_size >= context
    return model


def test_a_hand_set_previous_token_head_scores_one_there_and_nothing_at_induction():
    scores = head_scores(previous_token_model(), VOCAB, CPU)
    assert scores.prev_token[0][0] > 0.99
    assert scores.induction[0][0] < 0.01
    assert scores.best("prev_token")[:2] == (0, 0)


def test_a_head_that_attends_evenly_scores_chance():
    scores = head_scores(previous_token_model(), VOCAB, CPU)
    assert abs(scores.induction[0][1] - scores.chance) < 1e-4
    assert 0 < scores.chance < 0.2


def test_an_untrained_models_heads_score_near_chance_at_induction():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, context_length=32, vocab_size=VOCAB))
    scores = head_scores(model, VOCAB, CPU)
    assert len(scores.induction) == 2 and len(scores.induction[0]) == 2
    assert all(abs(score - scores.chance) < 0.03 for row in scores.induction for score in row), scores
    assert scores.best("induction")[2] < FORMED


def test_attention_patterns_leave_the_model_as_it_was():
    model = previous_token_model().train()
    patterns = attention_patterns(model, torch.arange(8)[None])
    assert patterns.shape == (1, 1, 2, 8, 8)
    assert model.training and not model.transformer.h[0].attn.keep_attention
    assert model.transformer.h[0].attn.attention is None


def _reading(step: int, best: float, gain: float) -> Reading:
    return Reading(step, HeadScores([[0.01, best]], [[0.2, 0.1]], 0.02), gain)


def test_the_phase_change_names_the_head_the_span_and_what_in_context_gain_did():
    readings = [_reading(100, 0.02, 0.05), _reading(200, 0.05, 0.1), _reading(300, 0.6, 0.7), _reading(400, 0.7, 0.8)]
    assert phase_change(readings[:2]) is None
    formed = phase_change(readings)
    assert (formed.layer, formed.head, formed.before.step, formed.after.step) == (0, 1, 200, 300)
    words = formed.describe()
    assert "layer 0 head 1" in words and "between step 200 and step 300" in words
    assert "0.05 -> 0.60" in words and "in_context_gain went 0.10 -> 0.70" in words
    assert "between 200K tokens and 300K tokens" in formed.describe(lambda step: f"{step // 100 * 100}K tokens")


def _pattern_attending(targets) -> torch.Tensor:
    """(1, 1, 1, T, T) attention of one head: each query position i on the positions targets(i) evenly."""
    length = 40
    pattern = torch.zeros(1, 1, 1, length, length)
    for i in range(length):
        chosen = targets(i) or [i]
        pattern[0, 0, 0, i, chosen] = 1.0 / len(chosen)
    return pattern


def test_an_ideal_induction_head_scores_one_and_a_fixed_offset_head_does_not():
    period = 9
    ideal = _pattern_attending(lambda i: list(range(i - period + 1, 0, -period)))
    assert induction_scores(ideal, [period])[0].item() > 0.999
    # a head that always reads 8 back matches one of PERIODS' lengths, and scores on that row only
    patterns = torch.cat([_pattern_attending(lambda i: [i - 8] if i >= 8 else [])] * len(PERIODS))
    offset_score, chance = induction_scores(patterns, [7, 9, 11, 13])
    assert offset_score.item() < 0.3 and 0 < chance < 0.2


def test_repeated_random_tokens_repeat_distinct_runs_of_each_period():
    tokens, periods = repeated_random_tokens(torch.arange(100, 400), context_length=64)
    assert periods == list(PERIODS) and tokens.shape == (len(PERIODS), 64)
    for row, period in zip(tokens, periods):
        assert len(set(row[:period].tolist())) == period
        assert torch.equal(row[period:], row[:-period])
