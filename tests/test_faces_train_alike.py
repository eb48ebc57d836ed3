"""One run, three faces: run.py's loop, ``functional_training_loop`` and the components (the component API's loop
with the periodic tasks) over the same ``TrainingConfig`` write the same config.yaml keys, the same metrics keys in
every epoch's row, the same checkpoints (files, contents, weights), the same ``eval/`` keys and the same rows of
the evaluation database."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from metta.agent.metta_agent import make_policy
from metta.agent.policy_store import PolicyStore, read_policy_file
from metta.common.evaluation_db import EvaluationDB, database_path
from metta.interface.environment import default_env_config
from metta.mettagrid.curriculum.core import SingleTaskCurriculum
from metta.mettagrid.vecenv_factory import build_vecenv
from metta.rl.checkpoint import list_trainer_states, read_trainer_state
from metta.rl.experience import make_experience
from metta.rl.functional_trainer import (
    create_training_components,
    default_training_step,
    functional_training_loop,
    resume_training_state,
)
from metta.rl.run_config import TrainingConfig
from metta.rl.trainer import Trainer
from metta.rl.trainer_config import TrainerConfig
from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import run  # noqa: E402  (run.py's loop, run in this process on the same trainer)


def tiny_env():
    # 5-step episodes: every rollout (16 steps per env) ends some, so every row has the episode keys.
    env = default_env_config(num_agents=2, width=8, height=8)
    env.game.max_steps = 5
    return env


def curriculum() -> SingleTaskCurriculum:
    return SingleTaskCurriculum("tiny", tiny_env())


SUITE = SimulationSuiteConfig(
    name="tiny", num_episodes=1, simulations={"nav/small": SingleEnvSimulationConfig(env=tiny_env(), num_episodes=1)}
)


def config(data_dir: Path, name: str) -> TrainingConfig:
    return TrainingConfig(
        experiment_name=name,
        data_dir=str(data_dir),
        device="cpu",
        num_envs=2,
        seed=3,
        replay=False,
        trainer=TrainerConfig(
            total_timesteps=128,
            batch_size=64,
            minibatch_size=32,
            bptt_horizon=8,
            async_factor=1,
            grad_mean_variance_interval=1,
            checkpoint={"checkpoint_interval": 1, "wandb_checkpoint_interval": 0},
            simulation={"evaluate_interval": 1},
        ),
        wandb={"enabled": False},
    )


def same_policy(cfg: TrainingConfig):
    """The same initial weights for every face (the trainer seeds the rollouts alike), so the same episodes end
    and every row has the same episode keys."""
    vecenv = build_vecenv(curriculum(), seed=0, num_envs=1)
    torch.manual_seed(0)
    policy = make_policy(vecenv, cfg.agent, "cpu")
    vecenv.close()
    return policy


def through_run_py(data_dir: Path) -> None:
    cfg = config(data_dir, "run_py")
    policy = same_policy(cfg)
    with Trainer(cfg, policy=policy, curriculum=curriculum(), evaluation_suite=SUITE) as trainer:
        run.train(trainer)


def through_functional_loop(data_dir: Path) -> None:
    cfg = config(data_dir, "functional")
    policy = same_policy(cfg)
    store = PolicyStore(device="cpu", checkpoint_dir=str(data_dir / "functional" / "checkpoints"))
    functional_training_loop(cfg, None, policy, curriculum(), store, evaluation_suite=SUITE)


def through_components(data_dir: Path) -> None:
    cfg = config(data_dir, "components")
    policy = same_policy(cfg)
    vecenv = build_vecenv(curriculum(), seed=cfg.seed, **cfg.env_kwargs())
    experience = make_experience(vecenv, policy, cfg.trainer, "cpu")
    store = PolicyStore(device="cpu", checkpoint_dir=str(data_dir / "components" / "checkpoints"))
    with create_training_components(cfg, None, policy, vecenv, experience, store, evaluation_suite=SUITE) as c:
        state = resume_training_state(c)
        while c.training():
            with c.iteration() as it:
                it.metrics = default_training_step(state, c, cfg, experience)
            for task in c.periodic_tasks:
                task(it)
    vecenv.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    data_dir = tmp_path_factory.mktemp("faces")
    through_run_py(data_dir)
    through_functional_loop(data_dir)
    through_components(data_dir)
    return {name: data_dir / name for name in ("run_py", "functional", "components")}


def keys(tree, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(keys(v, f"{prefix}{k}.") for k, v in tree.items())) if tree else {prefix}


def test_config_yaml_and_run_config_have_the_same_keys(runs):
    found = [keys(yaml.safe_load((d / "config.yaml").read_text())) for d in runs.values()]
    assert found[0] == found[1] == found[2]
    configs = [json.loads((d / "run_config.json").read_text()) for d in runs.values()]
    assert keys(configs[0]) == keys(configs[1]) == keys(configs[2])
    assert all(TrainingConfig.model_validate(c).trainer.batch_size == 64 for c in configs)  # --config can read it


def test_every_epochs_row_has_the_same_keys_and_eval_scores(runs):
    rows = {
        name: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for name, d in runs.items()
    }
    assert [r["epoch"] for r in rows["run_py"]] == [1, 2] == [r["epoch"] for r in rows["functional"]]
    for a, b, c in zip(rows["run_py"], rows["functional"], rows["components"], strict=True):
        assert set(a) == set(b) == set(c)
        assert {"eval/nav/small", "eval/nav/score", "grad/mean", "overview/reward", "monitor/cpu_percent"} <= set(a)


def test_the_checkpoints_are_the_same_files_with_the_same_contents(runs):
    listed = {name: [e for e, _ in list_trainer_states(str(d / "checkpoints"))] for name, d in runs.items()}
    assert listed["run_py"] == listed["functional"] == listed["components"] == [2, 1]
    states = [read_trainer_state(str(d / "checkpoints" / "trainer_state_0002.ckpt")) for d in runs.values()]
    filled = [{k for k, v in vars(s).items() if v not in (None, {}, [])} for s in states]
    assert filled[0] == filled[1] == filled[2] and {"curriculum_state", "stopwatch_state", "rng_state"} <= filled[0]
    assert keys(states[0].trainer_config) == keys(states[1].trainer_config) == keys(states[2].trainer_config)
    policies = [read_policy_file(str(d / "checkpoints" / "model_0002.pt")) for d in runs.values()]
    assert keys(policies[0]["metadata"]) == keys(policies[1]["metadata"]) == keys(policies[2]["metadata"])
    assert all(set(p["metadata"]["eval_scores"]) == {"nav/small", "nav/score"} for p in policies)
    # The same seeds, initial weights and settings: the same training, to the last bit.
    for name, value in policies[0]["state_dict"].items():
        if torch.is_tensor(value):
            assert all(torch.equal(value, p["state_dict"][name]) for p in policies[1:]), name


def test_every_face_writes_its_evaluations_to_the_database(runs):
    data_dir = runs["run_py"].parent
    with EvaluationDB(database_path(data_dir)) as db:
        found = db.execute("SELECT policy_name, policy_uri, epoch, suite, sim, run_dir FROM evaluations")
    for name, run_dir in runs.items():
        mine = [e for e in found if e["policy_name"] == name]
        assert sorted((e["suite"], e["sim"], e["epoch"]) for e in mine) == [
            ("tiny", "nav/small", 1),
            ("tiny", "nav/small", 2),
        ]
        assert all(e["run_dir"] == str(run_dir) for e in mine)
        assert {e["policy_uri"] for e in mine} == {
            f"file://{run_dir / 'checkpoints' / f'model_000{i}.pt'}" for i in (1, 2)
        }
