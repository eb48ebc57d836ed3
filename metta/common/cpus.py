"""How many CPUs this process may use, and how many torch threads a run gets from them.

    usable_cpus()                      # 2: the affinity mask, cut by a cgroup CPU quota
    torch_threads_for(env_workers=1)   # (1, "2 usable CPUs, 1 env worker")
    torch_threads_for(env_workers=0)   # (2, "2 usable CPUs, envs stepped in this process between updates")

``os.cpu_count()`` counts the machine's CPUs, which is more than a process may use under ``taskset``, a
scheduler's CPU set (affinity) or a container's CPU quota (cgroup). A quota of 1.5 CPUs counts as 2, as the JVM
and Go runtimes count it: the process may run on parts of two CPUs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "torch_threads_for", "usable_cpus"]

CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = 150 ms of CPU time per 100 ms), None when there is
    none. Read from cgroup v2's ``cpu.max`` ("QUOTA PERIOD", "max PERIOD" for none), else cgroup v1's
    ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (quota -1 for none) under ``cpu/`` or ``cpu,cpuacct/``."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for controller in ("cpu", "cpu,cpuacct"):
        try:
            quota_us = int((root / controller / "cpu.cfs_quota_us").read_text())
            period_us = int((root / controller / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cpus(cgroup_root: str | os.PathLike = CGROUP_ROOT) -> int:
    """The CPUs this process may use: its affinity mask (``os.sched_getaffinity``; ``os.cpu_count()`` where
    there is none), at most the cgroup quota rounded up (``cgroup_cpu_limit``), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def torch_threads_for(env_workers: int, ranks: int = 1, cpus: int | None = None) -> tuple[int, str]:
    """Torch threads for a learner beside its ``env_workers`` env worker processes (0: its envs step in its own
    thread), one of ``ranks`` learners sharing this machine, and why: the usable CPUs (``cpus``, default
    ``usable_cpus()``) split among the ranks, less one per worker, at least 1. A worker process steps envs while
    the learner computes, so its CPU is busy; envs stepped in this process run between the learner's ops and need
    no CPU of their own (on an idle 2-core machine the serial CPU defaults run at ~9k agent steps/s with 2
    threads, ~5k with 1). Parallel ops wait for their slowest thread, so a thread that shares its core with
    other busy work costs far more than it adds: beside one other busy process the same run fell to ~2.5k with
    2 threads and kept ~5.4k with 1. The affinity mask and quota show what this process may use, not what others
    use: on a machine shared with other work, set ``torch_threads``."""
    cpus = usable_cpus() if cpus is None else cpus
    threads = max(1, cpus // ranks - env_workers)
    why = f"{cpus} usable CPU{'s' * (cpus != 1)}"
    if ranks > 1:
        why += f" for {ranks} ranks"
    if env_workers:
        why += f", {env_workers} env worker{'s' * (env_workers != 1)}" + (" per rank" if ranks > 1 else "")
    else:
        why += ", envs stepped in this process between updates"
    return threads, why
