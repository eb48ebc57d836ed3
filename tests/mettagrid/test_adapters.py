"""The Gymnasium and PettingZoo adapters: API checkers, terminal observations, seeding, construction."""

import importlib.util
import subprocess
import sys
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test

from metta.mettagrid import MettaGridConfig, MettaGridEnv, MettaGridGymEnv, MettaGridPettingZooEnv

MAX_STEPS = 20


def make_cfg(agents: int = 2, max_steps: int = MAX_STEPS) -> dict:
    return {
        "game": {
            "num_agents": agents,
            "max_steps": max_steps,
            "map_builder": {
                "type": "random",
                "width": 8,
                "height": 8,
                "agents": agents,
                "objects": {"altar": 2},
                "border_width": 1,
            },
        }
    }


def assert_no_api_warnings(caught: list[warnings.WarningMessage]) -> None:
    # The checkers report API problems as warnings; anything from other libraries is not ours to judge.
    ours = [w for w in caught if "gymnasium" in w.filename or "pettingzoo" in w.filename]
    assert not ours, [str(w.message) for w in ours]


def fixed_actions(n_agents: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    actions = np.zeros((steps, n_agents, 2), dtype=np.int32)
    actions[:, :, 0] = rng.integers(0, 7, (steps, n_agents))
    actions[:, :, 1] = rng.integers(0, 4, (steps, n_agents))
    return actions


# --------------------------------------------------------------------------------------------------------
# PettingZoo
def test_parallel_api_test_passes():
    env = MettaGridPettingZooEnv(make_cfg())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=3 * MAX_STEPS)
    assert_no_api_warnings(caught)


def test_pettingzoo_agents_spaces_and_episode_end():
    env = MettaGridPettingZooEnv(make_cfg())
    assert env.possible_agents == ["agent_0", "agent_1"]
    assert env.agents == []
    assert env.observation_space("agent_1") is env.observation_space("agent_1")
    assert env.action_space("agent_0") is env.action_space("agent_0")
    assert env.observation_space("agent_0").shape == (200, 3)
    obs, infos = env.reset(seed=1)
    assert env.agents == env.possible_agents
    assert set(obs) == set(infos) == set(env.agents)
    assert obs["agent_0"].dtype == np.uint8 and obs["agent_0"].shape == (200, 3)
    noop = env.action_names.index("noop")
    for t in range(MAX_STEPS):
        obs, rewards, terms, truncs, infos = env.step({a: np.array([noop, 0]) for a in env.agents})
        assert set(obs) == set(rewards) == set(terms) == set(truncs) == set(infos) == {"agent_0", "agent_1"}
        assert all(isinstance(r, float) for r in rewards.values())
        ended = t == MAX_STEPS - 1
        assert all(terms[a] or truncs[a] for a in obs) == ended
        assert env.agents == ([] if ended else env.possible_agents)
    for a in env.possible_agents:
        assert infos[a]["episode_length"] == MAX_STEPS
        assert "game" in infos[a] and "agent" in infos[a]
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})
    obs, _ = env.reset()
    with pytest.raises(ValueError, match="agent_1"):
        env.step({"agent_0": np.array([noop, 0])})
    state = env.state()  # every agent's observation, flattened in agent order
    assert state.shape == env.state_space.shape == (2 * 200 * 3,) and state in env.state_space
    np.testing.assert_array_equal(state.reshape(2, 200, 3), np.stack([obs["agent_0"], obs["agent_1"]]))


# --------------------------------------------------------------------------------------------------------
# Gymnasium
def test_check_env_passes():
    env = MettaGridGymEnv(make_cfg(agents=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # No spec (not registered), so the checker cannot build envs with other render modes: render is
        # checked in test_render below.
        check_env(env, skip_render_check=True)
    assert_no_api_warnings(caught)


def test_gym_step_types_and_episode_end():
    env = MettaGridGymEnv(make_cfg(agents=1))
    assert env.observation_space.shape == (200, 3) and env.observation_space.dtype == np.uint8
    obs, info = env.reset(seed=5)
    assert obs.shape == (200, 3) and obs.dtype == np.uint8 and info == {}
    for t in range(MAX_STEPS):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
        assert (terminated or truncated) == (t == MAX_STEPS - 1)
        assert obs in env.observation_space
    assert info["episode_length"] == MAX_STEPS
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_gym_rejects_multi_agent_config():
    with pytest.raises(ValueError, match="num_agents=2"):
        MettaGridGymEnv(make_cfg(agents=2))


def test_bad_config_raises():
    bad = make_cfg(agents=1)
    bad["game"]["no_such_field"] = 1
    with pytest.raises(ValueError, match="no_such_field"):
        MettaGridGymEnv(bad)
    with pytest.raises(ValueError, match="no_such_field"):
        MettaGridPettingZooEnv(bad)
    with pytest.raises(ValueError, match="render_mode"):
        MettaGridGymEnv(make_cfg(agents=1), render_mode="rgb_array")


# --------------------------------------------------------------------------------------------------------
# Terminal observations: the obs of the ending step is the last state of that episode, not a new map.
def reference_final_observations(cfg: dict, seed: int, actions: np.ndarray) -> np.ndarray:
    """The final observations of an episode, from a MettaGridEnv whose max_steps lies beyond the episode.

    Observations carry the episode-completion percentage (step / max_steps), so the reference env runs the
    same game with max_steps=0 (no limit, completion 0) and the adapter's env with global completion obs off.
    """
    ref = MettaGridEnv(cfg | {"game": cfg["game"] | {"max_steps": 0}})
    ref.reset(seed)
    for step_actions in actions:
        obs, *_ = ref.step(step_actions)
    return obs.copy()


def no_completion_cfg(agents: int) -> dict:
    cfg = make_cfg(agents)
    cfg["game"]["global_obs"] = {"episode_completion_pct": False}
    return cfg


def test_pettingzoo_terminal_observation_is_last_state_of_episode():
    cfg = no_completion_cfg(agents=2)
    env = MettaGridPettingZooEnv(cfg)
    env.reset(seed=11)
    actions = fixed_actions(2, MAX_STEPS, seed=0)
    for step_actions in actions:
        obs, _, terms, truncs, infos = env.step({a: step_actions[i] for i, a in enumerate(env.agents)})
    assert all(terms.values()) or all(truncs.values())
    # The adapter seeds its env with a seed drawn from reset's seed; the episode stats name it.
    expected = reference_final_observations(cfg, infos["agent_0"]["attributes"]["seed"], actions)
    np.testing.assert_array_equal(np.stack([obs["agent_0"], obs["agent_1"]]), expected)
    # The underlying env does not auto-reset: it still holds the ended episode until reset().
    assert env.mettagrid_env.current_step() == MAX_STEPS


def test_gym_terminal_observation_is_last_state_of_episode():
    cfg = no_completion_cfg(agents=1)
    env = MettaGridGymEnv(cfg)
    env.reset(seed=12)
    actions = fixed_actions(1, MAX_STEPS, seed=1)
    for step_actions in actions:
        obs, _, terminated, truncated, info = env.step(step_actions[0])
    assert terminated or truncated
    expected = reference_final_observations(cfg, info["attributes"]["seed"], actions)[0]
    np.testing.assert_array_equal(obs, expected)


def test_render_shows_final_map_after_episode_end():
    env = MettaGridGymEnv(make_cfg(agents=1), render_mode="ansi")
    env.reset(seed=3)
    first_frame = env.render()
    assert isinstance(first_frame, str) and "#" in first_frame
    noop = env.action_names.index("noop")
    for _ in range(MAX_STEPS):
        env.step(np.array([noop, 0]))
    assert env.render() == first_frame  # agent stood still; the frame is the ended episode, not a new map
    pz = MettaGridPettingZooEnv(make_cfg(), render_mode="ansi")
    pz.reset(seed=3)
    assert "#" in pz.render()


# --------------------------------------------------------------------------------------------------------
# Determinism
def rollout_pettingzoo(env: MettaGridPettingZooEnv, seed: int, episodes: int = 2) -> list[np.ndarray]:
    trace = []
    actions = fixed_actions(2, MAX_STEPS, seed=7)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        trace.append(np.stack(list(obs.values())))
        for step_actions in actions:
            obs, rewards, *_ = env.step({a: step_actions[i] for i, a in enumerate(env.agents)})
            trace += [np.stack(list(obs.values())), np.array(list(rewards.values()))]
    return trace


def test_same_seed_same_episodes_and_new_maps_each_reset():
    a = rollout_pettingzoo(MettaGridPettingZooEnv(make_cfg()), seed=42)
    b = rollout_pettingzoo(MettaGridPettingZooEnv(make_cfg()), seed=42)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # reset() without a seed continues the seeded stream: the second episode gets a different map.
    first_obs_of_episode_2 = a[1 + 2 * MAX_STEPS]
    assert not np.array_equal(a[0], first_obs_of_episode_2)
    c = rollout_pettingzoo(MettaGridPettingZooEnv(make_cfg()), seed=43)
    assert not np.array_equal(a[0], c[0])


def test_gym_same_seed_same_observations():
    env = MettaGridGymEnv(make_cfg(agents=1))
    first, _ = env.reset(seed=9)
    env.step(env.action_space.sample())
    again, _ = env.reset(seed=9)
    np.testing.assert_array_equal(first, again)


# --------------------------------------------------------------------------------------------------------
# Construction from an object, a dict and a config path
@pytest.mark.parametrize("adapter", [MettaGridGymEnv, MettaGridPettingZooEnv])
def test_construct_from_object_and_dict_match(adapter):
    from_dict = adapter(make_cfg(agents=1))
    from_obj = adapter(MettaGridConfig.from_any(make_cfg(agents=1)))
    obs_dict, _ = from_dict.reset(seed=4)
    obs_obj, _ = from_obj.reset(seed=4)
    if adapter is MettaGridPettingZooEnv:
        obs_dict, obs_obj = obs_dict["agent_0"], obs_obj["agent_0"]
    np.testing.assert_array_equal(obs_dict, obs_obj)


NAV_PATH = "/env/mettagrid/navigation/training/terrain_from_numpy_defaults"


@pytest.mark.skipif(
    importlib.util.find_spec("metta.mettagrid.curriculum.loader") is None,
    reason="config paths need metta.mettagrid.curriculum.loader",
)
def test_construct_from_config_path():
    env = MettaGridPettingZooEnv(NAV_PATH)
    assert env.possible_agents == [f"agent_{i}" for i in range(4)]
    obs, _ = env.reset(seed=0)
    assert obs["agent_3"].shape == (200, 3)
    obs, rewards, *_ = env.step({a: env.action_space(a).sample() for a in env.agents})
    assert set(rewards) == set(env.possible_agents)
    with pytest.raises(ValueError, match="num_agents=4"):
        MettaGridGymEnv(NAV_PATH)


def test_importing_mettagrid_is_light():
    code = (
        "import sys, metta.mettagrid as m; "
        "assert 'numba' not in sys.modules and 'pettingzoo' not in sys.modules; "
        "m.MettaGridPettingZooEnv, m.MettaGridGymEnv, m.MettaGridEnv, m.MettaGridConfig, m.Curriculum, "
        "m.SingleTaskCurriculum, m.BucketedCurriculum, m.LearningProgressCurriculum; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
