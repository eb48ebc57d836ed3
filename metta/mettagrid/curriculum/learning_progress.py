"""Learning-progress curriculum: play the tasks whose success rate is changing.

The bidirectional learning-progress rule (as upstream, after Kanitscheider et al. 2021):

- Each finished episode gives ``success = clip(score, 0, 1)`` for its task; a task's success rate is the mean
  of its last ``memory`` outcomes.
- The first time a task has data, its *random baseline* is ``min(rate, 0.75)``; later rates are normalized
  as ``max(rate - baseline, 0) / (1 - baseline)``.
- A fast EMA ``p_fast`` of the normalized rate, a slow EMA ``p_slow`` of ``p_fast`` and an EMA ``p_true`` of
  the raw rate, all with rate ``ema_timescale``, are updated for the active tasks.
- Learning progress is ``|reweight(p_fast) - reweight(p_slow)|`` with
  ``reweight(p) = p (1 - s) / (p + s (1 - 2p))`` and ``s = progress_smoothing``; it is large both when a task
  is being learned and when it is being forgotten.
- The distribution: over tasks with progress > 0 or ``p_true`` > 0, z-score the progress, apply a sigmoid
  and normalize; the other tasks get 0 (all tasks qualify when none does).
- ``num_active_tasks`` draws pick the *active* tasks: each draw is uniform over all tasks with probability
  ``rand_task_rate``, else from the distribution. Episodes are drawn from the active tasks (a task drawn
  twice is twice as likely). Once every active task has ``sample_threshold`` new outcomes, the EMAs and the
  distribution are updated and a new active set is drawn.

One deliberate difference from upstream: episodes are drawn from the active set, which guarantees every
active task gets the outcomes the update waits for (upstream drew episodes from the distribution, so an
active task with a near-zero probability could stall it). Tasks never played have no baseline and no
progress yet; the uniform draws reach them.

All randomness comes from ``self.rng``; ``state_dict`` carries the outcomes, EMAs, distribution, active set
and RNG, so a resumed run continues exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from metta.mettagrid.curriculum.multi_task import RandomCurriculum

_MAX_BASELINE = 0.75


class LearningProgressCurriculum(RandomCurriculum):
    def __init__(
        self,
        tasks: Mapping[str, Any] | list[str],
        ema_timescale: float = 0.001,
        progress_smoothing: float = 0.05,
        num_active_tasks: int = 16,
        rand_task_rate: float = 0.25,
        sample_threshold: int = 10,
        memory: int = 25,
        completion_moving_avg_window: int = 500,
        env_overrides: Mapping[str, Any] | None = None,
    ):
        super().__init__(tasks, None, completion_moving_avg_window, env_overrides)
        checks = {
            "ema_timescale": (ema_timescale, 0.0 < ema_timescale <= 1.0, "in (0, 1]"),
            "progress_smoothing": (progress_smoothing, 0.0 <= progress_smoothing < 0.5, "in [0, 0.5)"),
            "num_active_tasks": (num_active_tasks, num_active_tasks >= 1, ">= 1"),
            "rand_task_rate": (rand_task_rate, 0.0 <= rand_task_rate <= 1.0, "in [0, 1]"),
            "sample_threshold": (sample_threshold, sample_threshold >= 1, ">= 1"),
            "memory": (memory, memory >= 1, ">= 1"),
        }
        for name, (value, ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"{type(self).__name__}: {name}={value!r}; it must be {allowed}")
        n = len(self._task_ids)
        self.ema_timescale = float(ema_timescale)
        self.progress_smoothing = float(progress_smoothing)
        self.num_active_tasks = min(int(num_active_tasks), n)
        self.rand_task_rate = float(rand_task_rate)
        self.sample_threshold = int(sample_threshold)
        self.memory = int(memory)

        self._outcomes: list[deque[float]] = [deque(maxlen=self.memory) for _ in range(n)]
        self._rates = np.full(n, np.nan)  # mean of each task's outcomes, kept current by complete_task
        self._lp: np.ndarray | None = None  # learning progress, computed again after the EMAs change
        self._baseline = np.full(n, np.nan)
        self._p_fast = np.zeros(n)
        self._p_slow = np.zeros(n)
        self._p_true = np.zeros(n)
        self._tracked = np.zeros(n, dtype=bool)  # EMAs initialized
        self._dist = np.full(n, 1.0 / n)
        self._active: list[int] = []
        self._new_outcomes = np.zeros(n, dtype=np.int64)  # since the active set was drawn
        self._num_updates = 0
        self._draw_active_tasks()

    def seed(self, seed: int) -> None:
        super().seed(seed)
        # The initial active set was drawn with the unseeded generator; draw it again so the seed fixes it.
        if self._num_updates == 0:
            self._draw_active_tasks()

    # -- the algorithm ---------------------------------------------------------------------------------------

    def _reweight(self, p: np.ndarray) -> np.ndarray:
        s = self.progress_smoothing
        return p * (1.0 - s) / (p + s * (1.0 - 2.0 * p))

    def learning_progress(self) -> np.ndarray:
        """Per-task learning progress (0 for tasks not yet tracked)."""
        # Episode-end stats read it after every episode; it changes only when the EMAs do.
        if self._lp is None:
            lp = np.abs(self._reweight(self._p_fast) - self._reweight(self._p_slow))
            self._lp = np.where(self._tracked, lp, 0.0)
        return self._lp.copy()

    def success_rates(self) -> np.ndarray:
        """Mean of each task's remembered outcomes (NaN for tasks never played)."""
        return self._rates.copy()

    def _recompute_rate(self, idx: int) -> None:
        o = self._outcomes[idx]
        # Plain sum/len over at most `memory` values: np.mean costs microseconds per call.
        self._rates[idx] = sum(o) / len(o) if o else np.nan

    def learning_progress_distribution(self) -> dict[str, float]:
        return {t: float(p) for t, p in zip(self._task_ids, self._dist)}

    def _update_estimates(self) -> None:
        rates = self.success_rates()
        has_data = ~np.isnan(rates)
        new_baseline = has_data & np.isnan(self._baseline)
        self._baseline[new_baseline] = np.minimum(rates[new_baseline], _MAX_BASELINE)
        baseline = np.where(has_data, self._baseline, 0.0)
        safe_rates = np.where(has_data, rates, 0.0)
        normalized = np.maximum(safe_rates - baseline, 0.0) / (1.0 - baseline)

        mask = np.zeros(len(self._task_ids), dtype=bool)
        mask[self._active] = True
        mask &= has_data
        fresh = mask & ~self._tracked
        self._p_fast[fresh] = normalized[fresh]
        self._p_slow[fresh] = normalized[fresh]
        self._p_true[fresh] = safe_rates[fresh]
        old = mask & self._tracked
        a = self.ema_timescale
        self._p_fast[old] = a * normalized[old] + (1.0 - a) * self._p_fast[old]
        self._p_slow[old] = a * self._p_fast[old] + (1.0 - a) * self._p_slow[old]
        self._p_true[old] = a * safe_rates[old] + (1.0 - a) * self._p_true[old]
        self._tracked |= mask
        self._lp = None

    def _compute_distribution(self) -> None:
        lp = self.learning_progress()
        qualify = self._tracked & ((lp > 0.0) | (self._p_true > 0.0))
        if not qualify.any():
            qualify = np.ones(len(lp), dtype=bool)
        sub = lp[qualify]
        std = sub.std()
        z = (sub - sub.mean()) / (std if std > 0.0 else 1.0)
        probs = 1.0 / (1.0 + np.exp(-z))
        dist = np.zeros(len(lp))
        dist[qualify] = probs / probs.sum()
        self._dist = dist

    def _draw_active_tasks(self) -> None:
        n = len(self._task_ids)
        cum = np.cumsum(self._dist).tolist()
        active = []
        for _ in range(self.num_active_tasks):
            if self.rng.random() < self.rand_task_rate:
                active.append(self.rng.randrange(n))
            else:
                active.append(self.rng.choices(range(n), cum_weights=cum)[0])
        self._active = active
        self._new_outcomes[:] = 0
        counts = np.bincount(active, minlength=n)
        self._set_weights(counts.astype(float).tolist())

    def complete_task(self, task_id: str, score: float) -> None:
        super().complete_task(task_id, score)
        idx = self._task_index[task_id]
        self._outcomes[idx].append(min(max(float(score), 0.0), 1.0))
        self._recompute_rate(idx)
        self._new_outcomes[idx] += 1
        if all(self._new_outcomes[i] >= self.sample_threshold for i in self._active):
            self._update_estimates()
            self._compute_distribution()
            self._num_updates += 1
            self._draw_active_tasks()

    # -- stats and checkpoints -------------------------------------------------------------------------------

    def get_curriculum_stats(self) -> dict[str, float]:
        active = sorted(set(self._active))
        rates = self.success_rates()
        played = ~np.isnan(rates)
        lp = self.learning_progress()
        return {
            "lp/num_active_tasks": float(len(active)),
            "lp/mean_sample_prob": float(np.mean(self._dist[active])) if active else 0.0,
            "lp/num_zeros_lp_dist": float(np.count_nonzero(self._dist == 0.0)),
            "lp/task_success_rate": float(np.mean(rates[played])) if played.any() else 0.0,
            "lp/mean_learning_progress": float(lp.mean()),
            "lp/num_updates": float(self._num_updates),
        }

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lp"] = {
            "outcomes": [list(o) for o in self._outcomes],
            "baseline": self._baseline.tolist(),
            "p_fast": self._p_fast.tolist(),
            "p_slow": self._p_slow.tolist(),
            "p_true": self._p_true.tolist(),
            "tracked": self._tracked.tolist(),
            "dist": self._dist.tolist(),
            "active": list(self._active),
            "new_outcomes": self._new_outcomes.tolist(),
            "num_updates": self._num_updates,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        lp = state.get("lp")
        if lp is None:
            return
        self._outcomes = [deque((float(x) for x in o), maxlen=self.memory) for o in lp["outcomes"]]
        self._baseline = np.array(lp["baseline"], dtype=float)
        self._p_fast = np.array(lp["p_fast"], dtype=float)
        self._p_slow = np.array(lp["p_slow"], dtype=float)
        self._p_true = np.array(lp["p_true"], dtype=float)
        self._tracked = np.array(lp["tracked"], dtype=bool)
        self._dist = np.array(lp["dist"], dtype=float)
        self._active = [int(i) for i in lp["active"]]
        self._new_outcomes = np.array(lp["new_outcomes"], dtype=np.int64)
        self._num_updates = int(lp["num_updates"])
        for idx in range(len(self._outcomes)):
            self._recompute_rate(idx)
        self._lp = None
        counts = np.bincount(self._active, minlength=len(self._task_ids))
        self._set_weights(counts.astype(float).tolist())
