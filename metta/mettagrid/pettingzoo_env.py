"""``MettaGridPettingZooEnv``: a PettingZoo ``ParallelEnv`` over one MettaGrid env and all its agents.

A compatibility adapter for tools that speak PettingZoo; the metta trainer steps ``MettaGridEnv`` batches
directly. Every agent acts every step and all agents' episodes end together at ``game.max_steps``, a time
limit, reported as ``truncations`` (``terminations`` stay False; see ``gym_env``); after the last step
``agents`` is empty until ``reset()``.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

from metta.mettagrid.env import check_seed, write_actions
from metta.mettagrid.gym_env import RENDER_MODES, EpisodicAdapter


class MettaGridPettingZooEnv(EpisodicAdapter, ParallelEnv):
    """One MettaGrid env as a PettingZoo ``ParallelEnv`` with agents ``"agent_0"`` .. ``"agent_{n-1}"``
    (arguments: see ``EpisodicAdapter``).

    Each ``reset()`` draws a new map; ``reset(seed=s)`` makes the following episodes reproducible. On the step
    that ends an episode, every agent's info is its own copy of the episode stats of ``MettaGridEnv`` (where
    ``agent`` is the mean over all agents) plus that agent's own ``agent_stats`` and ``agent_episode_reward``.
    ``step()`` needs exactly one action per live agent; a missing or unknown agent name is an error.
    ``state()`` is every agent's observation, flattened, in agent order (upstream's global state).
    """

    metadata = {"render_modes": RENDER_MODES, "name": "mettagrid_v0", "is_parallelizable": True}

    def _setup(self) -> None:
        self.possible_agents = [f"agent_{i}" for i in range(self._env.num_agents)]
        self.agents: list[str] = []
        # One space object per agent, returned by every call (PettingZoo seeds them one by one).
        self.observation_spaces = {a: copy.deepcopy(self._env.single_observation_space) for a in self.possible_agents}
        self.action_spaces = {a: copy.deepcopy(self._env.single_action_space) for a in self.possible_agents}
        obs_shape = self._env.single_observation_space.shape
        self.state_space = gym.spaces.Box(0, 255, (self._env.num_agents * int(np.prod(obs_shape)),), dtype=np.uint8)
        self._rng = np.random.default_rng()
        self._actions = np.zeros((self._env.num_agents, 2), dtype=np.int32)

    def observation_space(self, agent: str) -> gym.spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gym.spaces.Space:
        return self.action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        seed = check_seed(seed)
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
        if len(actions) != len(self.agents):  # every live agent is there, so some other name is too
            live = set(self.agents)
            unknown = [a for a in actions if a not in live]
            raise ValueError(
                f"step() got actions for {unknown}, which are not live agents of this env; the live agents are "
                f"{self.agents[0]!r} .. {self.agents[-1]!r} ({len(self.agents)} agents)"
            )
        for i, agent in enumerate(self.agents):
            write_actions(self._actions[i], actions[agent], f"([action type, argument]) for {agent}")
        obs, rewards, info = self._env.step_episode(self._actions)
        agents = self.agents
        ended = info is not None
        if ended:
            self.agents = []
        if self.render_mode == "human":
            self.render()
        return (
            {a: obs[i] for i, a in enumerate(agents)},
            {a: float(rewards[i]) for i, a in enumerate(agents)},
            {a: False for a in agents},
            {a: ended for a in agents},
            self._agent_infos(agents, info) if ended else {a: {} for a in agents},
        )

    def _agent_infos(self, agents: list[str], info: dict[str, Any]) -> dict[str, dict]:
        """Each agent's own copy of the episode info (nothing shared between agents or with the env), plus its
        own stats: ``agent_stats`` (its non-zero stats; ``agent`` is the mean over all agents, as in
        ``MettaGridEnv``) and ``agent_episode_reward``."""
        stats = self._env._agent_stats[self._env.agent_rows(0)]  # the ended episode's: no auto-reset happened
        names = self._env._stat_names
        out = {}
        for i, a in enumerate(agents):
            own = copy.deepcopy(info)
            own["agent_stats"] = {names[k]: float(stats[i, k]) for k in np.flatnonzero(stats[i])}
            own["agent_episode_reward"] = float(info["episode_rewards"][i])
            out[a] = own
        return out

    def state(self) -> np.ndarray:
        """Every agent's current observation, flattened in agent order (a copy)."""
        if self._env.current_task() is None:
            raise gym.error.ResetNeeded("state() before reset(): there is no episode yet; call reset() first")
        return self._env.observations.reshape(-1).copy()
