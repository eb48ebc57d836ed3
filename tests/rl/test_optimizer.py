"""Optimizer: real gradient accumulation, clipping, Muon via heavyball, clear errors."""

import pytest
import torch

from metta.common.profiling.dispatch_counter import DispatchCounter
from metta.rl.optimizer import Optimizer, clip_gradients


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


def test_an_accumulation_group_never_spans_two_epochs():
    """A new epoch steps the pending group first, as the mean of the losses it holds; nothing leaks over."""
    x, y = data()
    grouped, by_hand, epoch1_alone = Linear(), Linear(), Linear()
    opt = Optimizer("adam", grouped, learning_rate=1e-2, max_grad_norm=100.0)
    ref = Optimizer("adam", by_hand, learning_rate=1e-2, max_grad_norm=100.0)
    parts = [(x[:4], y[:4]), (x[4:6], y[4:6]), (x[6:], y[6:])]
    # Epoch 0 ends after two of its three accumulate_steps=3 parts; epoch 1 brings one part.
    assert not opt.step(loss_fn(grouped, *parts[0]), 0, 3)
    assert not opt.step(loss_fn(grouped, *parts[1]), 0, 3)
    assert opt.step(loss_fn(grouped, *parts[2]), 1, 3), "the pending group of epoch 0 is stepped"
    assert opt.steps == 1
    # The same step as the mean of epoch 0's two losses...
    ref.step((loss_fn(by_hand, *parts[0]) + loss_fn(by_hand, *parts[1])) / 2)
    for a, b in zip(grouped.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b)
    # ...and epoch 1's group holds its own part's gradient only (taken where its loss was computed).
    (loss_fn(epoch1_alone, *parts[2]) / 3).backward()
    for a, b in zip(grouped.parameters(), epoch1_alone.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg="epoch 0's gradients leaked into epoch 1's group")
    assert not opt.step(loss_fn(grouped, *parts[0]), 1, 3)
    assert opt.step(loss_fn(grouped, *parts[1]), 1, 3) and opt.steps == 2


def test_a_new_epoch_steps_the_pending_group_of_a_recurrent_policy():
    """The new loss's graph holds the parameters the pending step changes in place; it is backpropagated first."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 3)
    opt = Optimizer("adam", lstm, learning_rate=1e-2)
    x = torch.randn(4, 2, 5)
    assert not opt.step(lstm(x)[0].pow(2).mean(), 0, 2)
    assert opt.step(lstm(x)[0].pow(2).mean(), 1, 1), "the pending group and the new one-loss group both step"
    assert opt.steps == 2 and all(p.grad is None for p in lstm.parameters())


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


def test_adam_is_fused_and_stays_fused_after_loading_a_state_saved_without_it():
    model = Linear()
    opt = Optimizer("adam", model, learning_rate=1e-3)
    assert opt.param_groups[0]["fused"] is True
    state = opt.state_dict()
    state["param_groups"][0]["fused"] = None  # a checkpoint written by a multi-tensor Adam
    opt.load_state_dict(state)
    assert opt.param_groups[0]["fused"] is True and opt.param_groups[0]["foreach"] is None
    x, y = data()
    counter = DispatchCounter(record_ops=True)
    with counter:
        opt.step(loss_fn(model, x, y))
    assert counter.op_names["aten._fused_adam_.default"] == 1  # every parameter in one call


def test_clip_gradients_is_torchs_clipping_in_a_few_ops():
    grads = [torch.randn(7, 3) * 5, torch.randn(11), torch.randn(2, 2, 2)]
    for max_norm in (0.5, 1e6):  # clipped, and left alone
        ours = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        counter = DispatchCounter()
        with counter:
            norm = clip_gradients(ours, max_norm)
        torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(theirs, max_norm))
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.grad, b.grad)
        assert counter.totals()["ops"] <= 8 and counter.totals()["host_syncs"] == 0


def test_unknown_type_lists_allowed():
    with pytest.raises(ValueError, match=r"optimizer_type='sgd' is not supported; use one of \['adam', 'muon'\]"):
        Optimizer("sgd", Linear())


def test_learning_rate_schedules():
    from metta.rl.optimizer import scheduled_learning_rate
    from metta.rl.trainer_config import LRSchedulerConfig

    def at(progress, agent_step=10**6, **schedule):
        return scheduled_learning_rate(1.0, LRSchedulerConfig(**schedule), progress, agent_step)

    assert at(0.5) == 1.0  # not enabled: constant
    assert at(0.25, enabled=True, schedule_type="linear") == pytest.approx(0.75)
    assert at(0.5, enabled=True, schedule_type="cosine") == pytest.approx(0.5)
    assert at(0.5, enabled=True) == pytest.approx(0.5)  # unset type: upstream's cosine
    assert at(0.25, enabled=True, anneal_lr=True) == pytest.approx(0.75)  # unset type with anneal_lr: linear
    assert at(1.0, enabled=True, schedule_type="cosine") == pytest.approx(0.0)
    assert at(1.0, enabled=True, schedule_type="exponential") == pytest.approx(0.01)
    assert at(0.5, enabled=True, schedule_type="exponential") == pytest.approx(0.1)
    assert at(2.0, enabled=True, schedule_type="linear") == 0.0  # past the end stays at the end
    # Warm-up multiplies the schedule over the first warmup_steps agent steps.
    assert at(0.0, agent_step=49, enabled=True, schedule_type="linear", warmup_steps=100) == pytest.approx(0.5)
    assert at(0.0, agent_step=500, enabled=True, schedule_type="linear", warmup_steps=100) == 1.0


def test_apply_lr_schedule_sets_metta_and_torch_optimizers():
    from metta.rl.optimizer import apply_lr_schedule
    from metta.rl.trainer_config import TrainerConfig

    cfg = TrainerConfig(
        total_timesteps=1000,
        optimizer={"learning_rate": 0.1},
        lr_scheduler={"enabled": True, "schedule_type": "linear"},
    )
    model = Linear()
    for optimizer in (Optimizer("adam", model, learning_rate=0.1), torch.optim.SGD(model.parameters(), lr=0.1)):
        apply_lr_schedule(optimizer, cfg, agent_step=250)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.075)
    # Not enabled: a rate the caller set stays.
    optimizer = Optimizer("adam", model, learning_rate=0.3)
    apply_lr_schedule(optimizer, TrainerConfig(total_timesteps=1000), agent_step=900)
    assert optimizer.param_groups[0]["lr"] == 0.3
