from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_policy_flops_prints_one_json_line():
    args = ["benchmarks/policy_flops.py", "--batch", "16", "--train-b", "4", "--train-t", "4", "--seconds", "0.05"]
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    # The fast agent: first conv from the tokens (sparse) + conv 3x3 + 2 linears + a 2-layer 128 LSTM + heads
    # is about 1.4 MFLOP (about 2.3 with the first conv dense).
    assert 1.0e6 < result["flops_per_agent_step_forward"] < 3.0e6
    assert result["flops_per_agent_step_forward_backward"] > 2 * result["flops_per_agent_step_forward"]
    assert result["inference_agent_steps_per_second"] > 0 and result["train_agent_steps_per_second"] > 0
