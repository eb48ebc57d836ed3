"""``MettaGridGymEnv``: a Gymnasium ``Env`` over one single-agent MettaGrid env.

A compatibility adapter for tools that speak Gymnasium; the metta trainer steps ``MettaGridEnv`` batches
directly. ``EpisodicMettaGridEnv`` (below) is the 1-env MettaGridEnv that this adapter and the PettingZoo
adapter share: "return the terminal observation, then the user calls reset()".

Episode ends follow the Gymnasium convention. A MettaGrid episode ends only when it reaches
``game.max_steps``, a time limit, so the adapters report it as ``truncated=True, terminated=False`` and a
learner bootstraps from the final observation. (The native ``MettaGridEnv`` keeps upstream's choice: the time
limit sets ``terminals``, or ``truncations`` with ``game.episode_truncates: true``.)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.env import MettaGridEnv

RENDER_MODES = ["human", "ansi"]


def check_render_mode(render_mode: str | None) -> None:
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode={render_mode!r} is not supported; use one of {RENDER_MODES} or None")


class EpisodicMettaGridEnv(MettaGridEnv):
    """A 1-env ``MettaGridEnv`` with the Gymnasium/PettingZoo episode contract.

    It runs with ``auto_reset=False``: when an episode ends, its final observations stay in the buffer (the
    terminal observation) and the env refuses to step until ``begin_episode()`` reseeds and reloads it.
    """

    def __init__(
        self, curriculum: MettaGridConfig | dict | str | Curriculum, *, is_training: bool = False, timings: bool = False
    ):
        super().__init__(curriculum, num_envs=1, auto_reset=False, is_training=is_training, timings=timings)

    def begin_episode(self, seed: int) -> np.ndarray:
        """Start a fresh episode from ``seed``; returns a copy of its first observations."""
        obs, _ = self.reset(seed)
        return obs.copy()

    def step_episode(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """One step: copies of the observations and rewards, and the episode stats when the episode ended.

        Every agent's episode ends on the same step, at ``game.max_steps`` (the only way a MettaGrid episode
        ends), and the observations are then the final ones of that episode.
        """
        obs, rewards, _, _, infos = self.step(actions)
        return obs.copy(), rewards.copy(), (infos[0] if infos else None)


class EpisodicAdapter:
    """What the Gymnasium and PettingZoo adapters share: construction, names, ``render()`` and ``close()``.

    ``curriculum`` is a ``Curriculum``, a ``MettaGridConfig``, a dict, or a config path such as
    ``"/env/mettagrid/navigation/training/terrain_from_numpy_defaults"``; ``render_mode`` is None, "ansi"
    (``render()`` returns the map as text) or "human" (it prints it). ``is_training`` is upstream's flag (with
    ``desync_episodes`` it cuts the first episode to a random length). ``timings=True`` adds wall-clock
    timings to the episode's info (off by default, so identical runs give identical infos).
    """

    def __init__(
        self,
        curriculum: MettaGridConfig | dict | str | Curriculum,
        render_mode: str | None = None,
        *,
        is_training: bool = False,
        timings: bool = False,
    ):
        check_render_mode(render_mode)
        self.render_mode = render_mode
        self._env = EpisodicMettaGridEnv(curriculum, is_training=is_training, timings=timings)
        self._setup()

    def _setup(self) -> None:
        """The adapter's own spaces and state, once ``self._env`` exists."""
        raise NotImplementedError

    @property
    def action_names(self) -> list[str]:
        return self._env.action_names

    @property
    def max_action_args(self) -> list[int]:
        return self._env.max_action_args

    @property
    def mettagrid_env(self) -> MettaGridEnv:
        """The underlying 1-env ``MettaGridEnv`` (for feature names, grid objects and similar)."""
        return self._env

    def render(self) -> str | None:
        """The current episode's map (the final one right after an episode ended)."""
        if self.render_mode is None:
            gym.logger.warn("render() was called with render_mode=None; pass render_mode='ansi' or 'human'")
            return None
        if self._env.current_task() is None:
            raise gym.error.ResetNeeded("render() before reset(): there is no map yet; call reset() first")
        text = self._env.render(0)
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        self._env.close()


class MettaGridGymEnv(EpisodicAdapter, gym.Env):
    """One MettaGrid env with exactly one agent, as a Gymnasium ``Env`` (arguments: see ``EpisodicAdapter``).

    Each ``reset()`` draws a new map; ``reset(seed=s)`` makes the following episodes reproducible.
    """

    metadata = {"render_modes": RENDER_MODES, "name": "mettagrid"}

    def _setup(self) -> None:
        if self._env.num_agents != 1:
            raise ValueError(
                f"MettaGridGymEnv needs a single-agent map, but game.num_agents={self._env.num_agents}; set "
                "game.num_agents=1 (and a map builder that places one agent) or use MettaGridPettingZooEnv "
                "for multi-agent maps"
            )
        self.observation_space = self._env.single_observation_space
        self.action_space = self._env.single_action_space
        self._episode_over = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)  # (re)seeds self.np_random when seed is given
        obs = self._env.begin_episode(int(self.np_random.integers(2**31 - 1)))
        self._episode_over = False
        if self.render_mode == "human":
            self.render()
        return obs[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._episode_over:
            raise RuntimeError("the episode is over (or never started); call reset() before step()")
        action = np.asarray(action)
        if action.shape != (2,):
            raise ValueError(f"action must be 2 integers [action type, argument], got {action!r}")
        obs, rewards, info = self._env.step_episode(action.reshape(1, 2))
        self._episode_over = info is not None
        if self.render_mode == "human":
            self.render()
        # The only episode end is the time limit: a truncation.
        return obs[0], float(rewards[0]), False, self._episode_over, info or {}
