"""recipes/navigation_cpu.py scores a policy beside both scripted baselines on the same episodes."""

import importlib.util
from pathlib import Path

import torch

from metta.agent.metta_agent import make_policy
from metta.agent.policy_store import PolicyStore
from metta.mettagrid.curriculum.loader import curriculum_from_any
from metta.mettagrid.env import MettaGridEnv

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "navigation_cpu.py"


def load_recipe():
    spec = importlib.util.spec_from_file_location("navigation_cpu", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_puts_the_policy_beside_random_and_nearest_altar_on_the_same_episodes():
    recipe = load_recipe()
    # The recipe's own curriculum has 1000-step episodes; a one-agent room with an altar in sight keeps this fast.
    room = curriculum_from_any("/env/mettagrid/altar_room")
    env = MettaGridEnv(room, num_envs=2, is_training=False)
    torch.manual_seed(0)
    policy = make_policy(env, "fast").eval()
    env.close()
    before = torch.random.get_rng_state()
    result = recipe.score(policy, num_envs=8, seed=1, episodes=16, curriculum=room)
    assert torch.equal(torch.random.get_rng_state(), before)  # the baselines' draws leave the caller's generator
    assert result["episodes"] == 16 and result["eval_seed"] == 1
    random, scripted = result["random_policy_episode_reward"], result["nearest_altar_policy_episode_reward"]
    assert scripted > random  # the script walks to altars it sees; random rarely reaches one
    assert result["ratio"] == result["trained_policy_episode_reward"] / max(random, 1e-9)
    assert result["ratio_to_nearest_altar"] == result["trained_policy_episode_reward"] / max(scripted, 1e-9)
    # The same seed plays the same episodes: a baseline scores the same again.
    assert recipe.evaluate("nearest_altar", num_envs=8, seed=1, episodes=16, curriculum=room) == scripted


def test_saved_policies_are_scored_beside_baselines_scored_once(tmp_path):
    """``--evaluate P1 P2``: each saved policy on the same episodes as the baselines, which are scored once."""
    recipe = load_recipe()
    room = curriculum_from_any("/env/mettagrid/altar_room")
    env = MettaGridEnv(room, num_envs=2, is_training=False)
    store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(tmp_path)}}})
    paths = []
    for minutes in (10, 20):
        torch.manual_seed(minutes)
        record = store.create_empty_policy_record(f"navigation_cpu_t{minutes}m")
        record.policy = make_policy(env, "fast")
        record.metadata.update(agent_step=minutes * 1000, epoch=minutes, seconds=minutes * 60.0)
        paths.append(store.save(record).file_path)
    env.close()
    results = recipe.evaluate_saved(paths, num_envs=8, seed=1, episodes=16, curriculum=room)
    assert [r["policy"] for r in results] == paths
    assert [(r["agent_step"], r["seconds"]) for r in results] == [(10000, 600.0), (20000, 1200.0)]
    for result in results:
        assert result["random_policy_episode_reward"] == results[0]["random_policy_episode_reward"]
        assert result["nearest_altar_policy_episode_reward"] == results[0]["nearest_altar_policy_episode_reward"]
        assert result["ratio"] == result["trained_policy_episode_reward"] / max(
            result["random_policy_episode_reward"], 1e-9
        )
    # Each policy scores as a lone evaluation of it does on those episodes.
    alone = recipe.evaluate(store.policy_record(paths[1]).policy.eval(), 8, 1, 16, room)
    assert results[1]["trained_policy_episode_reward"] == alone
