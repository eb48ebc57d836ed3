"""Map build times: TerrainMap.build() per size label on cached base maps, and VariedTerrain from scratch.

Prints one JSON line of mean microseconds per build. Run: ``python benchmarks/map_build.py``.
"""

from __future__ import annotations

import json
import time

import numpy as np

from metta.mettagrid.map import MazeMap, TerrainMap, VariedTerrain
from metta.mettagrid.map.terrain import MAPS_PER_SET, base_map


def mean_us(builder, n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    builder.build(rng)  # warm-up: numba compilation / base-map generation stays out of the timing
    start = time.perf_counter()
    for _ in range(n):
        builder.build(rng)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    result: dict[str, float | str] = {"bench": "map_build", "unit": "us_per_build"}
    for size in ("small", "medium", "large"):
        d = f"varied_terrain/balanced_{size}"
        t0 = time.perf_counter()
        for i in range(MAPS_PER_SET):
            base_map(d, i)  # generate the whole set once, as a long training run would
        result[f"terrain_set_generate_{size}_s"] = round(time.perf_counter() - t0, 3)
        # The navigation curriculum's room: 1 agent, 10 altars, a border of 3.
        room = TerrainMap(dir=d, agents=1, objects={"altar": 10}, border_width=3)
        result[f"terrain_{size}"] = round(mean_us(room, 2000), 1)
    for style in ("all-sparse", "balanced", "dense", "maze"):
        vt = VariedTerrain(width=70, height=70, style=style, objects={"altar": 10}, agents=4)
        result[f"varied_terrain_70x70_{style}"] = round(mean_us(vt, 50), 1)
    result["maze_kruskal_51x51"] = round(mean_us(MazeMap(width=51, height=51), 200), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
