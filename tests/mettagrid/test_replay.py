"""Replays: a round trip through a real env reproduces every frame; validation rejects each kind of damage."""

from __future__ import annotations

import copy
import json
import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.replay import (
    ReplayFormatError,
    ReplayWriter,
    decode_replay,
    expand_object,
    expand_series,
    read_replay,
    validate_replay,
)

RANDOM_CFG = {
    "game": {
        "num_agents": 2,
        "max_steps": 30,
        "map_builder": {
            "type": "random",
            "width": 8,
            "height": 8,
            "agents": 2,
            "objects": {"altar": 2},
            "border_width": 1,
        },
    }
}

# Agent 0 faces a block below it; agent 1 faces a mine on its left. Ore is worth 1 reward.
SCRIPTED_CFG = {
    "game": {
        "num_agents": 2,
        "max_steps": 8,
        "agent": {"rewards": {"inventory": {"ore_red": 1.0}}},
        "objects": {
            "wall": {"type_id": 1},
            "block": {"type_id": 14, "swappable": True},
            "mine_red": {"type_id": 2, "output_resources": {"ore_red": 1}, "cooldown": 2, "initial_resource_count": 1},
        },
        "map_builder": {
            "type": "ascii",
            "map_data": "#######\n#.....#\n#..@..#\n#..s..#\n#m@...#\n#######",
        },
    }
}


def random_actions(env: MettaGridEnv, rng: np.random.Generator) -> np.ndarray:
    kinds = rng.integers(0, len(env.action_names), size=env.num_agents)
    args = np.array([rng.integers(0, env.max_action_args[k] + 1) for k in kinds])
    return np.stack([kinds, args], axis=1).astype(np.int32)


def snapshot(env: MettaGridEnv) -> dict[int, dict]:
    return copy.deepcopy(env.grid_objects(0))


def items_to_counts(items: list[int]) -> dict[int, int]:
    return dict(Counter(items))


def assert_frames_match(data: dict, frames: list[dict[int, dict]]) -> None:
    """Expanding the replay gives back every frame the env showed, object by object."""
    n = data["max_steps"]
    assert n == len(frames)
    item_ids = {name: i for i, name in enumerate(data["item_names"])}
    expanded = {obj["id"]: expand_object(obj, n) for obj in data["objects"]}
    dynamic_ids = {oid for oid, o in frames[0].items() if "agent_id" in o or "recipe_input" in o}
    for step, frame in enumerate(frames):
        statics_env, statics_replay = Counter(), Counter()
        for oid, o in frame.items():
            if "agent_id" not in o and "recipe_input" not in o:
                statics_env[(o["type_id"], o["c"], o["r"], o["swappable"])] += 1
                continue
            x = {key: values[step] for key, values in expanded[oid].items()}
            assert x["type_id"] == o["type_id"]
            assert x["position"] == [o["c"], o["r"]], (step, oid)
            assert x["orientation"] == o["orientation"]
            assert items_to_counts(x["inventory"]) == o["inventory"], (step, oid)
            assert x["inventory_max"] == o["inventory_max"]
            assert x["color"] == o["color"]
            if "agent_id" in o:
                assert x["agent_id"] == o["agent_id"]
                assert x["group_id"] == o["group_id"]
                assert x["action_id"] == o["action_id"], (step, oid)
                assert x["action_parameter"] == o["action_param"]
                assert x["action_success"] == o["action_success"]
                assert x["current_reward"] == o["current_reward"]
                assert x["total_reward"] == o["total_reward"]
                assert x["frozen"] == (o["frozen"] > 0)
                assert x["frozen_progress"] == o["frozen"]
                assert x["frozen_time"] == o["freeze_duration"]
                assert x["glyph"] == o["glyph"]
            else:
                assert items_to_counts(x["recipe_input"]) == {item_ids[k]: v for k, v in o["recipe_input"].items()}
                assert items_to_counts(x["recipe_output"]) == {item_ids[k]: v for k, v in o["recipe_output"].items()}
                assert x["recipe_max"] == o["recipe_max"]
                assert x["production_progress"] == o["conversion_remaining"]
                assert x["production_time"] == o["conversion_ticks"]
                assert x["cooldown_progress"] == o["cooldown_remaining"]
                assert x["cooldown_time"] == o["cooldown"]
                assert x["converting"] == o["converting"]
                assert x["cooling_down"] == o["cooling_down"]
        # Walls and blocks: the env renumbers them when a block moves, so compare them as a multiset.
        for oid, values in expanded.items():
            if oid not in dynamic_ids:
                x, y = values["position"][step]
                statics_replay[(values["type_id"][step], x, y, values["swappable"][step])] += 1
        assert statics_replay == statics_env, step


def run_random_episode(tmp_path: Path, seed: int = 3, steps: int = 40):
    env = MettaGridEnv(RANDOM_CFG, seed=seed)
    env.reset(seed)
    rng = np.random.default_rng(seed)
    writer = ReplayWriter(tmp_path / "replays")
    writer.start_episode(env, episode_id=f"random-{seed}")
    frames = [snapshot(env)]
    end_infos = None
    for _ in range(steps):
        _, _, terminals, truncations, infos = env.step(random_actions(env, rng))
        writer.log_step(env)
        if terminals.any() or truncations.any():
            end_infos = infos
            break
        frames.append(snapshot(env))
    path = writer.end_episode()
    return env, writer, frames, end_infos, path


@pytest.fixture(scope="module")
def replay_bytes(tmp_path_factory) -> bytes:
    _, _, _, _, path = run_random_episode(tmp_path_factory.mktemp("valid"))
    return path.read_bytes()


def test_round_trip_reproduces_every_frame(tmp_path):
    env, writer, frames, end_infos, path = run_random_episode(tmp_path)
    assert writer.episode_ended and end_infos, "30-step episode must end within 40 steps"
    data = read_replay(path)
    # The terminal step is not a frame: the env already shows the next episode after it.
    assert data["max_steps"] == 30 == len(frames)
    assert data["num_agents"] == 2 and data["map_size"] == [10, 10]
    assert data["file_name"] == path.name == "random-3.json.z" and data["episode_id"] == "random-3"
    assert data["type_names"][0] == "agent" and data["type_names"][8] == "altar"
    assert data["action_names"] == env.action_names and data["item_names"] == env.inventory_item_names
    assert data["env_config"]["game"]["max_steps"] == 30 and data["task"] == env.current_task(0).id
    assert_frames_match(data, frames)
    # The final step's rewards live in episode_end and add up to the env's episode rewards.
    end = data["episode_end"]
    assert end["step"] == 30 and end["terminated"] and not end["truncated"]
    assert end["total_rewards"] == end_infos[0]["episode_rewards"]
    # Diffs, not snapshots: agents moved, walls are stored once with constant values.
    agents = [o for o in data["objects"] if o["type_id"] == 0]
    assert any(isinstance(a["position"][0], list) for a in agents)
    walls = [o for o in data["objects"] if o["type_id"] == 1]
    assert walls and all(set(w) == {"id", "type_id", "position"} for w in walls)


def test_scripted_swap_pickup_and_reward(tmp_path):
    """A block swap keeps every wall in place; inventories, converter timers and rewards follow the env."""
    env = MettaGridEnv(SCRIPTED_CFG, seed=0)
    env.reset(0)
    names = env.action_names
    writer = ReplayWriter(tmp_path)
    writer.start_episode(env, episode_id="scripted")
    frames = [snapshot(env)]
    script = [
        [("rotate", 1), ("rotate", 2)],  # agent 0 faces down to the block, agent 1 left to the mine
        [("swap", 0), ("get_items", 0)],
        [("noop", 0), ("get_items", 0)],
        [("noop", 0), ("get_items", 0)],
        [("noop", 0), ("get_items", 0)],
    ]
    for actions in script:
        env.step(np.array([[names.index(n), arg] for n, arg in actions], dtype=np.int32))
        writer.log_step(env)
        frames.append(snapshot(env))
    data = read_replay(writer.end_episode())
    assert data["episode_end"] is None and data["max_steps"] == 6
    assert_frames_match(data, frames)
    block = next(o for o in data["objects"] if o["type_id"] == 14)
    assert block["position"] == [[0, [3, 3]], [2, [3, 2]]] and block["swappable"] is True
    walls = [o for o in data["objects"] if o["type_id"] == 1]
    assert all(not isinstance(w["position"][0], list) for w in walls)  # ids follow objects, not map order
    miner = next(o for o in data["objects"] if o.get("agent_id") == 1)
    assert isinstance(miner["inventory"][0], list) and isinstance(miner["total_reward"][0], list)
    assert expand_series(miner["total_reward"], 6)[-1] == frames[-1][2]["total_reward"] > 0


def test_without_auto_reset_the_terminal_state_is_the_last_frame(tmp_path):
    env = MettaGridEnv(RANDOM_CFG, seed=4, auto_reset=False)
    env.reset(4)
    rng = np.random.default_rng(4)
    writer = ReplayWriter(tmp_path)
    writer.start_episode(env, episode_id="no-reset")
    frames = [snapshot(env)]
    while not writer.episode_ended:
        _, _, _, _, infos = env.step(random_actions(env, rng))
        writer.log_step(env)
        frames.append(snapshot(env))
    data = read_replay(writer.end_episode())
    assert data["max_steps"] == 31 and data["episode_end"]["step"] == 30
    assert_frames_match(data, frames)
    last_totals = [expand_series(_agent(data, k).get("total_reward", 0.0), 31)[-1] for k in (0, 1)]
    assert last_totals == data["episode_end"]["total_rewards"] == infos[0]["episode_rewards"]


def test_record_episode(tmp_path):
    env = MettaGridEnv(RANDOM_CFG, seed=5)
    rng = np.random.default_rng(0)
    writer = ReplayWriter(tmp_path)
    short = read_replay(writer.record_episode(env, lambda obs: random_actions(env, rng), max_steps=10))
    assert short["max_steps"] == 11 and short["episode_end"] is None
    full = read_replay(writer.record_episode(env, lambda obs: random_actions(env, rng)))
    assert full["max_steps"] == 30 and full["episode_end"]["step"] == 30
    assert len(list(tmp_path.iterdir())) == 2


def test_writer_misuse_is_reported(tmp_path):
    env = MettaGridEnv(RANDOM_CFG, seed=1)
    env.reset(1)
    writer = ReplayWriter(tmp_path)
    with pytest.raises(RuntimeError, match="before start_episode"):
        writer.log_step(env)
    with pytest.raises(ValueError, match="plain file name"):
        writer.start_episode(env, episode_id="../escape")
    writer.start_episode(env)
    with pytest.raises(RuntimeError, match="still being recorded"):
        writer.start_episode(env)
    env.step(np.zeros((2, 2), dtype=np.int32))
    writer.log_step(env)
    with pytest.raises(RuntimeError, match="exactly once"):
        writer.log_step(env)


def test_written_atomically(tmp_path, monkeypatch):
    env = MettaGridEnv(RANDOM_CFG, seed=2)
    env.reset(2)
    writer = ReplayWriter(tmp_path / "a" / "b")
    writer.start_episode(env, episode_id="ep")
    path = writer.end_episode()
    assert path == tmp_path / "a" / "b" / "ep.json.z" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["ep.json.z"]  # no temp files left
    good = path.read_bytes()

    # A failure before the rename leaves the old file intact and no temp file behind.
    writer.start_episode(env, episode_id="ep")
    env.step(np.zeros((2, 2), dtype=np.int32))
    writer.log_step(env)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        writer.end_episode()
    assert path.read_bytes() == good
    assert [p.name for p in path.parent.iterdir()] == ["ep.json.z"]
    monkeypatch.undo()
    assert read_replay(writer.end_episode())["max_steps"] == 2


def test_expand_series():
    assert expand_series(7, 3) == [7, 7, 7]
    assert expand_series([1, 2], 2) == [[1, 2], [1, 2]]  # a constant position
    assert expand_series([], 2) == [[], []]  # a constant empty inventory
    assert expand_series([[0, 1], [2, 5], [3, 0]], 5) == [1, 1, 5, 0, 0]
    assert expand_series([[2, True]], 4, default=False) == [False, False, True, True]
    assert expand_series([[0, [3, 4]], [1, [3, 5]]], 3) == [[3, 4], [3, 5], [3, 5]]


def _agent(data, agent_id=0):
    return next(o for o in data["objects"] if o.get("agent_id") == agent_id)


def _first_series(data):
    for obj in data["objects"]:
        for key, value in obj.items():
            if isinstance(value, list) and value and isinstance(value[0], list) and len(value) >= 2:
                return obj, key
    raise AssertionError("the replay has no series")


def _unsort(data):
    obj, key = _first_series(data)
    obj[key][0], obj[key][1] = obj[key][1], obj[key][0]


def _step_out_of_range(data):
    obj, key = _first_series(data)
    obj[key][-1][0] = data["max_steps"]


BYTE_CORRUPTIONS = {
    "truncated": (lambda raw: raw[: len(raw) // 2], "zlib"),
    "not zlib": (lambda raw: b"plain text", "zlib"),
    "bad json": (lambda raw: zlib.compress(b'{"version": 2,'), "not valid UTF-8 JSON"),
    "not an object": (lambda raw: zlib.compress(b"[1, 2]"), "top level must be a JSON object"),
}

# name -> (change to the parsed replay, part of the expected message)
DATA_CORRUPTIONS = {
    "wrong version": (lambda d: d.update(version=1), "'version' is 1"),
    "missing objects": (lambda d: d.pop("objects"), "missing top-level key 'objects'"),
    "missing map_size": (lambda d: d.pop("map_size"), "missing top-level key 'map_size'"),
    "bad map_size": (lambda d: d.update(map_size=[10]), "'map_size' must be"),
    "names not strings": (lambda d: d.update(item_names=[1]), "'item_names' must be a list of strings"),
    "unsorted series": (_unsort, "steps must strictly increase"),
    "step out of range": (_step_out_of_range, "outside 0..29"),
    "object missing position": (lambda d: _agent(d).pop("position"), "(id 1): missing key 'position'"),
    "duplicate id": (lambda d: _agent(d, 1).update(id=1), "duplicate id 1"),
    "unknown type": (lambda d: _agent(d).update(type_id=99), "(id 1): 'type_id' must be"),
    "agent without agent_id": (lambda d: _agent(d).pop("agent_id"), "constant 'agent_id'"),
    "two agents, same agent_id": (lambda d: _agent(d, 1).update(agent_id=0), "agent_id 0 is used"),
    "wrong value type": (lambda d: _agent(d).update(orientation="up"), "(id 1) key 'orientation'"),
    "orientation out of range": (lambda d: _agent(d).update(orientation=7), "in 0..3"),
    "position off the map": (lambda d: _agent(d).update(position=[10, 0]), "inside the map"),
    "bad item id": (lambda d: _agent(d).update(inventory=[0, 42]), "key 'inventory'"),
    "bad series entry": (lambda d: _agent(d).update(total_reward=[[0, 1.0], [3]]), "series entry 1"),
    "bad value in series": (
        lambda d: _agent(d).update(action_success=[[0, False], [4, 1]]),
        "series entry 1 (step 4): expected true or false",
    ),
    "bad episode_end": (lambda d: d.update(episode_end={"step": 3}), "'episode_end.terminated'"),
    "episode_end.step off": (lambda d: d["episode_end"].update(step=5), "'episode_end.step' is 5"),
}


@pytest.mark.parametrize("name", sorted(BYTE_CORRUPTIONS) + sorted(DATA_CORRUPTIONS))
def test_validation_rejects_corruption(replay_bytes, name):
    decode_replay(replay_bytes)  # the original is valid
    if name in BYTE_CORRUPTIONS:
        corrupt, message = BYTE_CORRUPTIONS[name]
        raw = corrupt(replay_bytes)
    else:
        change, message = DATA_CORRUPTIONS[name]
        data = json.loads(zlib.decompress(replay_bytes))
        change(data)
        raw = zlib.compress(json.dumps(data).encode())
    with pytest.raises(ReplayFormatError) as err:
        decode_replay(raw)
    assert message in str(err.value), str(err.value)


def test_read_replay_names_the_file(tmp_path, replay_bytes):
    path = tmp_path / "bad.json.z"
    path.write_bytes(replay_bytes[:-10])
    with pytest.raises(ReplayFormatError, match="bad.json.z"):
        read_replay(path)
    with pytest.raises(ReplayFormatError, match="top level"):
        validate_replay("not a dict")


def test_reward_sharing_matrix_matches_the_env(tmp_path):
    cfg = copy.deepcopy(SCRIPTED_CFG)
    cfg["game"]["groups"] = {"agent": {"id": 0, "group_reward_pct": 0.5}}
    cfg["game"]["objects"]["mine_red"]["max_output"] = -1  # unlimited output is recipe_max -1
    env = MettaGridEnv(cfg, seed=0)
    env.reset(0)
    names = env.action_names
    writer = ReplayWriter(tmp_path)
    writer.start_episode(env, episode_id="shared")
    for actions in ([("noop", 0), ("rotate", 2)], [("noop", 0), ("get_items", 0)]):
        env.step(np.array([[names.index(n), arg] for n, arg in actions], dtype=np.int32))
        writer.log_step(env)
    data = read_replay(writer.end_episode())
    matrix = np.array(data["reward_sharing_matrix"])
    np.testing.assert_allclose(matrix, [[0.75, 0.25], [0.25, 0.75]])
    # Agent 1 picked up 2 ore (2 reward); the env split it by the matrix.
    rewards = [expand_series(_agent(data, k)["current_reward"], 3)[2] for k in (0, 1)]
    np.testing.assert_allclose(rewards, matrix @ np.array([0.0, 2.0]))
    mine = next(o for o in data["objects"] if o["type_id"] == 2)
    assert mine["recipe_max"] == -1


def test_static_objects_are_reread_only_after_a_swap():
    from metta.mettagrid.env import MettaGridEnv

    env = MettaGridEnv(
        {"game": {"num_agents": 1, "max_steps": 10, "objects": {"wall": {"type_id": 1}, "block": {"type_id": 14, "swappable": True}},
                  "map_builder": {"type": "ascii", "map_data": "#####\n#@s.#\n#####"}}}
    )
    env.reset(seed=0)
    assert env.static_moves() == 0
    assert all(o["type_name"] == "agent" for o in env.grid_objects(include_static=False).values())
    rot, swap = env.action_names.index("rotate"), env.action_names.index("swap")
    env.step(np.array([[rot, 3]], dtype=np.int32))
    env.step(np.array([[swap, 0]], dtype=np.int32))
    assert env.static_moves() == 1
