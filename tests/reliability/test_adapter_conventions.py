"""The Gymnasium and PettingZoo adapters follow their ecosystems' conventions, checked with the peers' own tests.

Time limits are truncations, infos are deterministic (so PettingZoo's seed tests pass over a whole episode),
render() and state() before reset() raise a clear error, ``state()`` works, and upstream's keywords are accepted.
"""

from __future__ import annotations

import datetime
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence
from pettingzoo.test import parallel_api_test, parallel_seed_test, render_test, seed_test, state_test
from pettingzoo.utils.conversions import parallel_to_aec

from metta.mettagrid import MettaGridEnv, MettaGridGymEnv, MettaGridPettingZooEnv, SingleTaskCurriculum
from metta.mettagrid.map import Level
from metta.mettagrid.replay import ReplayWriter, read_replay

MAX_STEPS = 12


def cfg(agents: int = 2, max_steps: int = MAX_STEPS, **game) -> dict:
    return {
        "game": {
            "num_agents": agents,
            "max_steps": max_steps,
            "map_builder": {
                "type": "random",
                "width": 7,
                "height": 7,
                "agents": agents,
                "objects": {"altar": 2},
                "border_width": 1,
            },
            **game,
        }
    }


def api_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    # The checkers report API problems as warnings; other libraries' warnings are not ours to judge.
    return [str(w.message) for w in caught if "gymnasium" in w.filename or "pettingzoo" in w.filename]


# --------------------------------------------------------------------------------------------------------
# The peers' own test functions


@pytest.mark.parametrize("max_steps", [1, MAX_STEPS])
def test_pettingzoo_parallel_seed_test_passes(max_steps):
    # With max_steps=1 the first step is the whole episode, so the compared infos hold the episode stats.
    # (parallel_seed_test stops after its first step: it tests `any()` of the terminations dict's keys.)
    parallel_seed_test(lambda: MettaGridPettingZooEnv(cfg(max_steps=max_steps)), num_cycles=4 * MAX_STEPS)


def test_pettingzoo_seed_test_through_parallel_to_aec_covers_a_whole_episode():
    seed_test(lambda: parallel_to_aec(MettaGridPettingZooEnv(cfg())), num_cycles=4 * MAX_STEPS)
    # seed_test compares every agent's last() until the episode ends; make sure this one does end in it.
    env = parallel_to_aec(MettaGridPettingZooEnv(cfg()))
    env.reset(seed=42)
    for agent in env.agent_iter(4 * MAX_STEPS * 2):
        _, _, terminated, truncated, info = env.last()
        if terminated or truncated:
            assert (terminated, truncated) == (False, True) and info["episode_length"] == MAX_STEPS
            break
        env.step(env.action_space(agent).sample())
    else:
        pytest.fail("the episode did not end within seed_test's iterations")


def test_pettingzoo_api_state_and_render_tests_pass():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(MettaGridPettingZooEnv(cfg()), num_cycles=3 * MAX_STEPS)
        state_test(parallel_to_aec(MettaGridPettingZooEnv(cfg())), MettaGridPettingZooEnv(cfg()), num_cycles=MAX_STEPS)
        render_test(lambda render_mode: parallel_to_aec(MettaGridPettingZooEnv(cfg(), render_mode=render_mode)))
    assert not api_warnings(caught)


def test_gymnasium_check_env_passes_with_its_render_check(capsys):
    # check_env builds the env again for each render mode from its spec, so it is made through a registration.
    gym.register("MettaGridReliabilityTest-v0", entry_point=lambda **kwargs: MettaGridGymEnv(cfg(agents=1), **kwargs))
    try:
        env = gym.make("MettaGridReliabilityTest-v0", render_mode="ansi", disable_env_checker=True).unwrapped
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env)
    finally:
        gym.registry.pop("MettaGridReliabilityTest-v0")
    # "human" prints text frames without pacing them, so no render_fps is declared.
    assert [w for w in api_warnings(caught) if "render_fps" not in w] == []


# --------------------------------------------------------------------------------------------------------
# Time limits: truncations in the adapters, upstream's choice in the native env


def test_gym_time_limit_is_a_truncation():
    env = MettaGridGymEnv(cfg(agents=1))
    env.reset(seed=0)
    ends = [env.step(env.action_space.sample())[2:4] for _ in range(MAX_STEPS)]
    assert ends == [(False, False)] * (MAX_STEPS - 1) + [(False, True)]


def test_pettingzoo_time_limit_is_a_truncation_for_every_agent():
    env = MettaGridPettingZooEnv(cfg())
    env.reset(seed=0)
    for t in range(MAX_STEPS):
        _, _, terms, truncs, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
        assert not any(terms.values())
        assert all(truncs.values()) == (t == MAX_STEPS - 1) == any(truncs.values())
    assert env.agents == [] and all(info["episode_length"] == MAX_STEPS for info in infos.values())


@pytest.mark.parametrize("episode_truncates", [False, True])
def test_native_env_keeps_upstreams_choice(episode_truncates):
    env = MettaGridEnv(cfg(max_steps=3, episode_truncates=episode_truncates))
    env.reset(seed=0)
    for _ in range(3):
        _, _, terminals, truncations, infos = env.step(np.zeros((2, 2), np.int32))
    assert len(infos) == 1
    assert terminals.all() != episode_truncates and truncations.all() == episode_truncates
    # ... and the adapters report a truncation either way.
    pz = MettaGridPettingZooEnv(cfg(max_steps=3, episode_truncates=episode_truncates))
    pz.reset(seed=0)
    for _ in range(3):
        _, _, terms, truncs, _ = pz.step({a: np.zeros(2, np.int32) for a in pz.agents})
    assert not any(terms.values()) and all(truncs.values())


# --------------------------------------------------------------------------------------------------------
# Deterministic infos; timings on request


def run_episode_infos(**kwargs) -> dict:
    env = MettaGridPettingZooEnv(cfg(), **kwargs)
    env.reset(seed=7)
    rng = np.random.default_rng(0)
    while env.agents:
        _, _, _, _, infos = env.step({a: rng.integers(0, [7, 4]) for a in env.agents})
    return infos


def test_episode_infos_are_deterministic_and_timings_come_only_on_request():
    first, second = run_episode_infos(), run_episode_infos()
    assert data_equivalence(first, second)
    assert (
        not any("timing" in key for key in first["agent_0"]) and "completion_time" not in first["agent_0"]["attributes"]
    )
    timed = run_episode_infos(timings=True)["agent_0"]
    assert timed["task_timing/custom_env/init_time_msec"] >= 0 and timed["attributes"]["completion_time"] >= 0
    native = MettaGridEnv(cfg(max_steps=1), timings=True)
    native.reset(seed=0)
    assert "completion_time" in native.step(np.zeros((2, 2), np.int32))[4][0]["attributes"]


# --------------------------------------------------------------------------------------------------------
# Before reset(); upstream's keywords


def test_render_and_state_before_reset_raise_a_clear_error():
    for env in (MettaGridGymEnv(cfg(agents=1), render_mode="ansi"), MettaGridPettingZooEnv(cfg(), render_mode="ansi")):
        with pytest.raises(gym.error.ResetNeeded, match=r"render\(\) before reset\(\)"):
            env.render()
        env.reset(seed=1)
        assert "#" in env.render()
    with pytest.raises(gym.error.ResetNeeded, match=r"state\(\) before reset\(\)"):
        MettaGridPettingZooEnv(cfg()).state()
    native = MettaGridEnv(cfg())
    with pytest.raises(RuntimeError, match=r"render\(\) before reset\(\)"):
        native.render()
    with pytest.raises(RuntimeError, match=r"grid_objects\(\) before reset\(\)"):
        native.grid_objects()


def test_upstream_keywords_are_accepted():
    curriculum = SingleTaskCurriculum("one", cfg(agents=1, max_steps=50))
    gym_env = MettaGridGymEnv(curriculum=curriculum, render_mode=None, is_training=True)
    pz_env = MettaGridPettingZooEnv(curriculum=cfg(), render_mode="ansi", is_training=False)
    assert gym_env.mettagrid_env.is_training and not pz_env.mettagrid_env.is_training
    # is_training is live: with desync_episodes (on by default) the first training episode is cut short.
    gym_env.reset(seed=0)
    length = 1
    while not gym_env.step(gym_env.action_space.sample())[3]:
        length += 1
    assert length < 50
    # Upstream's defaults, by keyword and in upstream's positional order (curriculum, render_mode, level,
    # stats_writer, replay_writer, is_training), plus what upstream's **kwargs may carry to its env.
    for env in (
        MettaGridGymEnv(curriculum, None, None, None, None, False, buf=None, single_agent=True),
        MettaGridPettingZooEnv(curriculum=cfg(), level=None, stats_writer=None, replay_writer=None, buf=None),
    ):
        env.reset(seed=0)
        env.close()


@pytest.mark.parametrize(
    "keywords, error, message",
    [
        (
            {"level": 3},
            TypeError,
            r"level=3 is not supported: pass None .*Level, or a non-empty 2-D grid of cell names",
        ),
        ({"level": [["wall", 1]]}, TypeError, r"level=\[\['wall', 1\]\] is not supported"),
        ({"level": [["wall", "empty"]]}, ValueError, r"level= has 0 agent cells but game.num_agents=2"),
        (
            {"stats_writer": "stats.db"},
            TypeError,
            r"stats_writer='stats.db' has no record_episode method: pass None or",
        ),
        (
            {"replay_writer": 3},
            TypeError,
            r"replay_writer=3 is not supported: pass None, a .*ReplayWriter or a directory",
        ),
        ({"buf": np.zeros(3)}, ValueError, r"buf=array.* use MettaGridEnv\(curriculum, buf=...\)"),
        (
            {"single_agent": True},
            TypeError,
            r"PettingZooEnv\(\) does not support single_agent=True; it accepts curriculum",
        ),
        ({"seed": 3, "foo": "x"}, TypeError, r"does not support seed=3, foo='x'"),
    ],
)
def test_unsupported_keyword_values_are_errors_that_name_them(keywords, error, message):
    with pytest.raises(error, match=message):
        MettaGridPettingZooEnv(cfg(), **keywords)


def test_gym_single_agent_false_is_an_error_naming_the_alternative():
    message = r"single_agent=False\): this adapter is single-agent .* MettaGridPettingZooEnv"
    with pytest.raises(ValueError, match=message):
        MettaGridGymEnv(cfg(agents=1), single_agent=False)


@dataclass
class UpstreamLevel:
    """The shape of upstream's pre-built level: a grid of cell names and labels."""

    grid: np.ndarray
    labels: list[str]


ROOM = [
    ["wall", "wall", "wall", "wall", "wall", "wall"],
    ["wall", "agent.agent", "empty", "altar", "empty", "wall"],
    ["wall", "empty", "empty", "empty", "agent.agent", "wall"],
    ["wall", "wall", "wall", "wall", "wall", "wall"],
]


def test_level_is_the_map_of_every_episode():
    level = UpstreamLevel(np.array(ROOM, dtype=np.str_), ["fixed_room"])
    env = MettaGridPettingZooEnv(cfg(), render_mode="ansi", level=level)
    maps = []
    for seed in (1, 2, 3):
        env.reset(seed=seed)
        maps.append(env.render())
        while env.agents:
            _, _, _, _, infos = env.step({a: np.zeros(2, np.int32) for a in env.agents})
        assert infos["agent_0"]["map_reward/fixed_room"] == infos["agent_0"]["episode_reward"]
        assert (infos["agent_0"]["attributes"]["map_w"], infos["agent_0"]["attributes"]["map_h"]) == (6, 4)
    assert maps[0] == maps[1] == maps[2] and maps[0].count("\n") >= 3 and "_" in maps[0]
    # Without level= the map builder draws a new map per seed.
    drawn = MettaGridPettingZooEnv(cfg(), render_mode="ansi")
    assert len({(drawn.reset(seed=s), drawn.render())[1] for s in (1, 2, 3)}) > 1
    # A metta Level or a nested list works the same; the Gym adapter takes it too.
    one = [row[:] for row in ROOM]
    one[2][4] = "empty"
    gym_env = MettaGridGymEnv(cfg(agents=1), render_mode="ansi", level=Level.from_strings(one))
    gym_env.reset(seed=0)
    from_list = MettaGridGymEnv(cfg(agents=1), "ansi", one)  # upstream's positional place of level
    from_list.reset(seed=5)
    assert gym_env.render() == from_list.render()
    # A cell the game has no object for is named when the episode starts.
    lab = [row[:] for row in ROOM]
    lab[1][3] = "lab"
    with pytest.raises(ValueError, match=r"level= does not fit the game config of the task: the map has a 'lab' cell"):
        MettaGridPettingZooEnv(cfg(), level=lab).reset(seed=0)


class StatsRecorder:
    """A stats writer with upstream's record_episode call, keeping what it receives."""

    def __init__(self):
        self.episodes: list[tuple] = []

    def record_episode(self, episode_id, attributes, agent_metrics, agent_groups, step_count, replay_url, created_at):
        self.episodes.append((episode_id, attributes, agent_metrics, agent_groups, step_count, replay_url, created_at))


def test_replay_writer_records_every_episode_and_stats_writer_receives_it(tmp_path: Path):
    stats = StatsRecorder()
    env = MettaGridPettingZooEnv(cfg(), stats_writer=stats, replay_writer=ReplayWriter(tmp_path / "replays"))
    rng = np.random.default_rng(0)
    before = datetime.datetime.now()
    for episode in range(2):
        env.reset(seed=episode)
        while env.agents:
            _, _, _, _, infos = env.step({a: rng.integers(0, [7, 4]) for a in env.agents})
        info = infos["agent_0"]
        replay = read_replay(info["replay_url"])
        # Every step is a frame, the terminal state included, and the file says where the episode ended.
        assert replay["max_steps"] == MAX_STEPS and replay["num_agents"] == 2
        assert replay["env_config"]["metta"]["episode_end"]["step"] == MAX_STEPS - 1
        episode_id, attributes, metrics, groups, step_count, replay_url, created_at = stats.episodes[-1]
        assert len(stats.episodes) == episode + 1
        assert replay_url == info["replay_url"] and Path(replay_url).name == f"{episode_id}.json.z"
        assert attributes["config.game.max_steps"] == str(MAX_STEPS) and attributes["config.game.num_agents"] == "2"
        assert [m["reward"] for m in metrics.values()] == info["episode_rewards"]
        # The per-agent stats average to the episode's agent stats.
        for key, mean in info["agent"].items():
            assert sum(m.get(key, 0.0) for m in metrics.values()) / 2 == pytest.approx(mean), key
        assert groups == {0: 0, 1: 0} and step_count == MAX_STEPS and before <= created_at <= datetime.datetime.now()
    assert len(list((tmp_path / "replays").glob("*.json.z"))) == 2

    # The Gym adapter with a directory: a reset before the end, and close(), write the replay so far.
    gym_env = MettaGridGymEnv(cfg(agents=1), replay_writer=str(tmp_path / "gym"), stats_writer=stats)
    gym_env.reset(seed=0)
    for _ in range(3):
        gym_env.step(gym_env.action_space.sample())
    gym_env.reset(seed=1)
    gym_env.step(gym_env.action_space.sample())
    gym_env.close()
    assert sorted(read_replay(p)["max_steps"] for p in (tmp_path / "gym").iterdir()) == [1, 3]
    assert len(stats.episodes) == 2  # only ended episodes have stats


def test_out_of_range_pettingzoo_actions_are_invalid_not_wrapped():
    env = MettaGridPettingZooEnv(cfg(max_steps=2))
    env.reset(seed=0)
    noop = env.action_names.index("noop")
    for _ in range(2):
        # int64 2**32 + noop would wrap to the valid noop; 2**63 (uint64) to action 0.
        _, _, _, _, infos = env.step(
            {"agent_0": np.array([noop, 2**32], np.int64), "agent_1": np.array([2**63, 0], np.uint64)}
        )
    stats = infos["agent_0"]["agent"]  # means over the two agents
    assert stats["action.invalid_arg"] == 1.0 and stats["action.invalid_type"] == 1.0
    assert not any(key.endswith((".success", ".failed")) for key in stats)
