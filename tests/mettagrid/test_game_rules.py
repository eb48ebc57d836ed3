"""Game rules of the MettaGrid kernel, each checked on a small hand-made ASCII map."""

from __future__ import annotations

import numpy as np
import pytest

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.env import MettaGridEnv

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def make_env(ascii_map: str, num_agents: int = 1, seed: int = 0, **game) -> MettaGridEnv:
    game_cfg = {"num_agents": num_agents, "max_steps": 100, "map_builder": {"type": "ascii", "map_data": ascii_map}}
    game_cfg.update(game)
    env = MettaGridEnv(MettaGridConfig.model_validate({"game": game_cfg}))
    env.reset(seed=seed)
    return env


def step(env: MettaGridEnv, *actions: tuple[str, int]):
    """Step with one (action name, arg) per agent."""
    acts = np.array([[env.action_names.index(name), arg] for name, arg in actions], dtype=np.int32)
    return env.step(acts)


def agent(env: MettaGridEnv, k: int = 0) -> dict:
    return env.grid_objects()[k + 1]


def converter_at(env: MettaGridEnv, r: int, c: int) -> dict:
    return next(o for o in env.grid_objects().values() if o["layer"] == 1 and (o["r"], o["c"]) == (r, c))


def stats_of(info: dict) -> dict:
    return info["agent"]


# ---------------------------------------------------------------------------------------------------------
# Movement and rotation


def test_move_forward_backward_and_blocking():
    env = make_env("#####\n#.@.#\n#...#\n#####")
    assert (agent(env)["r"], agent(env)["c"], agent(env)["orientation"]) == (1, 2, UP)
    step(env, ("move", 0))  # wall above: fails
    assert (agent(env)["r"], agent(env)["c"]) == (1, 2)
    assert not agent(env)["action_success"]
    step(env, ("move", 1))  # backward = down
    assert (agent(env)["r"], agent(env)["c"], agent(env)["orientation"]) == (2, 2, UP)
    step(env, ("rotate", RIGHT))
    assert agent(env)["orientation"] == RIGHT
    step(env, ("move", 0))
    assert (agent(env)["r"], agent(env)["c"]) == (2, 3)
    assert agent(env)["action_success"]
    step(env, ("move", 0))  # wall to the right
    assert (agent(env)["r"], agent(env)["c"]) == (2, 3)


def test_agents_block_each_other_and_order_is_shuffled_by_seed():
    # Two agents race for the one free cell between them; who gets it depends on the seeded shuffle.
    winners = set()
    for seed in range(12):
        env = make_env("#####\n#@.@#\n#####", num_agents=2, seed=seed)
        step(env, ("rotate", RIGHT), ("rotate", LEFT))
        step(env, ("move", 0), ("move", 0))
        cols = (agent(env, 0)["c"], agent(env, 1)["c"])
        assert cols in ((2, 3), (1, 2))
        winners.add(cols)
    assert len(winners) == 2


def test_movement_stats():
    env = make_env("#####\n#...#\n#.@.#\n#...#\n#####", max_steps=4)
    step(env, ("rotate", LEFT))
    step(env, ("rotate", LEFT))
    step(env, ("move", 0))
    _, _, terminals, _, infos = step(env, ("move", 0))
    assert terminals.all() and len(infos) == 1
    s = stats_of(infos[0])
    assert s["movement.rotation.to_left"] == 2
    assert s["movement.sequential_rotations"] == 1
    assert s["movement.direction.left"] == 1
    assert s["action.move.success"] == 1 and s["action.move.failed"] == 1
    assert s["action.rotate.success"] == 2


# ---------------------------------------------------------------------------------------------------------
# Converters

MINE = {
    "type_id": 2,
    "output_resources": {"ore_red": 1},
    "max_output": 2,
    "conversion_ticks": 2,
    "cooldown": 3,
    "initial_resource_count": 0,
}
GENERATOR = {
    "type_id": 5,
    "input_resources": {"ore_red": 1},
    "output_resources": {"battery_red": 1},
    "max_output": 5,
    "conversion_ticks": 1,
    "cooldown": 0,
}


def test_mine_production_timing_and_output_limit():
    env = make_env("#####\n#@m.#\n#####", objects={"wall": {"type_id": 1}, "mine_red": MINE})
    ore, busy = [], []
    for _ in range(12):
        step(env, ("noop", 0))
        mine = converter_at(env, 1, 2)
        ore.append(mine["inventory"].get(0, 0))
        busy.append(mine["converting"] or mine["cooling_down"])
    # Starts converting at step 0; finishes at 2 (then cools 3 steps), restarts at 5, finishes at 7,
    # cools until 10, then holds max_output=2 and stops.
    assert ore == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert busy == [True] * 9 + [False] * 3
    # Taking the output frees room: the mine starts again the same step.
    step(env, ("rotate", RIGHT))
    step(env, ("get_items", 0))
    assert agent(env)["inventory"] == {0: 2}
    mine = converter_at(env, 1, 2)
    assert mine["inventory"] == {} and mine["converting"]


def test_put_items_converts_after_conversion_ticks():
    env = make_env(
        "#####\n#m@n#\n#####",
        objects={
            "wall": {"type_id": 1},
            "mine_red": {**MINE, "initial_resource_count": 1, "max_output": 1},
            "generator_red": GENERATOR,
        },
    )
    step(env, ("rotate", LEFT))
    step(env, ("get_items", 0))
    assert agent(env)["inventory"] == {0: 1}
    step(env, ("rotate", RIGHT))
    _, _, _, _, _ = step(env, ("put_items", 0))
    gen = converter_at(env, 1, 3)
    assert agent(env)["inventory"] == {} and gen["converting"]
    step(env, ("get_items", 0))  # conversion_ticks=1: the battery is there on the next step
    assert agent(env)["inventory"] == {3: 1}


def test_put_items_fails_without_matching_items_and_get_items_fails_on_walls():
    env = make_env("#####\n#.@n#\n#####", objects={"wall": {"type_id": 1}, "generator_red": GENERATOR})
    step(env, ("rotate", RIGHT))
    step(env, ("put_items", 0))
    assert not agent(env)["action_success"]
    step(env, ("rotate", UP))
    step(env, ("get_items", 0))
    assert not agent(env)["action_success"]


# ---------------------------------------------------------------------------------------------------------
# Rewards


def test_inventory_reward_with_cap():
    altar = {"type_id": 8, "output_resources": {"heart": 1}, "max_output": 3, "initial_resource_count": 3}
    env = make_env(
        "####\n#@_#\n####",
        objects={"wall": {"type_id": 1}, "altar": altar},
        agent={"rewards": {"inventory": {"heart": 0.5, "heart_max": 1.0}}},
    )
    step(env, ("rotate", RIGHT))
    _, rewards, *_ = step(env, ("get_items", 0))
    # Three hearts at 0.5 each would be 1.5, but the cap is 1.0.
    assert rewards[0] == pytest.approx(1.0)
    assert agent(env)["inventory"] == {6: 3}


def test_flat_reward_config_is_migrated():
    cfg = MettaGridConfig.model_validate({"game": {"agent": {"rewards": {"heart": 1}}}})
    assert cfg.game.agent.rewards.inventory == {"heart": 1}


def test_group_reward_sharing():
    altar = {"type_id": 8, "output_resources": {"heart": 1}, "initial_resource_count": 1, "max_output": 1}
    env = make_env(
        "#######\n#1_.12#\n#######",
        num_agents=3,
        objects={"wall": {"type_id": 1}, "altar": altar},
        groups={"team_1": {"id": 1, "group_reward_pct": 0.5}, "team_2": {"id": 2, "group_reward_pct": 0.5}},
        agent={"rewards": {"inventory": {"heart": 1}}},
    )
    step(env, ("rotate", RIGHT), ("noop", 0), ("noop", 0))
    _, rewards, *_ = step(env, ("get_items", 0), ("noop", 0), ("noop", 0))
    # Agent 0 earns 1; half of it is split evenly across team_1 (agents 0 and 1); team_2 gets nothing.
    assert rewards.tolist() == pytest.approx([0.75, 0.25, 0.0])


def test_stat_rewards_with_cap():
    env = make_env(
        "######\n#@...#\n######",
        agent={"rewards": {"stats": {"action.move.success": 0.1, "action.move.success_max": 0.25}}},
    )
    step(env, ("rotate", RIGHT))
    got = [float(step(env, ("move", 0))[1][0]) for _ in range(4)]
    # Three successful moves (0.1 each, capped at 0.25 total), then a failed one against the wall.
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.0])


def test_action_failure_penalty():
    env = make_env("###\n#@#\n###", agent={"action_failure_penalty": 0.01})
    _, rewards, *_ = step(env, ("move", 0))
    assert rewards[0] == pytest.approx(-0.01)
    _, rewards, *_ = step(env, ("noop", 0))
    assert rewards[0] == 0.0


# ---------------------------------------------------------------------------------------------------------
# Attack, freeze, steal, defense, swap

FREE_ATTACK = {"consumed_resources": {}, "defense_resources": {"armor": 1}}


def test_attack_freezes_and_steals():
    env = make_env(
        "#####\n#@..#\n#...#\n#@m.#\n#####",
        num_agents=2,
        objects={"wall": {"type_id": 1}, "mine_red": {**MINE, "initial_resource_count": 2}},
        actions={"attack": FREE_ATTACK},
        agent={"freeze_duration": 3},
    )
    step(env, ("rotate", DOWN), ("rotate", RIGHT))
    step(env, ("noop", 0), ("get_items", 0))
    assert agent(env, 1)["inventory"] == {0: 2}
    # Attacks resolve before other actions, so the target's own action this step already counts down.
    step(env, ("attack", 0), ("noop", 0))  # agent 1 is two cells ahead of agent 0
    assert agent(env, 0)["action_success"]
    assert agent(env, 1)["frozen"] == 2
    assert agent(env, 0)["inventory"] == {0: 2} and agent(env, 1)["inventory"] == {}
    # A frozen agent's actions fail and count down its freeze.
    step(env, ("noop", 0), ("rotate", UP))
    assert agent(env, 1)["orientation"] == RIGHT and agent(env, 1)["frozen"] == 1
    # Attacking an already frozen agent refreshes the freeze but steals nothing more.
    step(env, ("attack", 0), ("noop", 0))
    assert agent(env, 1)["frozen"] == 2 and agent(env, 0)["inventory"] == {0: 2}
    for _ in range(2):
        step(env, ("noop", 0), ("noop", 0))
    step(env, ("noop", 0), ("rotate", UP))
    assert agent(env, 1)["orientation"] == UP


def test_attack_stats_at_episode_end():
    env = make_env("####\n#@.#\n#@.#\n####", num_agents=2, actions={"attack": FREE_ATTACK}, max_steps=3)
    step(env, ("rotate", DOWN), ("noop", 0))
    step(env, ("attack", 0), ("noop", 0))
    _, _, _, _, infos = step(env, ("attack", 0), ("noop", 0))
    s = stats_of(infos[0])
    # Means over the two agents.
    assert s["action.attack.agent.hit.agent"] == 1.0
    assert s["action.attack.agent.hit_by.agent"] == 1.0
    assert s["action.attack.agent.friendly_fire"] == 1.0
    assert s["action.attack.agent.wasted_on_frozen"] == 0.5
    assert s["status.frozen.ticks"] == 1.0


def test_attack_consumes_laser_and_needs_it():
    env = make_env("####\n#@.#\n#@.#\n####", num_agents=2)
    step(env, ("rotate", DOWN), ("noop", 0))
    step(env, ("attack", 0), ("noop", 0))
    assert not agent(env, 0)["action_success"]  # no laser
    assert agent(env, 1)["frozen"] == 0


def test_armor_blocks_attack_and_is_consumed():
    armory = {"type_id": 9, "output_resources": {"armor": 1}, "initial_resource_count": 1, "max_output": 1}
    env = make_env(
        "#####\n#@..#\n#@o.#\n#####",
        num_agents=2,
        objects={"wall": {"type_id": 1}, "armory": armory},
        actions={"attack": FREE_ATTACK},
    )
    step(env, ("rotate", DOWN), ("rotate", RIGHT))
    step(env, ("noop", 0), ("get_items", 0))
    assert agent(env, 1)["inventory"] == {7: 1}
    step(env, ("attack", 0), ("noop", 0))
    assert agent(env, 0)["action_success"]
    assert agent(env, 1)["frozen"] == 0 and agent(env, 1)["inventory"] == {}


def test_attack_target_slots():
    # Facing down from (1,2): slot order is (2,2), (2,1), (2,3), (3,2), ... The target at (3,1) is
    # the only one found, so any argument picks it (the last found).
    env = make_env("#####\n#.@.#\n#...#\n#@..#\n#####", num_agents=2, actions={"attack": FREE_ATTACK})
    step(env, ("rotate", DOWN), ("noop", 0))
    step(env, ("attack", 0), ("noop", 0))  # agent 0 is at (1,2): ids are in map order
    assert env.grid_objects()[2]["frozen"] > 0 or env.grid_objects()[1]["frozen"] > 0


def test_swap_with_block_and_frozen_agent():
    env = make_env("#####\n#@s.#\n#####", objects={"wall": {"type_id": 1}, "block": {"type_id": 14, "swappable": True}})
    step(env, ("rotate", RIGHT))
    step(env, ("swap", 0))
    assert agent(env)["c"] == 2
    block = next(o for o in env.grid_objects().values() if o["type_name"] == "block")
    assert (block["r"], block["c"]) == (1, 1)
    # Walls are not swappable.
    step(env, ("move", 0))
    step(env, ("swap", 0))
    assert not agent(env)["action_success"]

    env = make_env("#####\n#@@.#\n#####", num_agents=2, actions={"attack": FREE_ATTACK})
    step(env, ("rotate", RIGHT), ("noop", 0))
    step(env, ("swap", 0), ("noop", 0))
    assert not agent(env, 0)["action_success"]  # the other agent is not frozen
    step(env, ("attack", 0), ("noop", 0))
    step(env, ("swap", 0), ("noop", 0))
    assert (agent(env, 0)["c"], agent(env, 1)["c"]) == (2, 1)


def test_change_color_and_glyph():
    env = make_env(
        "###\n#@#\n###",
        actions={"change_color": {"enabled": True}, "change_glyph": {"enabled": True, "number_of_glyphs": 8}},
    )
    step(env, ("change_color", 1))  # -1 wraps
    assert agent(env)["color"] == 255
    step(env, ("change_color", 2))  # +63
    assert agent(env)["color"] == 62
    step(env, ("change_glyph", 7))
    assert agent(env)["glyph"] == 7


def test_action_indices_are_alphabetical():
    env = make_env("###\n#@#\n###", actions={"change_color": {"enabled": True}})
    assert env.action_names == sorted(env.action_names)
    assert env.action_names[:3] == ["attack", "change_color", "get_items"]
    assert env.max_action_args[env.action_names.index("attack")] == 8
    assert env.max_action_args[env.action_names.index("rotate")] == 3


# ---------------------------------------------------------------------------------------------------------
# Invalid actions


def test_invalid_actions_are_counted_not_fatal():
    env = make_env("###\n#@#\n###", max_steps=3, agent={"action_failure_penalty": 1.0})
    n = len(env.action_names)
    _, rewards, *_ = env.step(np.array([[n + 5, 0]], dtype=np.int32))
    assert rewards[0] == -1.0
    env.step(np.array([[env.action_names.index("rotate"), 9]], dtype=np.int32))
    _, _, _, _, infos = env.step(np.array([[-1, -1]], dtype=np.int32))
    s = stats_of(infos[0])
    assert s["action.invalid_type"] == 2 and s["action.invalid_arg"] == 1
    assert s["action.invalid_arg.rotate"] == 1
    assert s["action.failure_penalty"] == 3


def test_wrong_action_shape_or_dtype_is_a_clear_error():
    env = make_env("###\n#@#\n###")
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(TypeError, match="integers"):
        env.step(np.zeros((1, 2), dtype=np.float32))
    env.step(np.zeros((1, 2), dtype=np.int64))  # other integer types are accepted


# ---------------------------------------------------------------------------------------------------------
# Episodes


def test_terminals_or_truncations_and_auto_reset():
    env = make_env("####\n#@.#\n####", max_steps=3)
    for _ in range(2):
        _, _, terminals, truncations, infos = step(env, ("noop", 0))
        assert not terminals.any() and not infos
    _, _, terminals, truncations, infos = step(env, ("noop", 0))
    assert terminals.all() and not truncations.any() and len(infos) == 1
    assert env.current_step() == 0  # already the next episode

    env = make_env("####\n#@.#\n####", max_steps=2, episode_truncates=True)
    step(env, ("noop", 0))
    _, _, terminals, truncations, _ = step(env, ("noop", 0))
    assert truncations.all() and not terminals.any()


def test_episode_infos_have_upstream_keys():
    env = make_env("#####\n#@._#\n#####", max_steps=5)
    infos = []
    for _ in range(5):
        infos += step(env, ("noop", 0))[4]
    info = infos[0]
    assert {"game", "agent", "attributes", "episode_reward"} <= set(info)
    assert info["game"]["objects.altar"] == 1 and info["game"]["objects.wall"] == 12
    assert info["game"]["tokens_written"] > 0 and info["game"]["tokens_dropped"] == 0
    attrs = info["attributes"]
    assert attrs["steps"] == 5 and attrs["max_steps"] == 5 and (attrs["map_w"], attrs["map_h"]) == (5, 3)
    assert any(k.startswith("task_reward/") for k in info)
    assert any(k.startswith("map_reward/") for k in info)


def test_training_desynchronises_first_episode_length():
    cfg = MettaGridConfig.model_validate(
        {"game": {"num_agents": 1, "max_steps": 50, "map_builder": {"type": "ascii", "map_data": "###\n#@#\n###"}}}
    )
    env = MettaGridEnv(cfg, num_envs=16, is_training=True)
    env.reset(seed=3)
    first = {env.max_steps(e) for e in range(16)}
    assert len(first) > 3 and all(1 <= m <= 50 for m in first)
    for _ in range(60):
        env.step(np.zeros((16, 2), dtype=np.int32))
    assert {env.max_steps(e) for e in range(16)} == {50}  # later episodes have the full length

    env = MettaGridEnv(cfg, num_envs=4, is_training=False)
    env.reset(seed=3)
    assert {env.max_steps(e) for e in range(4)} == {50}


def test_same_seed_same_episode_different_seed_differs():
    cfg = {
        "game": {
            "num_agents": 3,
            "max_steps": 40,
            "map_builder": {
                "type": "random",
                "width": 12,
                "height": 12,
                "agents": 3,
                "objects": {"altar": 4, "wall": 10},
            },
        }
    }

    def rollout(seed):
        env = MettaGridEnv(cfg, num_envs=2)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        trace = [obs.copy()]
        for _ in range(60):
            acts = np.stack([rng.integers(0, len(env.action_names), 6), rng.integers(0, 4, 6)], 1).astype(np.int32)
            o, r, *_ = env.step(acts)
            trace += [o.copy(), r.copy()]
        return trace

    a, b, c = rollout(7), rollout(7), rollout(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
