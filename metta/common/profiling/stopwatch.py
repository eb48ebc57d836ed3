"""``Stopwatch``: named wall-clock timers with laps, rates and summaries (the trainer's per-phase timing).

    timer = Stopwatch()
    with timer("_rollout"):
        ...
    timer.lap_all(agent_step)                  # closes a lap on every timer: per-epoch split
    timer.get_all_elapsed()                    # {"global": ..., "_rollout": ...}
    timer.checkpoint(agent_step, "eval")       # later: timer.get_checkpoint("eval") -> (steps, seconds)

The timer named "global" is reserved: it is started by ``start()`` with no name and covers the whole run.
A timer may be started only once at a time; nested use of the same name is an error, not a silent reset.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

GLOBAL_TIMER_NAME = "global"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _Timer:
    name: str
    total_elapsed: float = 0.0
    start_time: float | None = None
    last_elapsed: float = 0.0
    # (steps, total_elapsed) snapshots; the last max_laps are kept, which is all lap rates need.
    checkpoints: list[tuple[int, float]] = field(default_factory=list)
    lap_marks: list[tuple[int, float]] = field(default_factory=list)
    # (steps, total_elapsed) of each checkpoint given a name, the latest per name; kept apart from the rate window.
    named_checkpoints: dict[str, tuple[int, float]] = field(default_factory=dict)

    def elapsed(self, now: float) -> float:
        running = now - self.start_time if self.start_time is not None else 0.0
        return self.total_elapsed + running


class Stopwatch:
    def __init__(self, logger: logging.Logger | None = None, max_laps: int = 4):
        self.logger = logger or logging.getLogger("Stopwatch")
        self.max_laps = max(1, int(max_laps))
        self._timers: dict[str, _Timer] = {}

    # ------------------------------------------------------------------------------------------------------
    def _timer(self, name: str | None) -> _Timer:
        name = GLOBAL_TIMER_NAME if name is None else name
        timer = self._timers.get(name)
        if timer is None:
            timer = self._timers[name] = _Timer(name)
        return timer

    def start(self, name: str | None = None) -> None:
        timer = self._timer(name)
        if timer.start_time is not None:
            self.logger.warning("timer %r is already running; start() ignored", timer.name)
            return
        timer.start_time = time.perf_counter()

    def stop(self, name: str | None = None) -> float:
        """Stop the timer and return the seconds of this run of it (0.0 if it was not running)."""
        timer = self._timer(name)
        if timer.start_time is None:
            self.logger.warning("timer %r is not running; stop() ignored", timer.name)
            return 0.0
        elapsed = time.perf_counter() - timer.start_time
        timer.total_elapsed += elapsed
        timer.last_elapsed = elapsed
        timer.start_time = None
        return elapsed

    @contextmanager
    def time(self, name: str | None = None) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def __call__(self, name: str | None = None):
        return self.time(name)

    def reset(self, name: str | None = None) -> None:
        self._timers[GLOBAL_TIMER_NAME if name is None else name] = _Timer(GLOBAL_TIMER_NAME if name is None else name)

    def reset_all(self) -> None:
        self._timers.clear()

    # ------------------------------------------------------------------------------------------------------
    def get_elapsed(self, name: str | None = None) -> float:
        """Total seconds, including the current run if the timer is running."""
        return self._timer(name).elapsed(time.perf_counter())

    def get_last_elapsed(self, name: str | None = None) -> float:
        return self._timer(name).last_elapsed

    def get_all_elapsed(self, exclude_global: bool = False) -> dict[str, float]:
        now = time.perf_counter()
        return {n: t.elapsed(now) for n, t in self._timers.items() if not (exclude_global and n == GLOBAL_TIMER_NAME)}

    def get_rate(self, current_steps: int, name: str | None = None) -> float:
        """Steps per second over the timer's whole elapsed time."""
        elapsed = self.get_elapsed(name)
        return current_steps / elapsed if elapsed > 0 else 0.0

    # Laps and checkpoints -------------------------------------------------------------------------------
    def checkpoint(self, steps: int, checkpoint_name: str | None = None, timer_name: str | None = None) -> None:
        """Record ``(steps, elapsed)`` on a timer (the global one by default); the lap rates run from the latest.

        With ``checkpoint_name`` the record is also kept under that name (a later checkpoint of the same name
        replaces it) for ``get_checkpoint``; names do not change which checkpoints the rates use."""
        timer = self._timer(timer_name)
        record = (int(steps), timer.elapsed(time.perf_counter()))
        timer.checkpoints.append(record)
        del timer.checkpoints[: -self.max_laps - 1]
        if checkpoint_name is not None:
            timer.named_checkpoints[checkpoint_name] = record

    def get_checkpoint(self, checkpoint_name: str, timer_name: str | None = None) -> tuple[int, float]:
        """``(steps, elapsed seconds)`` of the timer's checkpoint named ``checkpoint_name``."""
        named = self._timer(timer_name).named_checkpoints
        if checkpoint_name not in named:
            raise KeyError(
                f"timer {timer_name or GLOBAL_TIMER_NAME!r} has no checkpoint named {checkpoint_name!r}; its named "
                f"checkpoints are {sorted(named)} (record one with checkpoint(steps, {checkpoint_name!r}))"
            )
        return named[checkpoint_name]

    def lap(self, steps: int, name: str | None = None) -> float:
        """Close a lap on one timer and return the seconds since its previous lap."""
        timer = self._timer(name)
        now_elapsed = timer.elapsed(time.perf_counter())
        previous = timer.lap_marks[-1][1] if timer.lap_marks else 0.0
        timer.lap_marks.append((int(steps), now_elapsed))
        del timer.lap_marks[: -self.max_laps - 1]
        return now_elapsed - previous

    def lap_all(self, steps: int, exclude_global: bool = True) -> dict[str, float]:
        """Close a lap on every timer; returns each timer's seconds in the lap just closed."""
        return {n: self.lap(steps, n) for n in list(self._timers) if not (exclude_global and n == GLOBAL_TIMER_NAME)}

    def get_lap_steps(self, name: str | None = None) -> int | None:
        marks = self._timer(name).lap_marks
        if not marks:
            return None
        return marks[-1][0] - (marks[-2][0] if len(marks) > 1 else 0)

    def get_lap_rate(self, current_steps: int, name: str | None = None) -> float:
        """Steps per second since the timer's last checkpoint (or its start)."""
        timer = self._timer(name)
        now_elapsed = timer.elapsed(time.perf_counter())
        steps0, elapsed0 = timer.checkpoints[-1] if timer.checkpoints else (0, 0.0)
        dt = now_elapsed - elapsed0
        return (current_steps - steps0) / dt if dt > 0 else 0.0

    def estimate_remaining(self, current_steps: int, total_steps: int, name: str | None = None) -> tuple[float, float]:
        """``(seconds remaining, steps per second)`` at the lap rate (the overall rate before any checkpoint)."""
        rate = (
            self.get_lap_rate(current_steps, name)
            if self._timer(name).checkpoints
            else self.get_rate(current_steps, name)
        )
        if rate <= 0:
            return float("inf"), 0.0
        return max(0, total_steps - current_steps) / rate, rate

    # Summaries ------------------------------------------------------------------------------------------
    @staticmethod
    def format_time(seconds: float) -> str:
        if seconds < 60:
            return f"{seconds:.1f} sec"
        if seconds < 3600:
            return f"{seconds / 60:.1f} min"
        if seconds < 86400:
            return f"{seconds / 3600:.1f} hours"
        return f"{seconds / 86400:.1f} days"

    def get_summary(self, name: str | None = None) -> dict[str, Any]:
        timer = self._timer(name)
        return {
            "name": timer.name,
            "total_elapsed": timer.elapsed(time.perf_counter()),
            "last_elapsed": timer.last_elapsed,
            "is_running": timer.start_time is not None,
            "checkpoints": list(timer.checkpoints),
            "named_checkpoints": dict(timer.named_checkpoints),
            "lap_count": len(timer.lap_marks),
        }

    def get_all_summaries(self) -> dict[str, dict[str, Any]]:
        return {n: self.get_summary(n) for n in list(self._timers)}

    def save_state(self) -> dict[str, Any]:
        """Totals and checkpoints for a trainer checkpoint; running timers are saved as their elapsed time."""
        now = time.perf_counter()
        return {
            n: {
                "total_elapsed": t.elapsed(now),
                "checkpoints": list(t.checkpoints),
                "named_checkpoints": dict(t.named_checkpoints),
                "lap_marks": list(t.lap_marks),
            }
            for n, t in self._timers.items()
        }

    def load_state(self, state: dict[str, Any], resume_running: bool = False) -> None:
        for n, s in state.items():
            timer = _Timer(n, total_elapsed=float(s["total_elapsed"]))
            timer.checkpoints = [tuple(c) for c in s.get("checkpoints", [])]
            timer.lap_marks = [tuple(c) for c in s.get("lap_marks", [])]
            timer.named_checkpoints = {k: tuple(c) for k, c in s.get("named_checkpoints", {}).items()}
            if resume_running and n == GLOBAL_TIMER_NAME:
                timer.start_time = time.perf_counter()
            self._timers[n] = timer


def with_timer(timer: Stopwatch, timer_name: str) -> Callable[[F], F]:
    """Decorator: time every call of the function with ``timer`` under ``timer_name``."""

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with timer(timer_name):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def with_instance_timer(timer_name: str, timer_attr: str = "timer") -> Callable[[F], F]:
    """Decorator for methods: time every call with the instance's ``timer_attr`` Stopwatch."""

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            timer = getattr(self, timer_attr, None)
            if timer is None:
                raise AttributeError(
                    f"{type(self).__name__}.{func.__name__} is timed with self.{timer_attr}, which is missing; "
                    f"set self.{timer_attr} = Stopwatch() in __init__"
                )
            with timer(timer_name):
                return func(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
