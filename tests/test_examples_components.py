"""examples/direct_training_with_components.py and examples/functional_training_example.py run end to end at tiny
sizes (in a subprocess, as a user runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from metta.rl.checkpoint import load_latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--total-timesteps",
    "256",
    "--num-envs",
    "4",
    "--batch-size",
    "128",
    "--minibatch-size",
    "64",
    "--bptt-horizon",
    "8",
]


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *TINY, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_direct_training_with_components(tmp_path):
    out = run_example("direct_training_with_components.py", "--run-dir", str(tmp_path), "--eval-max-steps", "10")
    assert "epoch     2" in out and "latest checkpoint: epoch 2, agent_step 256" in out
    assert "evaluation: navigation/terrain_small" in out and out.rstrip().endswith("done")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "model_0002.pt",
        "trainer_state_0002.ckpt",
    ]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["agent_step"] for r in rows] == [128, 256]
    ckpt = load_latest_checkpoint(str(tmp_path / "checkpoints"))  # complete: config, curriculum and timer too
    assert ckpt.trainer_config["batch_size"] == 128 and ckpt.curriculum_state and ckpt.stopwatch_state
    # Again on the same run directory with a larger budget: it continues from the checkpoint.
    out = run_example(
        "direct_training_with_components.py",
        "--run-dir",
        str(tmp_path),
        "--eval-max-steps",
        "0",
        "--total-timesteps",
        "384",
    )
    assert "from step 256" in out and "latest checkpoint: epoch 3, agent_step 384" in out
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["agent_step"] for r in rows] == [128, 256, 384]


def test_functional_training_example_logs_both_custom_losses(tmp_path):
    out = run_example("functional_training_example.py", "--run-dir", str(tmp_path))
    assert "256 agent steps on cpu" in out and "done: epoch 2, agent_step 256" in out
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["losses/custom/curiosity_loss"] < 0 and row["losses/custom/diversity_loss"] < 0
        assert "overview/reward_per_step" in row
    assert (tmp_path / "checkpoints" / "model_0002.pt").is_file()
