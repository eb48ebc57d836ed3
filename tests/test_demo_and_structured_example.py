"""demo.py and examples/structured_config_training.py run end to end at tiny sizes (as a user runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from metta.rl.checkpoint import list_trainer_states, read_trainer_state
from metta.train import TrainingConfig, cpu_smoke_config

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str, timeout: int = 300) -> str:
    # One torch thread: on a small shared machine extra threads only spin against each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_demo_trains_checkpoints_and_resumes(tmp_path):
    run_dir = tmp_path / "demo_run"
    out = run_script("demo.py", "--total-steps", "2048", "--checkpoint-every", "1", "--run-dir", str(run_dir))
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 2 and all("SPS" in line for line in epoch_lines), out
    checkpoints = run_dir / "checkpoints"
    for epoch in (1, 2):
        assert (checkpoints / f"model_{epoch:04d}.pt").is_file()
        assert (checkpoints / f"trainer_state_{epoch:04d}.ckpt").is_file()
    state = read_trainer_state(str(checkpoints / "trainer_state_0002.ckpt"))
    assert (state.epoch, state.agent_step) == (2, 2048) and state.optimizer_state_dict

    # The same run directory resumes, here with PPO settings read by load_yaml_config.
    (tmp_path / "ppo.yaml").write_text("gamma: 0.95\nent_coef: 0.02\n")
    out = run_script(
        "demo.py",
        "--total-steps",
        "3072",
        "--checkpoint-every",
        "5",
        "--run-dir",
        str(run_dir),
        "--ppo-config",
        str(tmp_path / "ppo.yaml"),
    )
    assert "resumed from" in out and "at epoch 2, agent step 2048" in out, out
    state = read_trainer_state(list_trainer_states(str(checkpoints))[0][1])
    assert (state.epoch, state.agent_step) == (3, 3072)
    assert state.trainer_config["ppo"]["gamma"] == 0.95


def test_structured_config_example_round_trips_and_trains(tmp_path):
    run_dir = tmp_path / "structured"
    out = run_script("examples/structured_config_training.py", "--run-dir", str(run_dir), "--total-steps", "1024")
    assert "done: epoch 2, agent_step 1024" in out, out

    config = TrainingConfig.from_yaml(run_dir / "training_config.yaml")
    assert config.experiment_name == "structured" and config.agent.hidden_size == 64  # --run-dir names the run
    assert config.trainer.ppo.ent_coef == 0.02 and config.trainer.total_timesteps == 1024
    assert config.trainer.batch_size == cpu_smoke_config().trainer.batch_size
    used = json.loads((run_dir / "run_config.json").read_text())  # what the trainer resolved and ran
    assert used["trainer"]["checkpoint"]["checkpoint_dir"] == str(run_dir / "checkpoints")

    states = list_trainer_states(str(run_dir / "checkpoints"))
    assert [epoch for epoch, _ in states] == [2]  # checkpoint_interval=2 and the final save coincide
    assert (run_dir / "checkpoints" / "model_0002.pt").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and all(row["overview/sps"] > 0 for row in rows)
