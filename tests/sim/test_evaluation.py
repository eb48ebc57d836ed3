from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sim_helpers import SMALL_ENV

from metta.common.stats_logger import StatsLogger
from metta.interface.evaluation import (
    create_evaluation_config_suite,
    create_replay_config,
    evaluate_policy_suite,
    format_scores,
    generate_replay_simple,
)
from metta.mettagrid.config_loader import load_env_config
from metta.mettagrid.replay import read_replay, replay_metadata
from metta.sim.evaluation import replay_env_label
from metta.sim.simulation import SimulationSuite, read_episode_stats
from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig


def tiny_suite() -> SimulationSuiteConfig:
    longer = {**SMALL_ENV, "game": {**SMALL_ENV["game"], "max_steps": 20}}
    return SimulationSuiteConfig(
        name="tiny",
        num_episodes=2,
        episode_tags=["test"],
        simulations={
            "nav/a": {"env": SMALL_ENV, "num_episodes": 3},
            "nav/b": {"env": longer},
            "other": {"env": SMALL_ENV},
        },
    )


def test_scores_per_sim_and_category_match_the_written_stats(saved_record, policy_store, tmp_path):
    scores = evaluate_policy_suite(saved_record, policy_store, tiny_suite(), "cpu", stats_dir=tmp_path)

    assert set(scores) == {"nav/a", "nav/b", "nav/score", "tiny/other", "tiny/score"}
    records = read_episode_stats(tmp_path)
    by_sim: dict[str, list[float]] = {}
    for rec in records:
        assert rec["episode_tags"] == ["test"] and rec["suite_name"] == "tiny"
        by_sim.setdefault(rec["sim_name"], []).append(rec["reward"])
    assert {k: len(v) for k, v in by_sim.items()} == {"nav/a": 3, "nav/b": 2, "other": 2}
    assert scores["nav/a"] == pytest.approx(np.mean(by_sim["nav/a"]))
    assert scores["nav/b"] == pytest.approx(np.mean(by_sim["nav/b"]))
    assert scores["nav/score"] == pytest.approx((scores["nav/a"] + scores["nav/b"]) / 2)
    assert scores["tiny/other"] == pytest.approx(np.mean(by_sim["other"])) == pytest.approx(scores["tiny/score"])


def test_a_plain_metta_agent_is_accepted(saved_record):
    scores = evaluate_policy_suite(saved_record.policy, None, tiny_suite(), "cpu")
    assert "nav/score" in scores


def test_a_sim_stopped_by_its_guard_has_a_missing_score_and_so_has_its_category(
    saved_record, policy_store, caplog, tmp_path
):
    endless = {**SMALL_ENV, "game": {**SMALL_ENV["game"], "max_steps": 1_000_000}}
    suite = SimulationSuiteConfig(
        name="t",
        num_episodes=1,
        simulations={"nav/fast": {"env": SMALL_ENV}, "nav/slow": {"env": endless, "max_time_s": 0.3}},
    )
    with caplog.at_level("INFO"):
        scores = evaluate_policy_suite(saved_record, policy_store, suite, "cpu")
    assert set(scores) == {"nav/fast", "nav/slow", "nav/score"}
    assert np.isfinite(scores["nav/fast"]) and np.isnan(scores["nav/slow"]) and np.isnan(scores["nav/score"])
    # The console says so: a warning naming the sim, and "missing" where the score would be.
    assert "evaluation nav/slow: score missing" in caplog.text
    assert "nav/slow missing" in format_scores(scores) and "nav/score missing" in format_scores(scores)
    # metrics.jsonl (what run.py logs the scores into) stores a missing score as null, not a number.
    logger = StatsLogger(tmp_path, console=False)
    logger.log(1, 100, {f"eval/{k}": v for k, v in scores.items()})
    logger.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["eval/nav/slow"] is None and row["eval/nav/score"] is None and row["eval/nav/fast"] == scores["nav/fast"]


def test_generate_replay_simple_writes_a_valid_replay(saved_record, policy_store, tmp_path):
    cfg = SingleEnvSimulationConfig(env=SMALL_ENV, num_episodes=1)
    path = generate_replay_simple(saved_record, policy_store, cfg, "cpu", replay_dir=tmp_path, epoch=7)
    assert path.is_file() and path.parent.parent == tmp_path / "epoch_0007"
    data = read_replay(path)
    assert data["num_agents"] == 2 and data["max_steps"] == 29 and replay_metadata(data)["episode_end"] is not None
    # The replay names its env (what the viewer shows), not the simulation ("replay") that recorded it.
    assert data["env_config"]["label"] == "custom_env"


def test_evaluation_suite_resolves_its_envs():
    suite = create_evaluation_config_suite()
    assert suite.name == "evaluation" and suite.num_episodes == 10
    assert list(suite.simulations) == [f"navigation/terrain_{size}" for size in ("small", "medium", "large")]
    for name, sim in suite.simulations.items():
        assert (sim.num_episodes, sim.max_time_s) == (5, None)  # no wall-time cut: episodes run to max_steps
        size = name.rsplit("_", 1)[1]
        env = load_env_config(sim.env, sim.env_overrides)
        assert env.game.num_agents == 4 and env.game.max_steps == 1000
        assert env.game.map_builder.room.dir == f"varied_terrain/balanced_{size}"
    # Building the suite builds every env config (no envs yet): nothing is left to fail at run time.
    SimulationSuite(suite, torch.nn.Identity())


def test_replay_config():
    cfg = create_replay_config()
    assert (cfg.num_episodes, cfg.max_time_s) == (1, 60)  # a replay has no score; its guard bounds recording
    env = load_env_config(cfg.env, cfg.env_overrides)
    assert env.game.map_builder.room.dir == "varied_terrain/balanced_medium"
    assert replay_env_label(cfg) == f"{cfg.env} (game.map_builder.room.dir=varied_terrain/balanced_medium)"
    assert replay_env_label(
        SingleEnvSimulationConfig(env="/env/mettagrid/navigation/evals/terrain_small", num_episodes=1)
    ) == ("terrain_small")
    maze = create_replay_config("varied_terrain/maze_small")
    assert maze.env_overrides == {"game.map_builder.room.dir": "varied_terrain/maze_small"}
    with pytest.raises(ValueError, match="not a terrain set"):
        create_replay_config("varied_terrain/balanced_huge")


def test_bad_evaluation_arguments(saved_record, policy_store):
    with pytest.raises(TypeError, match="SimulationSuiteConfig"):
        evaluate_policy_suite(saved_record, policy_store, {"name": "x"}, "cpu")
    with pytest.raises(TypeError, match="PolicyRecord"):
        evaluate_policy_suite("model.pt", policy_store, tiny_suite(), "cpu")
    with pytest.raises(TypeError, match="SingleEnvSimulationConfig"):
        generate_replay_simple(saved_record, policy_store, tiny_suite(), "cpu")
    with pytest.raises(ValueError, match="epoch"):
        generate_replay_simple(saved_record, policy_store, create_replay_config(), "cpu", epoch=-1)


def test_multiprocessing_vectorization_gives_the_same_counts(saved_record, policy_store, tmp_path):
    suite = SimulationSuiteConfig(name="mp", num_episodes=3, simulations={"nav/a": {"env": SMALL_ENV}})
    scores = evaluate_policy_suite(saved_record, policy_store, suite, "cpu", "multiprocessing", stats_dir=tmp_path)
    assert set(scores) == {"nav/a", "nav/score"}
    assert len(read_episode_stats(tmp_path)) == 3


def test_a_replay_cut_by_the_time_limit_is_written_partial(saved_record, policy_store, tmp_path):
    endless = {**SMALL_ENV, "game": {**SMALL_ENV["game"], "max_steps": 1_000_000}}
    cfg = SingleEnvSimulationConfig(env=endless, num_episodes=1, max_time_s=0.3)
    path = generate_replay_simple(saved_record, policy_store, cfg, "cpu", replay_dir=tmp_path)
    data = read_replay(path)
    assert replay_metadata(data)["episode_end"] is None and data["max_steps"] > 1
