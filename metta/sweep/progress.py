"""From a trial's metrics.jsonl rows to the reports Optuna sees: how far through its budget each row is, and the
objective at each of the ``reports`` equal parts of the budget.

    progress = row_progress(rows, budget)                   # 0.25 = a quarter of the budget done at that row
    reports = objective_reports(rows, progress, "overview/reward", budget.reports)
    reports.complete    # {1: 0.12, 2: 0.31}: parts already over, each the mean of the metric in that part
    reports.latest      # (3, 0.35): the last part with a value, over or not (a trial's objective at its end)

Everything here is a function of the file's rows, so a worker that takes over a trial (or resumes it) computes
the same reports from the same file.

Part ``k`` holds the rows with progress in ``((k-1)/reports, k/reports]`` (rows past the budget go into the
last part); its value is the mean of the metric over those rows. A part with no value of the metric (an
``eval/`` score between evaluations, a reward before any episode ended) carries the previous part's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from metta.sweep.spec import TrialBudget

# A row exactly on a part's end belongs to that part; float rounding must not push it into the next.
_EDGE = 1e-9


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def training_seconds(rows: list[dict[str, Any]]) -> list[float]:
    """Each row's training time since the run began: its ``time``, which run.py carries across resumes (the
    checkpoint keeps it), so a trial resumed by another worker goes on spending the same budget. (A killed
    process's time after its last checkpoint is not counted: its rows are logged again.)"""
    return [_number(row.get("time")) or 0.0 for row in rows]


def row_progress(rows: list[dict[str, Any]], budget: TrialBudget) -> list[float]:
    """The fraction of the trial's budget done at each row (agent steps, or training minutes)."""
    if budget.agent_steps:
        return [(_number(row.get("agent_step")) or 0.0) / budget.agent_steps for row in rows]
    return [seconds / (budget.minutes * 60) for seconds in training_seconds(rows)]


def part_of(progress: float, reports: int) -> int:
    """The report (1 to ``reports``) whose part of the budget holds a row at ``progress``."""
    return min(max(math.ceil(progress * reports - _EDGE), 1), reports)


@dataclass
class Reports:
    complete: dict[int, float] = field(default_factory=dict)  # parts that are over -> objective
    latest: tuple[int, float] | None = None  # the last part that has a value (over or still running)


def objective_reports(rows: list[dict[str, Any]], progress: list[float], metric: str, reports: int) -> Reports:
    sums: dict[int, list[float]] = {}
    over = 0  # every part up to this one is over
    for row, p in zip(rows, progress):
        value = _number(row.get(metric))
        if value is not None:
            sums.setdefault(part_of(p, reports), []).append(value)
        over = max(over, min(reports, math.floor(p * reports + _EDGE)))
    out = Reports()
    carried = None
    last = max([*sums, over], default=0)
    for part in range(1, last + 1):
        if part in sums:
            carried = sum(sums[part]) / len(sums[part])
        if carried is None:
            continue
        if part <= over:
            out.complete[part] = carried
        out.latest = (part, carried)
    return out
