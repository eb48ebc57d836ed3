"""The random-action runner (the README's main command until run.py exists) works end to end."""

from __future__ import annotations

import json
import subprocess
import sys


def test_python_m_mettagrid_runs_and_prints_stats():
    out = subprocess.run(
        [sys.executable, "-m", "metta.mettagrid", "--episodes", "2", "--max-steps", "30", "--num-envs", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "episode 1: reward" in out
    summary = json.loads(out[out.index("{") :])
    assert summary["episodes"] >= 2 and summary["agent_steps"] > 0
    assert "tokens_written" in summary["last_episode_game_stats"]


def test_bad_config_path_is_a_clear_error():
    proc = subprocess.run(
        [sys.executable, "-m", "metta.mettagrid", "--config", "/env/mettagrid/curriculum/navigation/buckted"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "bucketed" in proc.stderr  # the error suggests the closest packaged path
