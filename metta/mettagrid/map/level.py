"""Maps as small integer grids.

A map is a ``uint8[height, width]`` array of *cell codes* plus labels. Codes index one process-wide table of
cell names ("empty", "wall", "altar", "agent.agent", ...). Builders and the environment work on codes because
comparing strings cell by cell would make map generation the bottleneck of episode resets; names appear only
at the edges (ASCII maps, configs, replays, ``Level.to_strings()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The standard names come first so their codes never change; custom object or group names are appended on
# first use by ``cell_code``. Codes are process-local: never store them, store names.
_STANDARD_NAMES = [
    "empty",
    "wall",
    "block",
    "mine_red",
    "mine_blue",
    "mine_green",
    "generator_red",
    "generator_blue",
    "generator_green",
    "altar",
    "armory",
    "lasery",
    "lab",
    "factory",
    "temple",
    "converter",
    "agent.agent",
    "agent.team_1",
    "agent.team_2",
    "agent.team_3",
    "agent.team_4",
    "agent.prey",
    "agent.predator",
]
_names: list[str] = list(_STANDARD_NAMES)
_codes: dict[str, int] = {name: i for i, name in enumerate(_names)}

EMPTY = 0
WALL = 1
BLOCK = 2

# Other spellings of the empty cell that upstream maps use.
_ALIASES = {".": "empty", " ": "empty", "": "empty"}


def cell_code(name: str) -> int:
    """The code of a cell name, registering it if it is new."""
    name = _ALIASES.get(name, name)
    code = _codes.get(name)
    if code is None:
        if len(_names) >= 255:
            raise ValueError(f"too many distinct cell names (max 255); cannot add {name!r}")
        code = len(_names)
        _names.append(name)
        _codes[name] = code
    return code


def cell_name(code: int) -> str:
    return _names[int(code)]


def is_agent_code(code: int) -> bool:
    return _names[int(code)].startswith("agent.")


def agent_codes() -> np.ndarray:
    """Codes of every registered ``agent.<group>`` name."""
    return np.array([i for i, n in enumerate(_names) if n.startswith("agent.")], dtype=np.uint8)


def code_table_size() -> int:
    return len(_names)


@dataclass
class Level:
    """A built map: ``grid`` is ``uint8[height, width]`` of cell codes; ``labels`` describe it (for stats)."""

    grid: np.ndarray
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.grid.dtype != np.uint8 or self.grid.ndim != 2:
            raise TypeError(
                f"Level.grid must be a 2-D uint8 array of cell codes, got {self.grid.dtype} {self.grid.shape}"
            )

    @property
    def height(self) -> int:
        return int(self.grid.shape[0])

    @property
    def width(self) -> int:
        return int(self.grid.shape[1])

    def count(self, name: str) -> int:
        return int(np.count_nonzero(self.grid == cell_code(name)))

    def num_agents(self) -> int:
        return int(np.isin(self.grid, agent_codes()).sum())

    def to_strings(self) -> np.ndarray:
        """The map as an array of cell names (the upstream representation)."""
        table = np.array(_names, dtype=object)
        return table[self.grid]

    @staticmethod
    def from_strings(cells, labels: list[str] | None = None) -> Level:
        """Build a level from a 2-D array or nested list of cell names."""
        arr = np.asarray(cells, dtype=object)
        if arr.ndim != 2:
            raise ValueError(f"a map must be 2-D, got shape {arr.shape}")
        grid = np.zeros(arr.shape, dtype=np.uint8)
        for name in set(arr.ravel().tolist()):
            grid[arr == name] = cell_code(str(name))
        return Level(grid, list(labels or []))
