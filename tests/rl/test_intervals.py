"""The one interval rule: a periodic task fires when the epoch counter crosses a multiple of its interval, in
run.py, the functional loop and the components alike, whatever update_epochs is and whether target_kl stopped
an update early; the final checkpoint and evaluation never repeat the last ones."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from component_helpers import fresh_policy, policy_store, tiny_config, tiny_curriculum

from metta.rl.functional_trainer import functional_training_loop
from metta.rl.intervals import crossed
from metta.rl.trainer_config import PPOConfig

REPO = Path(__file__).resolve().parents[2]


def expected_fires(interval: int, epochs: list[int]) -> list[int]:
    """The epochs (counter after each iteration) at which a task of ``interval`` fires, by the rule."""
    fired, before = [], 0
    for after in epochs:
        if after // interval > before // interval:
            fired.append(after)
        before = after
    return fired


def test_crossed():
    assert crossed(3, 2, 4) and crossed(3, 0, 3) and not crossed(3, 3, 5) and crossed(3, 5, 6)
    assert crossed(2, 1, 4) and not crossed(0, 0, 100) and not crossed(None, 0, 100)
    assert not crossed(5, 7, 7)  # an update stopped before its first epoch advances nothing
    with pytest.raises(ValueError, match="interval=-1"):
        crossed(-1, 0, 1)


def checkpoint_epochs(run_dir: Path) -> list[int]:
    names = os.listdir(run_dir / "checkpoints")
    return sorted(int(n[len("model_") : -len(".pt")]) for n in names if n.startswith("model_"))


@pytest.mark.parametrize("update_epochs,interval", [(1, 2), (2, 3), (3, 2)])
def test_functional_loop_checkpoints_when_the_counter_crosses(tmp_path, update_epochs, interval):
    """Five rollouts; checkpoints exactly where the rule says, plus the final one only when it is new."""
    torch.manual_seed(0)
    cfg = tiny_config(total_timesteps=5 * 64, update_epochs=update_epochs)
    state = functional_training_loop(
        cfg,
        None,
        fresh_policy(),
        tiny_curriculum(),
        policy_store(str(tmp_path / "store")),
        num_envs=2,
        run_dir=tmp_path / "run",
        checkpoint_interval=interval,
        console=False,
    )
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [update_epochs * (i + 1) for i in range(5)] and state.epoch == epochs[-1]
    fired = expected_fires(interval, epochs)
    # The old rule (epoch % interval == 0) would miss every odd interval with an even update_epochs step, etc.
    final = [] if fired and fired[-1] == epochs[-1] else [epochs[-1]]
    assert checkpoint_epochs(tmp_path / "run") == fired + final


def test_early_stops_still_cross(tmp_path):
    """target_kl stops each update after its first epoch: the counter advances by 1, not update_epochs, and tasks
    fire on the epochs it really reaches."""
    torch.manual_seed(0)
    cfg = tiny_config(total_timesteps=4 * 64, update_epochs=3)
    functional_training_loop(
        cfg,
        PPOConfig(target_kl=1e-12),
        fresh_policy(),
        tiny_curriculum(),
        policy_store(str(tmp_path / "store")),
        num_envs=2,
        run_dir=tmp_path / "run",
        checkpoint_interval=2,
        console=False,
    )
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    assert checkpoint_epochs(tmp_path / "run") == [2, 4]  # the last crossing is the final epoch: no repeat


def test_run_py_uses_the_same_rule(tmp_path, monkeypatch):
    """update_epochs 3, checkpoint every 2 epochs, evaluation off: epochs 3, 6, 9 -> checkpoints at 3 (crossed 2),
    6 (crossed 4 and 6) and 9 (crossed 8); the final one is epoch 9's, written once. run.py's ``main`` runs in
    this process (tests/test_run_py.py runs it as a process)."""
    spec = importlib.util.spec_from_file_location("run_py_under_test", REPO / "run.py")
    run_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_py)
    args = [
        f"data_dir={tmp_path}",
        "run=intervals",
        "trainer.total_timesteps=3000",
        "num_envs=4",
        "trainer.batch_size=1024",
        "trainer.minibatch_size=512",
        "trainer.bptt_horizon=8",
        "trainer.update_epochs=3",
        "evaluate=false",
        "trainer.checkpoint.checkpoint_interval=2",
        "keep_checkpoints=10",
        "device=cpu",
        "torch_threads=1",
        "wandb.enabled=false",
    ]
    monkeypatch.setattr(sys, "argv", ["run.py", *args])
    threads = torch.get_num_threads()
    try:
        run_py.main()
    finally:
        torch.set_num_threads(threads)  # the run set its own
    rows = [json.loads(line) for line in (tmp_path / "intervals" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [3, 6, 9]
    assert checkpoint_epochs(tmp_path / "intervals") == [3, 6, 9]


def test_interval_metrics_in_the_functional_loop(tmp_path):
    """Gradient statistics and weight analysis come at their own intervals, by the same rule."""
    torch.manual_seed(0)
    policy = fresh_policy()
    policy.config.analyze_weights_interval = 2
    cfg = tiny_config(total_timesteps=3 * 64, update_epochs=1, grad_mean_variance_interval=3)
    functional_training_loop(
        cfg,
        None,
        policy,
        tiny_curriculum(),
        policy_store(str(tmp_path / "store")),
        num_envs=2,
        run_dir=tmp_path / "run",
        console=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if any(k.startswith("weights/") for k in r)] == [2]
    assert [r["epoch"] for r in rows if "grad/variance" in r] == [3]
    weights = next(r for r in rows if r["epoch"] == 2)
    assert any(k.endswith("/effective_rank") for k in weights) and weights["grad/norm"] > 0


def test_profiler_trace_is_named_by_the_epoch_the_iteration_reached(tmp_path):
    """An iteration due to cross the interval is traced; when target_kl stops its update early the trace is named
    by the epoch it reached, not the one planned. Iterations that are not due run untraced."""
    import torch

    from metta.rl.torch_profiler import TorchProfiler

    profiler = TorchProfiler(4, str(tmp_path / "traces"))
    for before, planned, reached in ((0, 2, 2), (2, 4, 3), (3, 5, 5), (5, 7, 7)):
        with profiler.trace(before, planned) as traced:
            torch.ones(8).sum()
            traced.epoch = reached
    # (2, 4] was due but stopped at 3, so the multiple 4 is crossed again by (3, 5]; (5, 7] crosses none.
    assert sorted(os.listdir(tmp_path / "traces")) == ["trace_epoch_000003.json", "trace_epoch_000005.json"]
