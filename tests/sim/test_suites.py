"""Named suites (terrain, navigation, smoke), their category scores, and the scripted baselines on them."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest

from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.map.ascii import parse_ascii
from metta.mettagrid.map.navigation import navigation_map
from metta.rl.trainer_config import SimulationConfig as TrainerSimulationConfig
from metta.sim.baselines import NearestAltarPolicy, RandomPolicy, baseline_record, make_baseline
from metta.sim.evaluation import evaluate_policy_suite, suite_scores
from metta.sim.simulation import Simulation, SimulationResults
from metta.sim.simulation_config import SimulationSuiteConfig
from metta.sim.suites import (
    NAVIGATION_CATEGORIES,
    NAVIGATION_MAX_STEPS,
    SUITE_NAMES,
    suite_categories,
    suite_config,
    suite_env_hashes,
)


def test_trainer_simulation_suite_takes_the_suite_names():
    allowed = typing.get_args(TrainerSimulationConfig.model_fields["suite"].annotation)
    assert set(allowed) == set(SUITE_NAMES) and TrainerSimulationConfig().suite == "terrain"
    with pytest.raises(ValueError, match="navigation"):
        TrainerSimulationConfig(suite="navgation")


def test_navigation_suite_has_upstreams_sims_and_settings():
    suite = suite_config("navigation")
    assert list(suite.simulations) == [f"navigation/{name}" for name in NAVIGATION_MAX_STEPS]
    assert len(suite.simulations) == 26 and suite_categories(suite) == list(NAVIGATION_CATEGORIES)
    for name, sim in suite.simulations.items():
        env = sim.env
        short = name.split("/")[1]
        assert sim.num_episodes == 5 and sim.max_time_s is None
        assert env.game.num_agents == 1 and env.game.max_steps == NAVIGATION_MAX_STEPS[short]
        assert env.game.agent.rewards.inventory["heart"] == 0.333
        assert env.game.objects["altar"].initial_resource_count == 1
        for action in ("attack", "swap", "change_color", "put_items"):
            assert not getattr(env.game.actions, action).enabled
        assert not env.game.global_obs.resource_rewards
        # The map travels in the config as text: the config (and its hash) names the exact map.
        assert np.array_equal(parse_ascii(env.game.map_builder.map_data), navigation_map(short).grid)
    assert suite_config("navigation", num_episodes=2).simulations["navigation/labyrinth"].num_episodes == 2
    hashes = suite_env_hashes(suite)
    assert len(set(hashes.values())) == 26 and hashes == suite_env_hashes(suite_config("navigation", 2))


def test_every_suite_builds():
    for name in SUITE_NAMES:
        suite = suite_config(name)
        assert suite.simulations
    with pytest.raises(ValueError, match="does not exist"):
        suite_config("navigationn")


def test_category_score_is_the_mean_over_sims_whose_name_contains_it():
    suite = SimulationSuiteConfig(
        name="t",
        categories=["nav", "radial", "walls"],
        simulations={f"nav/{n}": {"env": "/env/mettagrid/curriculum/simple", "num_episodes": 1} for n in "abc"},
    )
    suite = suite.model_copy(
        update={"simulations": {k.replace("nav/a", "nav/radial_a"): v for k, v in suite.simulations.items()}}
    )
    results = {
        "nav/radial_a": SimulationResults("nav/radial_a", "1", 1, rewards=[1.0]),
        "nav/b": SimulationResults("nav/b", "2", 1, rewards=[0.5]),
        "nav/c": SimulationResults("nav/c", "3", 1, rewards=[0.0]),
    }
    scores = suite_scores(suite, results)
    assert scores["nav/score"] == pytest.approx(0.5) and scores["radial/score"] == 1.0
    assert math.isnan(scores["walls/score"])  # no sim of that category: no score
    results["nav/c"] = SimulationResults("nav/c", "3", 1, rewards=[], timed_out=True)
    scores = suite_scores(suite, results)
    assert math.isnan(scores["nav/c"]) and math.isnan(scores["nav/score"]) and scores["radial/score"] == 1.0


def test_nearest_altar_takes_the_heart_in_view():
    env = MettaGridEnv(suite_config("smoke").simulations["smoke/open"].env, num_envs=3)
    policy = NearestAltarPolicy().bind(env)
    obs, _ = env.reset(seed=0)
    total = np.zeros(env.num_agents)
    for _ in range(8):  # agent at column 1, altar at column 5, facing up: turn, 3 steps, take = 5 actions
        obs, rewards, *_ = env.step(policy.act(obs))
        total += rewards
    assert total == pytest.approx([0.333] * 3)


def test_baselines_need_their_actions():
    env = MettaGridEnv({"game": {"num_agents": 1, "actions": {"get_items": {"enabled": False}}}}, num_envs=1)
    with pytest.raises(ValueError, match="get_items"):
        NearestAltarPolicy().bind(env)
    RandomPolicy().bind(env)  # any action set
    with pytest.raises(RuntimeError, match="bind"):
        make_baseline("random")(np.zeros((1, 200, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="nearest_altar"):
        make_baseline("nearest")


def test_random_policy_covers_every_action_and_argument():
    env = MettaGridEnv("/env/mettagrid/curriculum/simple", num_envs=1)
    actions = RandomPolicy().bind(env).act(np.zeros((20000, 200, 3), dtype=np.uint8))
    for kind, max_arg in enumerate(env.max_action_args):
        args = set(actions[actions[:, 0] == kind, 1].tolist())
        assert args == set(range(max_arg + 1)), env.action_names[kind]


def test_nearest_altar_scores_above_random_on_every_navigation_category():
    suite = suite_config("navigation", num_episodes=2)
    scores = {
        name: evaluate_policy_suite(baseline_record(name), None, suite, "cpu") for name in ("random", "nearest_altar")
    }
    for category in NAVIGATION_CATEGORIES:
        key = f"{category}/score"
        assert scores["nearest_altar"][key] > scores["random"][key], key
    # Reproducible: the same seed gives the same scores.
    again = evaluate_policy_suite(baseline_record("nearest_altar"), None, suite_config("smoke"), "cpu", seed=3)
    assert again == evaluate_policy_suite(baseline_record("nearest_altar"), None, suite_config("smoke"), "cpu", seed=3)


def test_a_baseline_in_a_simulation_is_bound_to_its_env():
    policy = make_baseline("nearest_altar")
    sim = Simulation("smoke/wall", suite_config("smoke").simulations["smoke/wall"], policy)
    assert sim.simulate().score == pytest.approx(0.333)
    assert policy._action_names is None  # the caller's object is left unbound; the simulation bound a copy
