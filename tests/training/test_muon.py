"""--optimizer muon: Muon on the blocks' matrices, AdamW on the rest, one schedule, and a state that resumes exactly."""

import copy

import pytest
import torch

from model import GPT, GPTConfig
from pipeline.settings import TrainSettings
from pipeline.training.muon import MuonWithAdamW
from pipeline.training.optimizer import AdamW, make_optimizer

CONFIG = GPTConfig(vocab_size=64, context_length=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
MUON = TrainSettings(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)
CPU = torch.device("cpu")


def model_and_optimizer(settings: TrainSettings = MUON):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    return model, make_optimizer(model, settings, CPU)


def train(model, optimizer, steps: int, first: int = 0) -> None:
    """Steps on fixed batches, the lr rising each step as the warmup does."""
    data = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(1))
    for step in range(first, first + steps):
        optimizer.set_lr(1e-3 * (step + 1))
        _, loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_muon_takes_the_blocks_matrices_and_adamw_every_other_parameter_once():
    model, optimizer = model_and_optimizer()
    muon = [p for group in optimizer.muon.param_groups for p in group["params"]]
    adamw = [p for group in optimizer.adamw.param_groups for p in group["params"]]
    names = {p: name for name, p in model.named_parameters()}
    assert {names[p] for p in muon} == {name for name, p in model.named_parameters()
                                        if name.startswith("transformer.h.") and p.dim() == 2}
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= {names[p] for p in adamw}  # wte is the head too
    assert sorted(map(id, muon + adamw)) == sorted(map(id, model.parameters()))  # each once, none left out


def test_the_schedule_scales_both_learning_rates_and_matrices_decay_as_under_adamw():
    _, optimizer = model_and_optimizer()
    optimizer.set_lr(5e-4)  # half the peak: Muon's rate is at half of its peak too
    assert {g["lr"] for g in optimizer.adamw.param_groups} == {5e-4}
    [muon_group] = optimizer.muon.param_groups
    assert muon_group["lr"] == pytest.approx(0.01)
    assert muon_group["lr"] * muon_group["weight_decay"] == pytest.approx(5e-4 * 0.1)  # decay per step as AdamW's


def test_muon_moves_the_matrices_otherwise_than_adamw():
    muon_model, muon = model_and_optimizer()
    adamw_model, adamw = model_and_optimizer(TrainSettings(lr=1e-3))
    assert isinstance(muon, MuonWithAdamW) and isinstance(adamw, AdamW)
    train(muon_model, muon, 3)
    train(adamw_model, adamw, 3)
    block = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.allclose(dict(muon_model.named_parameters())[block], dict(adamw_model.named_parameters())[block])


def test_a_saved_state_continues_exactly_as_the_uninterrupted_optimizer():
    whole_model, whole = model_and_optimizer()
    train(whole_model, whole, 5)

    first_model, first = model_and_optimizer()
    train(first_model, first, 3)
    saved = copy.deepcopy({"model": first_model.state_dict(), "optimizer": first.state_dict()})
    resumed_model, resumed = model_and_optimizer()
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["optimizer"])
    assert any(state["momentum_buffer"].abs().sum() > 0 for state in resumed.muon.state.values())
    train(resumed_model, resumed, 2, first=3)
    for (name, p), q in zip(whole_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), name


def test_adamws_state_is_refused_by_muon():
    _, adamw = model_and_optimizer(TrainSettings())
    _, muon = model_and_optimizer()
    with pytest.raises(ValueError, match="another optimizer"):
        muon.load_state_dict(adamw.state_dict())
