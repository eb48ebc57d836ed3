from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sim_helpers import SMALL_ENV, save_new_policy
from torch import nn

from metta.common.evaluation_db import EvaluationDB, sim_scores
from metta.mettagrid.replay import expand_series, read_replay, replay_metadata
from metta.sim.simulation import (
    Simulation,
    SimulationResults,
    SimulationSuite,
    candidate_agent_count,
    episode_quotas,
    read_episode_stats,
)
from metta.sim.simulation_config import SimulationConfig, SimulationSuiteConfig, SingleEnvSimulationConfig


class ConstantPolicy(nn.Module):
    """Always the same action; remembers how many rows it was asked about."""

    def __init__(self, action_type: int, arg: int = 0):
        super().__init__()
        self.action = (action_type, arg)
        self.batch_sizes: list[int] = []

    def forward(self, obs: torch.Tensor, state):
        self.batch_sizes.append(obs.shape[0])
        actions = torch.tensor([self.action] * obs.shape[0], dtype=torch.int32)
        return actions, None, None, None, None


def test_quotas_and_candidate_counts():
    assert episode_quotas(5, 2) == [3, 2]
    assert episode_quotas(2, 2) == [1, 1]
    assert candidate_agent_count(4, 1.0) == 4
    assert candidate_agent_count(4, 0.5) == 2
    assert candidate_agent_count(4, 0.1) == 1  # at least one agent is the candidate's
    assert candidate_agent_count(100, 0.29) == 29


def test_exact_episode_count_stats_and_replays(saved_record, policy_store, tmp_path):
    cfg = SingleEnvSimulationConfig(env=SMALL_ENV, num_episodes=3)
    sim = Simulation(
        "cat/sim", cfg, saved_record, policy_store, stats_dir=tmp_path / "stats", replay_dir=tmp_path / "replays"
    )
    result = sim.simulate()

    assert result.num_episodes == 3 and not result.timed_out
    assert result.episode_lengths == [30, 30, 30]
    records = read_episode_stats(result.stats_path)
    assert [r["episode_index"] for r in records] == [0, 1, 2]
    for rec, reward, replay in zip(records, result.rewards, result.replay_paths):
        assert rec["sim_name"] == "cat/sim" and rec["policy_uri"] == saved_record.uri
        assert rec["candidate_agents"] == [0, 1] and rec["npc_agents"] == [] and rec["npc_reward"] is None
        assert rec["reward"] == pytest.approx(np.mean(rec["agent_rewards"])) == pytest.approx(reward)
        assert rec["infos"]["episode_length"] == 30
        assert rec["replay_path"] == str(replay)
        data = read_replay(replay)  # validates against docs/replay_format.md
        end = replay_metadata(data)["episode_end"]  # frames are the states after steps 1..29; 30 is terminal
        assert data["num_agents"] == 2 and end["step"] == data["max_steps"] == 29
        assert end["total_rewards"] == pytest.approx(rec["agent_rewards"], abs=1e-5)
    assert len({str(p) for p in result.replay_paths}) == 3
    assert any(r != 0 for r in result.rewards)  # the move reward makes the mean check meaningful


def test_time_limit_is_honoured(saved_record, policy_store, tmp_path):
    endless = {**SMALL_ENV, "game": {**SMALL_ENV["game"], "max_steps": 1_000_000}}
    cfg = SingleEnvSimulationConfig(env=endless, num_episodes=2, max_time_s=0.5)
    t0 = time.monotonic()
    result = Simulation("slow", cfg, saved_record, policy_store, stats_dir=tmp_path).simulate()
    assert time.monotonic() - t0 < 10
    assert result.timed_out and result.num_episodes == 0 and np.isnan(result.mean_reward)
    assert read_episode_stats(result.stats_path) == []


def test_npc_and_candidate_act_on_their_own_rows(policy_store, tmp_path):
    npc = save_new_policy(policy_store, "npc.pt", seed=1)
    probe = Simulation("probe", SingleEnvSimulationConfig(env=SMALL_ENV, num_episodes=1), ConstantPolicy(0))
    noop = probe._make_vecenv().action_names.index("noop")
    candidate = ConstantPolicy(noop)
    cfg = SingleEnvSimulationConfig(env=SMALL_ENV, num_episodes=2, npc_policy_uri=npc.uri, policy_agents_pct=0.5)
    sim = Simulation("duel", cfg, candidate, policy_store, stats_dir=tmp_path, replay_dir=tmp_path / "replays")
    result = sim.simulate()

    assert result.num_episodes == 2
    assert set(candidate.batch_sizes) == {sim.num_envs}  # one candidate row per env
    records = read_episode_stats(result.stats_path)
    for rec in records:
        assert rec["candidate_agents"] == [0] and rec["npc_agents"] == [1] and rec["npc_policy_uri"] == npc.uri
        assert rec["reward"] == rec["agent_rewards"][0] and rec["npc_reward"] == rec["agent_rewards"][1]
    for path in result.replay_paths:
        data = read_replay(path)
        agents = {o["agent_id"]: o for o in data["objects"] if "agent_id" in o}
        steps = data["max_steps"]
        cand_actions = expand_series(agents[0]["action_id"], steps)  # frame k holds step k+1's action
        npc_actions = expand_series(agents[1]["action_id"], steps)
        assert set(cand_actions) == {noop}
        assert len(set(npc_actions)) > 1  # the sampled MettaAgent does not only noop


def test_live_agent_is_not_changed_by_evaluation(saved_record, policy_store):
    agent = saved_record.policy
    agent.train()
    before = copy.deepcopy(agent.state_dict())
    actions = list(agent.action_names)
    # A smaller action set than the agent's: binding the live agent to it would change what it acts on.
    narrow = {**SMALL_ENV, "game": {**SMALL_ENV["game"], "actions": {"attack": {"enabled": False}}}}
    Simulation("s", SingleEnvSimulationConfig(env=narrow, num_episodes=1), agent).simulate()
    assert agent.training and agent.action_names == actions
    after = agent.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k], k


def test_suite_fields_propagate_unless_a_sim_sets_them():
    suite = SimulationSuiteConfig(
        name="s",
        num_episodes=4,
        max_time_s=7,
        env_overrides={"game.max_steps": 20},
        simulations={
            "a": {"env": SMALL_ENV},
            "b": SingleEnvSimulationConfig(env=SMALL_ENV, num_episodes=2, env_overrides={"game.num_agents": 2}),
        },
    )
    a, b = suite.simulations["a"], suite.simulations["b"]
    assert (a.num_episodes, a.max_time_s, a.env_overrides) == (4, 7, {"game.max_steps": 20})
    assert (b.num_episodes, b.max_time_s) == (2, 7)
    assert b.env_overrides == {"game.max_steps": 20, "game.num_agents": 2}
    # The suite's default max_time_s (not given) does not override anything.
    plain = SimulationSuiteConfig(name="p", num_episodes=1, simulations={"a": {"env": SMALL_ENV, "max_time_s": 5}})
    assert plain.simulations["a"].max_time_s == 5


def test_suite_runs_every_simulation(saved_record, policy_store, tmp_path):
    sims = {"x/a": {"env": SMALL_ENV}, "x/b": {"env": SMALL_ENV}}
    suite = SimulationSuiteConfig(name="s", num_episodes=1, simulations=sims)
    results = SimulationSuite(suite, saved_record, policy_store, stats_dir=tmp_path).simulate()
    assert list(results) == ["x/a", "x/b"]
    assert {r["suite_name"] for r in read_episode_stats(tmp_path)} == {"s"}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"env": "/env/mettagrid/no_such_env", "num_episodes": 1}, ["no_such_env"]),
        ({"env": SMALL_ENV, "num_episodes": 0}, ["num_episodes", "greater than or equal to 1"]),
        ({"env": SMALL_ENV, "num_episodes": 1, "policy_agents_pct": 0.0}, ["policy_agents_pct", "greater than 0"]),
        ({"env": SMALL_ENV, "num_episodes": 1, "policy_agents_pct": 1.5}, ["policy_agents_pct", "less than or equal"]),
        ({"env": SMALL_ENV, "num_episodes": 1, "policy_agents_pct": 0.5}, ["npc_policy_uri"]),
        ({"env": SMALL_ENV, "num_episodes": 1, "max_time_s": 0}, ["max_time_s"]),
        ({"env": SMALL_ENV, "num_episodes": 1, "episodes": 3}, ["episodes", "Extra inputs are not permitted"]),
    ],
)
def test_bad_config_values_raise_clear_errors(kwargs, words):
    with pytest.raises(ValidationError) as err:
        SingleEnvSimulationConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_bad_simulation_arguments(saved_record, policy_store, tmp_path):
    cfg = SingleEnvSimulationConfig(env=SMALL_ENV, num_episodes=1)
    with pytest.raises(ValueError, match="vectorization='serial'"):
        Simulation("s", cfg, saved_record, policy_store, vectorization="multiprocessing", replay_dir=tmp_path)
    with pytest.raises(ValueError, match="vectorization='threads' is not supported"):
        Simulation("s", cfg, saved_record, policy_store, vectorization="threads")
    with pytest.raises(TypeError, match="PolicyRecord"):
        Simulation("s", cfg, "model.pt", policy_store)
    with pytest.raises(ValueError, match="no policy_store"):
        with_npc = cfg.model_copy(update={"npc_policy_uri": "file://x.pt", "policy_agents_pct": 0.5})
        Simulation("s", with_npc, saved_record)
    with pytest.raises(ValueError, match="game.no_such_key|no_such_key"):
        Simulation("s", cfg.model_copy(update={"env_overrides": {"game.no_such_key": 1}}), saved_record)
    assert SimulationConfig(num_episodes=1).max_time_s is None  # no wall-time guard unless asked for


# ---------------------------------------------------------------------------------------------------------------
# Scores measure the policy, not the machine


@contextlib.contextmanager
def cpu_hog(processes: int = 3):
    """Busy-loop processes that keep every core of this machine occupied while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.5)  # let them take the cores
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_scores_under_a_cpu_hog_equal_the_unloaded_ones(saved_record, policy_store):
    cfg = SingleEnvSimulationConfig(env=SMALL_ENV, num_episodes=3)
    state = torch.random.get_rng_state()
    quiet = Simulation("s", cfg, saved_record, policy_store, seed=7).simulate()
    # The simulation seeds torch for itself and restores the caller's random stream.
    assert torch.equal(torch.random.get_rng_state(), state)
    with cpu_hog():
        loaded = Simulation("s", cfg, saved_record, policy_store, seed=7).simulate()
    assert quiet.complete and loaded.complete
    assert loaded.agent_rewards == quiet.agent_rewards and loaded.score == quiet.score
    assert any(r != 0 for r in quiet.rewards)  # the move reward makes the comparison meaningful
    other = Simulation("s", cfg, saved_record, policy_store, seed=8).simulate()
    assert other.agent_rewards != quiet.agent_rewards  # and the seed does matter


def test_a_simulation_cut_by_its_guard_has_no_score_not_a_partial_one():
    cut = SimulationResults("s", "id", 3, rewards=[1.0, 1.0], timed_out=True)
    assert cut.mean_reward == 1.0 and not cut.complete and np.isnan(cut.score)
    assert SimulationResults("s", "id", 2, rewards=[1.0, 0.0]).score == 0.5


def test_an_endless_env_needs_a_guard(saved_record):
    endless = {**SMALL_ENV, "game": {**SMALL_ENV["game"], "max_steps": 0}}
    with pytest.raises(ValueError, match="max_steps=0.*max_time_s"):
        Simulation("s", SingleEnvSimulationConfig(env=endless, num_episodes=1), saved_record)
    Simulation("s", SingleEnvSimulationConfig(env=endless, num_episodes=1, max_time_s=5), saved_record)


def test_episodes_go_to_the_evaluation_database(saved_record, policy_store, tmp_path):
    db_path = tmp_path / "evaluations.sqlite"
    cfg = SingleEnvSimulationConfig(env=SMALL_ENV, num_episodes=3)
    sim = Simulation("cat/sim", cfg, saved_record, policy_store, seed=3, database=db_path, suite_name="t")
    result = sim.simulate()
    with EvaluationDB(db_path) as db:
        (evaluation,) = db.execute("SELECT * FROM evaluations")
        episodes = db.execute("SELECT * FROM episodes ORDER BY episode, agent")
        (score,) = sim_scores(db)
    assert evaluation["policy_uri"] == saved_record.uri and evaluation["epoch"] == 1
    assert (evaluation["sim"], evaluation["suite"], evaluation["seed"]) == ("cat/sim", "t", 3)
    assert evaluation["env_hash"] == sim.env_hash and evaluation["complete"] == 1
    assert evaluation["run_dir"] == str(tmp_path)  # the checkpoint is {tmp_path}/checkpoints/model_0001.pt
    assert len(episodes) == 3 * 2  # one row per episode and agent
    assert [[e["reward"] for e in episodes if e["episode"] == i] for i in range(3)] == (result.agent_rewards)
    assert score.score == pytest.approx(result.score) and score.num_episodes == 3
    with pytest.raises(ValueError, match="PolicyRecord that names the policy"):
        Simulation("cat/sim", cfg, saved_record.policy, database=db_path)


def test_the_env_hash_names_the_env_config():
    def hashed(env):
        return Simulation("s", SingleEnvSimulationConfig(env=env, num_episodes=1), nn.Identity()).env_hash

    longer = {**SMALL_ENV, "game": {**SMALL_ENV["game"], "max_steps": 31}}
    assert hashed(SMALL_ENV) == hashed(copy.deepcopy(SMALL_ENV)) != hashed(longer)
