"""``Environment(...)``: the factory that turns a curriculum path, an env config or nothing into a vecenv.

Like upstream, ``Environment(...)`` returns the vectorized env itself (``metta.rl.vecenv.VecEnv``), already
``async_reset(seed)``, so the caller goes straight to ``recv()``/``send()``.

How ``num_envs``, ``batch_size`` and ``async_factor`` combine (all counted in envs; a value of 1 for
``num_envs`` or ``batch_size`` means "not set", as those are the defaults):

- ``num_envs`` not set: ``num_envs = batch_size * async_factor``.
- ``batch_size`` not set: ``batch_size = num_envs / async_factor`` (so with ``async_factor=1`` every
  ``recv()`` returns all envs: synchronous).
- ``async_factor > 1``: ``num_envs`` must equal ``batch_size * async_factor``, and ``num_workers`` must be a
  multiple of ``async_factor`` (each of the ``async_factor`` batches is stepped by its own workers while the
  learner works on another one).

Examples: ``Environment(batch_size=4, async_factor=2, num_workers=2, vectorization="multiprocessing")`` runs
8 envs in two workers and returns 4 envs per ``recv``; ``Environment(num_envs=8)`` returns all 8 every time.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any, Mapping

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.curriculum.core import Curriculum, SingleTaskCurriculum
from metta.rl.experience import calculate_batch_sizes
from metta.rl.vecenv import DEFAULT_WORKER_TIMEOUT_S, VecEnv, make_vecenv

DEFAULT_NUM_AGENTS = 4
DEFAULT_WIDTH = 32
DEFAULT_HEIGHT = 32


def default_env_config(num_agents: int = DEFAULT_NUM_AGENTS, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> MettaGridConfig:
    """The default navigation env (upstream's ``_get_default_env_config``), sized by its arguments.

    ``num_agents`` rooms, one agent each, tiled into one map; every room is a ``width x height`` map of the
    ``terrain_maps_nohearts`` terrain set with ``max(1, width * height // 100)`` altars. Upstream used that
    set's fixed-size maps and ignored ``width``/``height``; here the set is generated at the requested size
    (once per process), so the sizes are honoured and an episode reset only places agents and altars.
    All eight classic actions are on, and the classic objects (red mine, red generator, altar, wall,
    swappable block) are configured.
    """
    for name, value, low in (("num_agents", num_agents, 1), ("width", width, 5), ("height", height, 5)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is not allowed for the default env; use an integer >= {low}")
    altars = max(1, width * height // 100)
    return MettaGridConfig.model_validate(
        {
            "sampling": 1,
            "label": "default_navigation",
            "game": {
                "num_agents": num_agents,
                "max_steps": 1000,
                "obs_width": 11,
                "obs_height": 11,
                "num_observation_tokens": 200,
                "inventory_item_names": [
                    "ore_red", "ore_blue", "ore_green", "battery_red", "battery_blue", "battery_green",
                    "heart", "armor", "laser", "blueprint",
                ],  # fmt: skip
                "groups": {"agent": {"id": 0, "sprite": 0}},
                "agent": {
                    "default_resource_limit": 50,
                    "resource_limits": {"heart": 255},
                    "freeze_duration": 10,
                    "rewards": {
                        "inventory": {"ore_red": 0.01, "ore_red_max": 10, "battery_red": 0.02, "battery_red_max": 10, "heart": 1}
                    },
                },
                "actions": {
                    "noop": {"enabled": True},
                    "move": {"enabled": True},
                    "rotate": {"enabled": True},
                    "put_items": {"enabled": True},
                    "get_items": {"enabled": True},
                    "attack": {"enabled": True},
                    "swap": {"enabled": True},
                    "change_color": {"enabled": True},
                },
                "objects": {
                    "wall": {"type_id": 1},
                    "block": {"type_id": 14, "swappable": True},
                    "mine_red": {
                        "type_id": 2, "output_resources": {"ore_red": 1}, "max_output": -1,
                        "conversion_ticks": 1, "cooldown": 0,
                    },
                    "generator_red": {
                        "type_id": 5, "input_resources": {"ore_red": 1}, "output_resources": {"battery_red": 1},
                        "max_output": -1, "conversion_ticks": 1, "cooldown": 0,
                    },
                    "altar": {
                        "type_id": 8, "input_resources": {"battery_red": 3}, "output_resources": {"heart": 1},
                        "max_output": 5, "conversion_ticks": 1, "cooldown": 1000, "initial_resource_count": 1,
                        "color": 1,
                    },
                },  # fmt: skip
                "map_builder": {
                    "type": "multi_room",
                    "num_rooms": num_agents,
                    "border_width": 6,
                    "room": {
                        "type": "terrain",
                        "dir": "terrain_maps_nohearts",
                        "width": width,
                        "height": height,
                        "agents": 1,
                        "objects": {"altar": altars},
                        "border_width": 3,
                    },
                },
            },
        }
    )


def apply_size_overrides(cfg: MettaGridConfig, num_agents: int | None, width: int | None, height: int | None) -> MettaGridConfig:
    """``cfg`` with ``game.num_agents`` and the map builder's agents, width and height replaced.

    For a ``multi_room`` builder the sizes go to its ``room`` and ``num_agents`` sets the number of rooms
    (``num_agents / room.agents``), as upstream applied them.
    """
    if num_agents is None and width is None and height is None:
        return cfg
    data = cfg.model_dump()
    builder = data["game"]["map_builder"]
    kind = builder.get("type")
    room = builder["room"] if kind == "multi_room" else builder
    if num_agents is not None:
        data["game"]["num_agents"] = num_agents
        per_room = room.get("agents")
        if kind == "multi_room" and isinstance(per_room, int) and per_room > 0:
            if num_agents % per_room:
                raise ValueError(
                    f"num_agents={num_agents} is not a multiple of the agents per room ({per_room}) of the "
                    f"env_config's multi_room map; use a multiple of {per_room}"
                )
            builder["num_rooms"] = num_agents // per_room
        elif kind != "multi_room" and isinstance(per_room, int):
            room["agents"] = num_agents
        else:
            raise ValueError(
                f"num_agents={num_agents}: the env_config's map_builder (type {kind!r}) does not place a plain count "
                "of agents, so it cannot be resized; set game.num_agents and the map in env_config instead"
            )
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if name not in room:
            where = "map_builder.room" if kind == "multi_room" else "map_builder"
            raise ValueError(
                f"{name}={value}: the env_config's {where} (type {room.get('type')!r}) has no {name}; "
                f"leave {name} unset or use a map builder with a size (random, varied_terrain, maze, ...)"
            )
        room[name] = value
    return MettaGridConfig.model_validate(data)


def _resolve_batching(num_envs: int, batch_size: int, async_factor: int, num_workers: int) -> tuple[int, int]:
    """``(num_envs, batch_size)`` by the module docstring's rule (1 means "not set")."""
    for name, value in (("num_envs", num_envs), ("batch_size", batch_size), ("async_factor", async_factor), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if num_envs == 1 and (batch_size > 1 or async_factor > 1):
        num_envs = batch_size * async_factor
    elif batch_size == 1 and num_envs > 1:
        if num_envs % async_factor:
            raise ValueError(
                f"num_envs={num_envs} is not divisible by async_factor={async_factor}; the envs are split into "
                f"async_factor batches: use num_envs={async_factor * (num_envs // async_factor + 1)}"
            )
        batch_size = num_envs // async_factor
    if async_factor > 1:
        if num_envs != batch_size * async_factor:
            raise ValueError(
                f"num_envs={num_envs} must equal batch_size * async_factor = {batch_size} * {async_factor}; "
                f"leave num_envs unset (it is then {batch_size * async_factor}) or set batch_size={num_envs // async_factor}"
            )
        if num_workers % async_factor:
            raise ValueError(
                f"num_workers={num_workers} is not a multiple of async_factor={async_factor}; each of the "
                f"{async_factor} batches needs its own workers: use num_workers={async_factor * max(1, num_workers // async_factor)}"
            )
    return num_envs, batch_size


def agents_per_env(curriculum: Curriculum) -> int:
    """The agents of one env of ``curriculum`` (read from a copy's first task, so the curriculum's own draws
    are not advanced)."""
    return int(copy.deepcopy(curriculum).get_task().env_cfg().game.num_agents)


def envs_for_target_batch(curriculum: Curriculum, target_agents: int, num_workers: int, async_factor: int) -> tuple[int, int]:
    """``(num_envs, batch_size)`` in envs for about ``target_agents`` agents per forward pass (seed 003's
    arithmetic, ``calculate_batch_sizes``): e.g. 4096 agents of 3-agent envs over 16 workers with async_factor 2
    is 1365 envs, rounded down to the workers, 1360 per batch, 2720 in all."""
    for name, value in (("forward_pass_minibatch_target_size", target_agents), ("num_workers", num_workers), ("async_factor", async_factor)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    _, batch_envs, num_envs = calculate_batch_sizes(target_agents, agents_per_env(curriculum), num_workers, async_factor)
    return num_envs, batch_envs


def _build_curriculum(
    curriculum_path: str | None, env_config: Any, num_agents: int | None, width: int | None, height: int | None
) -> Curriculum:
    for name, value in (("num_agents", num_agents), ("width", width), ("height", height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} is not allowed; use a positive integer, or None for the env's own {name}")
    if curriculum_path is None:
        if env_config is None:
            cfg = default_env_config(
                DEFAULT_NUM_AGENTS if num_agents is None else num_agents,
                DEFAULT_WIDTH if width is None else width,
                DEFAULT_HEIGHT if height is None else height,
            )
            return SingleTaskCurriculum("default_navigation", cfg)
        cfg = apply_size_overrides(MettaGridConfig.from_any(env_config), num_agents, width, height)
        return SingleTaskCurriculum(cfg.label or "custom_env", cfg)

    from metta.mettagrid.curriculum.loader import curriculum_from_config_path

    # With a curriculum path, env_config is a mapping of overrides for every task's env (dotted or nested keys).
    if env_config is not None and not isinstance(env_config, Mapping):
        raise ValueError(
            f"env_config of type {type(env_config).__name__} cannot be combined with curriculum_path={curriculum_path!r}; "
            "with a curriculum path, env_config must be a dict of overrides such as {'game.max_steps': 200}"
        )
    if width is not None or height is not None:
        raise ValueError(
            f"width/height cannot be applied to curriculum_path={curriculum_path!r} (its tasks build their own maps); "
            "set the size in the curriculum's YAML or pass env_config={'game.map_builder.<field>': value}"
        )
    overrides = dict(env_config or {})
    if num_agents is not None:
        overrides["game.num_agents"] = num_agents
    return curriculum_from_config_path(curriculum_path, overrides or None)


def Environment(  # noqa: N802 - upstream's name; a factory that returns the vecenv, as upstream's __new__ did
    curriculum_path: str | None = None,
    env_config: MettaGridConfig | Mapping[str, Any] | None = None,
    device: Any = "cuda",
    seed: int | None = None,
    num_envs: int = 1,
    num_workers: int = 1,
    batch_size: int = 1,
    async_factor: int = 1,
    zero_copy: bool = True,
    is_training: bool = True,
    vectorization: str = "serial",
    num_agents: int | None = None,
    width: int | None = None,
    height: int | None = None,
    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
    forward_pass_minibatch_target_size: int | None = None,
) -> VecEnv:
    """A vecenv over ``curriculum_path`` (a packaged path or YAML file), ``env_config``, or the default env.

    ``forward_pass_minibatch_target_size`` (with ``num_envs`` and ``batch_size`` not set) sizes the vecenv for
    that many agents per forward pass, as upstream's trainer did (``envs_for_target_batch``).

    ``device`` is accepted for compatibility; envs run on the CPU and the policy moves tensors itself.
    ``seed`` (default: random) is used for ``async_reset``. See the module docstring for batching.
    ``worker_timeout_s``: with multiprocessing, how long to wait for a worker before raising ``WorkerError``
    (see ``metta.rl.vecenv.make_vecenv``).
    """
    del device
    curriculum = _build_curriculum(curriculum_path, env_config, num_agents, width, height)
    if forward_pass_minibatch_target_size is not None and num_envs == 1 and batch_size == 1:
        num_envs, batch_size = envs_for_target_batch(curriculum, forward_pass_minibatch_target_size, num_workers, async_factor)
    num_envs, batch_size = _resolve_batching(num_envs, batch_size, async_factor, num_workers)
    vecenv = make_vecenv(
        curriculum,
        vectorization=vectorization,
        num_envs=num_envs,
        batch_size=batch_size,
        num_workers=num_workers,
        zero_copy=zero_copy,
        is_training=is_training,
        worker_timeout_s=worker_timeout_s,
    )
    try:
        vecenv.async_reset(secrets.randbelow(10**6) if seed is None else seed)
    except BaseException:
        vecenv.close()
        raise
    return vecenv
