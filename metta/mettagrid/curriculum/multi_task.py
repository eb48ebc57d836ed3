"""Curricula over a fixed set of named tasks.

``MultiTaskCurriculum`` holds the tasks and tracks which of them finished episodes recently
(``task_completions/<id>``); it picks tasks uniformly. ``RandomCurriculum`` picks them with weights, and
``LearningProgressCurriculum`` (learning_progress.py) sets those weights from learning progress.

A task may be given as a ``Curriculum`` (its tasks are drawn from it), a ``MettaGridConfig`` or a plain dict
(a single env), or a config path string (a packaged ``/env/mettagrid/...`` path or a YAML file; curricula and
env configs both work).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.curriculum.core import Curriculum, SingleTaskCurriculum, Task


class _ChildTask(Task):
    """A task of a sub-curriculum, seen through its parent: completion is reported to both."""

    def __init__(self, task_id: str, parent: Curriculum, child: Task):
        super().__init__(task_id, parent, child.env_cfg())
        self._child = child
        self.name = task_id if child.name == task_id else f"{task_id}:{child.name}"

    def complete(self, score: float) -> None:
        self._child.complete(score)
        super().complete(score)


def _num_agents_of(curriculum: Curriculum) -> int | None:
    """The number of agents of a curriculum's tasks, when it can tell without drawing a task."""
    if isinstance(curriculum, MultiTaskCurriculum):
        return curriculum.num_agents
    if isinstance(curriculum, SingleTaskCurriculum):
        return curriculum.get_task().env_cfg().game.num_agents
    return None


def _as_curriculum(task_id: str, value: Any, env_overrides: Mapping[str, Any] | None) -> Curriculum:
    if isinstance(value, Curriculum):
        if env_overrides:
            raise ValueError(
                f"task {task_id!r}: env_overrides cannot be applied to an already built curriculum "
                f"({type(value).__name__}); apply them where that curriculum is built"
            )
        return value
    if isinstance(value, str):
        from metta.mettagrid.curriculum.loader import curriculum_from_config_path

        return curriculum_from_config_path(value, env_overrides=env_overrides, task_id=task_id)
    if isinstance(value, (MettaGridConfig, Mapping)):
        from metta.mettagrid.curriculum.loader import curriculum_from_any

        return curriculum_from_any(value, env_overrides=env_overrides, task_id=task_id)
    raise TypeError(
        f"task {task_id!r}: expected a Curriculum, a MettaGridConfig, a dict or a config path, "
        f"got {type(value).__name__}"
    )


class MultiTaskCurriculum(Curriculum):
    """A fixed set of named tasks, drawn uniformly; subclasses change how the next task id is chosen.

    ``get_completion_rates()`` gives ``task_completions/<id>``: the fraction of the last
    ``completion_moving_avg_window`` finished episodes that were that task.
    """

    def __init__(
        self,
        tasks: Mapping[str, Any] | list[str],
        completion_moving_avg_window: int = 500,
        env_overrides: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if isinstance(tasks, (list, tuple)):
            tasks = {str(path): path for path in tasks}
        if not isinstance(tasks, Mapping) or not tasks:
            raise ValueError(f"tasks must be a non-empty mapping of task id to task, got {tasks!r}")
        if completion_moving_avg_window < 1:
            raise ValueError(f"completion_moving_avg_window={completion_moving_avg_window}; it must be at least 1")
        self._curricula: dict[str, Curriculum] = {
            str(task_id): _as_curriculum(str(task_id), value, env_overrides) for task_id, value in tasks.items()
        }
        self._task_ids: list[str] = list(self._curricula)
        self._task_index: dict[str, int] = {t: i for i, t in enumerate(self._task_ids)}
        self._completion_keys = [f"task_completions/{t}" for t in self._task_ids]  # built once: stats run per episode
        self.num_agents = self._check_num_agents()
        self._completion_window = completion_moving_avg_window
        self._completions: deque[str] = deque(maxlen=completion_moving_avg_window)
        self._completion_counts: Counter[str] = Counter()

    def _check_num_agents(self) -> int | None:
        counts = {t: _num_agents_of(c) for t, c in self._curricula.items()}
        known = {t: n for t, n in counts.items() if n is not None}
        if len(set(known.values())) > 1:
            listing = ", ".join(f"{t}: {n}" for t, n in known.items())
            raise ValueError(
                f"all tasks of a {type(self).__name__} must have the same game.num_agents (the env's agent count "
                f"is fixed for its lifetime), got {listing}; set game.num_agents to one value in every task"
            )
        return next(iter(known.values()), None)

    # -- task choice ---------------------------------------------------------------------------------------

    @property
    def task_ids(self) -> list[str]:
        return list(self._task_ids)

    def _choose_task_id(self) -> str:
        return self._task_ids[self.rng.randrange(len(self._task_ids))]

    def _task_for(self, task_id: str) -> Task:
        return _ChildTask(task_id, self, self._curricula[task_id].get_task())

    def task(self, task_id: str) -> Task:
        """A draw of task ``task_id`` (one of ``task_ids``), whatever the task choice would pick."""
        return self._task_for(task_id)

    def get_task(self) -> Task:
        return self._task_for(self._choose_task_id())

    def seed(self, seed: int) -> None:
        super().seed(seed)
        # Sub-curricula get their own seeds derived from ours, so one seed fixes the whole tree.
        derive = random.Random(seed)
        for child in self._curricula.values():
            child.seed(derive.getrandbits(63))

    # -- feedback and stats ----------------------------------------------------------------------------------

    def complete_task(self, task_id: str, score: float) -> None:
        if task_id not in self._task_index:
            raise KeyError(f"complete_task: unknown task id {task_id!r}; known ids: {self._task_ids[:10]}...")
        if len(self._completions) == self._completion_window:
            old = self._completions[0]
            self._completion_counts[old] -= 1
        self._completions.append(task_id)
        self._completion_counts[task_id] += 1

    def get_completion_rates(self) -> dict[str, float]:
        total = len(self._completions)
        if total == 0:
            return dict.fromkeys(self._completion_keys, 0.0)
        counts = self._completion_counts
        return {key: counts[t] / total for key, t in zip(self._completion_keys, self._task_ids)}

    def get_task_probs(self) -> dict[str, float]:
        p = 1.0 / len(self._task_ids)
        return {t: p for t in self._task_ids}

    # -- checkpoints -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["task_ids"] = list(self._task_ids)
        state["completions"] = list(self._completions)
        state["children"] = {t: c.state_dict() for t, c in self._curricula.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_ids = state.get("task_ids")
        if saved_ids is not None and list(saved_ids) != self._task_ids:
            missing = sorted(set(saved_ids) ^ set(self._task_ids))[:5]
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the checkpoint's task ids differ from this curriculum's "
                f"(for example {missing}); resume with the curriculum config the checkpoint was made with"
            )
        super().load_state_dict(state)
        self._completions = deque(state.get("completions", []), maxlen=self._completion_window)
        self._completion_counts = Counter(self._completions)
        for task_id, child_state in state.get("children", {}).items():
            self._curricula[task_id].load_state_dict(child_state)


class RandomCurriculum(MultiTaskCurriculum):
    """Tasks drawn at random with ``task_weights`` (uniform when None).

    Upstream YAML wrote ``tasks: {<config path>: <weight>, ...}``; a ``tasks`` mapping whose values are all
    numbers is read that way.
    """

    def __init__(
        self,
        tasks: Mapping[str, Any] | list[str],
        task_weights: Mapping[str, float] | None = None,
        completion_moving_avg_window: int = 500,
        env_overrides: Mapping[str, Any] | None = None,
    ):
        if isinstance(tasks, Mapping) and tasks and all(isinstance(v, (int, float)) for v in tasks.values()):
            if task_weights is not None:
                raise ValueError("tasks maps paths to weights, so task_weights must not be given as well")
            task_weights = {str(k): float(v) for k, v in tasks.items()}
            tasks = {str(k): str(k) for k in tasks}
        super().__init__(tasks, completion_moving_avg_window, env_overrides)
        self._set_weights(task_weights)

    def _set_weights(self, task_weights: Mapping[str, float] | list[float] | None) -> None:
        if task_weights is None:
            weights = [1.0] * len(self._task_ids)
        elif isinstance(task_weights, Mapping):
            unknown = sorted(set(task_weights) - set(self._task_ids))
            if unknown:
                raise ValueError(f"task_weights names unknown tasks {unknown}; known tasks: {self._task_ids}")
            weights = [float(task_weights.get(t, 0.0)) for t in self._task_ids]
        else:
            weights = [float(w) for w in task_weights]
            if len(weights) != len(self._task_ids):
                raise ValueError(f"task_weights has {len(weights)} entries for {len(self._task_ids)} tasks")
        bad = [(t, w) for t, w in zip(self._task_ids, weights) if not w >= 0.0]
        if bad:
            raise ValueError(f"task_weights must be >= 0, got {bad[:5]}")
        total = sum(weights)
        if total <= 0.0:
            raise ValueError(f"task_weights sum to {total}; give at least one task a positive weight")
        self._weights = weights
        self._cum_weights = []
        acc = 0.0
        for w in weights:
            acc += w
            self._cum_weights.append(acc)

    def _choose_task_id(self) -> str:
        return self.rng.choices(self._task_ids, cum_weights=self._cum_weights)[0]

    def get_task_probs(self) -> dict[str, float]:
        total = self._cum_weights[-1]
        return {t: w / total for t, w in zip(self._task_ids, self._weights)}
