"""``MettaGridGymEnv``: a Gymnasium ``Env`` over one single-agent MettaGrid env.

A compatibility adapter for tools that speak Gymnasium; the metta trainer steps ``MettaGridEnv`` batches
directly. ``EpisodicMettaGridEnv`` (below) is the 1-env MettaGridEnv that this adapter and the PettingZoo
adapter share: "return the terminal observation, then the user calls reset()".
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.env import MettaGridEnv

RENDER_MODES = ["human", "ansi"]


class EpisodicMettaGridEnv(MettaGridEnv):
    """A 1-env ``MettaGridEnv`` with the Gymnasium/PettingZoo episode contract.

    It runs with ``auto_reset=False``: when an episode ends, its final observations stay in the buffer (the
    terminal observation) and the env refuses to step until ``begin_episode()`` reseeds and reloads it.
    """

    def __init__(self, config: MettaGridConfig | dict | str | Curriculum, capture_frames: bool = False):
        super().__init__(config, num_envs=1, auto_reset=False)

    @property
    def terminal_observations(self) -> np.ndarray:
        return self.observations.copy()

    def begin_episode(self, seed: int) -> np.ndarray:
        """Start a fresh episode from ``seed``; returns a copy of its first observations."""
        obs, _ = self.reset(seed)
        return obs.copy()

    def frame(self) -> str:
        """The text picture of the current episode (the final one right after an episode ended)."""
        return self.render(0)


class MettaGridGymEnv(gym.Env):
    """One MettaGrid env with exactly one agent, as a Gymnasium ``Env``.

    ``config`` is a ``MettaGridConfig``, a dict, a config path such as
    ``"/env/mettagrid/navigation/training/terrain_from_numpy_defaults"``, or a ``Curriculum``. Each
    ``reset()`` draws a new map; ``reset(seed=s)`` makes the following episodes reproducible.
    """

    metadata = {"render_modes": RENDER_MODES, "name": "mettagrid"}

    def __init__(self, config: MettaGridConfig | dict | str | Curriculum, render_mode: str | None = None):
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode={render_mode!r}; use one of {RENDER_MODES} or None")
        self.render_mode = render_mode
        self._env = EpisodicMettaGridEnv(config, capture_frames=render_mode is not None)
        if self._env.num_agents != 1:
            raise ValueError(
                f"MettaGridGymEnv needs a single-agent map, but game.num_agents={self._env.num_agents}; set "
                "game.num_agents=1 (and a map builder that places one agent) or use MettaGridPettingZooEnv "
                "for multi-agent maps"
            )
        self.observation_space = self._env.single_observation_space
        self.action_space = self._env.single_action_space
        self._episode_over = True

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
        if action.shape != (2,) or action.dtype.kind not in "iu":
            raise ValueError(f"action must be 2 integers [action type, argument], got {action!r}")
        _, rewards, terminals, truncations, infos = self._env.step(action.reshape(1, 2))
        terminated, truncated = bool(terminals[0]), bool(truncations[0])
        if infos:  # the episode ended; the buffer holds its final observations until reset()
            self._episode_over = True
            obs = self._env.terminal_observations[0]
            info = infos[0]
        else:
            obs = self._env.observations[0].copy()
            info = {}
        if self.render_mode == "human":
            self.render()
        return obs, float(rewards[0]), terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn("render() was called with render_mode=None; pass render_mode='ansi' or 'human'")
            return None
        text = self._env.frame()
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        self._env.close()
