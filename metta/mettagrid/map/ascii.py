"""ASCII maps: one character per cell, inline or from a ``.map`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from metta.mettagrid.map.base import MapBuilder, add_border
from metta.mettagrid.map.level import Level, cell_code

# Characters of upstream's char encoder. Several characters may name the same object.
CHAR_TO_NAME = {
    "@": "agent.agent",
    "A": "agent.agent",
    "1": "agent.team_1",
    "2": "agent.team_2",
    "3": "agent.team_3",
    "4": "agent.team_4",
    "p": "agent.prey",
    "P": "agent.predator",
    "#": "wall",
    "W": "wall",
    ".": "empty",
    " ": "empty",
    "s": "block",
    "m": "mine_red",
    "r": "mine_red",
    "b": "mine_blue",
    "g": "mine_green",
    "n": "generator_red",
    "R": "generator_red",
    "B": "generator_blue",
    "G": "generator_green",
    "_": "altar",
    "a": "altar",
    "o": "armory",
    "S": "lasery",
    "L": "lab",
    "F": "factory",
    "T": "temple",
    "c": "converter",
}
# The preferred character for each name when writing a map back out.
NAME_TO_CHAR = {}
for _char, _name in CHAR_TO_NAME.items():
    NAME_TO_CHAR.setdefault(_name, _char)
NAME_TO_CHAR["empty"] = "."


def parse_ascii(text: str, source: str = "map") -> np.ndarray:
    """Parse ASCII map text into a grid of cell codes. Lines are right-padded with empty cells."""
    lines = [line.rstrip("\n") for line in text.strip("\n").splitlines()]
    if not lines:
        raise ValueError(f"{source}: the map is empty")
    width = max(len(line) for line in lines)
    grid = np.zeros((len(lines), width), dtype=np.uint8)
    for r, line in enumerate(lines):
        for c, ch in enumerate(line):
            name = CHAR_TO_NAME.get(ch)
            if name is None:
                raise ValueError(
                    f"{source}: unknown map character {ch!r} at row {r}, column {c}; "
                    f"known characters are {''.join(sorted(CHAR_TO_NAME))!r}"
                )
            grid[r, c] = cell_code(name)
    return grid


def to_ascii(level: Level) -> str:
    """Render a level as ASCII text (the inverse of ``parse_ascii`` for known names)."""
    names = level.to_strings()
    return "\n".join("".join(NAME_TO_CHAR.get(n, "?") for n in row) for row in names)


class AsciiMap(MapBuilder):
    """A fixed map given as text (``map_data``) or as a path to a ``.map`` file (``uri``).

    A relative ``uri`` that does not exist in the working directory is looked up among the maps packaged
    with metta (``metta/mettagrid/configs/maps/``).
    """

    type: Literal["ascii"] = "ascii"
    uri: str | None = None
    map_data: str | None = None
    border_width: int = Field(default=0, ge=0)
    border_object: str = "wall"

    @model_validator(mode="after")
    def _one_source(self) -> AsciiMap:
        if (self.uri is None) == (self.map_data is None):
            raise ValueError("ascii map: give exactly one of `uri` (a .map file) or `map_data` (the map text)")
        return self

    def _text(self) -> tuple[str, str]:
        if self.map_data is not None:
            return self.map_data, "map_data"
        path = Path(self.uri)
        if not path.exists():
            packaged = Path(__file__).resolve().parent.parent / "configs" / "maps" / self.uri
            if packaged.exists():
                path = packaged
            else:
                raise FileNotFoundError(f"ascii map: uri {self.uri!r} is neither a file nor a packaged map")
        return path.read_text(), str(path)

    def build(self, rng: np.random.Generator) -> Level:
        text, source = self._text()
        grid = parse_ascii(text, source)
        return Level(add_border(grid, self.border_width, cell_code(self.border_object)), ["ascii"])
