"""Map builders for MettaGrid. ``MapBuilderConfig`` is the tagged union used in env configs."""

from typing import Annotated, Any

from pydantic import BaseModel, Field

from metta.mettagrid.map.ascii import AsciiMap
from metta.mettagrid.map.base import MapBuilder
from metta.mettagrid.map.level import Level, cell_code, cell_name
from metta.mettagrid.map.maze import MazeMap
from metta.mettagrid.map.multi_room import MultiRoom
from metta.mettagrid.map.random_map import RandomMap
from metta.mettagrid.map.terrain import (
    NAVIGATION_TERRAIN_DIRS,
    TERRAIN_DIRS,
    CylinderWorld,
    TerrainMap,
    VariedTerrain,
)

MapBuilderConfig = Annotated[
    RandomMap | AsciiMap | MazeMap | MultiRoom | VariedTerrain | CylinderWorld | TerrainMap,
    Field(discriminator="type"),
]
# MultiRoom.room refers to the union, which includes MultiRoom itself.
MultiRoom.model_rebuild(_types_namespace={"MapBuilderConfig": MapBuilderConfig})

# Upstream's Hydra ``_target_`` class names (under ``...mettagrid.room.``) and the keys that replace them.
_LEGACY_TARGETS: dict[str, dict[str, str]] = {
    "MultiRoom": {"type": "multi_room"},
    "TerrainFromNumpy": {"type": "terrain"},
    "Random": {"type": "random"},
    "MazeKruskal": {"type": "maze", "algorithm": "kruskal"},
    "MazePrim": {"type": "maze", "algorithm": "prim"},
    "Ascii": {"type": "ascii"},
    "VariedTerrain": {"type": "varied_terrain"},
    "CylinderWorld": {"type": "cylinder_world"},
}
# Hydra's own instantiate options carry no map settings.
_HYDRA_KEYS = ("_recursive_", "_convert_", "_partial_")


def upgrade_legacy_builder(data: Any) -> Any:
    """Turn an upstream builder dict with a Hydra ``_target_`` into one with our ``type`` tag.

    Anything else (a builder object, a dict that already has ``type``) passes through unchanged. Nested
    ``room`` builders (MultiRoom) are upgraded too.
    """
    if isinstance(data, BaseModel) or not hasattr(data, "keys"):
        return data
    data = dict(data)  # also accepts an OmegaConf DictConfig's items; never mutate the caller's dict
    target = data.pop("_target_", None)
    if target is not None:
        module, _, name = str(target).rpartition(".")
        if name not in _LEGACY_TARGETS or "room" not in module.split("."):
            known = ", ".join(f"...room.*.{n}" for n in _LEGACY_TARGETS)
            raise ValueError(
                f"map_builder _target_={target!r} has no equivalent here; use one of {known}, or give "
                f"`type:` one of random, ascii, maze, multi_room, varied_terrain, cylinder_world, terrain"
            )
        if "type" in data:
            raise ValueError(f"map_builder has both _target_={target!r} and type={data['type']!r}; keep one")
        for key in _HYDRA_KEYS:
            data.pop(key, None)
        if data.get("seed", None) is not None:
            raise ValueError(
                f"map_builder {name}: seed={data['seed']!r} is not supported; maps are seeded by the env's rng "
                f"(remove the seed key)"
            )
        data.pop("seed", None)
        data.update(_LEGACY_TARGETS[name])
    if "room" in data:
        data["room"] = upgrade_legacy_builder(data["room"])
    return data


__all__ = [
    "NAVIGATION_TERRAIN_DIRS",
    "TERRAIN_DIRS",
    "AsciiMap",
    "CylinderWorld",
    "Level",
    "MapBuilder",
    "MapBuilderConfig",
    "MazeMap",
    "MultiRoom",
    "RandomMap",
    "TerrainMap",
    "VariedTerrain",
    "cell_code",
    "cell_name",
    "upgrade_legacy_builder",
]
