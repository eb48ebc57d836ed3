"""Replays: a round trip through a real env reproduces every frame; written files follow the rules of upstream's
loader and validator; validation rejects each kind of damage; files of earlier metta versions still read."""

from __future__ import annotations

import copy
import json
import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from replay_cases import record_one_frame_mine_replay

from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.replay import (
    ALLOWED_TOP_KEYS,
    ReplayFormatError,
    ReplayWriter,
    decode_replay,
    expand_object,
    expand_series,
    pairs_to_counts,
    read_replay,
    replay_metadata,
    validate_replay,
)
from metta.mettagrid.replay.writer import _Track

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
            assert x["location"] == [o["c"], o["r"], o["layer"]], (step, oid)
            assert x["orientation"] == o["orientation"]
            assert pairs_to_counts(x["inventory"]) == o["inventory"], (step, oid)
            assert x["inventory_max"] == o["inventory_max"]
            assert x["color"] == o["color"]
            assert x["is_swappable"] is False
            if "agent_id" in o:
                assert x["agent_id"] == o["agent_id"] and x["is_agent"] is True and x["vision_size"] == 11
                assert x["group_id"] == o["group_id"]
                assert x["action_id"] == o["action_id"], (step, oid)
                assert x["action_param"] == o["action_param"]
                assert x["action_success"] == o["action_success"]
                assert x["current_reward"] == o["current_reward"]
                assert x["total_reward"] == o["total_reward"]
                assert x["is_frozen"] == (o["frozen"] > 0)
                assert x["frozen_progress"] == x["freeze_remaining"] == o["frozen"]
                assert x["frozen_time"] == x["freeze_duration"] == o["freeze_duration"]
                assert x["glyph"] == o["glyph"]
            else:
                assert pairs_to_counts(x["input_resources"]) == {item_ids[k]: v for k, v in o["recipe_input"].items()}
                assert pairs_to_counts(x["output_resources"]) == {item_ids[k]: v for k, v in o["recipe_output"].items()}
                assert x["recipe_max"] == o["recipe_max"]
                assert x["conversion_remaining"] == o["conversion_remaining"]
                assert x["production_time"] == x["conversion_duration"] == o["conversion_ticks"]
                assert x["production_progress"] == (
                    o["conversion_ticks"] - o["conversion_remaining"] if o["converting"] else 0
                )
                assert x["cooldown_remaining"] == o["cooldown_remaining"]
                assert x["cooldown_time"] == x["cooldown_duration"] == o["cooldown"]
                assert x["cooldown_progress"] == (o["cooldown"] - o["cooldown_remaining"] if o["cooling_down"] else 0)
                assert x["is_converting"] == o["converting"]
                assert x["is_cooling_down"] == o["cooling_down"]
        # Walls and blocks: the env renumbers them when a block moves, so compare them as a multiset.
        for oid, values in expanded.items():
            if oid not in dynamic_ids:
                x, y, z = values["location"][step]
                assert z == 1
                statics_replay[(values["type_id"][step], x, y, values["is_swappable"][step])] += 1
        assert statics_replay == statics_env, step


def run_random_episode(tmp_path: Path, seed: int = 3, steps: int = 40):
    env = MettaGridEnv(RANDOM_CFG, seed=seed)
    env.reset(seed)
    rng = np.random.default_rng(seed)
    writer = ReplayWriter(tmp_path / "replays")
    writer.start_episode(env, episode_id=f"random-{seed}")
    frames = []
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
    # Frame k is the state after step k+1; the terminal state is not a frame (the env already shows the next
    # episode after it), so a 30-step episode has 29 frames.
    assert data["max_steps"] == 29 == len(frames)
    assert data["num_agents"] == 2 and data["map_size"] == [10, 10]
    assert data["file_name"] == path.name == "random-3.json.z"
    assert data["type_names"][0] == "agent" and data["type_names"][8] == "altar" and all(data["type_names"])
    assert data["action_names"] == env.action_names and data["item_names"] == env.inventory_item_names
    meta = replay_metadata(data)
    assert data["env_config"]["game"]["max_steps"] == 30 and data["env_config"]["label"] == env.current_task(0).id
    assert meta["episode_id"] == "random-3" and meta["task"] == env.current_task(0).id
    assert_frames_match(data, frames)
    # The final step's rewards live in episode_end and add up to the env's episode rewards.
    end = meta["episode_end"]
    assert end["step"] == 29 and end["terminated"] and not end["truncated"]
    assert end["total_rewards"] == end_infos[0]["episode_rewards"]
    # Diffs, not snapshots: agents moved, walls are stored once with constant values.
    agents = [o for o in data["objects"] if o["type_id"] == 0]
    assert any(isinstance(a["location"][0], list) for a in agents)
    walls = [o for o in data["objects"] if o["type_id"] == 1]
    assert walls and all(not isinstance(w["location"][0], list) for w in walls)


def test_scripted_swap_pickup_and_reward(tmp_path):
    """A block swap keeps every wall in place; inventories, converter timers and rewards follow the env."""
    env = MettaGridEnv(SCRIPTED_CFG, seed=0)
    env.reset(0)
    names = env.action_names
    writer = ReplayWriter(tmp_path)
    writer.start_episode(env, episode_id="scripted")
    frames = []
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
    assert replay_metadata(data)["episode_end"] is None and data["max_steps"] == 5
    assert_frames_match(data, frames)
    block = next(o for o in data["objects"] if o["type_id"] == 14)
    assert block["location"] == [[0, [3, 3, 1]], [1, [3, 2, 1]]] and block["is_swappable"] is True
    walls = [o for o in data["objects"] if o["type_id"] == 1]
    assert all(not isinstance(w["location"][0], list) for w in walls)  # ids follow objects, not map order
    miner = next(o for o in data["objects"] if o.get("agent_id") == 1)
    assert miner["action_id"][0] == [0, names.index("rotate")]  # frame 0 holds the first step's action
    assert isinstance(miner["inventory"][0], list) and isinstance(miner["total_reward"][0], list)
    assert expand_series(miner["total_reward"], 5)[-1] == frames[-1][2]["total_reward"] > 0


def test_without_auto_reset_the_terminal_state_is_the_last_frame(tmp_path):
    env = MettaGridEnv(RANDOM_CFG, seed=4, auto_reset=False)
    env.reset(4)
    rng = np.random.default_rng(4)
    writer = ReplayWriter(tmp_path)
    writer.start_episode(env, episode_id="no-reset")
    frames = []
    while not writer.episode_ended:
        _, _, _, _, infos = env.step(random_actions(env, rng))
        writer.log_step(env)
        frames.append(snapshot(env))
    data = read_replay(writer.end_episode())
    end = replay_metadata(data)["episode_end"]
    assert data["max_steps"] == 30 and end["step"] == 29
    assert_frames_match(data, frames)
    last_totals = [expand_series(_agent(data, k)["total_reward"], 30)[-1] for k in (0, 1)]
    assert last_totals == end["total_rewards"] == infos[0]["episode_rewards"]


def test_record_episode(tmp_path):
    env = MettaGridEnv(RANDOM_CFG, seed=5)
    rng = np.random.default_rng(0)
    writer = ReplayWriter(tmp_path)
    short = read_replay(writer.record_episode(env, lambda obs: random_actions(env, rng), max_steps=10))
    assert short["max_steps"] == 10 and replay_metadata(short)["episode_end"] is None
    full = read_replay(writer.record_episode(env, lambda obs: random_actions(env, rng)))
    assert full["max_steps"] == 29 and replay_metadata(full)["episode_end"]["step"] == 29
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
    assert writer.end_episode() is not None
    writer.start_episode(env)
    assert writer.end_episode() is None  # nothing recorded: no file
    assert len(list(tmp_path.iterdir())) == 1


def test_written_atomically(tmp_path, monkeypatch):
    env = MettaGridEnv(RANDOM_CFG, seed=2)
    env.reset(2)
    writer = ReplayWriter(tmp_path / "a" / "b")
    writer.start_episode(env, episode_id="ep")
    env.step(np.zeros((2, 2), dtype=np.int32))
    writer.log_step(env)
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


def test_expand_series():
    assert expand_series(7, 3) == [7, 7, 7]
    assert expand_series([1, 2, 0], 2, key="location") == [[1, 2, 0], [1, 2, 0]]  # a constant location
    assert expand_series([], 2, key="inventory") == [[], []]  # a constant empty inventory
    assert expand_series([[0, 2], [6, 1]], 2, key="inventory") == [[[0, 2], [6, 1]]] * 2  # a constant inventory
    assert expand_series([[0, []], [1, [[6, 1]]]], 3, key="inventory") == [[], [[6, 1]], [[6, 1]]]
    assert expand_series([[0, 1], [2, 5], [3, 0]], 5) == [1, 1, 5, 0, 0]
    assert expand_series([[0, [3, 4, 0]], [1, [3, 5, 0]]], 3, key="location") == [[3, 4, 0], [3, 5, 0], [3, 5, 0]]


# --------------------------------------------------------------------------------------------------------
# The rules of upstream's tools, checked on a written replay independently of validate_replay.
LOADER_PLAIN_KEYS = {  # keys upstream's loader assigns without expanding: they must be constants
    "all": ("id", "type_id", "inventory_max"),
    "agent": ("agent_id", "group_id", "frozen_time"),
    "converter": ("input_resources", "output_resources", "recipe_max", "production_time", "cooldown_time"),
}
VALIDATOR_REQUIRED = {
    "all": ("id", "type_id", "location", "orientation", "inventory", "inventory_max", "color", "is_swappable"),
    "agent": (
        "agent_id",
        "is_agent",
        "vision_size",
        "action_id",
        "action_param",
        "action_success",
        "current_reward",
        "total_reward",
        "freeze_remaining",
        "is_frozen",
        "freeze_duration",
        "group_id",
    ),
    "converter": (
        "input_resources",
        "output_resources",
        "output_limit",
        "conversion_remaining",
        "is_converting",
        "conversion_duration",
        "cooldown_remaining",
        "is_cooling_down",
        "cooldown_duration",
    ),
}
VALIDATOR_TOP_REQUIRED = (
    "version",
    "num_agents",
    "max_steps",
    "map_size",
    "action_names",
    "item_names",
    "type_names",
    "objects",
)
VALIDATOR_TOP_OPTIONAL = ("file_name", "group_names", "reward_sharing_matrix")


def loader_expand(data, default, num_steps):
    """Upstream's loader (Sequence.expand in mettascope/src/replay.ts): a list whose second element is not a list
    is a plain value when the default is a list; otherwise a list is a series whose steps must hit 0, 1, ..."""
    if data is None or (isinstance(data, list) and not data):
        return [default] * num_steps
    if not isinstance(data, list):
        return [data] * num_steps
    if isinstance(default, list) and not (len(data) > 1 and isinstance(data[1], list)):
        return [data] * num_steps
    out, j, v = [], 0, None
    for i in range(num_steps):
        if j < len(data) and data[j][0] == i:
            v = data[j][1]
            j += 1
        out.append(v)
    return out


def check_upstream_rules(data: dict) -> None:
    assert set(data) <= set(ALLOWED_TOP_KEYS) == {*VALIDATOR_TOP_REQUIRED, *VALIDATOR_TOP_OPTIONAL, "env_config"}
    assert set(VALIDATOR_TOP_REQUIRED) <= set(data) and data["version"] == 2
    assert data["file_name"].endswith(".json.z") and isinstance(data["env_config"]["label"], str)
    for key in ("action_names", "item_names", "type_names", "group_names"):
        assert data[key] and all(isinstance(s, str) and s for s in data[key]), key
    n, (width, height) = data["max_steps"], data["map_size"]
    for obj in data["objects"]:
        kind = "agent" if "agent_id" in obj else "converter" if "input_resources" in obj else "static"
        for group in ("all", kind):
            for key in VALIDATOR_REQUIRED.get(group, ()):
                assert key in obj, (key, obj["id"])
            for key in LOADER_PLAIN_KEYS.get(group, ()):
                value = obj[key]
                if key in ("input_resources", "output_resources"):
                    assert all(isinstance(p, list) and len(p) == 2 and not isinstance(p[1], list) for p in value), key
                else:
                    assert not isinstance(value, list), key
        for key, value in obj.items():
            if (
                isinstance(value, list)
                and value
                and isinstance(value[0], list)
                and key not in ("inventory", "input_resources", "output_resources")
            ):
                steps = [e[0] for e in value]
                assert steps[0] == 0 and steps == sorted(set(steps)) and steps[-1] < n, (key, obj["id"])
        # What the loader sees equals what the format says, frame by frame.
        locations = loader_expand(obj["location"], [0, 0, 0], n)
        assert locations == expand_series(obj["location"], n, key="location")
        assert all(len(p) == 3 and 0 <= p[0] < width and 0 <= p[1] < height for p in locations)
        inventories = loader_expand(obj["inventory"], [], n)
        assert inventories == expand_series(obj["inventory"], n, key="inventory"), obj["id"]
        assert all(isinstance(i, int) and count >= 0 for inv in inventories for i, count in inv)
        for key in ("orientation", "color", "action_id", "total_reward", "is_frozen", "production_progress"):
            if key in obj:
                assert loader_expand(obj[key], 0, n) == expand_series(obj[key], n), key
    matrix = data.get("reward_sharing_matrix")
    if matrix is not None:
        assert all(matrix[i][i] == 0 for i in range(data["num_agents"]))


def test_written_replays_follow_upstreams_loader_and_validator(tmp_path):
    env = MettaGridEnv("/env/mettagrid/curriculum/simple", seed=2)
    rng = np.random.default_rng(2)
    path = ReplayWriter(tmp_path).record_episode(env, lambda obs: random_actions(env, rng), max_steps=60)
    data = json.loads(zlib.decompress(path.read_bytes()))
    check_upstream_rules(data)
    assert any("input_resources" in o for o in data["objects"]) and any(o["is_swappable"] for o in data["objects"])
    validate_replay(data)


def test_a_constant_inventory_of_two_items_reads_right_in_upstreams_loader():
    track = _Track()
    track.record(0, {"inventory": [[0, 2], [6, 1]], "color": 3})
    encoded = track.encode()
    assert encoded["color"] == 3
    assert loader_expand(encoded["inventory"], [], 5) == [[[0, 2], [6, 1]]] * 5
    assert expand_series(encoded["inventory"], 5, key="inventory") == [[[0, 2], [6, 1]]] * 5


def test_a_one_frame_replay_with_a_constant_inventory_of_two_items_reads_right_everywhere(tmp_path):
    """One frame leaves no room for a second series entry inside 0..max_steps-1, and both one-entry forms
    mislead upstream's loader: the writer pads with a repeat at step max_steps, which every reader accepts."""
    held, path = record_one_frame_mine_replay(tmp_path)  # {item id: count}, the replay
    data = json.loads(zlib.decompress(path.read_bytes()))
    assert data["max_steps"] == 1
    mine = next(o for o in data["objects"] if o["type_id"] == 2)
    expected = sorted([int(i), int(n)] for i, n in held.items() if n)
    assert len(expected) >= 2, "the mine starts with two kinds of ore"
    assert mine["inventory"] == [[0, expected], [1, expected]]  # the padding entry at step max_steps
    assert loader_expand(mine["inventory"], [], 1) == [expected]  # upstream's loader
    check_upstream_rules(data)
    assert expand_series(
        read_replay(path)["objects"][data["objects"].index(mine)]["inventory"], 1, key="inventory"
    ) == [expected]
    # Padding must repeat the value before it: a different value at step max_steps is damage.
    mine["inventory"][1][1] = [[0, 1]]
    with pytest.raises(ReplayFormatError, match="outside 0..0"):
        validate_replay(data)


def test_reward_sharing_matrix_is_actor_by_receiver(tmp_path):
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
    np.testing.assert_allclose(matrix, [[0.0, 0.25], [0.25, 0.0]])
    # Agent 1 picked up 2 ore (2 reward): it kept 1 - 0.25 of it, agent 0 got the matrix's 0.25.
    own = np.array([0.0, 2.0])
    rewards = [expand_series(_agent(data, k)["current_reward"], 2)[1] for k in (0, 1)]
    np.testing.assert_allclose(rewards, own - own * matrix.sum(axis=1) + matrix.T @ own)
    mine = next(o for o in data["objects"] if o["type_id"] == 2)
    assert mine["recipe_max"] == -1 and mine["output_limit"] == 255


# --------------------------------------------------------------------------------------------------------
# Validation
def _agent(data, agent_id=0):
    return next(o for o in data["objects"] if o.get("agent_id") == agent_id)


def _first_series(data):
    obj = _agent(data)
    assert len(obj["action_id"]) >= 3, "a random agent changes its action more than twice in 29 steps"
    return obj, "action_id"


def _unsort(data):
    obj, key = _first_series(data)
    obj[key][1][0], obj[key][2][0] = obj[key][2][0], obj[key][1][0]


def _step_out_of_range(data):
    obj, key = _first_series(data)
    obj[key][-1][0] = data["max_steps"]


def _late_start(data):
    obj, key = _first_series(data)
    obj[key].pop(0)  # the series now starts at its second entry's step


def _deeply_nested(raw: bytes) -> bytes:
    return zlib.compress(b'{"version": 2, "objects": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


BYTE_CORRUPTIONS = {
    "truncated": (lambda raw: raw[: len(raw) // 2], "zlib stream"),
    "bytes after the stream": (lambda raw: raw + b"\x00tail", "5 bytes after the end of its zlib stream"),
    "two files joined": (lambda raw: raw + raw, "after the end of its zlib stream"),
    "not zlib": (lambda raw: b"plain text", "zlib"),
    "bad json": (lambda raw: zlib.compress(b'{"version": 2,'), "not valid UTF-8 JSON"),
    "not an object": (lambda raw: zlib.compress(b"[1, 2]"), "top level must be a JSON object"),
    "nested too deeply": (_deeply_nested, "nested too deeply"),
}

# name -> (change to the parsed replay, part of the expected message)
DATA_CORRUPTIONS = {
    "wrong version": (lambda d: d.update(version=1), "'version' is 1"),
    "missing objects": (lambda d: d.pop("objects"), "missing top-level key 'objects'"),
    "missing map_size": (lambda d: d.pop("map_size"), "missing top-level key 'map_size'"),
    "bad map_size": (lambda d: d.update(map_size=[10]), "'map_size' must be"),
    "names not strings": (lambda d: d.update(item_names=[1]), "'item_names' must be a non-empty list"),
    "empty type name": (lambda d: d["type_names"].__setitem__(2, ""), "'type_names' must be"),
    "bad file name": (lambda d: d.update(file_name="x.json"), "'file_name' must be"),
    "null label": (lambda d: d["env_config"].update(label=None), "'env_config.label'"),
    "unsorted series": (_unsort, "steps must strictly increase"),
    "series after step 0": (_late_start, "start at step 0"),
    "step out of range": (_step_out_of_range, "outside 0..28"),
    "object missing location": (lambda d: _agent(d).pop("location"), "(id 1): missing key(s) 'location'"),
    "agent missing is_frozen": (lambda d: _agent(d).pop("is_frozen"), "missing key(s) 'is_frozen'"),
    "duplicate id": (lambda d: _agent(d, 1).update(id=1), "duplicate id 1"),
    "unknown type": (lambda d: _agent(d).update(type_id=99), "(id 1): 'type_id' must be"),
    "agent without agent_id": (lambda d: _agent(d).pop("agent_id"), "missing key(s) 'agent_id'"),
    "agent_id out of range": (lambda d: _agent(d).update(agent_id=5), "constant 'agent_id' in 0..1"),
    "two agents, same agent_id": (lambda d: _agent(d, 1).update(agent_id=0), "agent_id 0 is used"),
    "wrong value type": (lambda d: _agent(d).update(orientation="up"), "(id 1) key 'orientation'"),
    "orientation out of range": (lambda d: _agent(d).update(orientation=7), "in 0..3"),
    "location off the map": (lambda d: _agent(d).update(location=[10, 0, 0]), "inside the map"),
    "two-element location": (lambda d: _agent(d).update(location=[1, 1]), "expected [x, y, z]"),
    "bad item id": (lambda d: _agent(d).update(inventory=[[42, 1]]), "key 'inventory'"),
    "item ids, not pairs": (lambda d: _agent(d).update(inventory=[0, 0, 6]), "key 'inventory'"),
    "group_id as a series": (lambda d: _agent(d).update(group_id=[[0, 0], [3, 0]]), "must be a constant"),
    "bad series entry": (lambda d: _agent(d).update(total_reward=[[0, 1.0], [3]]), "series entry 1"),
    "bad value in series": (
        lambda d: _agent(d).update(action_success=[[0, False], [4, 1]]),
        "series entry 1 (step 4): expected true or false",
    ),
    "matrix with a diagonal": (lambda d: d.update(reward_sharing_matrix=[[1, 0], [0, 1]]), "zero diagonal"),
    "bad episode_end": (lambda d: d["env_config"]["metta"].update(episode_end={"step": 3}), "'episode_end.terminated'"),
    "episode_end.step off": (
        lambda d: d["env_config"]["metta"]["episode_end"].update(step=5),
        "'episode_end.step' is 5",
    ),
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
    path.write_bytes(_deeply_nested(b""))
    with pytest.raises(ReplayFormatError, match="bad.json.z: replay: the JSON is nested too deeply"):
        read_replay(path)
    with pytest.raises(ReplayFormatError, match="missing.json.z: cannot read"):
        read_replay(tmp_path / "missing.json.z")
    with pytest.raises(ReplayFormatError, match="top level"):
        validate_replay("not a dict")


# --------------------------------------------------------------------------------------------------------
# Files written by earlier metta versions: position [x, y], items as repeated ids, defaults left out,
# metta's keys at the top level, frame 0 the state at the episode's start.
LEGACY = {
    "version": 2,
    "num_agents": 2,
    "max_steps": 3,
    "map_size": [5, 4],
    "file_name": "old.json.z",
    "type_names": ["agent", "wall", "", "", "", "", "", "", "altar"],
    "action_names": ["attack", "get_items", "move", "noop", "put_items", "rotate", "swap"],
    "item_names": ["ore_red", "ore_blue", "ore_green", "battery_red", "battery_blue", "battery_green", "heart"],
    "group_names": ["agent"],
    "reward_sharing_matrix": [[0.75, 0.25], [0.25, 0.75]],
    "objects": [
        {
            "id": 1,
            "type_id": 0,
            "agent_id": 0,
            "position": [[0, [1, 1]], [2, [2, 1]]],
            "inventory": [[0, []], [1, [6, 0, 6]]],
            "frozen": [[0, False], [1, True]],
            "frozen_progress": [[0, 0], [1, 5]],
            "frozen_time": 5,
            "action_id": [[0, 0], [1, 2]],
            "action_parameter": [[0, 0], [1, 1]],
            "action_success": [[0, False], [1, True]],
            "total_reward": [[0, 0.0], [2, 1.5]],
            "inventory_max": 255,
        },
        {"id": 2, "type_id": 0, "agent_id": 1, "position": [3, 2], "inventory_max": 255, "frozen_time": 5},
        {
            "id": 3,
            "type_id": 8,
            "position": [4, 0],
            "recipe_input": [3, 3, 3],
            "recipe_output": [6],
            "recipe_max": 5,
            "production_time": 1,
            "cooldown_time": 10,
            "converting": [[0, False], [1, True]],
        },
        {"id": 4, "type_id": 1, "position": [0, 0]},
        {"id": 5, "type_id": 8, "position": [4, 3], "cooldown_time": 10},  # a building with no recipe keys
    ],
    "metta_version": "0.1.0",
    "episode_id": "old",
    "task": "custom",
    "env_config": None,
    "start_step": 0,
    "orientation_names": ["up", "down", "left", "right"],
    "episode_end": {
        "step": 3,
        "terminated": True,
        "truncated": False,
        "rewards": [0.0, 0.0],
        "total_rewards": [1.5, 0.0],
    },
}


def test_files_of_earlier_metta_versions_still_read(tmp_path):
    path = tmp_path / "old.json.z"
    path.write_bytes(zlib.compress(json.dumps(LEGACY).encode()))
    data = read_replay(path)
    check_upstream_rules(data)
    a0, a1, altar, wall, bare = data["objects"]
    assert bare["input_resources"] == bare["output_resources"] == [] and bare["cooldown_duration"] == 10
    assert a0["location"] == [[0, [1, 1, 0]], [2, [2, 1, 0]]] and a1["location"] == [3, 2, 0]
    assert a0["inventory"] == [[0, []], [1, [[0, 1], [6, 2]]]]
    assert a0["is_frozen"] == [[0, False], [1, True]] and a0["freeze_remaining"] == a0["frozen_progress"]
    assert a0["action_param"] == [[0, 0], [1, 1]] and a1["action_param"] == 0 and a1["group_id"] == 0
    assert altar["input_resources"] == [[3, 3]] and altar["output_resources"] == [[6, 1]]
    assert altar["is_converting"] == [[0, False], [1, True]] and altar["location"] == [4, 0, 1]
    assert wall == {**wall, "location": [0, 0, 1], "is_swappable": False, "inventory": []}
    assert data["type_names"][2] == "type_2" and data["env_config"]["label"] == "custom"
    assert data["reward_sharing_matrix"] == [[0.0, 0.25], [0.25, 0.0]]
    assert replay_metadata(data)["episode_end"]["total_rewards"] == [1.5, 0.0]
