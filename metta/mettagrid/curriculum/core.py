"""Curriculum protocol: where each episode's env config comes from.

A ``Curriculum`` hands out ``Task`` objects; the environment asks for a task at every episode reset, builds
the episode from ``task.env_cfg()`` and reports the episode's mean reward back with ``task.complete(score)``.
Curricula are owned by one environment batch (one process) and draw randomness only from their own
generator, seeded through ``seed()``, so the same seed gives the same task sequence.
"""

from __future__ import annotations

import random
from typing import Any

from metta.mettagrid.config import MettaGridConfig


class Task:
    """One task: a name and the env config it yields. ``complete(score)`` reports an episode's mean reward."""

    def __init__(self, task_id: str, curriculum: Curriculum, env_cfg: MettaGridConfig):
        self.id = task_id
        self.name = task_id
        self._curriculum = curriculum
        self._env_cfg = env_cfg

    def env_cfg(self) -> MettaGridConfig:
        return self._env_cfg

    def short_name(self) -> str:
        return self.id

    def complete(self, score: float) -> None:
        self._curriculum.complete_task(self.id, float(score))


class Curriculum:
    """Base class. Subclasses implement ``get_task``; the rest has working defaults."""

    def __init__(self) -> None:
        self.rng = random.Random(0)

    def seed(self, seed: int) -> None:
        self.rng.seed(seed)

    def get_task(self) -> Task:
        raise NotImplementedError

    def complete_task(self, task_id: str, score: float) -> None:
        """Called once per finished episode with its mean agent reward."""

    def get_task_probs(self) -> dict[str, float]:
        return {}

    def get_completion_rates(self) -> dict[str, float]:
        return {}

    def get_curriculum_stats(self) -> dict[str, float]:
        return {}

    def stats(self) -> dict[str, float]:
        """Everything this curriculum reports in an episode's infos."""
        out: dict[str, float] = {}
        out.update(self.get_completion_rates())
        out.update({f"curriculum/{k}": v for k, v in self.get_curriculum_stats().items()})
        probs = self.get_task_probs()
        if probs:
            out.update({f"curriculum_task_probs/{k}": v for k, v in probs.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores to resume this curriculum (its RNG and learned weights)."""
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.setstate(_as_rng_state(state["rng"]))


def _as_rng_state(state: Any) -> tuple:
    # random.Random's state is nested tuples; after a YAML or torch round trip it may be lists.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class SingleTaskCurriculum(Curriculum):
    """Always the same task."""

    def __init__(self, task_id: str, env_cfg: MettaGridConfig | dict):
        super().__init__()
        self._task = Task(task_id, self, MettaGridConfig.from_any(env_cfg))

    def get_task(self) -> Task:
        return self._task

    def get_task_probs(self) -> dict[str, float]:
        return {self._task.id: 1.0}
