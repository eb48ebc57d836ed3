"""``Environment(...)``: the factory variants, its batching rule, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import metta.api
from metta.interface import Environment
from metta.interface.environment import default_env_config

SMALL = {
    "game": {
        "num_agents": 2,
        "max_steps": 50,
        "map_builder": {"type": "random", "width": 10, "height": 10, "agents": 2, "objects": {"altar": 2}},
    }
}


def one_step(vec):
    obs, rewards, terminals, truncations, infos, env_ids, masks = vec.recv()
    assert obs.shape == (vec.agents_per_batch, 200, 3) and obs.dtype == np.uint8
    assert rewards.dtype == np.float32 and terminals.dtype == np.bool_ and masks.all()
    vec.send(np.zeros((vec.agents_per_batch, 2), dtype=np.int32))
    return env_ids


def test_api_reexports_interface():
    assert metta.api.Environment is Environment


def test_default_env_is_the_navigation_env():
    vec = Environment(device="cpu", seed=0)
    try:
        assert vec.num_envs == vec.batch_size == 1
        assert vec.num_agents == 4
        assert sorted(vec.action_names) == sorted(
            ["noop", "move", "rotate", "put_items", "get_items", "attack", "swap", "change_color"]
        )
        game = vec.driver_env.current_task().env_cfg().game
        assert set(game.objects) == {"wall", "block", "mine_red", "generator_red", "altar"}
        assert game.objects["altar"].cooldown == 1000 and game.objects["altar"].initial_resource_count == 1
        assert "blueprint" in game.inventory_item_names and len(game.inventory_item_names) == 10
        # Four 32x32 rooms (3-cell border each) in a 2x2 grid with 6-cell walls between and around them.
        assert vec.driver_env.map_size() == (2 * 38 + 3 * 6, 2 * 38 + 3 * 6)
        for _ in range(3):
            one_step(vec)
    finally:
        vec.close()


def test_default_env_honours_num_agents_width_height():
    vec = Environment(num_agents=3, width=12, height=8, seed=1)
    try:
        assert vec.num_agents == 3 and vec.driver_env.agents_per_env == 3
        # 3 rooms in a 1 row x ... grid_shape(3) = 2 rows x 2 columns; each room (8+6) x (12+6).
        assert vec.driver_env.map_size() == (2 * 14 + 3 * 6, 2 * 18 + 3 * 6)
        one_step(vec)
    finally:
        vec.close()


def test_env_config_dict_and_overrides():
    vec = Environment(env_config=SMALL, num_envs=3, seed=2)
    assert vec.num_envs == vec.batch_size == 3 and vec.num_agents == 6
    assert vec.driver_env.map_size() == (10, 10)
    one_step(vec)
    vec.close()

    vec = Environment(env_config=default_env_config(2, 10, 10), num_agents=3, width=11, height=9, seed=2)
    assert vec.num_agents == 3
    assert vec.driver_env.map_size() == (2 * 15 + 3 * 6, 2 * 17 + 3 * 6)
    vec.close()

    vec = Environment(env_config=SMALL, num_agents=3, width=7, height=6, seed=2)
    assert vec.num_agents == 3 and vec.driver_env.map_size() == (6, 7)
    vec.close()


def test_async_factor_is_honoured():
    vec = Environment(env_config=SMALL, batch_size=2, async_factor=3, num_workers=3, seed=3)
    assert (vec.num_envs, vec.batch_size, vec.num_workers) == (6, 2, 3)
    assert [int(one_step(vec)[0]) for _ in range(4)] == [0, 4, 8, 0]
    vec.close()

    vec = Environment(env_config=SMALL, num_envs=8, async_factor=2, num_workers=2, seed=3)
    assert (vec.num_envs, vec.batch_size) == (8, 4)
    vec.close()


def test_async_factor_with_multiprocessing():
    vec = Environment(
        env_config=SMALL, batch_size=1, async_factor=2, num_workers=2, vectorization="multiprocessing", seed=4
    )
    try:
        assert (vec.num_envs, vec.batch_size, vec.agents_per_batch) == (2, 1, 2)
        assert [int(one_step(vec)[0]) for _ in range(4)] == [0, 2, 0, 2]
    finally:
        vec.close()


def test_curriculum_paths(tmp_path):
    vec = Environment(curriculum_path="/env/mettagrid/curriculum/navigation/bucketed", num_envs=2, seed=5)
    assert vec.num_agents == 8
    one_step(vec)
    assert len(vec.get_curriculum_state()) == 1
    vec.close()

    path = tmp_path / "env.yaml"
    path.write_text(
        "game:\n  num_agents: 2\n  map_builder:\n    type: random\n    width: 9\n    height: 9\n    agents: 2\n"
    )
    vec = Environment(curriculum_path=str(path), seed=5)
    assert vec.num_agents == 2 and vec.driver_env.map_size() == (9, 9)
    vec.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_envs": 5, "async_factor": 2}, "num_envs=5 is not divisible by async_factor=2"),
        ({"num_envs": 8, "batch_size": 2, "async_factor": 2}, r"num_envs=8 must equal batch_size \* async_factor"),
        ({"batch_size": 2, "async_factor": 2, "num_workers": 1}, "num_workers=1 is not a multiple of async_factor=2"),
        ({"async_factor": 0}, "async_factor=0 must be a positive integer"),
        ({"width": 3}, "width=3 is not allowed for the default env"),
        ({"curriculum_path": "/env/mettagrid/curriculum/navigation/bucketed", "width": 20}, "width/height cannot"),
        ({"env_config": SMALL, "num_envs": 3, "num_workers": 2}, "num_envs=3 is not divisible by num_workers=2"),
        (
            {
                "env_config": {"game": {"map_builder": {"type": "ascii", "map_data": "#@#"}, "num_agents": 1}},
                "width": 5,
            },
            "no width",
        ),
        ({"vectorization": "ray"}, "vectorization='ray' is not supported"),
    ],
)
def test_bad_arguments_are_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Environment(**kwargs)
