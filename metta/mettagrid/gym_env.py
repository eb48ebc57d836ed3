"""``MettaGridGymEnv``: a Gymnasium ``Env`` over one single-agent MettaGrid env.

A compatibility adapter for tools that speak Gymnasium; the metta trainer steps ``MettaGridEnv`` batches
directly. ``EpisodicMettaGridEnv`` (below) is the 1-env MettaGridEnv that this adapter and the PettingZoo
adapter share: "return the terminal observation, then the user calls reset()".

Episode ends follow the Gymnasium convention. A MettaGrid episode ends only when it reaches
``game.max_steps``, a time limit, so the adapters report it as ``truncated=True, terminated=False`` and a
learner bootstraps from the final observation. (The native ``MettaGridEnv`` keeps upstream's choice: the time
limit sets ``terminals``, or ``truncations`` with ``game.episode_truncates: true``.)

Upstream's adapter keywords are accepted and each does what its name says (see ``EpisodicAdapter``):
``level`` (one fixed map for every episode), ``stats_writer`` (receives every ended episode's stats through
upstream's ``record_episode`` call), ``replay_writer`` (records every episode as a replay file). A value metta
cannot honour is an error that names the keyword, never a setting that is silently dropped.
"""

from __future__ import annotations

import datetime
import os
import uuid
from typing import Any

import gymnasium as gym
import numpy as np

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.config_loader import flatten_dotted
from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.env import (  # noqa: F401 - RENDER_MODES and check_render_mode are re-exported
    RENDER_MODES,
    MettaGridEnv,
    check_flag,
    check_render_mode,
    check_seed,
)
from metta.mettagrid.game_tables import build_episode_tables
from metta.mettagrid.map.level import Level
from metta.mettagrid.replay.writer import ReplayWriter


def as_level(level: Any) -> Level | None:
    """``level=``: None, a metta ``Level``, upstream's level (an object with a ``grid`` of cell names and
    ``labels``), or a 2-D array or nested list of cell names ("wall", "empty", "agent.agent", "altar", ...)."""
    if level is None or isinstance(level, Level):
        return level
    grid, labels = (level.grid, getattr(level, "labels", None)) if hasattr(level, "grid") else (level, None)
    try:
        cells = np.asarray(grid, dtype=object)
    except (TypeError, ValueError) as err:  # ragged rows
        raise ValueError(f"level={level!r} is not a 2-D grid of cell names: {err}") from None
    if cells.ndim != 2 or cells.size == 0 or not all(isinstance(c, str) for c in cells.ravel()):
        raise TypeError(
            f"level={level!r} is not supported: pass None (each episode's map comes from game.map_builder), a "
            "metta.mettagrid.map.Level, or a non-empty 2-D grid of cell names such as [['wall', 'empty', "
            "'agent.agent'], ...] (upstream's Level.grid); for maps that change between episodes set "
            "game.map_builder (e.g. type: ascii) instead"
        )
    return Level.from_strings(cells, [str(x) for x in labels] if labels is not None else None)


def as_replay_writer(replay_writer: Any) -> ReplayWriter | None:
    """``replay_writer=``: None, a metta ``ReplayWriter``, or a directory (str or path) to write replays into."""
    if replay_writer is None or isinstance(replay_writer, ReplayWriter):
        return replay_writer
    if isinstance(replay_writer, (str, os.PathLike)):
        return ReplayWriter(replay_writer)
    raise TypeError(
        f"replay_writer={replay_writer!r} is not supported: pass None, a metta.mettagrid.replay.ReplayWriter or a "
        "directory to write the replays into (metta writes its own replay format, docs/replay_format.md, and does "
        "not call upstream's ReplayWriter.start_episode/log_step/write_replay)"
    )


def check_stats_writer(stats_writer: Any) -> Any:
    """``stats_writer=``: None or an object with upstream's ``record_episode`` method."""
    if stats_writer is not None and not callable(getattr(stats_writer, "record_episode", None)):
        raise TypeError(
            f"stats_writer={stats_writer!r} has no record_episode method: pass None or an object with upstream's "
            "record_episode(episode_id, attributes, agent_metrics, agent_groups, step_count, replay_url, "
            "created_at), which receives every ended episode's stats"
        )
    return stats_writer


def flat_config(cfg: MettaGridConfig) -> dict[str, str]:
    """The env config as upstream's stats attributes: ``{"config.game.max_steps": "1000", ...}``."""
    return {
        key.replace("/", "."): str(value)
        for key, value in flatten_dotted(cfg.model_dump(mode="json"), "config.").items()
    }


class EpisodicMettaGridEnv(MettaGridEnv):
    """A 1-env ``MettaGridEnv`` with the Gymnasium/PettingZoo episode contract.

    It runs with ``auto_reset=False``: when an episode ends, its final observations stay in the buffer (the
    terminal observation) and the env refuses to step until ``begin_episode()`` reseeds and reloads it.
    ``level``, ``stats_writer`` and ``replay_writer`` are upstream's keywords (see ``EpisodicAdapter``).
    """

    def __init__(
        self,
        curriculum: MettaGridConfig | dict | str | Curriculum,
        *,
        is_training: bool = False,
        timings: bool = False,
        level: Any = None,
        stats_writer: Any = None,
        replay_writer: Any = None,
    ):
        # The keywords are checked before the env is built, so a wrong value fails at once.
        check_flag(is_training, "is_training")
        check_flag(timings, "timings")
        self._level = as_level(level)
        self._stats_writer = check_stats_writer(stats_writer)
        self._replay_writer = as_replay_writer(replay_writer)
        super().__init__(curriculum, num_envs=1, auto_reset=False, is_training=is_training, timings=timings)
        if self._level is not None:
            self._check_level(self._level)
        self._episode_id: str | None = None
        self._episode_created_at: datetime.datetime | None = None
        self._recording = False

    def _check_level(self, level: Level) -> None:
        """``level=`` against the first task's game: the agent count and every cell name (at construction, not
        at the first ``reset()``)."""
        if level.num_agents() != self.agents_per_env:
            raise ValueError(
                f"level= has {level.num_agents()} agent cells but game.num_agents={self.agents_per_env}; "
                "the map must place exactly num_agents agents"
            )
        tables = build_episode_tables(self._first_cfg.game, self.layout)
        lookup = tables.code_lookup()
        for code in np.unique(level.grid):
            if lookup[code, 0] < 0:
                problem = tables.unknown_cell_error(int(code))
                raise ValueError(f"level= does not fit the game config of the task: {problem}")

    def _build_level(self, game: Any, rng: np.random.Generator) -> Level:
        if self._level is None:
            return super()._build_level(game, rng)
        return Level(self._level.grid.copy(), list(self._level.labels))

    def _start_episode(self, e: int) -> None:
        try:
            super()._start_episode(e)
        except ValueError as err:
            if self._level is None:
                raise
            raise ValueError(f"level= does not fit the game config of the task: {err}") from err

    def begin_episode(self, seed: int) -> np.ndarray:
        """Start a fresh episode from ``seed``; returns a copy of its first observations.

        With a replay writer, a replay still being recorded (``reset()`` before the episode ended) is written
        as it stands, and the new episode's recording starts.
        """
        self._end_recording()
        obs, _ = self.reset(seed)
        self._episode_id = str(uuid.uuid4())
        self._episode_created_at = datetime.datetime.now()
        if self._replay_writer is not None:
            self._replay_writer.start_episode(self, 0, self._episode_id)
            self._recording = True
        return obs.copy()

    def step_episode(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """One step: copies of the observations and rewards, and the episode stats when the episode ended.

        Every agent's episode ends on the same step, at ``game.max_steps`` (the only way a MettaGrid episode
        ends), and the observations are then the final ones of that episode. On that step the replay (if
        recorded) is written, its path is ``info["replay_url"]``, and the stats writer (if any) receives the
        episode.
        """
        obs, rewards, _, _, infos = self.step(actions)
        if self._recording:
            self._replay_writer.log_step(self, 0)  # the terminal state too: no auto-reset has happened
        info = infos[0] if infos else None
        if info is not None:
            replay_path = self._end_recording()
            if replay_path is not None:
                info["replay_url"] = replay_path
            if self._stats_writer is not None:
                self._record_stats(info, replay_path)
        return obs.copy(), rewards.copy(), info

    def _end_recording(self) -> str | None:
        if not self._recording:
            return None
        self._recording = False
        path = self._replay_writer.end_episode()
        return None if path is None else str(path)

    def _record_stats(self, info: dict[str, Any], replay_url: str | None) -> None:
        """Upstream's ``record_episode`` call: per-agent metrics (episode reward and every nonzero stat), the
        agents' groups, the flattened env config, the episode length, the replay and when the episode began."""
        rows = self.agent_rows(0)
        stats = self._agent_stats[rows]
        names = self._stat_names
        agent_metrics: dict[int, dict[str, float]] = {}
        for i, reward in enumerate(info["episode_rewards"]):
            metrics = {"reward": float(reward)}
            metrics.update({names[k]: float(stats[i, k]) for k in np.flatnonzero(stats[i])})
            agent_metrics[i] = metrics
        agents = (o for o in self.grid_objects(0, include_static=False).values() if "agent_id" in o)
        agent_groups = {int(o["agent_id"]): int(o["group_id"]) for o in agents}
        task = self.current_task(0)
        self._stats_writer.record_episode(
            self._episode_id,
            flat_config(task.env_cfg()),
            agent_metrics,
            agent_groups,
            int(info["episode_length"]),
            replay_url,
            self._episode_created_at,
        )

    def close(self) -> None:
        self._end_recording()
        super().close()


class EpisodicAdapter:
    """What the Gymnasium and PettingZoo adapters share: construction, names, ``render()`` and ``close()``.

    The arguments follow upstream's adapters, in upstream's order:

    - ``curriculum``: a ``Curriculum``, a ``MettaGridConfig``, a dict, or a config path such as
      ``"/env/mettagrid/navigation/training/terrain_from_numpy_defaults"``.
    - ``render_mode``: None, "ansi" (``render()`` returns the map as text) or "human" (it prints it).
    - ``level``: None (each episode's map comes from ``game.map_builder``), or one pre-built map used for every
      episode: a ``metta.mettagrid.map.Level``, upstream's level (an object with a ``grid`` of cell names and
      ``labels``) or a 2-D grid of cell names. Its agent count must be ``game.num_agents``; its labels add
      ``map_reward/<label>`` to the episode info.
    - ``stats_writer``: None, or an object whose ``record_episode(episode_id, attributes, agent_metrics,
      agent_groups, step_count, replay_url, created_at)`` (upstream's call) receives every ended episode:
      the flattened env config (``{"config.game.max_steps": "12", ...}``), ``{agent: {"reward": r, stat: v}}``,
      ``{agent: group id}``, the episode length, the replay path (or None) and the episode's start time.
    - ``replay_writer``: None, a ``metta.mettagrid.replay.ReplayWriter``, or a directory: every episode is
      recorded (terminal state included) and written when it ends; ``info["replay_url"]`` is the file's path.
      A ``reset()`` before the end writes the replay so far; so does ``close()``.
    - ``is_training``: upstream's flag (with ``desync_episodes`` it cuts the first episode to a random length).
    - ``timings=True`` adds wall-clock timings to the episode's info (off by default, so identical runs give
      identical infos).
    - ``**kwargs``: upstream passes them on to its env; here ``buf=None`` (upstream's default) is accepted and any
      other keyword is an error that names it.
    """

    def __init__(
        self,
        curriculum: MettaGridConfig | dict | str | Curriculum,
        render_mode: str | None = None,
        level: Any = None,
        stats_writer: Any = None,
        replay_writer: Any = None,
        is_training: bool = False,
        *,
        timings: bool = False,
        **kwargs: Any,
    ):
        check_render_mode(render_mode)
        check_flag(is_training, "is_training")
        check_flag(timings, "timings")
        self._check_extra_keywords(kwargs)
        self.render_mode = render_mode
        self._env = EpisodicMettaGridEnv(
            curriculum,
            is_training=is_training,
            timings=timings,
            level=level,
            stats_writer=stats_writer,
            replay_writer=replay_writer,
        )
        self._setup()

    def _check_extra_keywords(self, kwargs: dict[str, Any]) -> None:
        """Upstream's adapters forward ``**kwargs`` to their env; none of them is silently dropped here."""
        name = type(self).__name__
        buf = kwargs.pop("buf", None)
        if buf is not None:
            raise ValueError(
                f"{name}(buf={buf!r}): buf is PufferLib's shared buffer for a vectorized env; the adapter owns its "
                "buffers. Pass buf=None, or use MettaGridEnv(curriculum, buf=...) (or metta.mettagrid.vecenv) to "
                "simulate into given buffers"
            )
        if kwargs:
            listed = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise TypeError(
                f"{name}() does not support {listed}; it accepts curriculum, render_mode, level, stats_writer, "
                "replay_writer, is_training, timings (and buf=None)"
            )

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

    def _check_extra_keywords(self, kwargs: dict[str, Any]) -> None:
        # Upstream's Gym adapter has single_agent (default False: arrays of every agent); this one is always
        # single-agent.
        single_agent = kwargs.pop("single_agent", True)
        if single_agent is not True:
            raise ValueError(
                f"MettaGridGymEnv(single_agent={single_agent!r}): this adapter is single-agent (one observation, "
                "one [action type, argument] pair); pass single_agent=True or leave it out, and use "
                "MettaGridPettingZooEnv for multi-agent maps"
            )
        super()._check_extra_keywords(kwargs)

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
        seed = check_seed(seed)
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
