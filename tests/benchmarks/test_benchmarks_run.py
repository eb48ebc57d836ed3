"""Benchmark scripts run and print one JSON line (their numbers are recorded in notes, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [
        ["benchmarks/env_sps.py", "--seconds", "0.3", "--num-envs", "2", "--max-steps", "50"],
        ["benchmarks/env_sps.py", "--workload", "navigation", "--seconds", "0.3", "--num-envs", "2", "--max-steps", "50"],
        ["benchmarks/train_sps.py", "--num-envs", "2", "--batch-size", "1024", "--minibatch-size", "512", "--iterations", "1"],
    ],
)
def test_benchmark_prints_one_json_line(args):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["agent_steps_per_second"] > 0
