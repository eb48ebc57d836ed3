"""``trainer.profiler``: a torch profiler trace of one iteration every ``interval_epochs`` epochs.

    profiler = TorchProfiler(interval_epochs, profile_dir, device)
    with profiler.trace(epoch, epoch + update_epochs):
        rollout(...); train_ppo(...)

An iteration whose epochs cross a multiple of ``interval_epochs`` (``metta.rl.intervals.crossed``) runs under
``torch.profiler`` (CPU, and CUDA on a GPU) and its trace goes to ``{profile_dir}/trace_epoch_{N}.json``, which
chrome://tracing and Perfetto open. Other iterations run as they are. ``interval_epochs=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import torch

from metta.rl.intervals import crossed

logger = logging.getLogger(__name__)


class TorchProfiler:
    def __init__(self, interval_epochs: int, profile_dir: str, device: torch.device | str = "cpu"):
        if isinstance(interval_epochs, bool) or not isinstance(interval_epochs, int) or interval_epochs < 0:
            raise ValueError(f"profiler.interval_epochs={interval_epochs!r} must be an int >= 0 (0 turns it off)")
        self.interval_epochs = interval_epochs
        self.profile_dir = profile_dir
        self.device = torch.device(device)
        self.traces: list[str] = []

    @contextmanager
    def trace(self, epoch_before: int, epoch_after: int) -> Iterator[None]:
        if not crossed(self.interval_epochs, epoch_before, epoch_after):
            yield
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities, record_shapes=False) as prof:
            yield
        os.makedirs(self.profile_dir, exist_ok=True)
        path = os.path.join(self.profile_dir, f"trace_epoch_{epoch_after:06d}.json")
        prof.export_chrome_trace(path)
        self.traces.append(path)
        logger.info("torch profiler trace: %s", path)
