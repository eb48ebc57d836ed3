"""Benchmark scripts run and print one JSON line (their numbers are recorded in notes, never asserted)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    # env_sps on the navigation workload and train_sps run inside gpu_check's test below (one run of each).
    [["benchmarks/env_sps.py", "--seconds", "0.3", "--num-envs", "2", "--max-steps", "50"]],
)
def test_benchmark_prints_one_json_line(args):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["agent_steps_per_second"] > 0


VIEWER_FPS_KEYS = {
    "steps",
    "agents",
    "map",
    "replay_bytes",
    "page_bytes",
    "record_s",
    "page_write_s",
    "open_s",
    "ready_ms",
    "fps",
    "steps_per_s",
    "render_ms",
    "console_errors",
}


def test_viewer_fps_prints_one_json_line_at_a_tiny_size():
    """The viewer benchmark (a replay recorded, its page opened and played in headless Chromium) at a tiny size."""
    from headless_browser import find_chromium  # benchmarks/, on the path from tests/conftest.py

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (CI installs Debian's chromium package)")
    args = ["benchmarks/viewer_fps.py", "--steps", "10", "--agents", "2", "--size", "12", "--seconds", "0.2"]
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == VIEWER_FPS_KEYS
    assert (result["steps"], result["agents"], result["map"]) == (10, 2, "12x12")
    assert result["console_errors"] == 0 and result["page_bytes"] > result["replay_bytes"] > 0


def test_trajectory_hash_is_deterministic():
    """The hashes speed work is checked against must not depend on the run."""
    runs = [
        subprocess.run(
            [sys.executable, "benchmarks/trajectory_hash.py", "--steps", "20"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        for _ in range(2)
    ]
    first, second = (json.loads(run.stdout.strip()) for run in runs)
    assert set(first["hashes"]) == {"perf", "navigation", "simple"}
    assert all(len(h) == 16 for h in first["hashes"].values())
    assert first == second


def test_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path, monkeypatch, capsys):
    """The prepared GPU command must not be broken when a GPU session comes: its checks pass on a CPU, the
    host-overhead measurements included.

    gpu_check itself runs as the GPU session runs it, for the checks that cost no training process (a benchmark
    among them, so a check's subprocess, time limit and JSON line are covered). The benchmark checks run here with
    the command lines gpu_check builds for them, in this process: each would otherwise pay an interpreter, torch's
    import and the env kernels' load again (about 3.5 CPU-seconds apiece on two cores). The device_tests, torchrun
    and run_py checks are left out because the suite runs each itself (tests/device; torchrun in
    tests/reliability/test_stop_and_resume.py; run.py with evaluations and replays in tests/test_run_py.py)."""
    import gpu_check  # benchmarks/, on the path from tests/conftest.py

    launched = ["environment", "env_sps", "lscpu"]
    out = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(tmp_path)]
        + ["--only", ",".join(launched)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["check"] for r in records] == launched
    failed = [r for r in records if not r["ok"]]
    assert not failed and out.returncode == 0, failed or out.stderr[-2000:]
    assert (tmp_path / "gpu_check.jsonl").read_text().count("\n") == len(records)
    by_name = {r["check"]: r for r in records}
    assert by_name["env_sps"]["result"]["agent_steps_per_second"] > 0 and by_name["env_sps"]["rc"] == 0
    cpus = by_name["lscpu"]["result"]
    assert cpus["logical_cpus"] >= cpus["physical_cores"] >= 1 and len(cpus["worker_cpus"]) == cpus["workers_default"]

    in_process = ["train_sps_default", "host_overhead", "learn_micro", "inference_graph", "vecenv_wait"]
    argv = {name: args for name, args, *_ in gpu_check.checks("cpu", True, tmp_path / "work")}
    results = {}
    threads = torch.get_num_threads()
    # vecenv_wait points the terrain cache at its own directories; this puts the suite's back afterwards.
    monkeypatch.setenv("METTA_TERRAIN_CACHE", os.environ.get("METTA_TERRAIN_CACHE", "off"))
    try:
        for name in in_process:
            script, *args = argv[name]
            monkeypatch.setattr(sys, "argv", [script, *args])
            runpy.run_path(str(ROOT / script), run_name="__main__")
            results[name] = gpu_check.last_json_line(capsys.readouterr().out)
            assert results[name] is not None, f"{name}: no JSON line"
    finally:
        torch.set_num_threads(threads)
    train = results["train_sps_default"]
    assert train["agent_steps_per_second"] > 0 and train["config"]["num_workers"] == 2
    overhead = results["host_overhead"]["paths"]
    assert set(overhead) == {"cpu", "gpu"} and all(p["minibatch"]["ops"] > 0 for p in overhead.values())
    assert set(results["learn_micro"]) >= {"lstm_replay", "vtrace", "adam"}
    assert results["inference_graph"]["agents"]["16"]["eager"]["ops"] > 0
    assert results["vecenv_wait"]["prebuilt_maps"]["spin_1.0ms"]["batches"] > 0
