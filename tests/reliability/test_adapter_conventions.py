"""The Gymnasium and PettingZoo adapters follow their ecosystems' conventions, checked with the peers' own tests.

Time limits are truncations, infos are deterministic (so PettingZoo's seed tests pass over a whole episode),
render() and state() before reset() raise a clear error, ``state()`` works, and upstream's keywords are accepted.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence
from pettingzoo.test import parallel_api_test, parallel_seed_test, render_test, seed_test, state_test
from pettingzoo.utils.conversions import parallel_to_aec

from metta.mettagrid import MettaGridEnv, MettaGridGymEnv, MettaGridPettingZooEnv, SingleTaskCurriculum

MAX_STEPS = 12


def cfg(agents: int = 2, max_steps: int = MAX_STEPS, **game) -> dict:
    return {
        "game": {
            "num_agents": agents,
            "max_steps": max_steps,
            "map_builder": {
                "type": "random", "width": 7, "height": 7, "agents": agents, "objects": {"altar": 2}, "border_width": 1,
            },  # fmt: skip
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
    for steps, agent in enumerate(env.agent_iter(4 * MAX_STEPS * 2)):
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
    assert not any("timing" in key for key in first["agent_0"]) and "completion_time" not in first["agent_0"]["attributes"]
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
    with pytest.raises(TypeError, match="stats_writer"):
        MettaGridGymEnv(curriculum=curriculum, stats_writer=None)  # upstream's writers do not exist here


def test_out_of_range_pettingzoo_actions_are_invalid_not_wrapped():
    env = MettaGridPettingZooEnv(cfg(max_steps=2))
    env.reset(seed=0)
    noop = env.action_names.index("noop")
    for _ in range(2):
        # int64 2**32 + noop would wrap to the valid noop; 2**63 (uint64) to action 0.
        _, _, _, _, infos = env.step({"agent_0": np.array([noop, 2**32], np.int64), "agent_1": np.array([2**63, 0], np.uint64)})
    stats = infos["agent_0"]["agent"]  # means over the two agents
    assert stats["action.invalid_arg"] == 1.0 and stats["action.invalid_type"] == 1.0
    assert not any(key.endswith((".success", ".failed")) for key in stats)
