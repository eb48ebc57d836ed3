"""Mazes (randomized Kruskal, Prim or depth-first search) plus small compiled grid helpers shared by the other builders.

A maze of odd size ``h x w`` has *rooms* at odd (row, col) positions and walls everywhere else; carving the
maze opens the wall cell between two adjacent rooms. Union-find and the Prim frontier are sequential by
nature, so they run in small numba functions; all randomness is drawn up front from the caller's
``numpy.random.Generator`` so that the map depends only on the generator state.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numba
import numpy as np
from pydantic import Field, field_validator, model_validator

from metta.mettagrid.map.base import Count, MapBuilder, add_border, check_counts_fit
from metta.mettagrid.map.level import EMPTY, WALL, Level, cell_code
from metta.mettagrid.map.random_map import agent_cells

# ----------------------------------------------------------------------------------------------------------
# Compiled helpers. ``cache=True`` keeps the compiled code on disk so that only the first process pays the
# (sub-second) compile cost.


@numba.njit(cache=True)
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving keeps the trees flat
        x = parent[x]
    return x


@numba.njit(cache=True)
def _kruskal(ea: np.ndarray, eb: np.ndarray, order: np.ndarray, n_rooms: int) -> np.ndarray:
    """Open edges in ``order`` whenever they join two different components: a uniform spanning tree."""
    parent = np.arange(n_rooms)
    opened = np.zeros(len(ea), dtype=np.bool_)
    joined = 0
    for k in range(len(order)):
        e = order[k]
        a = _find(parent, ea[e])
        b = _find(parent, eb[e])
        if a != b:
            parent[a] = b
            opened[e] = True
            joined += 1
            if joined == n_rooms - 1:
                break
    return opened


@numba.njit(cache=True)
def _prim(
    adj_start: np.ndarray, adj_edge: np.ndarray, adj_room: np.ndarray, start: int, n_rooms: int, u: np.ndarray
) -> np.ndarray:
    """Randomized Prim: grow the tree from ``start`` by opening a uniformly chosen frontier edge.

    ``adj_*`` is a CSR adjacency (room -> incident edges and the room across each). ``u`` holds uniform
    draws in [0, 1), one per frontier pop; every edge enters the frontier at most twice.
    """
    n_edges = len(adj_edge) // 2
    opened = np.zeros(n_edges, dtype=np.bool_)
    in_tree = np.zeros(n_rooms, dtype=np.bool_)
    frontier_edge = np.empty(len(adj_edge), dtype=np.int64)
    frontier_room = np.empty(len(adj_edge), dtype=np.int64)
    size = 0
    in_tree[start] = True
    for k in range(adj_start[start], adj_start[start + 1]):
        frontier_edge[size] = adj_edge[k]
        frontier_room[size] = adj_room[k]
        size += 1
    draw = 0
    while size > 0:
        i = int(u[draw] * size)
        draw += 1
        e = frontier_edge[i]
        room = frontier_room[i]
        # Swap-remove keeps the pop O(1).
        size -= 1
        frontier_edge[i] = frontier_edge[size]
        frontier_room[i] = frontier_room[size]
        if in_tree[room]:
            continue
        in_tree[room] = True
        opened[e] = True
        for k in range(adj_start[room], adj_start[room + 1]):
            if not in_tree[adj_room[k]]:
                frontier_edge[size] = adj_edge[k]
                frontier_room[size] = adj_room[k]
                size += 1
    return opened


@numba.njit(cache=True)
def _dfs(
    adj_start: np.ndarray, adj_edge: np.ndarray, adj_room: np.ndarray, start: int, n_rooms: int, u: np.ndarray
) -> np.ndarray:
    """Randomized depth-first search (the recursive backtracker): from the room on top of the stack, open the edge
    to a uniformly chosen unvisited neighbour, or go back when there is none. Long corridors, few branches.

    ``u`` holds uniform draws in [0, 1), one per opened edge (``n_rooms - 1`` at most).
    """
    n_edges = len(adj_edge) // 2
    opened = np.zeros(n_edges, dtype=np.bool_)
    visited = np.zeros(n_rooms, dtype=np.bool_)
    stack = np.empty(n_rooms, dtype=np.int64)
    cand_edge = np.empty(4, dtype=np.int64)
    cand_room = np.empty(4, dtype=np.int64)
    stack[0] = start
    top = 1
    visited[start] = True
    draw = 0
    while top > 0:
        room = stack[top - 1]
        k = 0
        for j in range(adj_start[room], adj_start[room + 1]):
            if not visited[adj_room[j]]:
                cand_edge[k] = adj_edge[j]
                cand_room[k] = adj_room[j]
                k += 1
        if k == 0:
            top -= 1
            continue
        i = int(u[draw] * k)
        draw += 1
        opened[cand_edge[i]] = True
        visited[cand_room[i]] = True
        stack[top] = cand_room[i]
        top += 1
    return opened


@numba.njit(cache=True)
def bfs_distances(passable: np.ndarray, start_r: int, start_c: int) -> np.ndarray:
    """4-connected BFS distances from (start_r, start_c) over ``passable`` cells; -1 where unreachable."""
    h, w = passable.shape
    dist = np.full((h, w), -1, dtype=np.int32)
    if not passable[start_r, start_c]:
        return dist
    queue = np.empty(h * w, dtype=np.int64)
    head = 0
    tail = 0
    dist[start_r, start_c] = 0
    queue[tail] = start_r * w + start_c
    tail += 1
    while head < tail:
        cur = queue[head]
        head += 1
        r = cur // w
        c = cur % w
        d = dist[r, c] + 1
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nr = r + dr
            nc = c + dc
            if 0 <= nr < h and 0 <= nc < w and passable[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = d
                queue[tail] = nr * w + nc
                tail += 1
    return dist


@numba.njit(cache=True)
def label_components(passable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of ``passable``: (labels int32 with -1 outside, size of each component)."""
    h, w = passable.shape
    labels = np.full((h, w), -1, dtype=np.int32)
    sizes = np.zeros(h * w, dtype=np.int64)
    queue = np.empty(h * w, dtype=np.int64)
    n = 0
    for r0 in range(h):
        for c0 in range(w):
            if not passable[r0, c0] or labels[r0, c0] >= 0:
                continue
            labels[r0, c0] = n
            head = 0
            tail = 1
            queue[0] = r0 * w + c0
            while head < tail:
                cur = queue[head]
                head += 1
                r = cur // w
                c = cur % w
                for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    nr = r + dr
                    nc = c + dc
                    if 0 <= nr < h and 0 <= nc < w and passable[nr, nc] and labels[nr, nc] < 0:
                        labels[nr, nc] = n
                        queue[tail] = nr * w + nc
                        tail += 1
            sizes[n] = tail
            n += 1
    return labels, sizes[:n]


# ----------------------------------------------------------------------------------------------------------
# Maze carving


@lru_cache(maxsize=64)
def _maze_edges(height: int, width: int):
    """Edges between adjacent rooms of an odd ``height x width`` maze, and their CSR adjacency."""
    rh, rw = (height - 1) // 2, (width - 1) // 2
    room = np.arange(rh * rw).reshape(rh, rw)
    ii, jj = np.meshgrid(np.arange(rh), np.arange(rw), indexing="ij")
    # Horizontal neighbours (i, j)-(i, j+1): the wall between them is at (2i+1, 2j+2).
    ha, hb = room[:, :-1].ravel(), room[:, 1:].ravel()
    hr, hc = (2 * ii[:, :-1] + 1).ravel(), (2 * jj[:, :-1] + 2).ravel()
    # Vertical neighbours (i, j)-(i+1, j): the wall is at (2i+2, 2j+1).
    va, vb = room[:-1, :].ravel(), room[1:, :].ravel()
    vr, vc = (2 * ii[:-1, :] + 2).ravel(), (2 * jj[:-1, :] + 1).ravel()
    ea, eb = np.concatenate([ha, va]), np.concatenate([hb, vb])
    wall_flat = np.concatenate([hr * width + hc, vr * width + vc])
    # CSR adjacency: every edge appears once from each end.
    src = np.concatenate([ea, eb])
    dst = np.concatenate([eb, ea])
    eid = np.concatenate([np.arange(len(ea)), np.arange(len(ea))])
    order = np.argsort(src, kind="stable")
    adj_start = np.zeros(rh * rw + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=rh * rw), out=adj_start[1:])
    room_flat = ((2 * ii + 1) * width + (2 * jj + 1)).ravel()
    arrays = (ea, eb, wall_flat, adj_start, eid[order], dst[order], room_flat)
    for a in arrays:
        a.flags.writeable = False  # cached and shared between calls
    return arrays


def carve_maze(
    height: int,
    width: int,
    rng: np.random.Generator,
    algorithm: str = "kruskal",
    branching: float = 0.0,
    start_room: int = 0,
) -> np.ndarray:
    """A ``uint8[height, width]`` maze of EMPTY and WALL with odd sides; rooms are at odd coordinates.

    With ``branching == 0`` the open cells form a tree (a perfect maze); otherwise that fraction of the
    remaining inner walls between rooms is also knocked down, creating loops.
    """
    ea, eb, wall_flat, adj_start, adj_edge, adj_room, room_flat = _maze_edges(height, width)
    n_rooms = len(room_flat)
    grid = np.full((height, width), WALL, dtype=np.uint8)
    flat = grid.ravel()
    flat[room_flat] = EMPTY
    if len(ea) == 0:
        return grid
    if algorithm == "kruskal":
        opened = _kruskal(ea, eb, rng.permutation(len(ea)), n_rooms)
    elif algorithm == "prim":
        opened = _prim(adj_start, adj_edge, adj_room, start_room, n_rooms, rng.random(2 * len(ea) + 1))
    elif algorithm == "dfs":
        opened = _dfs(adj_start, adj_edge, adj_room, start_room, n_rooms, rng.random(n_rooms))
    else:
        raise ValueError(f"maze algorithm={algorithm!r} is not supported; use 'kruskal', 'prim' or 'dfs'")
    if branching > 0:
        closed = np.flatnonzero(~opened)
        n_extra = int(round(branching * len(closed)))
        if n_extra > 0:
            opened[rng.choice(closed, size=n_extra, replace=False)] = True
    flat[wall_flat[opened]] = EMPTY
    return grid


def _to_odd(v: int) -> int:
    # Rooms sit at odd coordinates; like upstream, an even coordinate moves to the room just before it.
    return v if v % 2 == 1 else max(1, v - 1)


class MazeMap(MapBuilder):
    """A maze with agents at ``start_pos`` and the first object (an altar by default) at ``end_pos``.

    Positions are ``(x, y)`` = (column, row), as upstream's ``MazeKruskal``/``MazePrim``; even coordinates
    move to the neighbouring room cell. ``branching`` in [0, 1] is the fraction of the walls left after
    carving a perfect maze that are knocked down to create loops.
    """

    type: Literal["maze"] = "maze"
    algorithm: Literal["kruskal", "prim", "dfs"] = "kruskal"
    width: int = 11
    height: int = 11
    start_pos: tuple[int, int] | None = None
    end_pos: tuple[int, int] | None = None
    branching: float = Field(default=0.0, ge=0.0, le=1.0)
    agents: Count | dict[str, Count] = 1
    objects: dict[str, Count] = Field(default_factory=lambda: {"altar": 1})
    border_width: int = Field(default=0, ge=0)
    border_object: str = "wall"

    @field_validator("width", "height")
    @classmethod
    def _odd(cls, v: int, info) -> int:
        if v < 3 or v % 2 == 0:
            fix = v + 1 if v >= 3 else 3
            raise ValueError(
                f"maze {info.field_name}={v} must be odd and at least 3 (rooms sit at odd cells); use {fix}"
            )
        return v

    @model_validator(mode="after")
    def _positions_inside(self) -> MazeMap:
        for name in ("start_pos", "end_pos"):
            pos = getattr(self, name)
            if pos is None:
                continue
            x, y = pos
            if not (1 <= x <= self.width - 2 and 1 <= y <= self.height - 2):
                raise ValueError(
                    f"maze {name}={tuple(pos)} is outside the interior; x must be in 1..{self.width - 2} and "
                    f"y in 1..{self.height - 2} (positions are (x, y) = (column, row))"
                )
        self._check_fit()
        return self

    def open_cells(self) -> int:
        """How many cells of the maze are open: the same for every draw (a spanning tree of the rooms plus
        ``round(branching * walls left)`` more), so the fit of objects and agents is known before building."""
        rh, rw = (self.height - 1) // 2, (self.width - 1) // 2
        n_rooms = rh * rw
        n_edges = rh * (rw - 1) + (rh - 1) * rw
        closed = n_edges - (n_rooms - 1)
        return 2 * n_rooms - 1 + int(round(self.branching * closed))

    def _check_fit(self) -> None:
        check_counts_fit(
            "maze",
            self.objects,
            self.agents,
            self.open_cells(),
            f"a {self.width}x{self.height} maze (width={self.width}, height={self.height}, branching={self.branching})",
            "use a larger maze, a higher branching or fewer agents/objects",
        )

    def _rooms(self) -> tuple[tuple[int, int], tuple[int, int]]:
        sx, sy = self.start_pos if self.start_pos is not None else (1, 1)
        ex, ey = self.end_pos if self.end_pos is not None else (self.width - 2, self.height - 2)
        start = (_to_odd(sy), _to_odd(sx))
        end = (_to_odd(ey), _to_odd(ex))
        return start, end  # as (row, col)

    def build(self, rng: np.random.Generator) -> Level:
        (sr, sc), (er, ec) = self._rooms()
        start_room = ((sr - 1) // 2) * ((self.width - 1) // 2) + (sc - 1) // 2
        self._check_fit()  # again (model_construct, changes after validation): before any list of codes
        grid = carve_maze(self.height, self.width, rng, self.algorithm, self.branching, start_room)
        object_codes = [cell_code(name) for name, n in self.objects.items() for _ in range(n)]
        agents = agent_cells(self.agents)
        # The goal first, so agents never stand on it in tiny mazes.
        if object_codes:
            grid[er, ec] = object_codes[0]
        if agents:
            # Agents take the open cells closest to the start by walking distance (ties in row-major order).
            dist = bfs_distances(grid != WALL, sr, sc).ravel()
            free = np.flatnonzero((grid.ravel() == EMPTY) & (dist >= 0))
            free = free[np.argsort(dist[free], kind="stable")]
            grid.ravel()[free[: len(agents)]] = np.asarray(agents, dtype=np.uint8)
        rest = object_codes[1:]
        if rest:
            empty = np.flatnonzero(grid.ravel() == EMPTY)
            grid.ravel()[rng.choice(empty, size=len(rest), replace=False)] = np.asarray(rest, dtype=np.uint8)
        return Level(add_border(grid, self.border_width, cell_code(self.border_object)), ["maze"])
