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


def agent_total(agents: int | dict[str, int]) -> int:
    """How many agents an ``agents`` spec asks for (a count, or ``{group: count}``)."""
    return int(agents) if isinstance(agents, int) else sum(int(n) for n in agents.values())


def describe_counts(objects: dict[str, int], agents: int | dict[str, int]) -> str:
    """``objects={'altar': 5000} (5000) + agents=4`` for error messages."""
    n_objects = sum(int(n) for n in objects.values())
    n_agents = agent_total(agents)
    agents_text = f"agents={agents!r}" + (f" ({n_agents})" if isinstance(agents, dict) and len(agents) > 1 else "")
    objects_text = f"objects={objects!r}" + (f" ({n_objects})" if len(objects) > 1 else "")
    return f"{objects_text} + {agents_text} = {n_objects + n_agents} cells"


def check_counts_fit(
    what: str, objects: dict[str, int], agents: int | dict[str, int], free: int, where: str, fix: str
) -> None:
    """Raise a ``ValueError`` naming the fields when ``objects`` plus ``agents`` need more than ``free`` cells.

    Builders call it before they allocate anything whose size follows a count (a count of 10**9 must fail at
    once, not after building a list of 10**9 cell codes)."""
    need = sum(int(n) for n in objects.values()) + agent_total(agents)
    if need > free:
        counts = describe_counts(objects, agents)
        raise ValueError(f"{what}: {counts} do not fit in the {free} free cells of {where}; {fix}")


class MapBuilder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def build(self, rng: np.random.Generator) -> Level:  # pragma: no cover - every subclass overrides
        raise NotImplementedError(type(self).__name__)


def add_border(grid: np.ndarray, width: int, code: int) -> np.ndarray:
    """Surround ``grid`` with ``width`` cells of ``code``."""
    if width <= 0:
        return grid
    return np.pad(grid, width, mode="constant", constant_values=code)
