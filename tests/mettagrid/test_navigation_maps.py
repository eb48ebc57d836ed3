"""The navigation suite's maps: each builds, is fixed, has one agent, and every altar can be reached."""

from __future__ import annotations

import numpy as np
import pytest

from metta.mettagrid.map import navigation
from metta.mettagrid.map.level import EMPTY, WALL, cell_code
from metta.mettagrid.map.maze import bfs_distances, carve_maze
from metta.mettagrid.map.navigation import NAVIGATION_MAPS, SMOKE_MAPS, navigation_map

ALL_MAPS = list(NAVIGATION_MAPS) + [f"smoke_{name}" for name in SMOKE_MAPS]
UPSTREAM_NAMES = """emptyspace_withinsight emptyspace_outofsight emptyspace_sparse emptyspace_sparse_medium
walls_withinsight walls_outofsight walls_sparse cylinder cylinder_easy obstacles0 obstacles1 obstacles2 obstacles3
corridors labyrinth radialmaze honeypot knotty memory_palace radial_large radial_mini radial_small swirls thecube
walkaround wanderout""".split()


def test_the_suite_has_upstreams_26_maps():
    assert list(NAVIGATION_MAPS) == UPSTREAM_NAMES


@pytest.mark.parametrize("name", ALL_MAPS)
def test_map_has_one_agent_and_every_altar_is_reachable(name):
    grid = navigation_map(name).grid
    agent, altar = cell_code("agent.agent"), cell_code("altar")
    assert set(np.unique(grid).tolist()) <= {EMPTY, WALL, agent, altar}
    assert np.count_nonzero(grid == agent) == 1 and np.count_nonzero(grid == altar) >= 1
    # Walled in: nothing walks off the map.
    assert (grid[0] == WALL).all() and (grid[-1] == WALL).all() and (grid[:, 0] == WALL).all()
    assert (grid[:, -1] == WALL).all()
    (r,), (c,) = np.nonzero(grid == agent)
    dist = bfs_distances((grid == EMPTY) | (grid == agent), int(r), int(c))
    for ar, ac in zip(*np.nonzero(grid == altar)):
        # An altar is used from a neighbouring cell: one of its four neighbours must be reachable.
        around = [dist[ar + dr, ac + dc] for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))]
        assert max(around) >= 0, f"{name}: the altar at ({ar}, {ac}) cannot be reached"


def test_maps_are_fixed_per_name():
    first = {name: navigation_map(name).grid for name in ALL_MAPS}
    navigation._build.cache_clear()  # draw them again from scratch
    for name in ALL_MAPS:
        assert np.array_equal(navigation_map(name).grid, first[name]), name
    assert not np.array_equal(first["knotty"][:5, :5], first["labyrinth"][:5, :5])
    copy = navigation_map("labyrinth")
    copy.grid[1, 1] = WALL  # a caller's copy: the cached map is not changed
    assert navigation_map("labyrinth").grid[1, 1] != WALL


def test_labyrinth_is_a_depth_first_maze_of_3x3_rooms():
    grid = navigation_map("labyrinth").grid
    assert grid.shape == (33, 33)  # 31 x 31 inside the border
    inner = grid[1:-1, 1:-1]
    for i in range(8):
        for j in range(8):
            room = inner[4 * i : 4 * i + 3, 4 * j : 4 * j + 3]
            assert not (room == WALL).any()  # every room is open, 3x3
    assert (inner[3::4, 3::4] == WALL).all()  # the corners between rooms are wall
    # The altars sit in the centre rooms.
    rows, cols = np.nonzero(grid == cell_code("altar"))
    assert rows.min() >= 13 and rows.max() <= 19 and cols.min() >= 13 and cols.max() <= 19


def test_unknown_map_name():
    with pytest.raises(ValueError, match="does not exist.*labyrinth"):
        navigation_map("labyrinthh")


def test_dfs_maze_is_a_spanning_tree():
    for seed in range(3):
        grid = carve_maze(21, 31, np.random.default_rng(seed), "dfs")
        open_ = grid != WALL
        edges = np.count_nonzero(open_[1:] & open_[:-1]) + np.count_nonzero(open_[:, 1:] & open_[:, :-1])
        assert edges == open_.sum() - 1  # a tree: one edge fewer than cells
        dist = bfs_distances(open_, 1, 1)
        assert (dist[open_] >= 0).all()
