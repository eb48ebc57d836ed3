"""The default navigation env (upstream's ``_get_default_env_config``) and size overrides for env configs.

    cfg = default_env_config(num_agents=4, width=32, height=32)
    cfg = apply_size_overrides(cfg, num_agents=8, width=None, height=None)

``metta.interface.Environment`` builds on these when it is given no curriculum.
"""

from __future__ import annotations

from metta.mettagrid.config import MettaGridConfig

DEFAULT_NUM_AGENTS = 4
DEFAULT_WIDTH = 32
DEFAULT_HEIGHT = 32


def default_env_config(
    num_agents: int = DEFAULT_NUM_AGENTS, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT
) -> MettaGridConfig:
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
                    "ore_red",
                    "ore_blue",
                    "ore_green",
                    "battery_red",
                    "battery_blue",
                    "battery_green",
                    "heart",
                    "armor",
                    "laser",
                    "blueprint",
                ],
                "groups": {"agent": {"id": 0, "sprite": 0}},
                "agent": {
                    "default_resource_limit": 50,
                    "resource_limits": {"heart": 255},
                    "freeze_duration": 10,
                    "rewards": {
                        "inventory": {
                            "ore_red": 0.01,
                            "ore_red_max": 10,
                            "battery_red": 0.02,
                            "battery_red_max": 10,
                            "heart": 1,
                        }
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
                        "type_id": 2,
                        "output_resources": {"ore_red": 1},
                        "max_output": -1,
                        "conversion_ticks": 1,
                        "cooldown": 0,
                    },
                    "generator_red": {
                        "type_id": 5,
                        "input_resources": {"ore_red": 1},
                        "output_resources": {"battery_red": 1},
                        "max_output": -1,
                        "conversion_ticks": 1,
                        "cooldown": 0,
                    },
                    "altar": {
                        "type_id": 8,
                        "input_resources": {"battery_red": 3},
                        "output_resources": {"heart": 1},
                        "max_output": 5,
                        "conversion_ticks": 1,
                        "cooldown": 1000,
                        "initial_resource_count": 1,
                        "color": 1,
                    },
                },
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


def apply_size_overrides(
    cfg: MettaGridConfig, num_agents: int | None, width: int | None, height: int | None
) -> MettaGridConfig:
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
