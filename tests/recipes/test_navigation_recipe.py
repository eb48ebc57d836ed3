"""recipes/navigation_cpu.py scores a policy beside both scripted baselines on the same episodes."""

import importlib.util
import json
from pathlib import Path

import pytest
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


def test_a_short_run_trains_the_chosen_agent_logs_each_epoch_and_scores_it(tmp_path, monkeypatch, capsys):
    """One batch of the recipe as a user runs it: the default agent is fast_cpu, every epoch is a metrics row
    after the baselines' row, and the final evaluation puts the saved policy beside both baselines."""
    recipe = load_recipe()
    out = tmp_path / "run"
    args = ["--minutes", "60", "--max-steps", "1024", "--num-envs", "2", "--batch-size", "1024"]
    args += ["--minibatch-size", "512", "--update-epochs", "1", "--eval-episodes", "8", "--out-dir", str(out)]
    monkeypatch.setattr("sys.argv", ["navigation_cpu.py", *args])
    with torch.random.fork_rng():
        recipe.main()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"random_policy_episode_reward", "nearest_altar_policy_episode_reward"}
    assert [row["agent_step"] for row in rows[1:-1]] == [1024]
    final = rows[-1]["final_evaluation"]
    assert final["episodes"] == 8 and final["agent_step"] == 1024 and final["eval_seed"] == 1
    assert final["random_policy_episode_reward"] == rows[0]["random_policy_episode_reward"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == final
    store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(out)}}})
    saved = store.policy_record(str(out / f"navigation_cpu_e{rows[-2]['epoch']}"))
    assert saved.policy.config.name == "fast_cpu" and saved.policy.core_num_layers == 1
    assert saved.metadata["agent_step"] == 1024

    # With a step budget the schedule follows the agent steps (before each batch's rollout), not the clock.
    out = tmp_path / "scheduled"
    args = ["--minutes", "60", "--max-steps", "2048", "--num-envs", "2", "--batch-size", "1024", "--eval-episodes", "2"]
    args += ["--minibatch-size", "512", "--update-epochs", "1", "--lr-schedule", "linear", "--out-dir", str(out)]
    monkeypatch.setattr("sys.argv", ["navigation_cpu.py", *args, "--learning-rate", "0.002"])
    with torch.random.fork_rng():
        recipe.main()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:-1]
    assert [row["agent_step"] for row in rows] == [1024, 2048]
    assert [row["parameters/learning_rate"] for row in rows] == pytest.approx([0.002, 0.001])
    capsys.readouterr()

    monkeypatch.setattr("sys.argv", ["navigation_cpu.py", "--agent", "fast_lstm"])
    with pytest.raises(SystemExit):
        recipe.main()
    err = capsys.readouterr().err
    assert "invalid choice: 'fast_lstm'" in err and "fast_cpu" in err


def test_breakdown_scores_each_map_label_and_counts_actions_on_the_same_episodes(tmp_path, monkeypatch, capsys):
    """``--evaluate P --breakdown``: both baselines and the policy per map label (terrain set, size) and their
    agents' action counts, on the recipe's own episodes."""
    recipe = load_recipe()
    env = MettaGridEnv(recipe.evaluation_curriculum(), num_envs=2, is_training=False)
    store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(tmp_path)}}})
    torch.manual_seed(0)
    record = store.create_empty_policy_record("navigation_cpu_e1")
    record.policy = make_policy(env, "fast_cpu")
    path = store.save(record).file_path
    env.close()
    args = ["--evaluate", path, "--breakdown", "--num-envs", "4", "--eval-episodes", "4", "--seed", "2"]
    monkeypatch.setattr("sys.argv", ["navigation_cpu.py", *args])
    recipe.main()
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["policy"] for line in lines] == ["random", "nearest_altar", path]
    infos = recipe.play("nearest_altar", 4, 3, 4)
    scripted = lines[1]
    assert scripted["eval_seed"] == 3 and scripted == {
        "policy": "nearest_altar",
        "eval_seed": 3,
        **recipe.breakdown(infos),
    }
    assert scripted["episode_reward"] == recipe.evaluate("nearest_altar", 4, 3, 4)
    for line in lines:
        # Every episode has one size label; a label's score is the mean over its episodes.
        assert sum(line["episodes"].get(size, 0) for size in ("small", "medium", "large")) == 4
        assert line["agent"]["action.move.success"] + line["agent"].get("action.move.failed", 0) > 0
    for label, n in scripted["episodes"].items():
        rewards = [info["episode_reward"] for info in infos if f"map_reward/{label}" in info]
        assert len(rewards) == n and scripted["map_reward"][label] == pytest.approx(sum(rewards) / n)

    monkeypatch.setattr("sys.argv", ["navigation_cpu.py", "--breakdown"])
    with pytest.raises(SystemExit):
        recipe.main()
    assert "--breakdown goes with --evaluate" in capsys.readouterr().err
