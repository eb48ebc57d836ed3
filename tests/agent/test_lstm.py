"""The LSTM core: the replay of rows with episode starts inside (one padded call) against the split replay, and the
single step of the GPU form against nn.LSTM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from metta.agent.lib.lstm import LSTM
from metta.agent.lib.metta_layer import AgentContext
from metta.common.profiling.dispatch_counter import DispatchCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from learn_micro import split_replay  # noqa: E402  (the replay metta ran before: one call per stretch)

B, T, F, H, LAYERS = 5, 7, 6, 8, 2


def make_layer(dtype: torch.dtype = torch.float64) -> LSTM:
    torch.manual_seed(0)
    layer = LSTM("_core_", ["x"], AgentContext(3, 3, {0: 1.0}, 0.0), H, {"num_layers": LAYERS})
    layer.setup([(F,)])
    with torch.no_grad():  # biases and weights away from their init, so every term matters
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer.to(dtype)


def starts_for(case: str) -> torch.Tensor:
    starts = torch.zeros(B, T, dtype=torch.bool)
    if case == "first_step":
        starts[1, 0] = starts[3, 0] = True
    elif case == "last_step":
        starts[0, T - 1] = starts[2, T - 1] = True
    elif case == "several_per_row":
        starts[0, 2] = starts[0, 3] = starts[0, 6] = True
        starts[1, 0] = starts[1, 4] = True
        starts[4, 1] = starts[4, 5] = True
    elif case == "every_step":
        starts[2, :] = True
    return starts


CASES = ["none", "first_step", "last_step", "several_per_row", "every_step"]


@pytest.mark.parametrize("case", CASES)
def test_the_replay_equals_the_split_replay_in_float64(case):
    """Outputs and the gradients of inputs, states and weights agree to float64 precision."""
    layer = make_layer()
    starts = starts_for(case)
    x = torch.randn(B * T, F, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(LAYERS, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(LAYERS, B, H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(B * T, H, dtype=torch.float64)  # a loss that weighs every output differently

    def grads_of(out):
        params = [x, h0, c0, *layer.parameters()]
        return torch.autograd.grad((out * weight).sum(), params)

    want = split_replay(layer, x, h0, c0, starts, B, T)
    td = {"x": x, "_B_": B, "_T_": T, "lstm_h": h0, "lstm_c": c0, "episode_starts": starts}
    layer(td)
    got = td["_core_"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for g, w in zip(grads_of(got), grads_of(want)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
    if starts[:, 1:].any():
        assert td["lstm_h"] is None and td["lstm_c"] is None  # a replay with starts inside hands on no state
    else:  # the state after the last step
        keep = (~starts[:, 0]).to(x.dtype).view(1, B, 1)
        _, (h_want, c_want) = layer.lstm(x.view(B, T, F).transpose(0, 1), (h0 * keep, c0 * keep))
        torch.testing.assert_close(td["lstm_h"], h_want.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(td["lstm_c"], c_want.detach(), rtol=0, atol=1e-12)


def test_the_replay_without_a_given_state_starts_from_zeros():
    layer = make_layer()
    starts = starts_for("several_per_row")
    x = torch.randn(B * T, F, dtype=torch.float64)
    zeros = torch.zeros(LAYERS, B, H, dtype=torch.float64)
    td = {"x": x, "_B_": B, "_T_": T, "lstm_h": None, "lstm_c": None, "episode_starts": starts}
    layer(td)
    torch.testing.assert_close(td["_core_"], split_replay(layer, x, zeros, zeros, starts, B, T), rtol=0, atol=1e-12)


def test_the_replay_reads_nothing_back_from_the_device_and_makes_few_calls():
    """With the starts on the host the replay needs no device read, and it is one LSTM call, not one per piece."""
    layer = make_layer(torch.float32)
    starts = starts_for("several_per_row")
    x = torch.randn(B * T, F, requires_grad=True)
    h0 = torch.randn(LAYERS, B, H)
    counter = DispatchCounter(record_ops=True)
    with counter:
        td = {"x": x, "_B_": B, "_T_": T, "lstm_h": h0, "lstm_c": h0.clone(), "episode_starts": starts}
        layer(td)
        td["_core_"].sum().backward()
    assert counter.totals()["host_syncs"] == 0
    assert counter.op_names["aten.mkldnn_rnn_layer.default"] == LAYERS  # one call for all the pieces
    assert counter.totals()["ops"] < 60


def test_the_gpu_single_step_matches_nn_lstm_with_gradients():
    """one_step (the GPU form of a rollout step) is nn.LSTM's step with the same weights: outputs, states and
    gradients agree; a missing state is zeros."""
    layer = make_layer(torch.float32)
    x = torch.randn(8, F, requires_grad=True)
    h, c = torch.randn(LAYERS, 8, H), torch.randn(LAYERS, 8, H)
    want, (want_h, want_c) = layer.lstm(x.unsqueeze(0), (h, c))
    got, (got_h, got_c) = layer.one_step(x, h, c)
    for a, b in ((got, want[0]), (got_h, want_h), (got_c, want_c)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    (grad_want,) = torch.autograd.grad(want.sum(), x)
    (grad_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-6)
    zeros, _ = layer.one_step(x, None, None)
    torch.testing.assert_close(zeros, layer.lstm(x.unsqueeze(0))[0][0], rtol=1e-5, atol=1e-6)
