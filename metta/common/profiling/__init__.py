"""Profiling helpers: ``Stopwatch`` and its decorators."""

from metta.common.profiling.stopwatch import Stopwatch, with_instance_timer, with_timer

__all__ = ["Stopwatch", "with_instance_timer", "with_timer"]
