"""Several rooms, each built by a nested builder, tiled into one map with walls around and between them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from metta.mettagrid.map.base import MapBuilder
from metta.mettagrid.map.level import WALL, Level, cell_code

if TYPE_CHECKING:  # resolved by ``MultiRoom.model_rebuild`` in ``metta.mettagrid.map``
    from metta.mettagrid.map import MapBuilderConfig


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, columns) of the most square grid with at least ``n`` cells, wider than tall when uneven."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return rows, cols


class MultiRoom(MapBuilder):
    """``num_rooms`` rooms built one after another from the same rng, laid out in a near-square grid.

    Every grid cell is as large as the largest room; a smaller room sits in the cell's top-left corner and
    the rest of the cell is wall. ``border_width`` cells of ``border_object`` surround every cell.
    """

    type: Literal["multi_room"] = "multi_room"
    room: MapBuilderConfig
    num_rooms: int = Field(default=1, ge=1)
    border_width: int = Field(default=1, ge=0)
    layout: Literal["grid"] = "grid"
    border_object: str = "wall"

    @field_validator("room", mode="before")
    @classmethod
    def _upgrade_room(cls, v: Any) -> Any:
        from metta.mettagrid.map import upgrade_legacy_builder  # the package imports this module

        return upgrade_legacy_builder(v)

    def build(self, rng: np.random.Generator) -> Level:
        levels = [self.room.build(rng) for _ in range(self.num_rooms)]
        cell_h = max(level.height for level in levels)
        cell_w = max(level.width for level in levels)
        rows, cols = grid_shape(self.num_rooms)
        b = self.border_width
        shape = (rows * cell_h + (rows + 1) * b, cols * cell_w + (cols + 1) * b)
        grid = np.full(shape, cell_code(self.border_object), dtype=np.uint8)
        labels: dict[str, None] = {}
        for i, level in enumerate(levels):
            r0 = b + (i // cols) * (cell_h + b)
            c0 = b + (i % cols) * (cell_w + b)
            # Pad smaller rooms with wall so no open cell touches a neighbour's border unexpectedly.
            grid[r0 : r0 + cell_h, c0 : c0 + cell_w] = WALL
            grid[r0 : r0 + level.height, c0 : c0 + level.width] = level.grid
            labels.update(dict.fromkeys(level.labels))
        # Grid cells without a room (rows * cols > num_rooms) stay filled with the border object.
        return Level(grid, list(labels))
