"""Map builders: determinism, placement counts, maze structure, room layout, terrain sets, legacy configs."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from metta.mettagrid.config import GameConfig
from metta.mettagrid.map import (
    NAVIGATION_TERRAIN_DIRS,
    TERRAIN_DIRS,
    AsciiMap,
    CylinderWorld,
    MapBuilderConfig,
    MazeMap,
    MultiRoom,
    RandomMap,
    TerrainMap,
    VariedTerrain,
    terrain,
    upgrade_legacy_builder,
)
from metta.mettagrid.map.level import BLOCK, EMPTY, WALL, Level, agent_codes, cell_code
from metta.mettagrid.map.maze import bfs_distances, label_components
from metta.mettagrid.map.terrain import MAPS_PER_SET, base_map, build_terrain_sets, size_label, terrain_sets_in

ALTAR = cell_code("altar")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def reachable_everything(level: Level) -> bool:
    """Agents share one region of open/agent cells, and every non-wall object touches that region."""
    g = level.grid
    is_agent = np.isin(g, agent_codes())
    labels, _ = label_components((g == EMPTY) | is_agent)
    agents = np.argwhere(is_agent)
    region = labels == labels[tuple(agents[0])]
    if not all(region[tuple(a)] for a in agents):
        return False
    pad = np.pad(region, 1)
    touches = pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]
    objects = (g != EMPTY) & (g != WALL) & (g != BLOCK) & ~is_agent
    return bool(np.all(touches[objects]))


BUILDERS = [
    MazeMap(width=21, height=15, agents=2, objects={"altar": 3}),
    MazeMap(algorithm="prim", width=15, height=21, branching=0.3),
    MultiRoom(room=RandomMap(width=6, height=5, agents=1, objects={"altar": 2}), num_rooms=3),
    VariedTerrain(width=40, height=35, style="balanced", objects={"altar": 5}, agents=3),
    VariedTerrain(width=40, height=35, style="maze", objects={"altar": 5}, agents=3),
    CylinderWorld(width=45, height=40, objects={"altar": 4}, agents=2),
    TerrainMap(dir="varied_terrain/dense_small", agents=4, objects={"altar": 6}, border_width=2),
]


# ---------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.type)
def test_same_seed_same_map_and_different_seeds_differ(builder):
    a, b = builder.build(rng(7)), builder.build(rng(7))
    assert a.grid.dtype == np.uint8
    np.testing.assert_array_equal(a.grid, b.grid)
    assert a.labels == b.labels
    others = [builder.build(rng(s)).grid for s in range(8, 12)]
    assert any(o.shape != a.grid.shape or not np.array_equal(o, a.grid) for o in others)


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.type)
def test_builders_round_trip_through_the_union(builder):
    data = builder.model_dump()
    again = TypeAdapter(MapBuilderConfig).validate_python(data)
    assert type(again) is type(builder)
    np.testing.assert_array_equal(again.build(rng(3)).grid, builder.build(rng(3)).grid)


# ---------------------------------------------------------------------------------------------- counts

TEAMS = {"team_1": 2, "team_2": 1}
OBJECTS = {"altar": 2, "mine_red": 3}


@pytest.mark.parametrize(
    "builder",
    [
        MazeMap(width=15, height=15, agents=TEAMS, objects=OBJECTS),
        VariedTerrain(width=50, height=50, style="dense", agents=TEAMS, objects=OBJECTS),
        CylinderWorld(width=50, height=50, agents=TEAMS, objects=OBJECTS),
        TerrainMap(dir="varied_terrain/maze_medium", agents=TEAMS, objects=OBJECTS),
    ],
    ids=lambda b: b.type,
)
def test_agent_and_object_counts(builder):
    for seed in range(3):
        level = builder.build(rng(seed))
        assert level.count("agent.team_1") == 2
        assert level.count("agent.team_2") == 1
        assert level.num_agents() == 3
        assert level.count("altar") == 2
        assert level.count("mine_red") == 3


def test_multi_room_counts_and_labels():
    room = RandomMap(width=7, height=6, agents=2, objects={"altar": 1})
    level = MultiRoom(room=room, num_rooms=4, border_width=2).build(rng())
    assert level.num_agents() == 8
    assert level.count("altar") == 4
    assert level.labels == ["random"]


# ---------------------------------------------------------------------------------------------- mazes


def open_graph(grid: np.ndarray) -> tuple[int, int]:
    """(open cells, 4-adjacent pairs of open cells)."""
    open_ = grid != WALL
    edges = np.count_nonzero(open_[1:, :] & open_[:-1, :]) + np.count_nonzero(open_[:, 1:] & open_[:, :-1])
    return int(open_.sum()), int(edges)


@pytest.mark.parametrize("algorithm", ["kruskal", "prim", "dfs"])
@pytest.mark.parametrize("size", [(5, 3), (11, 11), (21, 31), (51, 41)])
def test_maze_is_perfect_and_connected(algorithm, size):
    width, height = size
    for seed in range(3):
        level = MazeMap(algorithm=algorithm, width=width, height=height).build(rng(seed))
        grid = level.grid
        assert grid.shape == (height, width)
        # Outer wall intact; rooms at odd cells are open; every even/even cell is wall.
        assert np.all(grid[0, :] == WALL) and np.all(grid[-1, :] == WALL)
        assert np.all(grid[:, 0] == WALL) and np.all(grid[:, -1] == WALL)
        assert np.all(grid[1::2, 1::2] != WALL)
        assert np.all(grid[::2, ::2] == WALL)
        n, e = open_graph(grid)
        assert e == n - 1, "a perfect maze's open cells form a tree"
        dist = bfs_distances(grid != WALL, 1, 1)
        assert np.all(dist[grid != WALL] >= 0), "every open cell is reachable from the start"


def test_maze_agent_at_start_and_altar_at_end():
    maze = MazeMap(width=11, height=9, agents=3, objects={"altar": 1})
    level = maze.build(rng(1))
    assert cell_code("agent.agent") == level.grid[1, 1]
    assert level.grid[7, 9] == ALTAR  # default end_pos = (width-2, height-2) as (x, y)
    # The other agents take the open cells nearest the start by walking distance.
    dist = bfs_distances(level.grid != WALL, 1, 1)
    agent_d = np.sort(dist[np.isin(level.grid, agent_codes())])
    open_d = np.sort(dist[level.grid != WALL])
    np.testing.assert_array_equal(agent_d, open_d[:3])


def test_maze_positions_are_x_y_and_snap_to_rooms():
    level = MazeMap(width=11, height=15, start_pos=(8, 2), end_pos=(1, 13)).build(rng(0))
    assert level.grid[1, 7] == cell_code("agent.agent")  # (x=8, y=2) -> column 7, row 1
    assert level.grid[13, 1] == ALTAR


def test_maze_branching_creates_loops_but_stays_connected():
    perfect = MazeMap(width=31, height=31, branching=0.0).build(rng(2)).grid
    loopy = MazeMap(width=31, height=31, branching=0.5).build(rng(2)).grid
    n0, e0 = open_graph(perfect)
    n1, e1 = open_graph(loopy)
    assert e0 == n0 - 1
    assert e1 - (n1 - 1) > 50  # about half of the ~225 remaining inner walls opened
    dist = bfs_distances(loopy != WALL, 1, 1)
    assert np.all(dist[loopy != WALL] >= 0)


def test_maze_size_errors_name_the_field():
    with pytest.raises(ValidationError, match=r"width=10 must be odd.*use 11"):
        MazeMap(width=10, height=11)
    with pytest.raises(ValidationError, match=r"height=1 must be odd"):
        MazeMap(width=11, height=1)
    with pytest.raises(ValidationError, match=r"start_pos=\(12, 1\) is outside"):
        MazeMap(width=11, height=11, start_pos=(12, 1))
    with pytest.raises(ValidationError, match="branching"):
        MazeMap(width=11, height=11, branching=1.5)
    with pytest.raises(ValidationError, match="algorithm"):
        MazeMap(algorithm="wilson")


def test_maze_too_many_objects():
    # Rejected when the config is validated (the open cells of a maze are known before it is carved).
    message = r"objects=\{'altar': 5\} \+ agents=3 = 8 cells do not fit in the 7 free cells"
    with pytest.raises(ValidationError, match=message):
        MazeMap(width=5, height=5, agents=3, objects={"altar": 5})


# ---------------------------------------------------------------------------------------------- multi room


def test_multi_room_grid_layout_and_size():
    room = RandomMap(width=7, height=5, agents=1)
    for n, (rows, cols) in {1: (1, 1), 2: (1, 2), 3: (2, 2), 4: (2, 2), 5: (2, 3), 9: (3, 3), 10: (3, 4)}.items():
        level = MultiRoom(room=room, num_rooms=n, border_width=2).build(rng())
        assert level.grid.shape == (rows * 5 + (rows + 1) * 2, cols * 7 + (cols + 1) * 2)
        assert level.num_agents() == n
    # Slots without a room are solid border.
    level = MultiRoom(room=room, num_rooms=3, border_width=1).build(rng())
    assert np.all(level.grid[7:12, 9:16] == WALL)
    assert np.all(level.grid[0, :] == WALL) and np.all(level.grid[:, 8] == WALL)


def test_multi_room_pads_rooms_of_different_sizes():
    room = TerrainMap(dir="varied_terrain/balanced_small", agents=1, objects={"altar": 2}, border_width=3)
    level = MultiRoom(room=room, num_rooms=4, border_width=6).build(rng(5))
    # Rebuild the rooms from the same rng to learn their sizes.
    r = rng(5)
    rooms = [room.build(r) for _ in range(4)]
    ch, cw = max(x.height for x in rooms), max(x.width for x in rooms)
    assert level.grid.shape == (2 * ch + 3 * 6, 2 * cw + 3 * 6)
    for i, sub in enumerate(rooms):
        r0, c0 = 6 + (i // 2) * (ch + 6), 6 + (i % 2) * (cw + 6)
        np.testing.assert_array_equal(level.grid[r0 : r0 + sub.height, c0 : c0 + sub.width], sub.grid)
        assert np.all(level.grid[r0 : r0 + ch, c0 + sub.width : c0 + cw] == WALL)
        assert np.all(level.grid[r0 + sub.height : r0 + ch, c0 : c0 + cw] == WALL)
    assert level.labels[0] == "varied_terrain" and level.labels[1] == "balanced_small"
    assert level.num_agents() == 4 and level.count("altar") == 8


def test_multi_room_nests_and_merges_labels_in_order():
    inner = {"type": "multi_room", "room": {"type": "ascii", "map_data": "@.\n._"}, "num_rooms": 2}
    outer = MultiRoom.model_validate({"room": inner, "num_rooms": 3})
    assert isinstance(outer.room, MultiRoom) and isinstance(outer.room.room, AsciiMap)
    level = outer.build(rng())
    assert level.num_agents() == 6 and level.count("altar") == 6
    assert level.labels == ["ascii"]
    # terrain_maps_nohearts mixes sizes, so its rooms carry different size labels: union, first seen first.
    room = TerrainMap(dir="terrain_maps_nohearts", agents=1)
    multi = MultiRoom(room=room, num_rooms=6)
    r = rng(4)
    expected: list[str] = []
    for _ in range(6):
        expected += [x for x in room.build(r).labels if x not in expected]
    assert multi.build(rng(4)).labels == expected
    assert len(expected) > 2


# ---------------------------------------------------------------------------------------------- terrains


def test_terrain_dir_lists():
    assert len(TERRAIN_DIRS) == 16 and len(set(TERRAIN_DIRS)) == 16
    assert sorted(TERRAIN_DIRS) == sorted(NAVIGATION_TERRAIN_DIRS)
    assert NAVIGATION_TERRAIN_DIRS[:4] == [
        "terrain_maps_nohearts",
        "varied_terrain/balanced_large",
        "varied_terrain/balanced_medium",
        "varied_terrain/balanced_small",
    ]
    assert NAVIGATION_TERRAIN_DIRS[-1] == "varied_terrain/cylinder-world_small"


@pytest.mark.parametrize("dir", TERRAIN_DIRS)
def test_terrain_sets_sizes_labels_and_connectivity(dir):
    for index in (0, 1, MAPS_PER_SET - 1):
        base = base_map(dir, index)
        assert not np.any(np.isin(base.grid, agent_codes())) and not np.any(base.grid == ALTAR)
        _, sizes = label_components(base.grid == EMPTY)
        assert len(sizes) == 1, "a base map's open space is one region"
        level = TerrainMap(dir=dir, file=index, agents=2, objects={"altar": 5}).build(rng(index))
        assert level.grid.shape == base.grid.shape
        size = size_label(level.grid.size)
        if dir != "terrain_maps_nohearts":
            assert dir.endswith(size)
            assert level.labels == ["varied_terrain", dir.split("/")[1], size]
        else:
            assert level.labels == ["terrain_maps_nohearts", size]
        assert {"small": (0, 4000), "medium": (4000, 6000), "large": (6000, 10**9)}[size][0] <= level.grid.size
        assert level.num_agents() == 2 and level.count("altar") == 5
        # Nothing placed on the outermost ring, and every placed cell had an open 4-neighbour in the base map.
        placed = np.argwhere(level.grid != base.grid)
        h, w = base.grid.shape
        assert np.all((placed[:, 0] > 0) & (placed[:, 0] < h - 1) & (placed[:, 1] > 0) & (placed[:, 1] < w - 1))
        for r, c in placed:
            assert EMPTY in (base.grid[r - 1, c], base.grid[r + 1, c], base.grid[r, c - 1], base.grid[r, c + 1])
        assert reachable_everything(level)


def test_placement_quick_test_agrees_with_the_full_search():
    """The local ring test may only say "connected" where the search over the whole map says so too; where it
    cannot tell, the search decides. Dense draws (many objects) exercise both branches."""
    from metta.mettagrid.map.terrain import _finish_placement, _objects_keep_open_space_connected, _open_space_connected

    g = rng(5)
    quick_yes = search_no = 0
    for dir in ("varied_terrain/maze_small", "varied_terrain/dense_small", "terrain_maps_nohearts"):
        base = base_map(dir, 0)
        w = base.grid.shape[1]
        assert base.open_connected
        for n_objects in (2, 10, 60):
            for _ in range(150):
                obj = g.choice(base.object_candidates, size=n_objects, replace=False)
                padded = (obj // w + 1) * (w + 2) + obj % w + 1
                full = _open_space_connected(base.open_padded, base.n_empty, w + 2, padded)
                quick = _objects_keep_open_space_connected(base.open_padded, w + 2, padded)
                assert full or not quick, (dir, obj)
                _, ok = _finish_placement(base.open_padded, base.n_empty, True, w, obj[:1], obj, 0)
                assert ok == full
                quick_yes += quick
                search_no += not full
    assert quick_yes > 100 and search_no > 10  # both outcomes were seen
    # A ring corridor has no cut cell, yet two objects on it split it; the quick test must not pass them.
    ring = np.ones((7, 7), dtype=bool)
    ring[2:5, 2:5] = False
    ring[[0, -1], :] = False
    ring[:, [0, -1]] = False
    padded_mask = np.zeros((9, 9), dtype=bool)
    padded_mask[1:-1, 1:-1] = ring
    open_padded = padded_mask.ravel()
    two = np.array([(1 + 1) * 9 + 3 + 1, (5 + 1) * 9 + 3 + 1])  # top and bottom of the ring
    assert not _objects_keep_open_space_connected(open_padded, 9, two)
    assert not _open_space_connected(open_padded, int(ring.sum()), 9, two)
    # One object leaves it connected: the quick test cannot see that (the detour is not local), the search can.
    assert not _objects_keep_open_space_connected(open_padded, 9, two[:1])
    assert _open_space_connected(open_padded, int(ring.sum()), 9, two[:1])


def test_terrain_sets_are_fixed_and_independent_of_the_episode_rng():
    a = TerrainMap(dir="varied_terrain/sparse_medium", file=3, agents=0).build(rng(1)).grid
    b = TerrainMap(dir="varied_terrain/sparse_medium", file=3, agents=0).build(rng(99)).grid
    np.testing.assert_array_equal(a, b)
    assert base_map("varied_terrain/sparse_medium", 3) is base_map("varied_terrain/sparse_medium", 3)
    # The rng picks the map when `file` is not given.
    picked = {TerrainMap(dir="varied_terrain/sparse_medium", agents=0).build(rng(s)).grid.shape for s in range(12)}
    assert len(picked) > 1


def test_terrain_border_and_missing_objects():
    plain = TerrainMap(dir="terrain_maps_nohearts", file=0, agents=1, objects={"altar": 2})
    bordered = plain.model_copy(update={"border_width": 3, "border_object": "block"})
    a, b = plain.build(rng(0)), bordered.build(rng(0))
    assert b.grid.shape == (a.height + 6, a.width + 6)
    np.testing.assert_array_equal(b.grid[3:-3, 3:-3], a.grid)
    assert np.all(b.grid[:3, :] == BLOCK)
    # Objects the map already has count toward the request: blocks live in the base map.
    base_blocks = int(base_map("terrain_maps_nohearts", 0).counts[BLOCK])
    more = TerrainMap(dir="terrain_maps_nohearts", file=0, agents=0, objects={"block": base_blocks + 2})
    assert more.build(rng()).count("block") == base_blocks + 2
    fewer = TerrainMap(dir="terrain_maps_nohearts", file=0, agents=0, objects={"block": 0})
    assert fewer.build(rng()).count("block") == base_blocks


@pytest.mark.parametrize("style", ["all-sparse", "balanced", "dense", "maze"])
def test_varied_terrain_styles_connected(style):
    density = []
    for seed in range(4):
        builder = VariedTerrain(width=60, height=60, style=style, objects={"altar": 10}, agents=4)
        level = builder.build(rng(seed))
        assert level.grid.shape == (60, 60)
        assert level.num_agents() == 4 and level.count("altar") == 10
        assert level.labels == ["varied_terrain", style]
        assert reachable_everything(level)
        density.append(np.mean((level.grid == WALL) | (level.grid == BLOCK)))
    assert 0 < np.mean(density) < 0.66
    if style == "dense":
        assert np.mean(density) > 0.2


def test_varied_terrain_objects_have_clearance():
    level = VariedTerrain(width=60, height=60, style="balanced", objects={"altar": 8}, agents=4).build(rng(1))
    pad = np.pad(level.grid, 1, constant_values=WALL)
    for r, c in np.argwhere((level.grid == ALTAR) | np.isin(level.grid, agent_codes())):
        window = pad[r : r + 3, c : c + 3].copy()
        window[1, 1] = EMPTY
        assert np.all(window == EMPTY)


def test_cylinder_world_connected():
    for seed in range(4):
        level = CylinderWorld(width=70, height=60, objects={"altar": 6}, agents=4).build(rng(seed))
        assert level.labels == ["cylinder_world"]
        assert np.count_nonzero(level.grid == WALL) > 100
        assert reachable_everything(level)


def test_terrain_errors():
    with pytest.raises(ValidationError, match=r"dir='varied_terrain/huge' is not a known terrain set.*balanced_small"):
        TerrainMap(dir="varied_terrain/huge")
    with pytest.raises(ValidationError, match=r"file=64 is out of range"):
        TerrainMap(dir="terrain_maps_nohearts", file=64)
    with pytest.raises(ValueError, match="do not fit"):
        TerrainMap(dir="varied_terrain/dense_small", file=0, objects={"altar": 5000}).build(rng())
    with pytest.raises(ValueError, match="do not fit"):
        VariedTerrain(width=10, height=10, agents=101).build(rng())
    with pytest.raises(ValidationError, match="style"):
        VariedTerrain(style="sparse")
    with pytest.raises(ValidationError, match="extra"):
        TerrainMap(dirs="terrain_maps_nohearts")


# ---------------------------------------------------------------------------------------------- legacy configs


UPSTREAM_NAV = {
    "_target_": "metta.mettagrid.room.multi_room.MultiRoom",
    "num_rooms": 4,
    "border_width": 6,
    "room": {
        "_target_": "metta.mettagrid.room.navigation.terrain_from_numpy.TerrainFromNumpy",
        "border_width": 3,
        "agents": 1,
        "objects": {"altar": 10},
        "dir": "varied_terrain/balanced_medium",
    },
}


def test_upgrade_legacy_multi_room_in_game_config():
    game = GameConfig(num_agents=4, map_builder=UPSTREAM_NAV)
    builder = game.map_builder
    assert isinstance(builder, MultiRoom) and isinstance(builder.room, TerrainMap)
    assert builder.room.dir == "varied_terrain/balanced_medium"
    level = builder.build(rng())
    assert level.num_agents() == 4 and level.count("altar") == 40
    assert "_target_" in UPSTREAM_NAV  # the caller's dict is left alone


@pytest.mark.parametrize(
    "target, cls, extra",
    [
        ("metta.mettagrid.room.random.Random", RandomMap, {"width": 9, "height": 9, "agents": 2}),
        ("metta.mettagrid.room.maze.MazeKruskal", MazeMap, {"width": 9, "height": 9, "seed": None}),
        ("metta.mettagrid.room.maze.MazePrim", MazeMap, {"width": 9, "height": 9}),
        ("metta.mettagrid.room.ascii.Ascii", AsciiMap, {"map_data": "@."}),
        ("metta.mettagrid.room.navigation.varied_terrain.VariedTerrain", VariedTerrain, {"width": 30, "height": 30}),
        ("metta.mettagrid.room.navigation.cylinder_world.CylinderWorld", CylinderWorld, {"width": 30, "height": 30}),
        ("mettagrid.room.terrain_from_numpy.TerrainFromNumpy", TerrainMap, {}),
    ],
)
def test_upgrade_each_legacy_target(target, cls, extra):
    builder = TypeAdapter(MapBuilderConfig).validate_python(upgrade_legacy_builder({"_target_": target, **extra}))
    assert isinstance(builder, cls)
    if cls is MazeMap:
        assert builder.algorithm == ("prim" if target.endswith("Prim") else "kruskal")


def test_upgrade_legacy_errors_and_passthrough():
    with pytest.raises(ValidationError, match=r"_target_='metta.map.mapgen.MapGen' has no equivalent"):
        GameConfig(map_builder={"_target_": "metta.map.mapgen.MapGen", "width": 10})
    with pytest.raises(ValueError, match="seed=3 is not supported"):
        upgrade_legacy_builder({"_target_": "metta.mettagrid.room.maze.MazePrim", "seed": 3})
    with pytest.raises(ValidationError, match="has no equivalent"):
        MultiRoom(room={"_target_": "metta.mettagrid.room.cooperation.Something"}, num_rooms=2)
    builder = RandomMap(width=3, height=3)
    assert upgrade_legacy_builder(builder) is builder
    assert upgrade_legacy_builder({"type": "random"}) == {"type": "random"}
    assert isinstance(TypeAdapter(MapBuilderConfig).validate_python({"type": "terrain_from_numpy"}), TerrainMap)


def test_terrain_set_at_a_custom_size():
    from metta.mettagrid.map.terrain import TerrainMap

    builder = TerrainMap(
        dir="terrain_maps_nohearts", width=20, height=16, agents=1, objects={"altar": 3}, border_width=2
    )
    a = builder.build(np.random.default_rng(5))
    b = builder.build(np.random.default_rng(5))
    assert a.grid.shape == (16 + 4, 20 + 4)
    assert np.array_equal(a.grid, b.grid)
    assert a.count("altar") == 3 and a.num_agents() == 1
    with pytest.raises(ValueError, match="give both"):
        TerrainMap(dir="terrain_maps_nohearts", width=20)


def test_terrain_sets_go_to_disk_whole_and_load_back_the_same(tmp_path, monkeypatch):
    """A set built whole is written to the cache; a process without it in memory loads every map back, the same
    grids and placement data as generating it; a damaged file is ignored (and the set generated again)."""
    monkeypatch.setenv("METTA_TERRAIN_CACHE", str(tmp_path))
    one_set = ("varied_terrain/dense_small", (12, 10))
    build_terrain_sets([one_set])
    (path,) = tmp_path.iterdir()
    assert path.name.startswith("varied_terrain__dense_small__12x10__")
    built = {i: terrain._BASE_MAPS.pop((one_set[0], i, one_set[1])) for i in range(MAPS_PER_SET)}
    loaded = base_map(one_set[0], 5, one_set[1])  # loads the whole set from disk
    assert all((one_set[0], i, one_set[1]) in terrain._BASE_MAPS for i in range(MAPS_PER_SET))
    for name in ("grid", "candidates", "object_candidates", "open_padded", "counts"):
        assert np.array_equal(getattr(loaded, name), getattr(built[5], name)), name
    assert (loaded.n_empty, loaded.open_connected, loaded.labels) == (
        built[5].n_empty,
        built[5].open_connected,
        built[5].labels,
    )
    path.write_bytes(b"not a set")
    for i in range(MAPS_PER_SET):
        terrain._BASE_MAPS.pop((one_set[0], i, one_set[1]))
    assert np.array_equal(base_map(one_set[0], 5, one_set[1]).grid, built[5].grid)  # generated again
    monkeypatch.setenv("METTA_TERRAIN_CACHE", "off")
    assert terrain.terrain_cache_dir() is None


def test_the_terrain_sets_of_a_curriculum_are_found_by_drawing_from_a_copy():
    from metta.mettagrid.env import make_curriculum

    curriculum = make_curriculum("/env/mettagrid/curriculum/navigation/bucketed")
    state = curriculum.state_dict()
    sets = terrain_sets_in(curriculum)
    assert sorted(d for d, _ in sets) == sorted(terrain.NAVIGATION_TERRAIN_DIRS)
    assert all(shape is None for _, shape in sets)
    assert str(curriculum.state_dict()) == str(state), "the curriculum itself drew nothing"
