"""Random scatter: objects and agents at uniformly random empty cells of an open room."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from metta.mettagrid.map.base import Count, MapBuilder, add_border, agent_total, check_counts_fit
from metta.mettagrid.map.level import EMPTY, Level, cell_code


def agent_cells(agents: int | dict[str, int]) -> list[int]:
    """Cell codes for an ``agents`` spec: a count of ``agent.agent`` or ``{group: count}``."""
    if isinstance(agents, int):
        return [cell_code("agent.agent")] * agents
    return [cell_code(f"agent.{group}") for group, n in agents.items() for _ in range(n)]


def scatter(grid: np.ndarray, codes: list[int], rng: np.random.Generator, what: str = "map") -> None:
    """Put each code in ``codes`` on a distinct random empty cell of ``grid`` (in place)."""
    empty = np.flatnonzero(grid.ravel() == EMPTY)
    if len(codes) > len(empty):
        raise ValueError(f"{what}: {len(codes)} objects and agents do not fit in {len(empty)} empty cells")
    picks = rng.choice(empty, size=len(codes), replace=False)
    grid.ravel()[picks] = np.asarray(codes, dtype=np.uint8)


class RandomMap(MapBuilder):
    """An open ``width x height`` room with randomly placed objects and agents."""

    type: Literal["random"] = "random"
    width: int = Field(default=25, ge=1)
    height: int = Field(default=25, ge=1)
    objects: dict[str, Count] = Field(default_factory=dict)
    agents: Count | dict[str, Count] = 0
    border_width: int = Field(default=0, ge=0)
    border_object: str = "wall"

    @model_validator(mode="after")
    def _counts_fit(self) -> RandomMap:
        self._check_fit()
        return self

    def _check_fit(self) -> None:
        free = self.width * self.height
        need = sum(self.objects.values()) + agent_total(self.agents)
        side = math.isqrt(need - 1) + 1 if need else 1
        check_counts_fit(
            "random map",
            self.objects,
            self.agents,
            free,
            f"the {self.width}x{self.height} room (width={self.width}, height={self.height}; the border is extra)",
            f"ask for at most {free} objects and agents in total, or make the room larger (width and height of "
            f"at least {side} hold {need})",
        )

    def build(self, rng: np.random.Generator) -> Level:
        self._check_fit()  # again: a model built with model_construct() or changed after validation
        grid = np.zeros((self.height, self.width), dtype=np.uint8)
        codes = [cell_code(name) for name, n in self.objects.items() for _ in range(n)]
        scatter(grid, codes + agent_cells(self.agents), rng, what="random map")
        return Level(add_border(grid, self.border_width, cell_code(self.border_object)), ["random"])
