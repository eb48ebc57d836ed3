"""Optimizer: real gradient accumulation, clipping, Muon via heavyball, clear errors."""

import pytest
import torch

from metta.rl.optimizer import Optimizer


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(5, 3)
        self.clip_calls = 0

    def forward(self, x):
        return self.net(x)

    def clip_weights(self):
        self.clip_calls += 1


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)


def loss_fn(model, x, y):
    return ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize("kind", ["adam", "muon"])
def test_two_half_steps_equal_one_full_step(kind):
    x, y = data()
    full, halves = Linear(), Linear()
    opt_full = Optimizer(kind, full, learning_rate=1e-2, max_grad_norm=100.0)
    opt_half = Optimizer(kind, halves, learning_rate=1e-2, max_grad_norm=100.0)
    before = [p.detach().clone() for p in halves.parameters()]
    assert opt_full.step(loss_fn(full, x, y), epoch=0)
    assert not opt_half.step(loss_fn(halves, x[:4], y[:4]), epoch=0, accumulate_steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, halves.parameters())), "stepped before accumulating"
    assert opt_half.step(loss_fn(halves, x[4:], y[4:]), epoch=0, accumulate_steps=2)
    # Muon orthogonalizes the update (Newton-Schulz in low precision), which amplifies float round-off.
    atol = 1e-6 if kind == "adam" else 1e-3
    for a, b, b0 in zip(full.parameters(), halves.parameters(), before):
        assert torch.allclose(a, b, atol=atol), (a, b)
        assert (b - b0).abs().max() > 2 * atol, "the step moved the parameters"
    assert full.clip_calls == 1 and halves.clip_calls == 1
    assert all(p.grad is None for p in halves.parameters()), "gradients are cleared after a step"


def test_gradient_clipping_and_state_dict():
    x, y = data()
    model = Linear()
    opt = Optimizer("adam", model, learning_rate=1e-3, max_grad_norm=1e-3)
    opt.step(loss_fn(model, x, y) * 1000, epoch=3)
    assert float(opt.last_grad_norm) > 1e-3
    state = opt.state_dict()
    other = Optimizer("adam", Linear(), learning_rate=1e-3)
    other.load_state_dict(state)
    assert other.param_groups[0]["lr"] == 1e-3 and len(other.state_dict()["state"]) == 2


def test_unknown_type_lists_allowed():
    with pytest.raises(ValueError, match=r"optimizer_type='sgd' is not supported; use one of \['adam', 'muon'\]"):
        Optimizer("sgd", Linear())
