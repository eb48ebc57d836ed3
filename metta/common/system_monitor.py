"""``SystemMonitor``: CPU, memory and (when present) GPU usage, sampled by a background thread.

    monitor = SystemMonitor(sampling_interval_sec=2.0)
    ...
    wandb_run.log(monitor.stats())     # {"monitor/cpu_percent": ..., "monitor/memory_percent": ..., ...}
    monitor.stop()

Each sample costs a few psutil calls (well under a millisecond); the thread sleeps on an Event between
samples, so ``stop()`` returns at once. ``stats()`` reports the latest sample and the mean over the kept
history (``.../avg``). Nothing starts at import; the thread starts in ``__init__`` unless ``auto_start`` is
False, and it is a daemon, so a forgotten ``stop()`` does not keep the interpreter alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import psutil
import torch

logger = logging.getLogger(__name__)

MB = 1024 * 1024


class SystemMonitor:
    def __init__(
        self,
        sampling_interval_sec: float = 1.0,
        history_size: int = 100,
        logger: logging.Logger | None = None,
        auto_start: bool = True,
    ):
        if not sampling_interval_sec > 0:
            raise ValueError(f"sampling_interval_sec={sampling_interval_sec!r} must be > 0, e.g. 1.0")
        if not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"history_size={history_size!r} must be an int >= 1, e.g. 100")
        self.sampling_interval_sec = float(sampling_interval_sec)
        self.logger = logger or logging.getLogger(__name__)
        self._process = psutil.Process()
        self._history: deque[dict[str, float]] = deque(maxlen=history_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process.cpu_percent(None)  # the first call only sets the baseline for the next one
        psutil.cpu_percent(None)
        if auto_start:
            self.start()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.sample()  # stats() has something to report right away
        self._thread = threading.Thread(target=self._run, name="SystemMonitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.sampling_interval_sec):
            try:
                self.sample()
            except Exception as e:  # a monitoring hiccup (e.g. a vanished /proc entry) must not kill training
                self.logger.debug("system monitor sample failed: %s", e)

    def sample(self) -> dict[str, float]:
        """Take one sample now, add it to the history and return it."""
        vm = psutil.virtual_memory()
        with self._process.oneshot():
            s = {
                "monitor/cpu_percent": psutil.cpu_percent(None),
                "monitor/process_cpu_percent": self._process.cpu_percent(None),
                "monitor/memory_percent": vm.percent,
                "monitor/memory_available_mb": vm.available / MB,
                "monitor/process_rss_mb": self._process.memory_info().rss / MB,
                "monitor/process_threads": float(self._process.num_threads()),
                "monitor/process_children": float(len(self._process.children())),
            }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # Reading the allocator's counters does not synchronize the device.
            for i in range(torch.cuda.device_count()):
                s[f"monitor/gpu{i}_memory_allocated_mb"] = torch.cuda.memory_allocated(i) / MB
                s[f"monitor/gpu{i}_memory_reserved_mb"] = torch.cuda.memory_reserved(i) / MB
        s["monitor/timestamp"] = time.time()
        with self._lock:
            self._history.append(s)
        return s

    def stats(self) -> dict[str, float]:
        """The latest sample, plus ``<key>/avg`` over the history."""
        with self._lock:
            history = list(self._history)
        if not history:
            return {}
        latest = {k: v for k, v in history[-1].items() if k != "monitor/timestamp"}
        out = dict(latest)
        for key in latest:
            values = [h[key] for h in history if key in h]
            out[f"{key}/avg"] = sum(values) / len(values)
        return out

    def get_summary(self) -> dict[str, Any]:
        return {"num_samples": len(self._history), "running": self.running, **self.stats()}

    def __enter__(self) -> SystemMonitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
