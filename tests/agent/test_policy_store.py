from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from metta.agent import PolicyFileError, PolicyMetadata, PolicyState, PolicyStore, make_policy
from metta.agent.policy_cache import PolicyCache


def _store(tmp_path, **extra) -> PolicyStore:
    cfg = {
        "device": "cpu",
        "policy_cache_size": 10,
        "trainer": {"checkpoint": {"checkpoint_dir": str(tmp_path)}},
        **extra,
    }
    return PolicyStore(DictConfig(cfg), wandb_run=None)


def _save(store: PolicyStore, agent, epoch: int, **metadata) -> str:
    pr = store.create_empty_policy_record(store.make_model_name(epoch))
    pr.metadata = {"epoch": epoch, "agent_step": epoch * 100, **metadata}
    pr.policy = agent
    store.save(pr)
    return pr.file_path


def test_save_load_round_trip_in_fresh_process(env, rollout_obs, tmp_path):
    agent = make_policy(env)
    agent.eval()
    store = _store(tmp_path)
    path = _save(store, agent, 3, score=np.float32(0.5))
    assert os.path.basename(path) == "model_0003.pt" and not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    obs = rollout_obs[1]
    act = torch.zeros(obs.shape[0], 2, dtype=torch.int32)
    _, logprob, _, value, _ = agent(obs, PolicyState(), act)
    torch.save(obs, tmp_path / "obs.pt")
    # A fresh interpreter that imports only metta: no class of this test (or any pickled module) is needed.
    script = f"""
import json, torch
from metta.agent.policy_store import PolicyStore
store = PolicyStore({{"device": "cpu", "trainer": {{"checkpoint": {{"checkpoint_dir": {str(tmp_path)!r}}}}}}})
pr = store.policy_record({path!r})
agent = pr.policy
agent.eval()
from metta.agent.policy_state import PolicyState
obs = torch.load({str(tmp_path / "obs.pt")!r})
_, lp, _, v, _ = agent(obs, PolicyState(), torch.zeros(obs.shape[0], 2, dtype=torch.int32))
meta, params = dict(pr.metadata), pr.num_params()
print(json.dumps({{"lp": lp.tolist(), "v": v.flatten().tolist(), "meta": meta, "params": params}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["lp"], logprob.tolist(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["v"], value.flatten().tolist(), rtol=1e-5, atol=1e-6)
    assert got["meta"]["epoch"] == 3 and got["meta"]["score"] == 0.5 and got["meta"]["generation"] == 0
    assert got["params"] == sum(p.numel() for p in agent.parameters())


def test_loaded_policy_keeps_feature_mapping_and_action_table(env, rollout_obs, tmp_path):
    agent = make_policy(env)
    order = list(reversed(range(len(env.action_names))))
    agent.activate_actions([env.action_names[i] for i in order], [env.max_action_args[i] for i in order], "cpu")
    store = _store(tmp_path)
    path = _save(store, agent, 1)
    loaded = PolicyStore(DictConfig({"device": "cpu"})).load_from_uri(f"file://{path}").policy
    assert loaded.original_feature_mapping == agent.original_feature_mapping
    table = loaded.components["_action_embeds_"].name_to_index
    assert table == agent.components["_action_embeds_"].name_to_index
    # Rebinding to the env (its own action order) scores the same named actions.
    agent.eval(), loaded.eval()
    loaded.initialize_to_environment(env.get_observation_features(), env.action_names, env.max_action_args, "cpu")
    agent.initialize_to_environment(env.get_observation_features(), env.action_names, env.max_action_args, "cpu")
    torch.testing.assert_close(loaded(rollout_obs[0], PolicyState())[4], agent(rollout_obs[0], PolicyState())[4])


def test_corrupt_and_foreign_files_name_the_file(env, tmp_path):
    store = _store(tmp_path)
    path = _save(store, make_policy(env), 1)
    with open(path, "rb") as f:
        head = f.read(2000)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(head)
    with pytest.raises(PolicyFileError, match="truncated.pt"):
        _store(tmp_path).policy_record(str(bad))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(PolicyFileError, match="not a metta policy file"):
        _store(tmp_path).policy_record(f"file://{foreign}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.policy_record(str(tmp_path / "nope.pt"))


def test_selectors(env, tmp_path):
    agent = make_policy(env)
    store = _store(tmp_path)
    for epoch, score in [(1, 0.2), (2, 0.9), (3, 0.5), (4, 0.1)]:
        _save(store, agent, epoch, score=score)
    uri = f"file://{tmp_path}"
    assert [r.metadata.epoch for r in store.policy_records(uri, "all")] == [4, 3, 2, 1]
    assert store.policy_record(uri, "latest").metadata.epoch == 4
    assert store.policy_record(uri, "top", metric="score").metadata.epoch == 2
    assert [r.metadata.epoch for r in store.policy_records(uri, "top", n=2)] == [2, 3]
    assert store.policy_record(str(tmp_path), "rand").metadata.epoch in {1, 2, 3, 4}
    # eval_scores are looked up first, also without the "_score" suffix.
    _save(store, agent, 5, eval_scores={"navigation": 2.0})
    assert store.policy_record(uri, "top", metric="navigation_score").metadata.epoch == 5
    # Fewer than 80% of the policies report the metric: fall back to the latest.
    _save(store, agent, 6)
    _save(store, agent, 7)
    assert store.policy_record(uri, "top", metric="score").metadata.epoch == 7
    with pytest.raises(ValueError, match="selector_type"):
        store.policy_record(uri, "best")


def test_a_single_policy_is_selected_without_a_fallback_warning(env, tmp_path, caplog):
    """One file (no score in it) is the top policy by any metric: there is nothing to fall back from."""
    store = _store(tmp_path)
    path = _save(store, make_policy(env), 1)
    with caplog.at_level(logging.WARNING, logger="metta.agent.policy_store"):
        record = store.policy_record(path, "top", metric="score")
    assert record.metadata.epoch == 1 and "selecting the latest" not in caplog.text


def test_saved_record_cache_does_not_hold_the_live_policy(env, tmp_path):
    agent = make_policy(env)
    store = _store(tmp_path)
    path = _save(store, agent, 1)
    loaded = store.policy_record(path).policy
    assert loaded is not agent
    assert store.policy_record(path).policy is loaded  # cached after the first load


def test_policy_cache_lru():
    cache = PolicyCache(max_size=2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("c", "C")
    assert "b" not in cache and cache.keys() == ["a", "c"] and len(cache) == 2
    with pytest.raises(ValueError, match="max_size"):
        PolicyCache(0)


def test_wandb_uri_without_config_is_a_clear_error(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(ValueError, match="wandb.entity and wandb.project"):
        store.policy_record("wandb://run/my_run:v3")
    with pytest.raises(ValueError, match="not a wandb policy uri"):
        store.policy_record("wandb://just_a_name")


def test_metadata_required_fields_and_bad_values(env, tmp_path):
    meta = PolicyMetadata(score=1.0)
    assert meta.agent_step == 0 and meta.epoch == 0 and meta.generation == 0 and meta.train_time == 0.0
    meta.epoch = 5
    assert meta["epoch"] == 5
    with pytest.raises(KeyError, match="required"):
        del meta["epoch"]
    store = _store(tmp_path)
    pr = store.create_empty_policy_record("x.pt")
    pr.policy = make_policy(env)
    pr.metadata = {"when": object()}
    with pytest.raises(TypeError, match="metadata\\['when'\\]"):
        store.save(pr)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        PolicyStore({"device": "cpu"}).create_empty_policy_record("x.pt")
