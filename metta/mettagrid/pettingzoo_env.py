"""``MettaGridPettingZooEnv``: a PettingZoo ``ParallelEnv`` over one MettaGrid env and all its agents.

A compatibility adapter for tools that speak PettingZoo; the metta trainer steps ``MettaGridEnv`` batches
directly. Every agent acts every step and all agents' episodes end together (MettaGrid episodes end at
``game.max_steps``), so after the last step ``agents`` is empty until ``reset()``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.gym_env import RENDER_MODES, EpisodicMettaGridEnv


class MettaGridPettingZooEnv(ParallelEnv):
    """One MettaGrid env as a PettingZoo ``ParallelEnv`` with agents ``"agent_0"`` .. ``"agent_{n-1}"``.

    ``config`` is a ``MettaGridConfig``, a dict, a config path such as
    ``"/env/mettagrid/navigation/training/terrain_from_numpy_defaults"``, or a ``Curriculum``. Each
    ``reset()`` draws a new map; ``reset(seed=s)`` makes the following episodes reproducible. On the step
    that ends an episode, every agent's info holds the episode stats of ``MettaGridEnv``.
    """

    metadata = {"render_modes": RENDER_MODES, "name": "mettagrid_v0", "is_parallelizable": True}

    def __init__(self, config: MettaGridConfig | dict | str | Curriculum, render_mode: str | None = None):
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode={render_mode!r}; use one of {RENDER_MODES} or None")
        self.render_mode = render_mode
        # EpisodicMettaGridEnv keeps the final observations of an ended episode (see its docstring).
        self._env = EpisodicMettaGridEnv(config, capture_frames=render_mode is not None)
        self.possible_agents = [f"agent_{i}" for i in range(self._env.num_agents)]
        self.agents: list[str] = []
        # One space object per agent, returned every call (PettingZoo requires identity, for seeding).
        self.observation_spaces = {a: self._env.single_observation_space for a in self.possible_agents}
        self.action_spaces = {a: self._env.single_action_space for a in self.possible_agents}
        self._rng = np.random.default_rng()
        self._actions = np.zeros((self._env.num_agents, 2), dtype=np.int32)

    def observation_space(self, agent: str) -> gym.spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gym.spaces.Space:
        return self.action_spaces[agent]

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

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        obs = self._env.begin_episode(int(self._rng.integers(2**31 - 1)))
        self.agents = list(self.possible_agents)
        if self.render_mode == "human":
            self.render()
        return {a: obs[i] for i, a in enumerate(self.agents)}, {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("no live agents: the episode is over (or never started); call reset() before step()")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"step() needs an action for every live agent; missing {missing}")
        for i, agent in enumerate(self.agents):
            self._actions[i] = actions[agent]
        _, rewards, terminals, truncations, infos = self._env.step(self._actions)
        agents = self.agents
        if infos:  # the episode ended; the env's buffer already holds the next episode's first observations
            obs = self._env.terminal_observations
            agent_infos = {a: dict(infos[0]) for a in agents}
            self.agents = []
        else:
            obs = self._env.observations.copy()
            agent_infos = {a: {} for a in agents}
        if self.render_mode == "human":
            self.render()
        return (
            {a: obs[i] for i, a in enumerate(agents)},
            {a: float(rewards[i]) for i, a in enumerate(agents)},
            {a: bool(terminals[i]) for i, a in enumerate(agents)},
            {a: bool(truncations[i]) for i, a in enumerate(agents)},
            agent_infos,
        )

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn("render() was called with render_mode=None; pass render_mode='ansi' or 'human'")
            return None
        text = self._env.frame()
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def state(self) -> np.ndarray:
        raise NotImplementedError("MettaGridPettingZooEnv has no global state array; use each agent's observation")

    def close(self) -> None:
        self._env.close()
