"""The maps of the navigation evaluation suite: one fixed map per simulation, drawn to upstream's description.

Upstream Metta's ``navigation`` suite (``configs/sim/navigation.yaml``) names 26 single-agent maps: open rooms
with altars in and out of sight, walls, cylinders, obstacle courses, corridors, a labyrinth, radial mazes and
enclosures. Its ASCII files are not ours to copy, so each map here is drawn by a small function from the
sim's description (size, structure, where the agent and the altars are). A map is the same in every process
and every episode: ``navigation_map(name)`` seeds its generator from the name alone, so every policy is scored
on exactly the same cells.

    level = navigation_map("labyrinth")        # a Level: uint8 cell codes with a one-cell wall border
    print(to_ascii(level))                     # metta.mettagrid.map.ascii.to_ascii

Every map has one agent and at least one altar, and every altar can be reached: one of its four neighbours is
open and connected to the agent (``tests/mettagrid/test_navigation_maps.py`` checks it for every map).
``SMOKE_MAPS`` are two tiny maps for quick end-to-end checks.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from functools import cache

import numpy as np

from metta.mettagrid.map.base import add_border
from metta.mettagrid.map.level import EMPTY, WALL, Level, cell_code
from metta.mettagrid.map.maze import bfs_distances, carve_maze, label_components

ALTAR = cell_code("altar")
AGENT = cell_code("agent.agent")


class _Plan:
    """A map being drawn: rectangles of wall or open cells, then the agent and the altars on open cells."""

    def __init__(self, height: int, width: int, fill: int = EMPTY):
        self.grid = np.full((height, width), fill, dtype=np.uint8)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def wall(self, r0: int, c0: int, r1: int, c1: int) -> None:
        """Wall on the rectangle of rows r0..r1 and columns c0..c1 (inclusive)."""
        self.grid[r0 : r1 + 1, c0 : c1 + 1] = WALL

    def open(self, r0: int, c0: int, r1: int, c1: int) -> None:
        self.grid[r0 : r1 + 1, c0 : c1 + 1] = EMPTY

    def box(self, r0: int, c0: int, r1: int, c1: int, doors: tuple[tuple[int, int], ...] = ()) -> None:
        """A one-cell-thick wall outline of the rectangle, open at each ``(row, col)`` of ``doors``."""
        self.wall(r0, c0, r0, c1)
        self.wall(r1, c0, r1, c1)
        self.wall(r0, c0, r1, c0)
        self.wall(r0, c1, r1, c1)
        for r, c in doors:
            self.grid[r, c] = EMPTY

    def put(self, code: int, cells: list[tuple[int, int]]) -> None:
        for r, c in cells:
            if self.grid[r, c] != EMPTY:
                raise ValueError(f"navigation map: cell ({r}, {c}) is not open")  # a drawing mistake
            self.grid[r, c] = code

    def agent(self, r: int, c: int) -> None:
        self.put(AGENT, [(r, c)])

    def altars(self, *cells: tuple[int, int]) -> None:
        self.put(ALTAR, list(cells))

    def scatter_altars(
        self,
        rng: np.random.Generator,
        count: int,
        start: tuple[int, int],
        distance: tuple[int, int],
        spacing: int,
        sight: str = "any",
    ) -> None:
        """``count`` altars on open cells at walking distance ``distance[0]..distance[1]`` from ``start``, at
        least ``spacing`` apart (Manhattan) from each other; ``sight`` "in" keeps them inside the agent's 11x11
        window, "out" outside it."""
        dist = bfs_distances(self.grid != WALL, *start)
        rows, cols = np.indices(self.grid.shape)
        ok = (self.grid == EMPTY) & (dist >= distance[0]) & (dist <= distance[1])
        chebyshev = np.maximum(abs(rows - start[0]), abs(cols - start[1]))
        if sight == "in":
            ok &= chebyshev <= 5
        elif sight == "out":
            ok &= chebyshev > 5
        chosen: list[tuple[int, int]] = []
        for flat in rng.permutation(np.flatnonzero(ok.ravel())):
            r, c = divmod(int(flat), self.grid.shape[1])
            if all(abs(r - a) + abs(c - b) >= spacing for a, b in chosen):
                chosen.append((r, c))
                if len(chosen) == count:
                    break
        if len(chosen) < count:
            raise ValueError(f"navigation map: only {len(chosen)} of {count} altar cells fit")  # a drawing mistake
        self.altars(*chosen)

    def fill_pockets(self) -> None:
        """Wall up open cells cut off from the largest open region (holes left by overlapping walls)."""
        labels, sizes = label_components(self.grid == EMPTY)
        if len(sizes) > 1:
            self.grid[(labels >= 0) & (labels != int(np.argmax(sizes)))] = WALL


# ----------------------------------------------------------------------------------------------------------
# Shapes used by several maps


def _random_segments(plan: _Plan, rng: np.random.Generator, count: int, length: tuple[int, int]) -> None:
    """``count`` straight wall segments, horizontal or vertical, at random places (ends may touch)."""
    h, w = plan.shape
    for _ in range(count):
        n = int(rng.integers(length[0], length[1] + 1))
        if rng.random() < 0.5:
            r, c = int(rng.integers(1, h - 1)), int(rng.integers(1, max(2, w - n)))
            plan.wall(r, c, r, min(w - 2, c + n - 1))
        else:
            r, c = int(rng.integers(1, max(2, h - n))), int(rng.integers(1, w - 1))
            plan.wall(r, c, min(h - 2, r + n - 1), c)


def _room_grid(rows: int, cols: int, room: int) -> _Plan:
    """``rows x cols`` open rooms of ``room x room`` cells, one-cell walls between them, a doorway in the middle
    of every shared wall (upstream's RoomGrid)."""
    plan = _Plan(rows * room + rows - 1, cols * room + cols - 1)
    mid = room // 2
    for i in range(1, rows):
        r = i * (room + 1) - 1
        plan.wall(r, 0, r, plan.shape[1] - 1)
    for j in range(1, cols):
        c = j * (room + 1) - 1
        plan.wall(0, c, plan.shape[0] - 1, c)
    for i in range(rows):
        for j in range(cols):
            r0, c0 = i * (room + 1), j * (room + 1)
            if i + 1 < rows:
                plan.open(r0 + room, c0 + mid, r0 + room, c0 + mid)
            if j + 1 < cols:
                plan.open(r0 + mid, c0 + room, r0 + mid, c0 + room)
    return plan


def _radial(hub: int, arms: int, length: int, first_angle: float = 0.0) -> tuple[_Plan, list]:
    """Solid wall with an open square hub in the middle and ``arms`` one-cell corridors reaching ``length`` cells
    from its centre at equal angles; the plan is ``2 * length + 1`` on a side. Returns it and each arm's end."""
    plan = _Plan(2 * length + 1, 2 * length + 1, fill=WALL)
    center = length
    half = hub // 2
    plan.open(center - half, center - half, center + half, center + half)
    ends = []
    for k in range(arms):
        angle = first_angle + 2 * math.pi * k / arms
        prev = (center, center)
        for step in range(1, 2 * length + 1):
            t = step / 2
            cell = (center - round(t * math.sin(angle)), center + round(t * math.cos(angle)))
            if cell[0] != prev[0] and cell[1] != prev[1]:  # a diagonal step: open a corner so it stays 4-connected
                plan.open(prev[0], cell[1], prev[0], cell[1])
            plan.open(*cell, *cell)
            prev = cell
        ends.append(prev)
    return plan, ends


def _rings(size: int) -> np.ndarray:
    """A ``size x size`` (odd) swirl: concentric square walls two cells apart, each with one gap, the gaps on
    alternating sides, so the way in winds half around every ring to the open centre cell."""
    pat = np.full((size, size), EMPTY, dtype=np.uint8)
    mid = size // 2
    for k, off in enumerate(range(0, mid, 2)):
        lo, hi = off, size - 1 - off
        pat[lo, lo : hi + 1] = WALL
        pat[hi, lo : hi + 1] = WALL
        pat[lo : hi + 1, lo] = WALL
        pat[lo : hi + 1, hi] = WALL
        if k % 2 == 0:
            pat[lo, mid] = EMPTY  # gap at the top of even rings, at the bottom of odd ones
        else:
            pat[hi, mid] = EMPTY
    return pat


# ----------------------------------------------------------------------------------------------------------
# The maps. Sizes are of the inside; every map gets a one-cell wall border (upstream's border_width: 1).


def emptyspace_withinsight(rng: np.random.Generator) -> _Plan:
    """12x12 open room; three altars inside the agent's view, a few steps away."""
    plan = _Plan(12, 12)
    plan.agent(6, 2)
    plan.scatter_altars(rng, 3, (6, 2), (3, 8), spacing=3, sight="in")
    return plan


def emptyspace_outofsight(rng: np.random.Generator) -> _Plan:
    """25x25 open room; three altars out of view, about 15 steps from the agent."""
    plan = _Plan(25, 25)
    plan.agent(12, 12)
    plan.scatter_altars(rng, 3, (12, 12), (12, 18), spacing=8, sight="out")
    return plan


def emptyspace_sparse(rng: np.random.Generator) -> _Plan:
    """45x45 open room; three altars far from the agent and from each other."""
    plan = _Plan(45, 45)
    plan.agent(22, 22)
    plan.scatter_altars(rng, 3, (22, 22), (15, 24), spacing=15, sight="out")
    return plan


def emptyspace_sparse_medium(rng: np.random.Generator) -> _Plan:
    """A 4x4 grid of empty 11x11 rooms joined by doorways; four altars in rooms away from the agent's."""
    plan = _room_grid(4, 4, 11)
    plan.agent(5, 5)
    plan.scatter_altars(rng, 4, (5, 5), (20, 80), spacing=12)
    return plan


def walls_withinsight(rng: np.random.Generator) -> _Plan:
    """13x13 room split by a wall with gaps at both ends; three altars in view on the far side."""
    plan = _Plan(13, 13)
    plan.wall(1, 6, 11, 6)
    plan.agent(6, 4)
    plan.altars((4, 8), (6, 9), (8, 8))
    return plan


def walls_outofsight(rng: np.random.Generator) -> _Plan:
    """25x25 room with two long walls in a Z; the agent at the top, three altars out of view at the bottom."""
    plan = _Plan(25, 25)
    plan.wall(8, 0, 8, 17)
    plan.wall(16, 7, 16, 24)
    plan.agent(3, 3)
    plan.altars((20, 4), (22, 14), (19, 21))
    return plan


def walls_sparse(rng: np.random.Generator) -> _Plan:
    """41x41 room with 28 scattered wall segments; three altars far apart."""
    plan = _Plan(41, 41)
    _random_segments(plan, rng, 28, (3, 9))
    plan.open(19, 19, 21, 21)
    plan.fill_pockets()
    plan.agent(20, 20)
    plan.scatter_altars(rng, 3, (20, 20), (14, 40), spacing=14, sight="out")
    return plan


def cylinder(rng: np.random.Generator) -> _Plan:
    """The agent inside a long tube closed at one end; three altars outside it, around the closed end."""
    plan = _Plan(21, 41)
    plan.wall(8, 4, 8, 34)
    plan.wall(12, 4, 12, 34)
    plan.wall(8, 34, 12, 34)
    plan.agent(10, 32)
    plan.altars((3, 30), (17, 28), (4, 21))
    return plan


def cylinder_easy(rng: np.random.Generator) -> _Plan:
    """A short tube open at both ends; the agent outside, three altars inside near the left opening."""
    plan = _Plan(15, 31)
    plan.wall(5, 8, 5, 22)
    plan.wall(9, 8, 9, 22)
    plan.agent(12, 3)
    plan.altars((7, 10), (6, 13), (8, 15))
    return plan


def obstacles0(rng: np.random.Generator) -> _Plan:
    """One wall between the agent and three altars."""
    plan = _Plan(11, 15)
    plan.wall(2, 7, 8, 7)
    plan.agent(5, 2)
    plan.altars((5, 11), (3, 12), (7, 12))
    return plan


def obstacles1(rng: np.random.Generator) -> _Plan:
    """Five wall blocks between the agent and three altars."""
    plan = _Plan(21, 21)
    for r0, c0, r1, c1 in ((3, 6, 6, 8), (9, 8, 12, 11), (15, 6, 18, 8), (6, 13, 9, 15), (13, 13, 16, 15)):
        plan.wall(r0, c0, r1, c1)
    plan.agent(10, 1)
    plan.altars((4, 18), (10, 19), (16, 18))
    return plan


def obstacles2(rng: np.random.Generator) -> _Plan:
    """A U-shaped trap: the agent inside the U facing its closed end, one altar in view behind it."""
    plan = _Plan(21, 25)
    plan.wall(6, 9, 14, 9)
    plan.wall(6, 3, 6, 9)
    plan.wall(14, 3, 14, 9)
    plan.agent(10, 6)
    plan.altars((10, 11), (5, 18), (15, 21))
    return plan


def obstacles3(rng: np.random.Generator) -> _Plan:
    """A switchback: four walls across the room, open at alternating ends; the altars past the last one."""
    plan = _Plan(25, 25)
    plan.wall(5, 0, 5, 19)
    plan.wall(10, 5, 10, 24)
    plan.wall(15, 0, 15, 19)
    plan.wall(20, 5, 20, 24)
    plan.agent(2, 2)
    plan.altars((22, 4), (23, 12), (22, 20))
    return plan


def corridors(rng: np.random.Generator) -> _Plan:
    """One-cell corridors branching off a central spine; three altars at the ends of three of them."""
    plan = _Plan(31, 31, fill=WALL)
    plan.open(1, 15, 29, 15)
    for k, r in enumerate((2, 7, 12, 18, 23, 28)):
        if k % 2 == 0:
            plan.open(r, 1, r, 15)
        else:
            plan.open(r, 15, r, 29)
    # Bends: some corridors turn before their end.
    plan.open(2, 1, 5, 1)
    plan.open(18, 29, 21, 29)
    plan.open(12, 3, 14, 3)
    plan.agent(15, 15)
    plan.altars((5, 1), (21, 29), (23, 1))
    return plan


def labyrinth(rng: np.random.Generator) -> _Plan:
    """31x31 depth-first maze of 3x3 rooms with one-cell walls; the agent top-left, three altars in the centre."""
    rooms = 8
    maze = carve_maze(2 * rooms + 1, 2 * rooms + 1, rng, "dfs")
    # Scale: an odd maze index is a 3-cell room, an even one a 1-cell wall; the outer ring is the map border.
    sizes = [1 if i % 2 == 0 else 3 for i in range(2 * rooms + 1)]
    grid = np.repeat(np.repeat(maze, sizes, axis=0), sizes, axis=1)[1:-1, 1:-1]
    plan = _Plan(*grid.shape)
    plan.grid[:] = grid
    plan.agent(1, 1)
    room_center = lambda i: 4 * i + 1  # noqa: E731 - the centre cell of room i
    plan.altars((room_center(3), room_center(3)), (room_center(3), room_center(4)), (room_center(4), room_center(4)))
    return plan


def radialmaze(rng: np.random.Generator) -> _Plan:
    """A 5x5 hub with eight arms reaching 10 cells out; three altars at the ends of three arms."""
    plan, ends = _radial(5, 8, 10)
    plan.agent(10, 10)
    plan.altars(ends[1], ends[4], ends[6])
    return plan


def radial_mini(rng: np.random.Generator) -> _Plan:
    """A 3x3 hub with four short arms; altars at the ends of three."""
    plan, ends = _radial(3, 4, 5)
    plan.agent(5, 5)
    plan.altars(ends[0], ends[1], ends[3])
    return plan


def radial_small(rng: np.random.Generator) -> _Plan:
    """A 3x3 hub with six arms reaching 7 cells out; altars at the ends of three."""
    plan, ends = _radial(3, 6, 7, first_angle=math.pi / 6)
    plan.agent(7, 7)
    plan.altars(ends[0], ends[2], ends[4])
    return plan


def radial_large(rng: np.random.Generator) -> _Plan:
    """A 7x7 hub with twelve arms reaching 20 cells out; altars at the ends of three."""
    plan, ends = _radial(7, 12, 20)
    plan.agent(20, 20)
    plan.altars(ends[2], ends[7], ends[10])
    return plan


def honeypot(rng: np.random.Generator) -> _Plan:
    """Three altars in a walled pot whose only door faces away from the agent."""
    plan = _Plan(21, 25)
    plan.box(5, 10, 15, 18, doors=((10, 18),))
    plan.agent(10, 3)
    plan.altars((8, 13), (10, 14), (12, 13))
    return plan


def knotty(rng: np.random.Generator) -> _Plan:
    """A 31x31 maze of one-cell corridors with loops knotted in; three altars in the rooms farthest away."""
    grid = carve_maze(33, 33, rng, "kruskal", branching=0.15)[1:-1, 1:-1]
    plan = _Plan(*grid.shape)
    plan.grid[:] = grid
    plan.agent(0, 0)
    plan.scatter_altars(rng, 3, (0, 0), (40, 200), spacing=12)
    return plan


def memory_palace(rng: np.random.Generator) -> _Plan:
    """A hall with three closed rooms on each side, one door each; altars deep in three of the rooms."""
    plan = _Plan(21, 29)
    plan.wall(8, 0, 8, 28)
    plan.wall(12, 0, 12, 28)
    for c in (9, 19):
        plan.wall(0, c, 7, c)
        plan.wall(13, c, 20, c)
    for c in (4, 14, 24):
        plan.open(8, c, 8, c)
        plan.open(12, c, 12, c)
    plan.agent(10, 14)
    plan.altars((1, 1), (19, 17), (2, 27))
    return plan


def swirls(rng: np.random.Generator) -> _Plan:
    """Three 11x11 swirls, each with an altar at its centre, around the agent."""
    plan = _Plan(29, 41)
    swirl = _rings(11)
    corners = ((2, 3), (2, 27), (16, 15))
    for r, c in corners:
        plan.grid[r : r + 11, c : c + 11] = swirl
    plan.agent(14, 20)
    plan.altars(*((r + 5, c + 5) for r, c in corners))
    return plan


def thecube(rng: np.random.Generator) -> _Plan:
    """A large hollow cube with one door on the side away from the agent; three altars inside; four small solid
    cubes around it."""
    plan = _Plan(27, 27)
    plan.box(6, 6, 20, 20, doors=((20, 13),))
    for r, c in ((1, 1), (1, 23), (23, 1), (23, 23)):
        plan.wall(r, c, r + 2, c + 2)
    plan.agent(2, 13)
    plan.altars((10, 10), (13, 16), (16, 11))
    return plan


def walkaround(rng: np.random.Generator) -> _Plan:
    """A long wall between the agent and three altars, open only at its far right end; one altar in view."""
    plan = _Plan(21, 31)
    plan.wall(10, 0, 10, 26)
    plan.agent(12, 4)
    plan.altars((8, 4), (5, 9), (6, 15))
    return plan


def wanderout(rng: np.random.Generator) -> _Plan:
    """The agent shut in a room whose one door is hidden behind an inner wall; three altars far outside."""
    plan = _Plan(35, 35)
    plan.box(12, 12, 22, 22, doors=((12, 20),))
    plan.wall(14, 16, 14, 21)
    plan.agent(17, 17)
    plan.altars((2, 3), (31, 6), (4, 30))
    return plan


def smoke_open(rng: np.random.Generator) -> _Plan:
    """7x7 open room, one altar in view."""
    plan = _Plan(7, 7)
    plan.agent(3, 1)
    plan.altars((3, 5))
    return plan


def smoke_wall(rng: np.random.Generator) -> _Plan:
    """7x9 room with a wall between the agent and one altar."""
    plan = _Plan(7, 9)
    plan.wall(0, 4, 4, 4)
    plan.agent(2, 1)
    plan.altars((2, 7))
    return plan


# Upstream's order (configs/sim/navigation.yaml).
NAVIGATION_MAPS: dict[str, Callable[[np.random.Generator], _Plan]] = {
    f.__name__: f
    for f in (
        emptyspace_withinsight,
        emptyspace_outofsight,
        emptyspace_sparse,
        emptyspace_sparse_medium,
        walls_withinsight,
        walls_outofsight,
        walls_sparse,
        cylinder,
        cylinder_easy,
        obstacles0,
        obstacles1,
        obstacles2,
        obstacles3,
        corridors,
        labyrinth,
        radialmaze,
        honeypot,
        knotty,
        memory_palace,
        radial_large,
        radial_mini,
        radial_small,
        swirls,
        thecube,
        walkaround,
        wanderout,
    )
}
SMOKE_MAPS: dict[str, Callable[[np.random.Generator], _Plan]] = {"open": smoke_open, "wall": smoke_wall}


@cache
def _build(name: str) -> Level:
    draw = NAVIGATION_MAPS.get(name) or SMOKE_MAPS.get(name.removeprefix("smoke_"))
    if draw is None:
        raise ValueError(
            f"navigation map {name!r} does not exist; use one of {list(NAVIGATION_MAPS)} or "
            f"{['smoke_' + n for n in SMOKE_MAPS]}"
        )
    plan = draw(np.random.default_rng(zlib.crc32(name.encode())))
    level = Level(add_border(plan.grid, 1, WALL), ["navigation", name])
    level.grid.flags.writeable = False  # cached and shared
    return level


def navigation_map(name: str) -> Level:
    """The fixed map of navigation sim ``name`` (or ``smoke_open`` / ``smoke_wall``); the same on every call."""
    level = _build(name)
    return Level(level.grid.copy(), list(level.labels))
