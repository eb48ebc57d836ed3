"""The CPUs a process may use (affinity, cgroup quota) and the torch threads a run picks from them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metta.common.cpus import cgroup_cpu_limit, torch_threads_for, usable_cpus


def write(root, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    "files, limit",
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: 1.5 CPUs
        ({"cpu.max": "max 100000\n"}, None),  # v2 without a quota
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1 without a quota
        ({"cpu.max": "300000 100000\n", "cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu.max": "garbled\n"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_cgroup_cpu_limit(tmp_path, files, limit):
    for name, text in files.items():
        write(tmp_path, name, text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_usable_cpus_is_the_affinity_cut_by_the_quota_rounded_up(tmp_path):
    allowed = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == allowed  # no quota
    write(tmp_path, "cpu.max", "50000 100000\n")
    assert usable_cpus(tmp_path) == 1  # half a CPU is still one
    write(tmp_path, "cpu.max", f"{allowed * 100000 + 1} 100000\n")
    assert usable_cpus(tmp_path) == allowed  # a quota above the affinity changes nothing


def test_torch_threads_are_the_cpus_less_the_env_workers():
    assert torch_threads_for(0, cpus=8) == (8, "8 usable CPUs, envs stepped in this process between updates")
    assert torch_threads_for(1, cpus=2) == (1, "2 usable CPUs, 1 env worker")
    assert torch_threads_for(4, cpus=16) == (12, "16 usable CPUs, 4 env workers")
    assert torch_threads_for(4, cpus=2) == (1, "2 usable CPUs, 4 env workers")  # at least one
    assert torch_threads_for(2, ranks=2, cpus=8) == (2, "8 usable CPUs for 2 ranks, 2 env workers per rank")


def test_a_process_pinned_to_one_cpu_picks_one_thread():
    cpu = min(os.sched_getaffinity(0))
    code = "from metta.common.cpus import torch_threads_for; print(torch_threads_for(0))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "(1, '1 usable CPU, envs stepped in this process between updates')"
