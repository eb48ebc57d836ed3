"""Bad input to the env, its map builders, its config files and its adapters fails at once (at validation or
construction, never at the first reset or step) with a message naming the field, the value and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from metta.interface import Environment
from metta.mettagrid import MettaGridConfig, MettaGridEnv, MettaGridGymEnv, MettaGridPettingZooEnv
from metta.mettagrid.config_loader import ConfigError
from metta.mettagrid.map import CylinderWorld, MazeMap, MultiRoom, RandomMap, TerrainMap, VariedTerrain
from metta.mettagrid.vecenv import make_vecenv


def env_cfg(builder: dict, num_agents: int = 2) -> dict:
    return {"game": {"num_agents": num_agents, "max_steps": 5, "map_builder": builder}}


SMALL = env_cfg({"type": "random", "width": 8, "height": 8, "agents": 2, "objects": {"altar": 2}, "border_width": 1})


# --------------------------------------------------------------------------------------------------------
# Map object counts that cannot fit


def test_random_map_counts_that_cannot_fit_are_rejected_by_the_config():
    builder = {"type": "random", "width": 9, "height": 9, "agents": 2, "objects": {"altar": 5000}}
    with pytest.raises(ValidationError) as err:
        MettaGridEnv(env_cfg(builder))  # the real env: it fails while validating, before any map is built
    text = str(err.value)
    assert "map_builder.random" in text
    assert "objects={'altar': 5000} + agents=2 = 5002 cells do not fit in the 81 free cells" in text
    assert "width=9, height=9" in text and "width and height of at least 71" in text


def test_a_huge_count_fails_at_validation_without_building_anything():
    # 10**9 altars used to build a list of 10**9 cell codes before the fit was checked.
    for builder in (
        {"type": "random", "width": 9, "height": 9, "objects": {"altar": 10**9}},
        {"type": "random", "width": 9, "height": 9, "agents": {"agent": 10**9}},
        {"type": "varied_terrain", "width": 20, "height": 20, "objects": {"altar": 10**9}},
        {"type": "cylinder_world", "width": 20, "height": 20, "agents": 10**9},
        {"type": "maze", "width": 11, "height": 11, "objects": {"altar": 10**9}},
        {"type": "terrain", "dir": "varied_terrain/balanced_small", "objects": {"altar": 10**9}},
        {"type": "multi_room", "num_rooms": 2, "room": {"type": "random", "objects": {"altar": 10**9}}},
    ):
        with pytest.raises(ValidationError, match=r"altar': 1000000000|agent': 1000000000|agents=1000000000"):
            MettaGridConfig.model_validate(env_cfg(builder))


@pytest.mark.parametrize(
    "builder, where",
    [
        (
            {"type": "varied_terrain", "width": 10, "height": 10, "agents": 2, "objects": {"altar": 99}},
            "the 100 free cells of the 10x10 map",
        ),
        ({"type": "cylinder_world", "width": 10, "height": 10, "agents": 101}, "the 100 free cells of the 10x10 map"),
        (
            {"type": "maze", "width": 5, "height": 5, "agents": 2, "objects": {"altar": 6}},
            "the 7 free cells of a 5x5 maze",
        ),
        (
            {"type": "maze", "width": 5, "height": 5, "branching": 1.0, "agents": 2, "objects": {"altar": 7}},
            "the 8 free cells of a 5x5 maze",
        ),
        (
            {"type": "terrain", "dir": "varied_terrain/dense_small", "agents": 2, "objects": {"altar": 5000}},
            "varied_terrain/dense_small' (55x55)",
        ),
        (
            {"type": "terrain", "width": 10, "height": 10, "agents": 2, "objects": {"altar": 99}},
            "the 100 free cells of a 10x10 map",
        ),
        (
            {
                "type": "multi_room",
                "num_rooms": 2,
                "room": {"type": "random", "width": 3, "height": 3, "agents": 1, "objects": {"altar": 9}},
            },
            "the 9 free cells",
        ),
    ],
)
def test_other_builders_reject_counts_that_cannot_fit(builder, where):
    with pytest.raises(ValidationError, match=r"do not fit") as err:
        MettaGridConfig.model_validate(env_cfg(builder))
    assert where in str(err.value)


def test_maze_counts_that_just_fit_are_accepted_and_built():
    maze = MazeMap(width=5, height=5, agents=2, objects={"altar": 5})  # exactly its 7 open cells
    level = maze.build(np.random.default_rng(0))
    assert level.num_agents() == 2 and level.count("altar") == 5


def test_builders_check_the_fit_before_allocating_even_without_validation():
    # model_construct skips validation: build() still checks the counts before making any list of codes.
    rng = np.random.default_rng(0)
    huge = {"altar": 10**9}
    cases = [
        RandomMap.model_construct(width=9, height=9, objects=huge, agents=0, border_width=0, border_object="wall"),
        MazeMap.model_construct(
            width=11,
            height=11,
            algorithm="kruskal",
            branching=0.0,
            start_pos=None,
            end_pos=None,
            agents=1,
            objects=huge,
            border_width=0,
            border_object="wall",
        ),
        VariedTerrain.model_construct(
            width=20,
            height=20,
            objects=huge,
            agents=0,
            style="balanced",
            occupancy_threshold=0.66,
            border_width=0,
            border_object="wall",
        ),
        CylinderWorld.model_construct(
            width=20, height=20, objects=huge, agents=0, border_width=0, border_object="wall"
        ),
        TerrainMap.model_construct(
            dir="varied_terrain/balanced_small",
            file=0,
            agents=1,
            objects=huge,
            border_width=0,
            border_object="wall",
            width=None,
            height=None,
        ),
    ]
    for builder in cases:
        with pytest.raises(ValueError, match=r"1000000000.*do not fit"):
            builder.build(rng)


def test_terrain_sets_check_the_drawn_map_before_placing():
    # 2500 altars pass validation (a small map can be 55x55) but no dense small map has that many open cells.
    builder = TerrainMap(dir="varied_terrain/dense_small", file=0, agents=2, objects={"altar": 2500})
    message = r"terrain dir='varied_terrain/dense_small' map 0: .* do not fit in its \d+ free cells"
    with pytest.raises(ValueError, match=message):
        builder.build(np.random.default_rng(0))


def test_varied_terrain_checks_the_generated_open_cells_before_placing():
    # Validation allows up to width x height; the generated obstacles leave fewer open cells.
    builder = VariedTerrain(width=30, height=30, style="dense", agents=0, objects={"altar": 899})
    message = r"varied_terrain: objects=\{'altar': 899\} .* do not fit in the \d+ free cells of the generated 30x30"
    with pytest.raises(ValueError, match=message):
        builder.build(np.random.default_rng(0))


def test_multi_room_names_the_nested_room_field():
    with pytest.raises(ValidationError, match=r"room\.random"):
        room = {"type": "random", "width": 3, "height": 3, "objects": {"altar": 10}}
        MultiRoom.model_validate({"num_rooms": 2, "room": room})


# --------------------------------------------------------------------------------------------------------
# Broken YAML in curriculum and env config files

BROKEN = "game:\n  num_agents: [2,\n  max_steps: 10\nfoo: bar: baz\n"


def assert_names_file_and_place(err: BaseException, path) -> None:
    text = str(err)
    assert str(path) in text and "not valid YAML at line " in text and ", column " in text, text
    assert "<unicode string>" not in text


def test_broken_yaml_env_config_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "broken_env.yaml"
    path.write_text("game:\n  num_agents: 2\n   max_steps: 10\n")
    with pytest.raises(ConfigError) as err:
        MettaGridEnv(str(path))
    assert_names_file_and_place(err.value, path)
    assert f"{path}: not valid YAML at line 3, column 13" in str(err.value)


def test_broken_yaml_curriculum_names_the_file_through_environment(tmp_path):
    path = tmp_path / "broken_curriculum.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as err:
        Environment(curriculum_path=str(path), device="cpu", vectorization="serial")
    assert_names_file_and_place(err.value, path)


def test_broken_yaml_in_an_included_defaults_file_names_that_file(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text("game: {num_agents: 2\n")
    child = tmp_path / "child.yaml"
    child.write_text("defaults:\n  - parent\ngame:\n  max_steps: 5\n")
    with pytest.raises(ConfigError) as err:
        MettaGridEnv(str(child))
    assert_names_file_and_place(err.value, parent)


def test_a_yaml_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("game:\n  label: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{path}: cannot be read as a UTF-8 YAML file"):
        MettaGridEnv(str(path))


# --------------------------------------------------------------------------------------------------------
# Env keywords and seeds


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_envs": 2.5}, r"num_envs=2.5 must be a positive integer"),
        ({"num_envs": True}, r"num_envs=True must be a positive integer"),
        ({"num_envs": "3"}, r"num_envs='3' must be a positive integer"),
        ({"num_envs": 0}, r"num_envs=0 must be a positive integer"),
        ({"render_mode": "bogus"}, r"render_mode='bogus' is not supported; use one of \['human', 'ansi'\] or None"),
        ({"seed": -1}, r"seed=-1 is out of range; use an integer from 0 to 4294967295"),
        ({"seed": 2**32}, r"seed=4294967296 is out of range"),
        ({"seed": 1.5}, r"seed=1.5 must be an integer from 0 to 4294967295"),
        ({"seed": True}, r"seed=True must be an integer"),
        ({"is_training": "yes"}, r"is_training='yes' must be True or False"),
        ({"auto_reset": None}, r"auto_reset=None must be True or False"),
        ({"timings": 1}, r"timings=1 must be True or False"),
        ({"env_offset": -1}, r"env_offset=-1 must be a non-negative integer"),
    ],
)
def test_env_keywords_are_checked_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MettaGridEnv(SMALL, **kwargs)


@pytest.mark.parametrize(
    "seed, message",
    [
        (-1, r"seed=-1 is out of range; use an integer from 0 to 4294967295"),
        (1.5, r"seed=1.5 must be an integer"),
        (2**70, r"seed=1180591620717411303424 is out of range"),
        ("3", r"seed='3' must be an integer"),
    ],
)
def test_reset_seed_is_checked(seed, message):
    env = MettaGridEnv(SMALL)
    with pytest.raises(ValueError, match=message):
        env.reset(seed=seed)
    obs, _ = env.reset(seed=np.uint32(2**32 - 1))  # the whole range works, numpy integers too
    assert obs.shape[0] == 2


def test_environment_and_vecenv_check_the_seed_before_building():
    with pytest.raises(ValueError, match=r"seed=1180591620717411303424 is out of range"):
        Environment(env_config=SMALL, seed=2**70, device="cpu", vectorization="serial")
    with pytest.raises(ValueError, match=r"seed=-3 is out of range"):
        make_vecenv(SMALL, "serial", num_envs=1, seed=-3)
    with pytest.raises(ValueError, match=r"render_mode='bogus' is not supported"):
        make_vecenv(SMALL, "serial", num_envs=1, render_mode="bogus")
    vec = make_vecenv(SMALL, "serial", num_envs=1)
    with pytest.raises(ValueError, match=r"seed=1.5 must be an integer"):
        vec.async_reset(1.5)
    vec.close()


# --------------------------------------------------------------------------------------------------------
# Adapters

ROOM = [
    ["wall", "wall", "wall", "wall", "wall"],
    ["wall", "agent.agent", "altar", "agent.agent", "wall"],
    ["wall", "wall", "wall", "wall", "wall"],
]


@pytest.mark.parametrize("adapter", [MettaGridPettingZooEnv, MettaGridGymEnv])
def test_a_level_with_an_unknown_cell_fails_at_construction(adapter):
    room = [row[:] for row in ROOM]
    room[1][2] = "bogus_cell"
    agents = 2
    if adapter is MettaGridGymEnv:
        room[1][3] = "empty"
        agents = 1
    message = r"level= does not fit the game config of the task: the map has a 'bogus_cell' cell.*objects: \["
    with pytest.raises(ValueError, match=message):
        adapter(env_cfg({"type": "random", "width": 5, "height": 5, "agents": agents}, agents), level=room)


def test_a_level_with_an_unknown_agent_group_fails_at_construction():
    room = [row[:] for row in ROOM]
    room[1][3] = "agent.ghosts"
    with pytest.raises(ValueError, match=r"level= .* agent of group 'ghosts', but game.groups only has \['agent'\]"):
        MettaGridPettingZooEnv(env_cfg({"type": "random", "width": 5, "height": 5, "agents": 2}), level=room)


@pytest.mark.parametrize("adapter, agents", [(MettaGridPettingZooEnv, 2), (MettaGridGymEnv, 1)])
@pytest.mark.parametrize("flag", ["is_training", "timings"])
def test_adapter_flags_must_be_bools(adapter, agents, flag):
    cfg = env_cfg({"type": "random", "width": 5, "height": 5, "agents": agents}, agents)
    with pytest.raises(ValueError, match=rf"{flag}='yes' must be True or False"):
        adapter(cfg, **{flag: "yes"})


def test_adapter_reset_seed_is_checked():
    pz = MettaGridPettingZooEnv(SMALL)
    with pytest.raises(ValueError, match=r"seed=-1 is out of range"):
        pz.reset(seed=-1)
    gym_env = MettaGridGymEnv(env_cfg({"type": "random", "width": 5, "height": 5, "agents": 1}, 1))
    with pytest.raises(ValueError, match=r"seed=1.5 must be an integer"):
        gym_env.reset(seed=1.5)


def test_pettingzoo_step_rejects_unknown_agent_names():
    env = MettaGridPettingZooEnv(SMALL)
    env.reset(seed=0)
    actions = {a: np.zeros(2, np.int32) for a in env.agents}
    message = r"actions for \['agent_7'\], which are not live agents.*'agent_0' \.\. 'agent_1'"
    with pytest.raises(ValueError, match=message):
        env.step({**actions, "agent_7": np.zeros(2, np.int32)})
    with pytest.raises(ValueError, match=r"missing \['agent_1'\]"):
        env.step({"agent_0": np.zeros(2, np.int32), "agent_x": np.zeros(2, np.int32)})
    env.step(actions)  # the env is unharmed


def test_pettingzoo_infos_are_independent_per_agent_copies_with_own_stats():
    cfg = env_cfg({"type": "random", "width": 6, "height": 6, "agents": 2, "border_width": 1})
    env = MettaGridPettingZooEnv(cfg)
    env.reset(seed=3)
    noop = env.action_names.index("noop")
    move = env.action_names.index("move")
    infos = {}
    while env.agents:
        # agent_0 tries to move every step, agent_1 does nothing: their own stats differ.
        _, _, _, _, infos = env.step({"agent_0": np.array([move, 0]), "agent_1": np.array([noop, 0])})
    a, b = infos["agent_0"], infos["agent_1"]
    for key in ("game", "agent", "attributes"):
        assert a[key] == b[key] and a[key] is not b[key]
    assert a["episode_rewards"] is not b["episode_rewards"]
    a["agent"]["poisoned"] = 1.0
    a["attributes"]["seed"] = -7
    assert "poisoned" not in b["agent"] and b["attributes"]["seed"] != -7
    # Each agent's own stats; the env-wide 'agent' entry is their mean.
    own0, own1 = a["agent_stats"], b["agent_stats"]
    assert any(k.startswith("action.move") for k in own0) and not any(k.startswith("action.move") for k in own1)
    assert own1.get("action.noop.success") == 5.0
    for name, mean in b["agent"].items():
        assert mean == pytest.approx((own0.get(name, 0.0) + own1.get(name, 0.0)) / 2)
    assert [a["agent_episode_reward"], b["agent_episode_reward"]] == a["episode_rewards"]
