"""Token observations: layout, ordering, dropping, window sizes, features; and bad-config errors."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from metta.mettagrid import constants as K
from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.game_tables import window_offsets


def make_env(ascii_map: str, num_agents: int = 1, **game) -> MettaGridEnv:
    game_cfg = {"num_agents": num_agents, "max_steps": 100, "map_builder": {"type": "ascii", "map_data": ascii_map}}
    game_cfg.update(game)
    env = MettaGridEnv({"game": game_cfg})
    env.reset(seed=0)
    return env


def tokens(obs_row: np.ndarray) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in t) for t in obs_row if t[0] != 0xFF]


def test_global_tokens_then_self_then_neighbours_by_distance():
    env = make_env("#####\n#.@.#\n#...#\n#####")
    obs = env.observations[0]
    toks = tokens(obs)
    center = 0x55
    assert toks[:4] == [
        (center, K.EPISODE_COMPLETION_PCT, 0),
        (center, K.LAST_ACTION, 0),
        (center, K.LAST_ACTION_ARG, 0),
        (center, K.LAST_REWARD, 0),
    ]
    # The agent itself: type 0, group, frozen, orientation, color.
    assert [t[1] for t in toks[4:9]] == [K.TYPE_ID, K.GROUP, K.FROZEN, K.ORIENTATION, K.COLOR]
    assert all(t[0] == center for t in toks[4:9])
    # Then walls in distance order: distance 1 only the wall above (row 4 of the window).
    assert toks[9] == (0x45, K.TYPE_ID, 1)
    distances = [abs((t[0] >> 4) - 5) + abs((t[0] & 15) - 5) for t in toks[9:]]
    assert distances == sorted(distances)
    assert obs.shape == (200, 3) and obs.dtype == np.uint8
    assert (obs[len(toks) :] == 0xFF).all()


def test_window_order_rows_then_left_before_right():
    cells = window_offsets(11, 11)
    assert len(cells) == 121
    assert [tuple(c[:2]) for c in cells[:5]] == [(0, 0), (-1, 0), (0, -1), (0, 1), (1, 0)]
    # Distance 2: rows -2..2, left column before right.
    assert [tuple(c[:2]) for c in cells[5:13]] == [(-2, 0), (-1, -1), (-1, 1), (0, -2), (0, 2), (1, -1), (1, 1), (2, 0)]
    assert cells[0][2] == 0x55


def test_last_action_and_completion_tokens_update():
    env = make_env("####\n#@.#\n####", max_steps=10)
    rot = env.action_names.index("rotate")
    env.step(np.array([[rot, 3]], dtype=np.int32))
    toks = tokens(env.observations[0])
    assert toks[0] == (0x55, K.EPISODE_COMPLETION_PCT, round(255 * 1 / 10))
    assert toks[1] == (0x55, K.LAST_ACTION, rot)
    assert toks[2] == (0x55, K.LAST_ACTION_ARG, 3)
    orientation = [t for t in toks if t[1] == K.ORIENTATION]
    assert orientation[0][2] == 3


def test_tokens_are_dropped_and_counted_when_they_do_not_fit():
    env = make_env("#####\n#.@.#\n#...#\n#####", num_observation_tokens=12, max_steps=2)
    assert env.observations.shape == (1, 12, 3)
    assert (env.observations[0] != 0xFF).all()
    env.step(np.zeros((1, 2), dtype=np.int32))
    _, _, _, _, infos = env.step(np.zeros((1, 2), dtype=np.int32))
    game = infos[0]["game"]
    assert game["tokens_dropped"] > 0
    assert game["tokens_written"] == 3 * 12  # the reset observation counts too
    assert game["tokens_free_space"] == 0


def test_small_window_sees_only_its_cells_and_global_tokens_can_be_disabled():
    env = make_env(
        "#########\n#...@...#\n#.......#\n#########",
        obs_width=3,
        obs_height=3,
        global_obs={"episode_completion_pct": False, "last_action": False, "last_reward": False},
    )
    toks = tokens(env.observations[0])
    assert toks[0][1] == K.TYPE_ID  # no global tokens
    locs = {t[0] for t in toks}
    assert locs <= {(r << 4) | c for r in range(3) for c in range(3)}
    assert 0x11 in locs  # the agent sits at the centre of a 3x3 window
    walls = [t for t in toks if t[1] == K.TYPE_ID and t[2] == 1]
    assert {t[0] for t in walls} == {0x00, 0x01, 0x02}


def test_objects_emit_their_features():
    altar = {"type_id": 8, "output_resources": {"heart": 1}, "initial_resource_count": 2, "max_output": 2, "color": 3}
    env = make_env(
        "#####\n#@_s#\n#####",
        objects={"wall": {"type_id": 1}, "block": {"type_id": 14, "swappable": True}, "altar": altar},
        recipe_details_obs=True,
    )
    toks = tokens(env.observations[0])
    at_altar = {t[1]: t[2] for t in toks if t[0] == 0x56}
    n_items = len(env.inventory_item_names)
    heart = env.inventory_item_names.index("heart")
    assert at_altar[K.TYPE_ID] == 8 and at_altar[K.COLOR] == 3 and at_altar[K.CONVERTING] == 0
    assert at_altar[K.INVENTORY_BASE + heart] == 2
    assert at_altar[K.INVENTORY_BASE + 2 * n_items + heart] == 1  # output:heart
    at_block = {t[1]: t[2] for t in toks if t[0] == 0x57}
    assert at_block == {K.TYPE_ID: 14, K.SWAPPABLE: 1}
    features = env.get_observation_features()
    assert features["inv:heart"]["id"] == K.INVENTORY_BASE + heart
    assert features["output:heart"]["id"] == K.INVENTORY_BASE + 2 * n_items + heart
    assert features["last_reward"]["normalization"] == 100.0
    assert env.feature_normalizations[K.INVENTORY_BASE] == 100.0


def test_spaces_and_buffers_follow_the_dtype_contract():
    env = make_env("#####\n#@.@#\n#####", num_agents=2)
    assert env.single_observation_space.shape == (200, 3) and env.single_observation_space.dtype == np.uint8
    assert list(env.single_action_space.nvec) == [len(env.action_names), 9]
    assert env.rewards.dtype == np.float32 and env.terminals.dtype == bool and env.truncations.dtype == bool
    assert env.actions.dtype == np.int32 and env.masks.all()
    _, rewards, terminals, truncations, infos = env.step(env.actions)
    assert isinstance(infos, list)


# ---------------------------------------------------------------------------------------------------------
# The resource_rewards global token, with the expected values of upstream's tests
# (mettagrid/tests/test_global_observations.py): item i of the first 8 items is bit 7 - i, set only when the
# agent's reward for it is positive; each agent sees its own group's rewards.

ITEMS_10 = [f"item{i}" for i in range(10)]


def resource_rewards_token(env: MettaGridEnv, agent: int) -> int | None:
    found = [t[2] for t in tokens(env.observations[agent]) if t[1] == K.RESOURCE_REWARDS]
    assert len(found) <= 1
    if found:
        assert (0x55, K.RESOURCE_REWARDS, found[0]) in tokens(env.observations[agent])  # at the centre
    return found[0] if found else None


def rewards_env(
    items: list[str], rewards: dict[str, float], ascii_map: str = "#####\n#.@.#\n#####", **game
) -> MettaGridEnv:
    return make_env(
        ascii_map,
        inventory_item_names=items,
        agent={"resource_limits": {}, "rewards": {"inventory": rewards}},
        global_obs={"resource_rewards": True},
        actions={"attack": {"enabled": False}},
        objects={"wall": {"type_id": 1}},
        **game,
    )


@pytest.mark.parametrize(
    "items, rewards, expected",
    [
        # upstream test_resource_rewards_observation: items 8 and 9 have rewards but no bit
        (ITEMS_10, dict(zip(ITEMS_10, [0.25, 0.0, 1.5, 0.0, 2.0, -0.5, 0.1, 0.0, 5.0, 1.0])), 0b10101010),
        # upstream test_resource_rewards_with_partial_items
        (ITEMS_10[:3], {"item0": 2.0, "item1": 0.0, "item2": 0.3}, 0b10100000),
        # upstream test_resource_rewards_binary_quantization
        (ITEMS_10[:8], dict(zip(ITEMS_10, [0.0, 0.01, 1.0, -1.0, 100.0, -0.1, 0.5, 0.0])), 0b01101010),
        (ITEMS_10[:8], {i: 0.0 for i in ITEMS_10[:8]}, 0),
        (ITEMS_10[:8], {i: 1.0 for i in ITEMS_10[:8]}, 0b11111111),
        (ITEMS_10[:8], {i: -1.0 for i in ITEMS_10[:8]}, 0),
        # upstream docs/global_observations.md example (0xAB)
        (
            ["ore_red", "ore_blue", "battery", "laser", "armor", "heart", "gem", "crystal"],
            {
                "ore_red": 1.0,
                "ore_blue": 0.0,
                "battery": 0.3,
                "laser": -0.5,
                "armor": 1.5,
                "heart": 0.0,
                "gem": 0.1,
                "crystal": 2.0,
            },
            0xAB,
        ),
    ],
)
def test_resource_rewards_token_matches_upstream(items, rewards, expected):
    env = rewards_env(items, rewards)
    assert resource_rewards_token(env, 0) == expected
    env.step(np.zeros((1, 2), dtype=np.int32))  # unchanged by a step (and by a kept window)
    assert resource_rewards_token(env, 0) == expected


def test_resource_rewards_caps_do_not_set_bits_and_token_is_off_by_default():
    env = rewards_env(ITEMS_10[:4], {"item1": 1.0, "item1_max": 5, "item2_max": 3})
    assert resource_rewards_token(env, 0) == 0b01000000
    plain = make_env("#####\n#.@.#\n#####")
    assert resource_rewards_token(plain, 0) is None


def test_resource_rewards_token_is_per_agent_group():
    # Group team_1 (character "1") is rewarded for item0 only; team_2 has no reward at all and sees 0,
    # not the other group's bit.
    env = make_env(
        "######\n#1..2#\n######",
        num_agents=2,
        inventory_item_names=ITEMS_10[:4],
        global_obs={"resource_rewards": True},
        actions={"attack": {"enabled": False}},
        objects={"wall": {"type_id": 1}},
        agent={"resource_limits": {}},
        groups={
            "team_1": {"id": 1, "props": {"rewards": {"inventory": {"item0": 1.0, "item3": -2.0}}}},
            "team_2": {"id": 2},
        },
    )
    assert resource_rewards_token(env, 0) == 0b10000000
    assert resource_rewards_token(env, 1) == 0


# ---------------------------------------------------------------------------------------------------------
# Bad configs fail before any simulation, naming field, value and what is allowed


@pytest.mark.parametrize(
    "game, message",
    [
        ({"nope": 1}, "nope"),
        ({"max_steps": "many"}, "max_steps"),
        ({"obs_width": 10}, "obs_width=10"),
        ({"obs_height": 17}, "odd size from 3 to 15"),
        ({"num_agents": -2}, "num_agents"),
        ({"max_steps": -1}, "max_steps"),
        ({"agent": {"rewards": {"inventory": {"gold": 1}}}}, "'gold'"),
        ({"objects": {"wall": {"type_id": 1}, "block": {"type_id": 1, "swappable": True}}}, "type_id=1"),
        ({"actions": {"attack": {"consumed_resources": {"laser": 2}, "required_resources": {"laser": 1}}}}, "laser"),
        ({"objects": {"altar": {"type_id": 8, "cooldow": 3}}}, "objects.altar.*cooldow"),
    ],
)
def test_bad_config_errors(game, message):
    with pytest.raises((ValidationError, ValueError), match=message):
        MettaGridConfig.model_validate({"game": game})


def test_map_must_have_num_agents_agents():
    with pytest.raises(ValueError, match="2 agent cells but game.num_agents=3"):
        make_env("#####\n#@.@#\n#####", num_agents=3)


def test_map_cell_without_object_config():
    with pytest.raises(ValueError, match="'lab'"):
        make_env("#####\n#@L.#\n#####")


def test_negative_counts_in_map_builders_are_rejected():
    with pytest.raises(ValidationError, match="width"):
        MettaGridConfig.model_validate({"game": {"map_builder": {"type": "random", "width": -3, "height": 5}}})


def _crowded_config() -> dict:
    """Twelve agents in a 14x14 room with every converter on short timers and quick unfreezing: windows overlap,
    agents attack, swap, take and give, and converters change state all the time."""
    from metta.interface.environment import default_env_config

    data = default_env_config(num_agents=12, width=14, height=14).model_dump()
    game = data["game"]
    game["max_steps"] = 150
    game["agent"]["freeze_duration"] = 3
    for obj in game["objects"].values():
        if "cooldown" in obj:
            obj["cooldown"] = 2
            obj["initial_resource_count"] = 1
    game["actions"]["change_color"]["enabled"] = True
    game["actions"]["change_glyph"]["enabled"] = True
    return data


@pytest.mark.parametrize(
    "source,num_envs,action_names",
    [
        ("/env/mettagrid/curriculum/simple", 6, None),
        ("crowded", 3, None),
        ("/env/mettagrid/curriculum/navigation/bucketed", 4, ("noop", "move", "rotate", "get_items")),
    ],
)
def test_windows_kept_from_the_previous_step_equal_full_observations(source, num_envs, action_names):
    """An agent whose window saw no change rewrites only its global tokens; the result must be exactly what a
    full rescan of every window writes, through actions of every type, converters, freezing and resets."""
    from metta.mettagrid import kernel as kn

    cfg = _crowded_config() if source == "crowded" else source
    incremental = MettaGridEnv(cfg, num_envs=num_envs, is_training=True)
    full = MettaGridEnv(cfg, num_envs=num_envs, is_training=True)
    incremental.reset(seed=11)
    full.reset(seed=11)
    rng = np.random.default_rng(2)
    names = incremental.action_names
    allowed = np.arange(len(names)) if action_names is None else np.array([names.index(n) for n in action_names])
    max_args = np.array(incremental.max_action_args)
    quiet_env_steps = 0
    for _ in range(700):
        types = rng.choice(allowed, incremental.num_agents)
        actions = np.stack([types, rng.integers(0, 1 << 20, incremental.num_agents) % (max_args[types] + 1)], 1)
        full._agent_i[:, kn.A_OBS_WANT] = -1  # every window written from scratch
        obs_a, rew_a, *_ = incremental.step(actions.astype(np.int32))
        obs_b, rew_b, *_ = full.step(actions.astype(np.int32))
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(rew_a, rew_b)
        quiet_env_steps += int((incremental._env_i[:, kn.E_MARK_N] == 0).sum())
    np.testing.assert_array_equal(incremental._env_game_stats, full._env_game_stats)  # token counts too
    if source != "crowded":
        assert quiet_env_steps > 0, "some env steps changed nothing any agent sees"
