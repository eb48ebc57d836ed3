"""``MettaGridEnv``: a batch of MettaGrid envs and all their agents, stepped by one compiled kernel call.

It follows PufferLib's native env protocol: ``single_observation_space``, ``single_action_space``,
``num_agents`` (all agent rows of the batch), ``reset(seed)``, ``step(actions)`` returning
``(observations, rewards, terminals, truncations, infos)`` where ``infos`` is a list with one dict per
episode that ended during the call. Observations, rewards, terminals, truncations and masks live in buffers
that may be handed in (``buf``, e.g. shared memory of the vectorizer) and are written in place.

Episodes reset automatically: when an env's episode ends, that step's rewards and terminals describe the
last transition, its infos carry the episode stats, and its observations already show the next episode.

Seeding: env ``i`` of the batch draws maps and agent order from a generator seeded with
``(seed, env_offset + i)``, and the batch's curriculum from ``(seed, env_offset)``, so a batch layout and a
seed fix every episode whichever process simulates it.
"""

from __future__ import annotations

import time
import zlib
from types import SimpleNamespace
from typing import Any

import numpy as np
from gymnasium import spaces

from metta.mettagrid import kernel as kn
from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.constants import ORIENTATION_NAMES
from metta.mettagrid.curriculum.core import Curriculum, SingleTaskCurriculum, Task
from metta.mettagrid.game_tables import (
    KIND_AGENT,
    KIND_CONVERTER,
    BatchLayout,
    EpisodeTables,
    build_episode_tables,
    build_layout,
)
from metta.mettagrid.map.level import Level, cell_name, code_table_size

_MIN_CELLS = 32 * 32
_MIN_CONVERTERS = 16
_MAX_CONVERTERS = 32767  # grid cells hold converter indices as int16
_INT32_MIN, _INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)


def write_actions(dst: np.ndarray, actions: Any, expected: str) -> None:
    """Check ``actions`` against the int32 action buffer ``dst`` and copy them in.

    Any integer dtype is accepted. Values that int32 cannot hold become the nearest int32 bound, which is no
    action type or argument, so the kernel counts them as invalid actions: a plain cast would wrap them
    (int64 2**33 + 1 to 1, uint64 2**63 to 0) into valid ones. ``expected`` describes ``dst`` for the error.
    """
    if not isinstance(actions, np.ndarray):
        actions = np.asarray(actions)  # e.g. a CPU torch tensor: a view, not a copy
    if actions.shape != dst.shape:
        raise ValueError(f"actions must have shape {list(dst.shape)} {expected}, got {list(actions.shape)}")
    dtype = actions.dtype
    if dtype.kind not in "iu":
        raise TypeError(f"actions must be integers (int32 preferred), got dtype {dtype}")
    if dtype.itemsize < 4 or dtype == np.int32:  # every value fits
        np.copyto(dst, actions, casting="unsafe")
    else:
        np.clip(actions, 0 if dtype.kind == "u" else _INT32_MIN, _INT32_MAX, out=dst, casting="unsafe")


# ``render()`` returns the map as text ("ansi") or also prints it ("human").
RENDER_MODES = ["human", "ansi"]
# Seeds are numpy's legacy range (``np.random.seed``, PufferLib, most RL tools): an unsigned 32-bit integer.
MAX_SEED = 2**32 - 1


def check_render_mode(render_mode: Any) -> None:
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode={render_mode!r} is not supported; use one of {RENDER_MODES} or None")


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """``seed`` as an int (None passes through); anything but an integer in 0..MAX_SEED is an error naming it."""
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name}={seed!r} must be an integer from 0 to {MAX_SEED} (2**32 - 1) or None")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name}={seed!r} is out of range; use an integer from 0 to {MAX_SEED} (2**32 - 1) or None")
    return int(seed)


def check_flag(value: Any, name: str) -> bool:
    """A True/False keyword; ``"yes"``, ``1`` or ``None`` are errors (``bool("no")`` would be True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r} must be True or False")
    return bool(value)


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (1, 2, ...)")
    return int(value)


def make_curriculum(curriculum: Any) -> Curriculum:
    """A curriculum from a Curriculum, an env config (object or dict) or a config path string."""
    if isinstance(curriculum, Curriculum):
        return curriculum
    if isinstance(curriculum, str):
        from metta.mettagrid.curriculum.loader import curriculum_from_config_path

        return curriculum_from_config_path(curriculum)
    cfg = MettaGridConfig.from_any(curriculum)
    return SingleTaskCurriculum(cfg.label or "custom_env", cfg)


class MettaGridEnv:
    """``num_envs`` MettaGrid envs from one curriculum, simulated together."""

    def __init__(
        self,
        curriculum: Curriculum | MettaGridConfig | dict | str,
        *,
        num_envs: int = 1,
        render_mode: str | None = None,
        buf: Any = None,
        is_training: bool = False,
        seed: int | None = None,
        env_offset: int = 0,
        auto_reset: bool = True,
        timings: bool = False,
    ):
        # Every keyword is checked before the curriculum is built, so a wrong value fails at once.
        num_envs = check_positive_int(num_envs, "num_envs")
        check_render_mode(render_mode)
        seed = check_seed(seed)
        if isinstance(env_offset, (bool, np.bool_)) or not isinstance(env_offset, (int, np.integer)) or env_offset < 0:
            raise ValueError(f"env_offset={env_offset!r} must be a non-negative integer")
        self.is_training = check_flag(is_training, "is_training")
        # Without auto-reset an ended episode keeps its final observation and the next step() must be
        # preceded by reset() (what Gymnasium and PettingZoo users expect).
        self.auto_reset = check_flag(auto_reset, "auto_reset")
        # Wall-clock timings make infos differ between identical runs, so they are only reported when asked for.
        self.timings = check_flag(timings, "timings")
        self.curriculum = make_curriculum(curriculum)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.env_offset = int(env_offset)
        self._tables_cache: dict[int, tuple[MettaGridConfig, EpisodeTables]] = {}

        # The first task fixes the batch layout (shapes, actions, items) that every later task must share.
        first = self.curriculum.get_task().env_cfg()
        self._first_cfg = first
        self.layout: BatchLayout = build_layout(first.game)
        L = self.layout
        self.agents_per_env = L.num_agents
        self.num_agents = self.num_envs * L.num_agents
        self.single_observation_space = spaces.Box(0, 255, (L.num_tokens, 3), dtype=np.uint8)
        self.single_action_space = spaces.MultiDiscrete(
            [len(L.action_names), max(L.max_action_args) + 1], dtype=np.int32
        )
        self.observation_space = self.single_observation_space
        self.action_space = self.single_action_space

        self._set_buffers(buf)
        self._allocate_state()
        self._tasks: list[Task | None] = [None] * self.num_envs
        self._episode: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        self._episodes_started = np.zeros(self.num_envs, dtype=np.int64)
        self._env_rngs: list[np.random.Generator] = []
        self._seed: int | None = seed
        self._needs_reset = True

    # ----------------------------------------------------------------------------------------------------
    # Buffers and state
    def _set_buffers(self, buf: Any) -> None:
        n, T = self.num_agents, self.layout.num_tokens
        if buf is None:
            buf = SimpleNamespace(
                observations=np.full((n, T, 3), 255, dtype=np.uint8),
                rewards=np.zeros(n, dtype=np.float32),
                terminals=np.zeros(n, dtype=bool),
                truncations=np.zeros(n, dtype=bool),
                masks=np.ones(n, dtype=bool),
                actions=np.zeros((n, 2), dtype=np.int32),
            )
        expected = {
            "observations": ((n, T, 3), np.uint8),
            "rewards": ((n,), np.float32),
            "terminals": ((n,), np.bool_),
            "truncations": ((n,), np.bool_),
            "masks": ((n,), np.bool_),
            "actions": ((n, 2), np.int32),
        }
        for name, (shape, dtype) in expected.items():
            arr = buf[name] if isinstance(buf, dict) else getattr(buf, name)
            if arr.shape != shape or arr.dtype != dtype:
                raise ValueError(
                    f"buf.{name} must be {np.dtype(dtype).name}{list(shape)}, got {arr.dtype}{list(arr.shape)}"
                )
            setattr(self, name, arr)
        self.masks[:] = True

    def _allocate_state(self) -> None:
        E, N, L = self.num_envs, self.layout.num_agents, self.layout
        A = E * N
        n_items = len(L.items)
        S = L.num_stats
        self._env_i = np.zeros((E, kn.ENV_COLS), dtype=np.int64)
        # Grid-index offsets of the observation window cells, per env (they depend on the map's stride).
        self._env_cell_deltas = np.zeros((E, len(L.obs_offsets)), dtype=np.int64)
        self._stat_names = L.stat_names()
        self._env_rng = np.ones(E, dtype=np.uint64)
        self._env_swappable = np.zeros((E, 256), dtype=np.uint8)
        self._env_game_stats = np.zeros((E, 3), dtype=np.float64)
        self._cell_cap = np.full(E, _MIN_CELLS, dtype=np.int64)
        self._conv_cap = np.full(E, _MIN_CONVERTERS, dtype=np.int64)
        self._layout_pools(copy_from=None)
        self._agent_i = np.zeros((A, kn.AGENT_COLS), dtype=np.int32)
        self._agent_i[:, kn.A_OBS_N] = L.num_tokens  # the first observation clears the whole buffer
        self._agent_i[:, kn.A_OBS_WANT] = -1  # ... and is written in full
        self._env_marks = np.zeros((E, kn.MARK_CAP, 2), dtype=np.int64)
        self._agent_f = np.zeros((A, kn.AGENT_FCOLS), dtype=np.float32)
        self._agent_inv = np.zeros((A, n_items), dtype=np.int32)
        self._agent_limit = np.zeros((A, n_items), dtype=np.int32)
        self._agent_rw = np.zeros((A, 2, n_items), dtype=np.float32)
        self._agent_stats = np.zeros((A, S), dtype=np.float32)
        self._agent_stat_rw = np.zeros((A, 2, 0), dtype=np.float32)
        self._params = np.zeros(kn.PARAM_COLS, dtype=np.int64)
        self._params[kn.P_N_AGENTS] = N
        self._params[kn.P_TOKENS] = L.num_tokens
        self._params[kn.P_OH] = L.obs_height
        self._params[kn.P_OW] = L.obs_width
        self._params[kn.P_G_COMPLETION : kn.P_G_RESOURCE_RW + 1] = L.global_obs
        self._params[kn.P_TRACK_MOVE] = int(L.track_movement)
        self._order = np.zeros(N, dtype=np.int32)
        self._group_pool = np.zeros((len(L.group_names), 2), dtype=np.float64)
        self._zero_rewards = np.zeros(A, dtype=np.float32)
        self._code_counts = np.zeros(max(code_table_size(), 256), dtype=np.int64)

    def _layout_pools(self, copy_from: dict | None) -> None:
        """(Re)build the grid and converter pools from the per-env capacities, keeping loaded envs' data."""
        cell_off = np.concatenate([[0], np.cumsum(self._cell_cap)])
        conv_off = np.concatenate([[0], np.cumsum(self._conv_cap)])
        n_items = len(self.layout.items)
        # (agent, object) per cell, interleaved int16: half the memory of int32 pairs, and the observation scan
        # is bound by memory traffic over all envs' grids.
        grid = np.zeros((int(cell_off[-1]), 2), dtype=np.int16)
        grid_agent, grid_obj = grid[:, 0], grid[:, 1]
        conv_i = np.zeros((int(conv_off[-1]), kn.CONV_COLS), dtype=np.int32)
        conv_inv = np.zeros((int(conv_off[-1]), n_items), dtype=np.int32)
        conv_recipe = np.zeros((int(conv_off[-1]), 2, n_items), dtype=np.int32)
        ei = self._env_i
        if copy_from is not None:
            for e in range(self.num_envs):
                n_cells = int((ei[e, kn.E_H] + 2 * kn.GRID_PAD) * ei[e, kn.E_STRIDE])
                src, dst = int(ei[e, kn.E_SLOT_OFF]), int(cell_off[e])
                grid_agent[dst : dst + n_cells] = copy_from["grid_agent"][src : src + n_cells]
                grid_obj[dst : dst + n_cells] = copy_from["grid_obj"][src : src + n_cells]
                n_conv = int(self._env_i[e, kn.E_CONV_N])
                src, dst = int(self._env_i[e, kn.E_CONV_OFF]), int(conv_off[e])
                conv_i[dst : dst + n_conv] = copy_from["conv_i"][src : src + n_conv]
                conv_inv[dst : dst + n_conv] = copy_from["conv_inv"][src : src + n_conv]
                conv_recipe[dst : dst + n_conv] = copy_from["conv_recipe"][src : src + n_conv]
        self._grid_agent, self._grid_obj = grid_agent, grid_obj
        self._grid_pair = grid.view(np.int32).reshape(-1)
        # Occupancy bitmap of the grid (see kernel.occ_row_bits); one spare word for rows that end in the last.
        occupied = np.zeros(((len(self._grid_pair) + 63) // 64 + 1) * 64, dtype=bool)
        occupied[: len(self._grid_pair)] = self._grid_pair != 0
        self._occ = np.packbits(occupied, bitorder="little").view(np.uint64)
        self._conv_i, self._conv_inv, self._conv_recipe = conv_i, conv_inv, conv_recipe
        ei[:, kn.E_GRID_OFF] += cell_off[:-1] - ei[:, kn.E_SLOT_OFF]
        ei[:, kn.E_SLOT_OFF] = cell_off[:-1]
        ei[:, kn.E_CONV_OFF] = conv_off[:-1]

    def _ensure_capacity(self, e: int, cells: int, converters: int) -> None:
        if cells <= self._cell_cap[e] and converters <= self._conv_cap[e]:
            return
        # Every env of a batch draws from the same curriculum, so when one needs a bigger slot the others
        # soon will too: grow them all at once, with headroom, so the pools settle after a few resizes.
        self._cell_cap[:] = np.maximum(self._cell_cap, int(cells * 1.25))
        self._conv_cap[:] = np.maximum(self._conv_cap, int(converters * 1.25) + 1)
        self._layout_pools(
            copy_from={
                "grid_agent": self._grid_agent,
                "grid_obj": self._grid_obj,
                "conv_i": self._conv_i,
                "conv_inv": self._conv_inv,
                "conv_recipe": self._conv_recipe,
            }
        )

    def _tables(self, cfg: MettaGridConfig) -> EpisodeTables:
        hit = self._tables_cache.get(id(cfg))
        if hit is not None and hit[0] is cfg:
            return hit[1]
        layout = build_layout(cfg.game)
        if layout.signature() != self.layout.signature():
            raise ValueError(
                "a curriculum task changes what every env of a batch must share (num_agents, "
                "inventory_item_names, enabled actions and their resources, observation size and tokens, groups, "
                f"global_obs): task config {cfg.label or ''} differs from the first task"
            )
        tables = build_episode_tables(cfg.game, self.layout)
        if tables.stat_rewards.shape[2] and self._agent_stat_rw.shape[2] == 0:
            self._agent_stat_rw = np.zeros((self.num_agents, 2, self.layout.num_stats), dtype=np.float32)
        if len(self._tables_cache) > 4096:
            self._tables_cache.clear()
        self._tables_cache[id(cfg)] = (cfg, tables)
        return tables

    # ----------------------------------------------------------------------------------------------------
    # Episodes
    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict]]:
        """Start a new episode in every env. ``seed`` reseeds everything; ``None`` continues the current
        random streams (or, on the first reset, uses the constructor's seed or fresh entropy)."""
        seed = check_seed(seed)
        if seed is None and not self._env_rngs:
            seed = self._seed if self._seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        if seed is not None:
            self._seed = int(seed)
            self._env_rngs = [np.random.default_rng([self._seed, self.env_offset + e]) for e in range(self.num_envs)]
            self.curriculum.seed(
                int(np.random.SeedSequence([self._seed, self.env_offset, 0x5EED]).generate_state(1)[0])
            )
            self._episodes_started[:] = 0
        for e in range(self.num_envs):
            self._start_episode(e)
        self.rewards[:] = 0
        self.terminals[:] = False
        self.truncations[:] = False
        self._needs_reset = False
        return self.observations, []

    def _start_episode(self, e: int) -> None:
        t0 = time.perf_counter()
        task = self.curriculum.get_task()
        cfg = task.env_cfg()
        tables = self._tables(cfg)
        game = cfg.game
        rng = self._env_rngs[e]
        level = self._build_level(game, rng)
        grid = level.grid
        lookup = tables.code_lookup()
        pad = 2 * kn.GRID_PAD
        self._ensure_capacity(e, (grid.shape[0] + pad) * (grid.shape[1] + pad), 0)

        ei = self._env_i
        max_steps = game.max_steps
        if self.is_training and cfg.desync_episodes and self._episodes_started[e] == 0 and max_steps > 1:
            max_steps = int(rng.integers(1, max_steps + 1))
        ei[e, kn.E_MAX_STEPS] = max_steps
        ei[e, kn.E_TRUNCATES] = int(game.episode_truncates)
        ei[e, kn.E_SHARE] = int(any(g.group_reward_pct > 0 for g in game.groups.values()))
        ei[e, kn.E_HAS_STAT_RW] = int(tables.stat_rewards.shape[2] > 0)
        self._env_swappable[e] = tables.swappable
        self._env_rng[e] = np.uint64(rng.integers(1, 2**63))
        stat_rw = (
            tables.stat_rewards
            if tables.stat_rewards.shape[2]
            else np.zeros((len(self.layout.group_names), 2, self._agent_stat_rw.shape[2]), np.float32)
        )
        counts = self._code_counts
        status = kn.LOAD_CONVERTERS_FULL
        while status == kn.LOAD_CONVERTERS_FULL:
            status = kn.load_episode(
                e,
                grid,
                lookup,
                tables.conv_int,
                tables.conv_recipe,
                tables.agent_int,
                tables.agent_float,
                tables.agent_limits,
                tables.agent_rewards,
                stat_rw,
                ei,
                self._env_cell_deltas,
                self.layout.obs_offsets,
                self._env_game_stats,
                self._grid_pair,
                self._conv_i,
                self._conv_inv,
                self._conv_recipe,
                self._agent_i,
                self._agent_f,
                self._agent_inv,
                self._agent_limit,
                self._agent_rw,
                self._agent_stats,
                self._agent_stat_rw,
                self.layout.num_agents,
                self._occ,
                counts,
                min(int(self._conv_cap[e]), _MAX_CONVERTERS),
            )
            if status == kn.LOAD_CONVERTERS_FULL:  # rare: the slot grows (up to the int16 limit), then a reload
                kn.count_cell_codes(grid, counts)
                present = np.flatnonzero(counts)
                n_conv = int(counts[present[lookup[present, 0] == KIND_CONVERTER]].sum())
                if n_conv > _MAX_CONVERTERS:
                    raise ValueError(
                        f"the map of task {task.id!r} has {n_conv} converters; at most {_MAX_CONVERTERS} per env are "
                        "supported"
                    )
                self._ensure_capacity(e, int(self._cell_cap[e]), n_conv)
        if status < 0:
            raise tables.unknown_cell_error(-status - 1)
        if status > 0:
            raise ValueError(
                f"the map of task {task.id!r} has {status - self.layout.num_agents - 1} agent cells but "
                "game.num_agents="
                f"{self.layout.num_agents}; make the map builder place exactly num_agents agents"
            )
        present = np.flatnonzero(counts)
        kn.observe_env(
            e,
            ei,
            self._env_cell_deltas,
            self._grid_pair,
            self._conv_i,
            self._conv_inv,
            self._conv_recipe,
            self._agent_i,
            self._agent_inv,
            self._zero_rewards,
            self.observations,
            self.layout.obs_offsets,
            self._params,
            len(self.layout.items),
            self._env_game_stats,
            self._occ,
            self.layout.obs_rank,
            self._env_marks,
        )
        self._tasks[e] = task
        self._episodes_started[e] += 1
        self._episode[e] = {
            "task": task,
            "labels": list(level.labels) + ([cfg.label] if cfg.label else []),
            "objects": {cell_name(c): int(counts[c]) for c in present if c != 0 and lookup[c, 0] != KIND_AGENT},
            "grid_hash": f"{zlib.crc32(np.ascontiguousarray(grid), zlib.crc32(repr(grid.shape).encode())):08x}",
            "init_ms": (time.perf_counter() - t0) * 1000.0,
            "start_time": time.perf_counter(),
            "map_shape": grid.shape,
        }

    def _build_level(self, game: Any, rng: np.random.Generator) -> Level:
        """The map of a new episode: the task's map builder draws it (the adapters' ``level=`` overrides this)."""
        return game.map_builder.build(rng)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        if self._needs_reset:
            raise RuntimeError(
                "call reset(seed) before step(actions) (at the start, or after an episode ended with auto_reset=False)"
            )
        if actions is not self.actions:
            write_actions(self.actions, actions, "(num_agents, [action type, argument])")
        n_done = kn.step_envs(
            self.actions,
            self.rewards,
            self.terminals,
            self.truncations,
            self.observations,
            self._env_i,
            self._env_cell_deltas,
            self._env_rng,
            self._env_game_stats,
            self._grid_pair,
            self._grid_agent,
            self._grid_obj,
            self._conv_i,
            self._conv_inv,
            self._conv_recipe,
            self._agent_i,
            self._agent_f,
            self._agent_inv,
            self._agent_limit,
            self._agent_rw,
            self._agent_stats,
            self._agent_stat_rw,
            self.layout.action_table,
            self.layout.action_resources,
            self.layout.defense_resources,
            self.layout.stat_offsets,
            self.layout.obs_offsets,
            self._params,
            self._order,
            self._group_pool,
            self._occ,
            self.layout.obs_rank,
            self._env_marks,
        )
        infos: list[dict] = []
        if n_done:
            for e in np.flatnonzero(self._env_i[:, kn.E_DONE]):
                infos.append(self._finish_episode(int(e)))
                if self.auto_reset:
                    self._start_episode(int(e))
                else:
                    self._needs_reset = True
        return self.observations, self.rewards, self.terminals, self.truncations, infos

    def _finish_episode(self, e: int) -> dict[str, Any]:
        N = self.layout.num_agents
        rows = slice(e * N, (e + 1) * N)
        ep = self._episode[e]
        task: Task = ep["task"]
        episode_rewards = self._agent_f[rows, kn.F_EP_REWARD].astype(np.float64)
        mean_reward = float(episode_rewards.mean())
        stat_means = self._agent_stats[rows].sum(axis=0) / N
        names = self._stat_names
        agent_stats = {names[i]: float(stat_means[i]) for i in np.flatnonzero(stat_means)}
        game_stats = {f"objects.{k}": float(v) for k, v in ep["objects"].items()}
        gs = self._env_game_stats[e]
        game_stats.update(
            tokens_written=float(gs[kn.G_TOKENS_WRITTEN]),
            tokens_dropped=float(gs[kn.G_TOKENS_DROPPED]),
            tokens_free_space=float(gs[kn.G_TOKENS_FREE]),
        )
        task.complete(mean_reward)
        steps = int(self._env_i[e, kn.E_STEP])
        info: dict[str, Any] = {
            "game": game_stats,
            "agent": agent_stats,
            "episode_reward": mean_reward,
            "episode_rewards": episode_rewards.tolist(),
            "episode_length": steps,
            f"task_reward/{task.short_name()}/rewards.mean": mean_reward,
            "attributes": {
                "seed": self._seed,
                "map_w": int(ep["map_shape"][1]),
                "map_h": int(ep["map_shape"][0]),
                "initial_grid_hash": ep["grid_hash"],
                "steps": steps,
                "resets": int(self._episodes_started[e]),
                "max_steps": int(self._env_i[e, kn.E_MAX_STEPS]),
            },
        }
        if self.timings:
            info[f"task_timing/{task.short_name()}/init_time_msec"] = ep["init_ms"]
            info["attributes"]["completion_time"] = time.perf_counter() - ep["start_time"]
        for label in ep["labels"]:
            info[f"map_reward/{label}"] = mean_reward
        info.update(self.curriculum.stats())
        return info

    # ----------------------------------------------------------------------------------------------------
    # What policies, adapters, renderers and replays read
    @property
    def action_names(self) -> list[str]:
        return list(self.layout.action_names)

    @property
    def max_action_args(self) -> list[int]:
        return list(self.layout.max_action_args)

    @property
    def obs_width(self) -> int:
        return self.layout.obs_width

    @property
    def obs_height(self) -> int:
        return self.layout.obs_height

    @property
    def inventory_item_names(self) -> list[str]:
        return list(self.layout.items)

    @property
    def group_names(self) -> list[str]:
        return list(self.layout.group_names)

    @property
    def object_type_names(self) -> dict[int, str]:
        """type_id -> object name (0 is "agent")."""
        return dict(self.layout.type_names)

    @property
    def feature_normalizations(self) -> dict[int, float]:
        return self.layout.feature_normalizations()

    def get_observation_features(self) -> dict[str, dict[str, float]]:
        """``{feature name: {"id": id, "normalization": value}}`` for the agent."""
        norms = self.layout.feature_normalizations()
        return {name: {"id": fid, "normalization": norms[fid]} for name, fid in self.layout.feature_ids().items()}

    def current_task(self, env_index: int = 0) -> Task | None:
        return self._tasks[env_index]

    def current_step(self, env_index: int = 0) -> int:
        return int(self._env_i[env_index, kn.E_STEP])

    def max_steps(self, env_index: int = 0) -> int:
        return int(self._env_i[env_index, kn.E_MAX_STEPS])

    def map_size(self, env_index: int = 0) -> tuple[int, int]:
        """(height, width) of env ``env_index``'s current map."""
        return int(self._env_i[env_index, kn.E_H]), int(self._env_i[env_index, kn.E_W])

    def agent_rows(self, env_index: int = 0) -> slice:
        """The rows of observations/rewards/actions that belong to env ``env_index``."""
        N = self.layout.num_agents
        return slice(env_index * N, (env_index + 1) * N)

    def static_moves(self, env_index: int = 0) -> int:
        """How many times walls or blocks moved in env ``env_index`` this episode (swaps): a replay writer only
        needs to re-read the static objects when this changes."""
        off = int(self.layout.stat_offsets[kn.SB_SWAP_TYPE])
        return int(self._agent_stats[self.agent_rows(env_index), off + 1 : off + 256].sum())

    def _require_episode(self, what: str, env_index: int) -> None:
        if not 0 <= env_index < self.num_envs:
            raise IndexError(f"env_index={env_index} is out of range; this env has num_envs={self.num_envs}")
        if self._tasks[env_index] is None:
            raise RuntimeError(f"{what} before reset(): there is no map yet; call reset(seed) first")

    def grid_objects(self, env_index: int = 0, include_static: bool = True) -> dict[int, dict[str, Any]]:
        """Every object of one env as a dict (for replays, renderers and tests).

        Ids: agents are ``1..N`` (agent_id + 1); converters follow; static objects (walls, blocks) come last
        and are numbered by map position, so a block that moves changes id. ``include_static=False`` leaves
        them out (they are most of a terrain map and only move by swaps; see ``static_moves``).
        """
        self._require_episode("grid_objects()", env_index)
        e = env_index
        N = self.layout.num_agents
        H, W = self.map_size(e)
        goff = int(self._env_i[e, kn.E_GRID_OFF])
        stride = int(self._env_i[e, kn.E_STRIDE])
        coff = int(self._env_i[e, kn.E_CONV_OFF])
        n_conv = int(self._env_i[e, kn.E_CONV_N])
        items = self.layout.items
        names = self.layout.type_names
        objects: dict[int, dict[str, Any]] = {}
        for k in range(N):
            a = e * N + k
            ai, af = self._agent_i[a], self._agent_f[a]
            inv = {i: int(v) for i, v in enumerate(self._agent_inv[a]) if v}
            objects[k + 1] = {
                "id": k + 1,
                "type_id": 0,
                "type_name": "agent",
                "r": int(ai[kn.A_R]),
                "c": int(ai[kn.A_C]),
                "layer": 0,
                "orientation": int(ai[kn.A_ORIENT]),
                "inventory": inv,
                "inventory_max": int(self._agent_limit[a].max(initial=0)),
                "color": int(ai[kn.A_COLOR]),
                "agent_id": k,
                "group_id": int(ai[kn.A_GROUP_ID]),
                "group_name": self.layout.group_names[int(ai[kn.A_GROUP])],
                "frozen": int(ai[kn.A_FROZEN]),
                "freeze_duration": int(ai[kn.A_FREEZE_DUR]),
                "glyph": int(ai[kn.A_GLYPH]),
                "action_id": int(ai[kn.A_LAST_ACT]),
                "action_param": int(ai[kn.A_LAST_ARG]),
                "action_success": bool(ai[kn.A_SUCCESS]),
                # Right after an auto-reset the reward buffer still holds the last episode's final rewards.
                "current_reward": float(self.rewards[a]) if self.current_step(e) > 0 else 0.0,
                "total_reward": float(af[kn.F_EP_REWARD]),
            }
        step = self.current_step(e)
        for k in range(n_conv):
            ci = coff + k
            c = self._conv_i[ci]
            state = int(c[kn.C_STATE])
            remaining = max(int(c[kn.C_END]) - step, 0)
            oid = N + 1 + k
            objects[oid] = {
                "id": oid,
                "type_id": int(c[kn.C_TYPE]),
                "type_name": names.get(int(c[kn.C_TYPE]), "converter"),
                "r": int(c[kn.C_R]),
                "c": int(c[kn.C_C]),
                "layer": 1,
                "orientation": 0,
                "inventory": {i: int(v) for i, v in enumerate(self._conv_inv[ci]) if v},
                "inventory_max": 255,
                "color": int(c[kn.C_COLOR]),
                "recipe_input": {items[i]: int(v) for i, v in enumerate(self._conv_recipe[ci, 0]) if v},
                "recipe_output": {items[i]: int(v) for i, v in enumerate(self._conv_recipe[ci, 1]) if v},
                "recipe_max": int(c[kn.C_MAXOUT]),
                "converting": state == kn.CONV_CONVERTING,
                "conversion_remaining": remaining if state == kn.CONV_CONVERTING else 0,
                "conversion_ticks": int(c[kn.C_TICKS]),
                "cooling_down": state == kn.CONV_COOLING,
                "cooldown_remaining": remaining if state == kn.CONV_COOLING else 0,
                "cooldown": int(c[kn.C_COOLDOWN]),
            }
        if not include_static:
            return objects
        statics = self._grid_obj[goff : goff + H * stride].reshape(H, stride)[:, :W]
        next_id = N + 1 + n_conv
        for r, c in zip(*np.nonzero(statics < 0)):
            type_id = int(-statics[r, c]) & 255  # swappable statics are stored offset by 256
            objects[next_id] = {
                "id": next_id,
                "type_id": type_id,
                "type_name": names.get(type_id, f"type_{type_id}"),
                "r": int(r),
                "c": int(c),
                "layer": 1,
                "orientation": 0,
                "inventory": {},
                "inventory_max": 0,
                "color": 0,
                "swappable": bool(self._env_swappable[e, type_id]),
            }
            next_id += 1
        return objects

    def render(self, env_index: int = 0) -> str:
        """A text picture of one env: walls '#', blocks 's', converters by initial, agents by orientation."""
        self._require_episode("render()", env_index)
        H, W = self.map_size(env_index)
        rows = [["." for _ in range(W)] for _ in range(H)]
        arrows = {0: "^", 1: "v", 2: "<", 3: ">"}
        for obj in self.grid_objects(env_index).values():
            name = obj["type_name"]
            if name == "agent":
                ch = arrows[obj["orientation"]]
            elif name == "wall":
                ch = "#"
            elif name == "block":
                ch = "s"
            elif name == "altar":
                ch = "_"
            else:
                ch = name[0]
            rows[obj["r"]][obj["c"]] = ch
        text = "\n".join("".join(r) for r in rows)
        if self.render_mode == "human":
            print(text)
        return text

    def close(self) -> None:
        """Nothing to release: all state is NumPy arrays."""

    @property
    def orientation_names(self) -> list[str]:
        return list(ORIENTATION_NAMES)
