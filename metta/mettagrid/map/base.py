"""Base class of map builder configs.

Every builder is a pydantic model with a ``type`` tag (used to pick the class from YAML or a dict) and a
``build(rng)`` method. Builders are deterministic: the same config and the same ``numpy.random.Generator``
state give the same map.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from metta.mettagrid.map.level import Level


# How many cells of one kind a builder places (objects per name, agents per group): a negative count is an
# error, not "none".
Count = Annotated[int, Field(ge=0)]


class MapBuilder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def build(self, rng: np.random.Generator) -> Level:  # pragma: no cover - every subclass overrides
        raise NotImplementedError(type(self).__name__)


def add_border(grid: np.ndarray, width: int, code: int) -> np.ndarray:
    """Surround ``grid`` with ``width`` cells of ``code``."""
    if width <= 0:
        return grid
    return np.pad(grid, width, mode="constant", constant_values=code)
