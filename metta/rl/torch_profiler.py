"""``trainer.profiler``: a torch profiler trace of one iteration every ``interval_epochs`` epochs.

    profiler = TorchProfiler(interval_epochs, profile_dir, device)
    with profiler.trace(epoch, epoch + update_epochs) as traced:
        rollout(...)
        epoch = traced.epoch = train_ppo(...)

An iteration whose epochs are due to cross a multiple of ``interval_epochs`` (``metta.rl.intervals.crossed``)
runs under ``torch.profiler`` (CPU, and CUDA on a GPU) and its trace goes to ``{profile_dir}/trace_epoch_{N}.json``
(chrome://tracing and Perfetto open it), N being the epoch the iteration reached (``traced.epoch``; fewer than
planned when ``target_kl`` stops the update early). Other iterations run as they are. ``interval_epochs=0`` turns
it off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

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
    def trace(self, epoch_before: int, epoch_after: int) -> Iterator[TracedIteration]:
        """Profile the iteration when ``(epoch_before, epoch_after]`` crosses the interval; set ``.epoch`` on what
        it yields to the epoch the iteration reached (default ``epoch_after``), which names the trace file."""
        traced = TracedIteration(epoch_after)
        if not crossed(self.interval_epochs, epoch_before, epoch_after):
            yield traced
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities, record_shapes=False) as prof:
            yield traced
        os.makedirs(self.profile_dir, exist_ok=True)
        path = os.path.join(self.profile_dir, f"trace_epoch_{traced.epoch:06d}.json")
        prof.export_chrome_trace(path)
        self.traces.append(path)
        logger.info("torch profiler trace: %s", path)


class TracedIteration:
    """What ``TorchProfiler.trace`` yields: ``epoch`` is the epoch the iteration reached (names the trace)."""

    def __init__(self, epoch: int):
        self.epoch = epoch
