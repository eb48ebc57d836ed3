"""MemoryMonitor and SystemMonitor: sizes, samples, stop, and no work at import."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from metta.common.profiling.memory_monitor import MemoryMonitor, get_object_size
from metta.common.system_monitor import SystemMonitor


class Buffers:
    def __init__(self):
        self.obs = torch.zeros(1024, 256, dtype=torch.uint8)  # 256 KiB
        self.view = self.obs[:10]  # a view: must not be counted twice
        self.values = np.zeros(1024, dtype=np.float64)  # 8 KiB
        self.meta = {"name": "x", "sizes": [1, 2, 3]}


def test_object_sizes_count_storage_once():
    b = Buffers()
    size = get_object_size(b)
    assert 256 * 1024 + 8 * 1024 <= size < 256 * 1024 + 8 * 1024 + 16 * 1024
    assert get_object_size(torch.nn.Linear(100, 100)) >= (100 * 100 + 100) * 4
    cyclic: list = [b]
    cyclic.append(cyclic)
    assert get_object_size(cyclic) >= size  # cycles terminate


def test_memory_monitor_stats():
    monitor = MemoryMonitor()
    b = Buffers()
    monitor.add(b, name="experience", track_attributes=True)
    monitor.add(torch.zeros(1024 * 1024, dtype=torch.uint8))
    stats = monitor.stats()
    assert stats["memory/process_rss_mb"] > 10
    assert stats["memory/experience_mb"] == pytest.approx(0.26, abs=0.02)
    assert stats["memory/experience.obs_mb"] == pytest.approx(0.25, abs=0.001)
    assert stats["memory/Tensor_mb"] == pytest.approx(1.0, abs=0.001)
    monitor.remove("experience")
    assert monitor.tracked() == ["Tensor"]
    with pytest.raises(KeyError, match="'nope' is not tracked"):
        monitor.remove("nope")


def test_system_monitor_samples_and_stops_quickly():
    monitor = SystemMonitor(sampling_interval_sec=0.05, history_size=5)
    try:
        assert monitor.running
        time.sleep(0.3)
        stats = monitor.stats()
        for key in ("monitor/cpu_percent", "monitor/memory_percent", "monitor/process_rss_mb"):
            assert key in stats and f"{key}/avg" in stats
        assert stats["monitor/process_rss_mb"] > 10
        assert 2 <= monitor.get_summary()["num_samples"] <= 5
    finally:
        t = time.perf_counter()
        monitor.stop()
        assert time.perf_counter() - t < 1.0
    assert not monitor.running
    assert not any(t.name == "SystemMonitor" for t in threading.enumerate())


def test_system_monitor_bad_arguments():
    with pytest.raises(ValueError, match="sampling_interval_sec=0"):
        SystemMonitor(sampling_interval_sec=0)
    with pytest.raises(ValueError, match="history_size=0"):
        SystemMonitor(history_size=0)
    monitor = SystemMonitor(auto_start=False)
    assert not monitor.running and monitor.stats() == {}


def test_imports_have_no_side_effects():
    code = (
        # Third-party libraries add their own warning filters; ours must add none.
        "import threading, logging, warnings, torch, numpy, numba, gymnasium, pettingzoo, psutil, omegaconf;"
        "before = len(warnings.filters);"
        "import metta.interface, metta.api, metta.common.system_monitor, metta.common.profiling.memory_monitor,"
        " metta.common.wandb_context, metta.rl.checkpoint;"
        "import sys; assert threading.active_count() == 1, threading.enumerate();"
        "assert not logging.getLogger().handlers; assert len(warnings.filters) == before;"
        "assert 'wandb' not in sys.modules and 'metta.sim' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
