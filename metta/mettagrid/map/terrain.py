"""Navigation terrains: procedurally generated obstacle fields, cylinder worlds, and fixed terrain sets.

``VariedTerrain`` and ``CylinderWorld`` generate a fresh map from the episode rng. ``TerrainMap`` (upstream's
``TerrainFromNumpy``) picks one map of a fixed *terrain set*: upstream downloaded directories of
pre-generated ``.npy`` maps; here each set is a collection of maps generated from ``(dir, index)`` alone,
so a set is as fixed as files on disk and nothing is fetched. A map is generated once per process, and a
set that a process generated whole is written to a disk cache (``terrain_cache_dir``) that later processes
load instead; ``build_terrain_sets`` builds sets ahead of time (vecenv workers do, with ``prebuild_maps``).

Every generator keeps the open space connected: features are placed with a free margin around their
bounding box and away from the map edge, and any pocket of open cells cut off from the largest open region
(a hole inside an obstacle) is filled with wall.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numba
import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from metta.mettagrid.map.base import Count, MapBuilder, add_border, agent_total, check_counts_fit
from metta.mettagrid.map.level import BLOCK, EMPTY, WALL, Level, cell_code
from metta.mettagrid.map.maze import carve_maze, label_components
from metta.mettagrid.map.random_map import agent_cells

# ----------------------------------------------------------------------------------------------------------
# Feature shapes. Each returns a uint8 pattern of cell codes (EMPTY where the pattern has a hole).


def _random_walk(steps: int, rng: np.random.Generator) -> np.ndarray:
    """The cells of a ``steps``-long 4-connected random walk, as a boolean bounding-box pattern."""
    moves = np.array([(0, 1), (1, 0), (0, -1), (-1, 0)])[rng.integers(4, size=max(steps - 1, 0))]
    pts = np.vstack([np.zeros((1, 2), dtype=np.int64), np.cumsum(moves, axis=0)])
    pts -= pts.min(axis=0)
    pat = np.zeros(pts.max(axis=0) + 1, dtype=bool)
    pat[pts[:, 0], pts[:, 1]] = True
    return pat


def _large_obstacle(rng: np.random.Generator) -> np.ndarray:
    # A walk drawn with a 2x2 brush: a solid, irregular blob rather than a thin line.
    walk = _random_walk(int(rng.integers(10, 26)), rng)
    pat = np.zeros((walk.shape[0] + 1, walk.shape[1] + 1), dtype=bool)
    for dr in (0, 1):
        for dc in (0, 1):
            pat[dr : dr + walk.shape[0], dc : dc + walk.shape[1]] |= walk
    return np.where(pat, WALL, EMPTY).astype(np.uint8)


def _small_obstacle(rng: np.random.Generator) -> np.ndarray:
    return np.where(_random_walk(int(rng.integers(3, 7)), rng), WALL, EMPTY).astype(np.uint8)


def _cross(rng: np.random.Generator) -> np.ndarray:
    arm = int(rng.integers(2, 5))
    pat = np.zeros((2 * arm + 1, 2 * arm + 1), dtype=np.uint8)
    pat[arm, :] = WALL
    pat[:, arm] = WALL
    return pat


def _labyrinth(rng: np.random.Generator) -> np.ndarray:
    """A small perfect maze (about 11x11) with two to four entrances in its outer wall."""
    size = int(rng.choice([9, 11, 13]))
    pat = carve_maze(size, size, rng, "kruskal")
    rooms = np.arange(1, size - 1, 2)
    sides = rng.permutation(4)[: int(rng.integers(2, 5))]
    for side in sides:
        k = int(rng.choice(rooms))
        if side == 0:
            pat[0, k] = EMPTY
        elif side == 1:
            pat[size - 1, k] = EMPTY
        elif side == 2:
            pat[k, 0] = EMPTY
        else:
            pat[k, size - 1] = EMPTY
    return pat


def _block(rng: np.random.Generator) -> np.ndarray:
    return np.full((int(rng.integers(2, 15)), int(rng.integers(2, 15))), BLOCK, dtype=np.uint8)


def _cylinder(rng: np.random.Generator, max_len: int) -> np.ndarray:
    """Two parallel walls around a corridor 1-3 cells wide, open at both ends, sometimes with side doors."""
    length = int(rng.integers(8, max(9, max_len + 1)))
    gap = int(rng.integers(1, 4))
    pat = np.zeros((gap + 2, length), dtype=np.uint8)
    pat[0, :] = WALL
    pat[gap + 1, :] = WALL
    for row in (0, gap + 1):
        n_doors = int(rng.integers(0, 3))
        if n_doors and length > 4:
            pat[row, rng.integers(2, length - 2, size=n_doors)] = EMPTY
    return pat if rng.random() < 0.5 else np.ascontiguousarray(pat.T)


# ----------------------------------------------------------------------------------------------------------
# Placement on an occupancy grid


@numba.njit(cache=True)
def _free_spots(occ: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Top-left corners (flat, row-major over the valid corners) where a ph x pw pattern plus a one-cell
    margin covers no occupied cell of ``occ`` (the occupancy padded with an occupied ring)."""
    H, W = occ.shape
    s = np.zeros((H + 1, W + 1), dtype=np.int32)
    for r in range(H):
        row = 0
        for c in range(W):
            row += occ[r, c]
            s[r + 1, c + 1] = s[r, c + 1] + row
    a = ph + 2
    b = pw + 2
    nr = H - a + 1
    nc = W - b + 1
    out = np.empty(max(nr * nc, 0), dtype=np.int64)
    n = 0
    for r in range(nr):
        for c in range(nc):
            if s[r + a, c + b] - s[r, c + b] - s[r + a, c] + s[r, c] == 0:
                out[n] = r * nc + c
                n += 1
    return out[:n]


class _Canvas:
    """A grid being filled with features that keep one free cell around them and off the map edge."""

    def __init__(self, height: int, width: int):
        self.grid = np.zeros((height, width), dtype=np.uint8)
        # Occupancy padded with an occupied ring, which forbids features touching the map's outermost ring.
        self.occ = np.ones((height + 2, width + 2), dtype=np.uint8)
        self.occ[1:-1, 1:-1] = 0
        self.area = height * width
        self.occupied = 0

    def place(self, pattern: np.ndarray, rng: np.random.Generator) -> int:
        """Stamp ``pattern`` at a random free spot; returns the cells it filled (0 if nowhere fits)."""
        ph, pw = pattern.shape
        h, w = self.grid.shape
        if ph > h - 2 or pw > w - 2:
            return 0
        free = _free_spots(self.occ, ph, pw)
        if len(free) == 0:
            return 0
        r, c = divmod(int(free[rng.integers(len(free))]), w + 1 - pw)
        mask = pattern != EMPTY
        self.grid[r : r + ph, c : c + pw][mask] = pattern[mask]
        self.occ[1 + r : 1 + r + ph, 1 + c : 1 + c + pw] |= mask
        filled = int(mask.sum())
        self.occupied += filled
        return filled

    def scatter_walls(self, n: int, rng: np.random.Generator) -> int:
        """``n`` single walls on free cells whose 3x3 neighbourhood is free, all drawn at once."""
        if n <= 0:
            return 0
        free = _free_spots(self.occ, 1, 1)
        n = min(n, len(free))
        if n == 0:
            return 0
        picks = rng.choice(free, size=n, replace=False)
        w = self.grid.shape[1]
        rows, cols = picks // w, picks % w
        self.grid[rows, cols] = WALL
        self.occ[rows + 1, cols + 1] = 1
        self.occupied += n
        return n

    def connect(self) -> None:
        """Fill every open pocket that is cut off from the largest open region."""
        labels, sizes = label_components(self.grid == EMPTY)
        if len(sizes) > 1:
            self.grid[(labels >= 0) & (labels != int(np.argmax(sizes)))] = WALL


@numba.njit(cache=True)
def _pick_spread(order: np.ndarray, blocked: np.ndarray, k: int) -> np.ndarray:
    """Take up to ``k`` cells from ``order`` (flat indices) that are not blocked, blocking the 3x3 around each."""
    h, w = blocked.shape
    out = np.empty(k, dtype=np.int64)
    n = 0
    for i in range(len(order)):
        if n == k:
            break
        r = order[i] // w
        c = order[i] % w
        if blocked[r, c]:
            continue
        out[n] = order[i]
        n += 1
        for dr in range(-1, 2):
            for dc in range(-1, 2):
                rr = r + dr
                cc = c + dc
                if 0 <= rr < h and 0 <= cc < w:
                    blocked[rr, cc] = True
    return out[:n]


def place_with_clearance(grid: np.ndarray, codes: list[int], rng: np.random.Generator, what: str) -> None:
    """Put ``codes`` on empty cells, each with a free 3x3 neighbourhood when the space allows it (in place).

    Cells are tried in a random order; when too few cells with clearance remain, the rest go to random
    empty cells. Placement stops with a clear error only when there are not enough empty cells at all.
    """
    k = len(codes)
    if k == 0:
        return
    h, w = grid.shape
    empty = grid == EMPTY
    # A cell has clearance when its 3x3 window (inside the map) is all empty.
    occ = np.pad(~empty, 1, constant_values=True).astype(np.int32)
    s = np.zeros((h + 3, w + 3), dtype=np.int32)
    np.cumsum(np.cumsum(occ, axis=0), axis=1, out=s[1:, 1:])
    clear = (s[3:, 3:] - s[:-3, 3:] - s[3:, :-3] + s[:-3, :-3]) == 0
    picks = _pick_spread(rng.permutation(np.flatnonzero(clear.ravel())), ~empty, k)
    if len(picks) < k:
        rest = np.setdiff1d(np.flatnonzero(empty.ravel()), picks)
        if len(rest) < k - len(picks):
            raise ValueError(
                f"{what}: {k} objects and agents do not fit in the {int(empty.sum())} open cells of the "
                f"{h}x{w} map; ask for fewer objects/agents or a larger map"
            )
        picks = np.concatenate([picks, rng.choice(rest, size=k - len(picks), replace=False)])
    grid.ravel()[picks] = np.asarray(codes, dtype=np.uint8)


def _object_codes(objects: dict[str, int]) -> list[int]:
    return [cell_code(name) for name, n in objects.items() for _ in range(n)]


def _check_room_fits(builder, what: str) -> None:
    """At validation: objects and agents must fit in ``width x height`` even before any obstacle is drawn."""
    free = builder.width * builder.height
    check_counts_fit(
        what,
        builder.objects,
        builder.agents,
        free,
        f"the {builder.width}x{builder.height} map (width={builder.width}, height={builder.height}) before any "
        "obstacle",
        "ask for fewer objects/agents or a larger width and height",
    )


def _check_open_fits(builder, grid: np.ndarray, what: str) -> None:
    """At build time, before any list of cell codes is made: objects and agents must fit in the open cells the
    generated terrain left."""
    check_counts_fit(
        what,
        builder.objects,
        builder.agents,
        int(np.count_nonzero(grid == EMPTY)),
        f"the generated {builder.width}x{builder.height} terrain (width={builder.width}, height={builder.height})",
        "ask for fewer objects/agents or a larger width and height",
    )


# ----------------------------------------------------------------------------------------------------------
# VariedTerrain

# Count ranges per 3600 cells (a 60x60 map), in build order. Scattered walls count single cells.
_FEATURES = ("labyrinths", "large_obstacles", "small_obstacles", "crosses", "scattered_walls", "blocks")
STYLE_PARAMETERS: dict[str, dict[str, tuple[int, int]]] = {
    "all-sparse": {
        "labyrinths": (0, 2),
        "large_obstacles": (0, 2),
        "small_obstacles": (0, 2),
        "crosses": (0, 2),
        "scattered_walls": (0, 5),
        "blocks": (0, 2),
    },
    "balanced": {
        "labyrinths": (3, 7),
        "large_obstacles": (3, 7),
        "small_obstacles": (3, 7),
        "crosses": (3, 7),
        "scattered_walls": (5, 15),
        "blocks": (3, 7),
    },
    "dense": {
        "labyrinths": (8, 15),
        "large_obstacles": (8, 15),
        "small_obstacles": (8, 15),
        "crosses": (8, 15),
        "scattered_walls": (15, 30),
        "blocks": (8, 15),
    },
    "maze": {
        "labyrinths": (10, 20),
        "large_obstacles": (0, 2),
        "small_obstacles": (0, 2),
        "crosses": (0, 2),
        "scattered_walls": (0, 5),
        "blocks": (0, 2),
    },
    # The older "terrain_maps_nohearts" set: mostly obstacles and walls of assorted sizes.
    "mixed": {
        "labyrinths": (0, 1),
        "large_obstacles": (2, 6),
        "small_obstacles": (4, 10),
        "crosses": (1, 4),
        "scattered_walls": (5, 20),
        "blocks": (0, 3),
    },
}
_SHAPES = {
    "labyrinths": _labyrinth,
    "large_obstacles": _large_obstacle,
    "small_obstacles": _small_obstacle,
    "crosses": _cross,
    "blocks": _block,
}
# No single feature type may cover more than this fraction of the map.
_FEATURE_CAP = 0.3


def generate_terrain(
    height: int, width: int, style: str, rng: np.random.Generator, occupancy_threshold: float = 0.66
) -> np.ndarray:
    """Walls and blocks of one style on an empty ``height x width`` grid, with connected open space."""
    canvas = _Canvas(height, width)
    scale = canvas.area / 3600.0
    cap = _FEATURE_CAP * canvas.area
    params = STYLE_PARAMETERS[style]
    for feature in _FEATURES:
        lo, hi = params[feature]
        lo_n = int(round(lo * scale))
        count = int(rng.integers(lo_n, max(lo_n, int(round(hi * scale))) + 1))
        if feature == "scattered_walls":
            budget = int(min(cap, occupancy_threshold * canvas.area - canvas.occupied))
            canvas.scatter_walls(min(count, budget), rng)
            continue
        filled = 0
        for _ in range(count):
            if canvas.occupied >= occupancy_threshold * canvas.area:
                break
            pattern = _SHAPES[feature](rng)
            if filled + np.count_nonzero(pattern) > cap:
                break
            filled += canvas.place(pattern, rng)
    canvas.connect()
    return canvas.grid


class VariedTerrain(MapBuilder):
    """Obstacles, crosses, mini labyrinths, scattered walls and blocks, then objects and agents.

    Feature counts come from ``style`` (ranges per 3600 cells, scaled by the map area); each feature type
    covers at most 30% of the map and no feature is added once ``occupancy_threshold`` of the map is
    filled. Objects and agents get one free cell around them when the space allows it.
    """

    type: Literal["varied_terrain"] = "varied_terrain"
    width: int = Field(default=60, ge=5)
    height: int = Field(default=60, ge=5)
    objects: dict[str, Count] = Field(default_factory=dict)
    agents: Count | dict[str, Count] = 0
    style: Literal["all-sparse", "balanced", "dense", "maze"] = "balanced"
    occupancy_threshold: float = Field(default=0.66, gt=0.0, le=1.0)
    border_width: int = Field(default=0, ge=0)
    border_object: str = "wall"

    @model_validator(mode="after")
    def _counts_fit(self) -> VariedTerrain:
        _check_room_fits(self, "varied_terrain")
        return self

    def build(self, rng: np.random.Generator) -> Level:
        grid = generate_terrain(self.height, self.width, self.style, rng, self.occupancy_threshold)
        _check_open_fits(self, grid, "varied_terrain")
        place_with_clearance(grid, _object_codes(self.objects), rng, "varied_terrain")
        place_with_clearance(grid, agent_cells(self.agents), rng, "varied_terrain")
        return Level(add_border(grid, self.border_width, cell_code(self.border_object)), ["varied_terrain", self.style])


# ----------------------------------------------------------------------------------------------------------
# CylinderWorld


def generate_cylinders(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Long parallel-wall corridors ("cylinders") scattered over an open grid."""
    canvas = _Canvas(height, width)
    scale = canvas.area / 3600.0
    count = int(rng.integers(int(round(6 * scale)), int(round(12 * scale)) + 1))
    max_len = max(8, int(0.6 * min(height, width)))
    for _ in range(count):
        if canvas.occupied >= 0.5 * canvas.area:
            break
        canvas.place(_cylinder(rng, max_len), rng)
    canvas.connect()
    return canvas.grid


class CylinderWorld(MapBuilder):
    """Corridors between pairs of long parallel walls, open at the ends and sometimes on the sides."""

    type: Literal["cylinder_world"] = "cylinder_world"
    width: int = Field(default=60, ge=5)
    height: int = Field(default=60, ge=5)
    objects: dict[str, Count] = Field(default_factory=dict)
    agents: Count | dict[str, Count] = 0
    border_width: int = Field(default=0, ge=0)
    border_object: str = "wall"

    @model_validator(mode="after")
    def _counts_fit(self) -> CylinderWorld:
        _check_room_fits(self, "cylinder_world")
        return self

    def build(self, rng: np.random.Generator) -> Level:
        grid = generate_cylinders(self.height, self.width, rng)
        _check_open_fits(self, grid, "cylinder_world")
        place_with_clearance(grid, _object_codes(self.objects), rng, "cylinder_world")
        place_with_clearance(grid, agent_cells(self.agents), rng, "cylinder_world")
        return Level(add_border(grid, self.border_width, cell_code(self.border_object)), ["cylinder_world"])


# ----------------------------------------------------------------------------------------------------------
# Terrain sets (upstream's TerrainFromNumpy)

MAPS_PER_SET = 64
# Side lengths per size class; the areas land in the size label's range (<4000, 4000..5999, >=6000).
SIZE_SIDES = {"small": (30, 55), "medium": (64, 76), "large": (80, 100)}
_SET_STYLES = {"balanced": "balanced", "sparse": "all-sparse", "dense": "dense", "maze": "maze"}
_SIZES = ("small", "medium", "large")

TERRAIN_DIRS: list[str] = ["terrain_maps_nohearts"] + [
    f"varied_terrain/{style}_{size}"
    for style in ("balanced", "sparse", "dense", "maze", "cylinder-world")
    for size in _SIZES
]
# The order of upstream's navigation curriculum buckets.
NAVIGATION_TERRAIN_DIRS: list[str] = ["terrain_maps_nohearts"] + [
    f"varied_terrain/{style}_{size}"
    for style in ("balanced", "sparse", "dense", "maze", "cylinder-world")
    for size in ("large", "medium", "small")
]


def size_label(area: int) -> str:
    """Upstream's size label of a map from its area (without border)."""
    return "small" if area < 4000 else "medium" if area < 6000 else "large"


@numba.njit(cache=True)
def articulation_cells(passable: np.ndarray) -> np.ndarray:
    """Cells whose removal splits their 4-connected region of ``passable`` (iterative Tarjan)."""
    h, w = passable.shape
    n = h * w
    flat = passable.ravel()
    disc = np.full(n, -1, dtype=np.int64)
    low = np.zeros(n, dtype=np.int64)
    parent = np.full(n, -1, dtype=np.int64)
    is_cut = np.zeros(n, dtype=np.bool_)
    stack = np.empty(n, dtype=np.int64)
    next_dir = np.empty(n, dtype=np.int64)
    t = 0
    for root in range(n):
        if not flat[root] or disc[root] >= 0:
            continue
        disc[root] = t
        low[root] = t
        t += 1
        root_children = 0
        sp = 0
        stack[0] = root
        next_dir[0] = 0
        while sp >= 0:
            u = stack[sp]
            d = next_dir[sp]
            if d < 4:
                next_dir[sp] = d + 1
                r = u // w
                c = u % w
                if d == 0:
                    r -= 1
                elif d == 1:
                    r += 1
                elif d == 2:
                    c -= 1
                else:
                    c += 1
                if r < 0 or r >= h or c < 0 or c >= w:
                    continue
                v = r * w + c
                if not flat[v]:
                    continue
                if disc[v] < 0:
                    parent[v] = u
                    disc[v] = t
                    low[v] = t
                    t += 1
                    if u == root:
                        root_children += 1
                    sp += 1
                    stack[sp] = v
                    next_dir[sp] = 0
                elif v != parent[u]:
                    low[u] = min(low[u], disc[v])
            else:
                sp -= 1
                if sp >= 0:
                    p = stack[sp]
                    low[p] = min(low[p], low[u])
                    if p != root and low[u] >= disc[p]:
                        is_cut[p] = True
        if root_children > 1:
            is_cut[root] = True
    return is_cut.reshape(h, w)


@dataclass(frozen=True)
class _BaseMap:
    grid: np.ndarray  # read-only; contains no agents and no altars
    candidates: np.ndarray  # flat indices of cells where build() may put agents (upstream's rule)
    object_candidates: np.ndarray  # the candidates whose blocking would not split the open space
    n_empty: int  # open cells
    open_connected: bool  # whether the open cells are one 4-connected region
    open_padded: np.ndarray  # bool[(h + 2) * (w + 2)]: ``empty`` inside a blocked ring, flattened
    counts: np.ndarray  # cells per code, to compute the missing object counts
    labels: tuple[str, ...]


_BASE_MAPS: dict[tuple[str, int, tuple[int, int] | None], _BaseMap] = {}


def _generate_base(dir: str, index: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    # The seed depends on (dir, index[, shape]) only, so the set is the same in every process and every run.
    rng = np.random.default_rng([zlib.crc32(dir.encode()), index, *(shape or ())])
    if dir == "terrain_maps_nohearts":
        size, style = _SIZES[int(rng.integers(3))], "mixed"
    else:
        style, size = dir.split("/", 1)[1].rsplit("_", 1)
    lo, hi = SIZE_SIDES[size]
    height, width = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    if shape is not None:  # a set of the same terrain style at a size the caller chose
        height, width = shape
    if style == "cylinder-world":
        return generate_cylinders(height, width, rng)
    return generate_terrain(height, width, _SET_STYLES.get(style, style), rng)


def base_map(dir: str, index: int, shape: tuple[int, int] | None = None) -> _BaseMap:
    """Map ``index`` of terrain set ``dir`` (at ``shape`` = (height, width) if given), cached for the process:
    loaded with its whole set from the disk cache when the set is there, generated otherwise (and the set
    written to the cache once this process has generated all of it)."""
    key = (dir, index, shape)
    cached = _BASE_MAPS.get(key)
    if cached is not None:
        return cached
    if _load_set(dir, shape):  # a stat per map missing from the process (64 per set at most)
        return _BASE_MAPS[key]
    cached = _base_from_grid(dir, _generate_base(dir, index, shape))
    _BASE_MAPS[key] = cached
    if all((dir, i, shape) in _BASE_MAPS for i in range(MAPS_PER_SET)):
        _save_set(dir, shape)
    return cached


def _base_from_grid(
    dir: str, grid: np.ndarray, object_candidates: np.ndarray | None = None, open_connected: bool | None = None
) -> _BaseMap:
    """A base map's placement data from its grid; ``object_candidates`` and ``open_connected`` (the costly
    parts) are computed unless given (from the disk cache)."""
    empty = grid == EMPTY
    # Upstream's rule: an empty cell with at least one empty 4-neighbour, not on the outermost ring.
    has_empty_neighbour = np.zeros_like(empty)
    has_empty_neighbour[1:, :] |= empty[:-1, :]
    has_empty_neighbour[:-1, :] |= empty[1:, :]
    has_empty_neighbour[:, 1:] |= empty[:, :-1]
    has_empty_neighbour[:, :-1] |= empty[:, 1:]
    ok = empty & has_empty_neighbour
    ok[[0, -1], :] = False
    ok[:, [0, -1]] = False
    grid.flags.writeable = False
    root, _, leaf = dir.partition("/")
    labels = (root, leaf, size_label(grid.size)) if leaf else (root, size_label(grid.size))
    if object_candidates is None:
        # An object is an obstacle: on a corridor cell it would cut the map in two, so objects avoid cut cells.
        object_candidates = np.flatnonzero(ok & ~articulation_cells(empty))
    # ``empty`` inside a ring of blocked cells: the connectivity check steps to cell +-1 and +-(w + 2) with no
    # bounds checks or divisions, over arrays small enough to stay in cache between episodes.
    h, w = grid.shape
    open_padded = np.zeros((h + 2, w + 2), dtype=np.bool_)
    open_padded[1:-1, 1:-1] = empty
    open_padded = open_padded.ravel()
    open_padded.flags.writeable = False
    n_empty = int(empty.sum())
    if open_connected is None:
        open_connected = bool(_open_space_connected(open_padded, n_empty, w + 2, np.empty(0, dtype=np.int64)))
    return _BaseMap(
        grid=grid,
        candidates=np.flatnonzero(ok),
        object_candidates=np.asarray(object_candidates, dtype=np.int64),
        n_empty=n_empty,
        open_connected=bool(open_connected),
        open_padded=open_padded,
        counts=np.bincount(grid.ravel(), minlength=256),
        labels=labels,
    )


# ----------------------------------------------------------------------------------------------------------
# Terrain sets on disk. Generating the 16 sets of the navigation curriculum takes some 20 s of one core, paid
# by every process that trains on it; a whole set is kept in one file (grids and the costly placement data),
# keyed by the set and by a digest of the code and NumPy version that generate it, so a change to either
# makes new files rather than reading stale ones.


def terrain_cache_dir() -> Path | None:
    """Where terrain sets are kept: ``$METTA_TERRAIN_CACHE`` ("off" for nowhere), else ``metta/terrain`` in
    ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    configured = os.environ.get("METTA_TERRAIN_CACHE")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metta" / "terrain"


@functools.cache
def _generator_digest() -> str:
    sources = [Path(__file__), Path(__file__).with_name("maze.py"), Path(__file__).with_name("level.py")]
    digest = hashlib.sha256(np.__version__.encode() + str(MAPS_PER_SET).encode())
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _set_path(dir: str, shape: tuple[int, int] | None) -> Path | None:
    root = terrain_cache_dir()
    if root is None:
        return None
    size = "own" if shape is None else f"{shape[0]}x{shape[1]}"
    return root / f"{dir.replace('/', '__')}__{size}__{_generator_digest()}.npz"


def _load_set(dir: str, shape: tuple[int, int] | None) -> bool:
    """Fill the process cache with set ``dir`` from disk; False when it is not there (or unreadable)."""
    path = _set_path(dir, shape)
    if path is None or not path.is_file():
        return False
    try:
        with np.load(path) as data:
            maps = [
                _base_from_grid(dir, data[f"grid_{i}"], data[f"object_candidates_{i}"], bool(data["open_connected"][i]))
                for i in range(MAPS_PER_SET)
            ]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False  # a damaged file is ignored; generating the set again rewrites it
    for i, base in enumerate(maps):
        _BASE_MAPS[(dir, i, shape)] = base
    return True


def _save_set(dir: str, shape: tuple[int, int] | None) -> None:
    """Write set ``dir`` (all in the process cache) to disk, atomically; a cache that cannot be written is
    skipped (the set is generated again by the next process)."""
    path = _set_path(dir, shape)
    if path is None or path.is_file():
        return
    maps = [_BASE_MAPS[(dir, i, shape)] for i in range(MAPS_PER_SET)]
    arrays = {f"grid_{i}": m.grid for i, m in enumerate(maps)}
    arrays |= {f"object_candidates_{i}": m.object_candidates.astype(np.int32) for i, m in enumerate(maps)}
    arrays["open_connected"] = np.array([m.open_connected for m in maps])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def build_terrain_sets(sets: Iterable[tuple[str, tuple[int, int] | None]], processes: int = 1) -> None:
    """Make sure every ``(dir, shape)`` set is on disk, generating what is missing; with ``processes > 1``, in that
    many spawned processes (one set each at a time; this process then loads them when it needs them), else in
    this process, which also keeps them in memory. Without a disk cache, every set is generated here."""
    sets = list(sets)
    if terrain_cache_dir() is not None:  # what is on disk already needs no process of its own
        sets = [one for one in sets if not _set_path(*one).is_file()]
    if processes > 1 and len(sets) > 1 and terrain_cache_dir() is not None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from metta.mettagrid.spawning import main_module_hidden

        with (
            main_module_hidden(),
            ProcessPoolExecutor(min(processes, len(sets)), mp_context=mp.get_context("spawn")) as pool,
        ):
            list(pool.map(_build_one_set, sets))
        return
    for one in sets:
        _build_one_set(one)


def _build_one_set(one: tuple[str, tuple[int, int] | None]) -> None:
    dir, shape = one
    for index in range(MAPS_PER_SET):
        base_map(dir, index, shape)


def terrain_sets_in(curriculum: Any, draws: int = 4) -> list[tuple[str, tuple[int, int] | None]]:
    """The terrain sets ``(dir, shape)`` that ``curriculum``'s tasks build maps from, found by drawing from a
    copy of it (the curriculum itself is left as it was): ``draws`` of each of its ``task_ids`` where it has
    them (a multi-task, random, learning-progress or bucketed curriculum), else ``draws`` tasks."""
    import copy

    sample = copy.deepcopy(curriculum)
    found: dict[tuple[str, tuple[int, int] | None], None] = {}

    def visit(node: Any) -> None:
        if isinstance(node, TerrainMap):
            found[(node.dir, None if node.width is None else (node.height, node.width))] = None
        elif isinstance(node, BaseModel):
            for value in node.__dict__.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)
        elif isinstance(node, dict):
            for value in node.values():
                visit(value)

    task_ids = getattr(sample, "task_ids", None)
    for _ in range(draws):
        for task in [sample.task(t) for t in task_ids] if task_ids else [sample.get_task()]:
            visit(task.env_cfg().game.map_builder)
    return list(found)


_PLACEMENT_TRIES = 8


@numba.njit(cache=True)
def _objects_keep_open_space_connected(open_padded: np.ndarray, pw: int, padded_objects: np.ndarray) -> bool:
    """A quick sufficient test that the objects, blocking their cells, leave connected open space connected and
    each touch it: block them one at a time and require that the open 4-neighbours of each lie on one run of
    open cells around its 8-neighbour ring (then every path through the cell has a detour around it). False
    means "not shown", not "split": the caller then searches the whole map."""
    ring = (-pw, -pw + 1, 1, pw + 1, pw, pw - 1, -1, -pw - 1)  # N, NE, E, SE, S, SW, W, NW: consecutive cells touch
    n = len(padded_objects)
    for j in range(n):
        cell = padded_objects[j]
        is_open = np.zeros(8, dtype=np.bool_)
        for k in range(8):
            c = cell + ring[k]
            ok = open_padded[c]
            for i in range(j):  # objects blocked before this one
                if padded_objects[i] == c:
                    ok = False
            is_open[k] = ok
        # Count the runs around the ring that hold an open 4-neighbour (even positions).
        runs = 0
        for k in range(8):
            if is_open[k] and not is_open[(k + 7) % 8]:  # a run starts here
                m = k
                side = False
                while is_open[m % 8] and m < k + 8:
                    if m % 2 == 0:
                        side = True
                    m += 1
                if side:
                    runs += 1
        if runs == 0 and (is_open[0] or is_open[2] or is_open[4] or is_open[6]):
            runs = 1  # the whole ring is open: no run start
        if runs != 1:
            return False
    # Every object must still touch open space once all of them block (a later object can cover a neighbour).
    for j in range(n):
        cell = padded_objects[j]
        touches = False
        for k in range(0, 8, 2):
            c = cell + ring[k]
            if open_padded[c]:
                blocked = False
                for i in range(n):
                    if padded_objects[i] == c:
                        blocked = True
                touches = touches or not blocked
        if not touches:
            return False
    return True


@numba.njit(cache=True)
def _open_space_connected(open_padded: np.ndarray, n_empty: int, pw: int, padded_objects: np.ndarray) -> bool:
    """Whether, with ``padded_objects`` blocking their cells, every open cell is in one region that every object
    touches (a breadth-first search over the whole map)."""
    # 0 = not reached, 1 = reached, 2 = blocked by an object.
    state = np.zeros(len(open_padded), dtype=np.uint8)
    for j in range(len(padded_objects)):
        state[padded_objects[j]] = 2
    start = -1
    for k in range(len(open_padded)):
        if open_padded[k] and state[k] == 0:
            start = k
            break
    if start < 0:
        return False
    steps = (1, -1, pw, -pw)
    queue = np.empty(n_empty, dtype=np.int64)
    queue[0] = start
    state[start] = 1
    head = 0
    tail = 1
    while head < tail:
        cur = queue[head]
        head += 1
        for step in steps:
            v = cur + step
            if open_padded[v] and state[v] == 0:
                state[v] = 1
                queue[tail] = v
                tail += 1
    if tail != n_empty - len(padded_objects):
        return False
    for j in range(len(padded_objects)):
        o = padded_objects[j]
        if not (state[o + 1] == 1 or state[o - 1] == 1 or state[o + pw] == 1 or state[o - pw] == 1):
            return False
    return True


@numba.njit(cache=True)
def _finish_placement(
    open_padded: np.ndarray,
    n_empty: int,
    open_connected: bool,
    width: int,
    agent_draw: np.ndarray,
    objects: np.ndarray,
    n_agents: int,
):
    """Agents = the first ``n_agents`` of ``agent_draw`` not taken by an object; and whether, with the objects
    blocking their cells, every open cell is in one region that every object touches. Cells are flat indices
    of the unpadded map (``width`` columns); ``open_padded`` is the open mask with a blocked ring around it;
    ``open_connected`` says whether its open cells are one region before any object is placed."""
    agents = np.empty(n_agents, dtype=np.int64)
    n = 0
    for i in range(len(agent_draw)):
        if n == n_agents:
            break
        taken = False
        for j in range(len(objects)):
            if objects[j] == agent_draw[i]:
                taken = True
                break
        if not taken:
            agents[n] = agent_draw[i]
            n += 1
    if len(objects) <= 1:
        return agents, True  # one object off the cut cells cannot split the map
    pw = width + 2
    padded_objects = np.empty(len(objects), dtype=np.int64)
    for j in range(len(objects)):
        padded_objects[j] = (objects[j] // width + 1) * pw + objects[j] % width + 1
    # The local test settles almost every draw in a few hundred operations; the search over the whole map
    # (thousands of cells) gives the same answer and runs only when the local test cannot.
    if open_connected and _objects_keep_open_space_connected(open_padded, pw, padded_objects):
        return agents, True
    return agents, _open_space_connected(open_padded, n_empty, pw, padded_objects)


class TerrainMap(MapBuilder):
    """One map of a fixed terrain set (upstream's ``TerrainFromNumpy``) with agents and objects added.

    ``dir`` names the set (see ``TERRAIN_DIRS``); ``file`` picks a map by index, otherwise the rng does.
    ``width`` and ``height`` (give both or neither) make the set's maps that size instead of the set's own
    sizes: the same terrain style, still generated once per process and reused. Agents and the objects the
    map lacks (``objects[name]`` minus those already there) go on random empty cells that have an empty
    4-neighbour and are off the map's outermost ring.
    """

    type: Literal["terrain", "terrain_from_numpy"] = "terrain"
    dir: str = "terrain_maps_nohearts"
    file: int | None = None
    agents: Count | dict[str, Count] = 1
    objects: dict[str, Count] = Field(default_factory=dict)
    border_width: int = Field(default=0, ge=0)
    border_object: str = "wall"
    width: int | None = Field(default=None, ge=8)
    height: int | None = Field(default=None, ge=8)

    @field_validator("dir")
    @classmethod
    def _known_dir(cls, v: str) -> str:
        v = v.strip("/")
        if v not in TERRAIN_DIRS:
            raise ValueError(f"terrain dir={v!r} is not a known terrain set; use one of {TERRAIN_DIRS}")
        return v

    @model_validator(mode="after")
    def _file_in_set(self) -> TerrainMap:
        if self.file is not None and not 0 <= self.file < MAPS_PER_SET:
            raise ValueError(f"terrain file={self.file} is out of range; each set has maps 0..{MAPS_PER_SET - 1}")
        if (self.width is None) != (self.height is None):
            raise ValueError(
                f"terrain width={self.width}, height={self.height}: give both (a custom size) or neither (the set's "
                "sizes)"
            )
        # The largest map the set can give (its own sizes, or width x height): more cells than that never fit.
        if self.width is not None:
            free = self.width * self.height
            where = f"a {self.width}x{self.height} map (width={self.width}, height={self.height})"
        else:
            if self.dir == "terrain_maps_nohearts":
                side = max(hi for _, hi in SIZE_SIDES.values())
            else:
                side = SIZE_SIDES[self.dir.rsplit("_", 1)[1]][1]
            free, where = side * side, f"the largest map of terrain set dir={self.dir!r} ({side}x{side})"
        check_counts_fit("terrain", self.objects, self.agents, free, where, "ask for fewer objects/agents")
        return self

    def _object_wants(self) -> list[tuple[int, int]]:
        return [(cell_code(name), want) for name, want in self.objects.items()]

    def build(self, rng: np.random.Generator) -> Level:
        index = self.file if self.file is not None else int(rng.integers(MAPS_PER_SET))
        shape = (self.height, self.width) if self.width is not None else None
        base = base_map(self.dir, index, shape)
        # Counts first, lists of cell codes only once they are known to fit.
        n_a = agent_total(self.agents)
        missing = [(code, max(0, want - int(base.counts[code]))) for code, want in self._object_wants()]
        n_o = sum(n for _, n in missing)
        if n_o > len(base.object_candidates) or n_a + n_o > len(base.candidates):
            raise ValueError(
                f"terrain dir={self.dir!r} map {index}: agents={self.agents!r} and objects={self.objects!r} ({n_a} "
                f"agent cells and {n_o} object cells the map lacks) do not fit in its {len(base.candidates)} free "
                f"cells, {len(base.object_candidates)} of them usable for objects; ask for fewer objects/agents"
            )
        agents = np.asarray(agent_cells(self.agents), dtype=np.uint8)
        objects = np.asarray([code for code, n in missing for _ in range(n)], dtype=np.uint8)
        # The bordered map is allocated once and the base map copied into it; base maps hold no agents, so
        # the copy is all that upstream's "strip the agents" step needs.
        h, w = base.grid.shape
        b = self.border_width
        out = np.full((h + 2 * b, w + 2 * b), cell_code(self.border_object), dtype=np.uint8)
        inner = out[b : b + h, b : b + w]
        inner[...] = base.grid
        if n_a + n_o:
            # Single objects never plug a corridor (they avoid cut cells), but two together can, now and
            # then; such a draw is redrawn, a few times at most.
            for _ in range(_PLACEMENT_TRIES):
                obj = rng.choice(base.object_candidates, size=n_o, replace=False)
                agent_draw = rng.choice(base.candidates, size=n_a + n_o, replace=False)
                agt, ok = _finish_placement(
                    base.open_padded, base.n_empty, base.open_connected, w, agent_draw, obj, n_a
                )
                if ok:
                    break
            inner[agt // w, agt % w] = agents
            inner[obj // w, obj % w] = objects
        return Level(out, list(base.labels))
