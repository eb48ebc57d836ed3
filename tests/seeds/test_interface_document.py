"""Seed 004 (the Metta interface documentation): its blocks as written, sizes shrunk and undefined names filled
in, in one process (Environment, Agent, Optimizer, training functions, configuration) and under torchrun with
two processes on gloo (tests/seeds/interface_document_distributed.py: setup, ``wrap_agent_distributed(agent, device)``
with the whole ``setup_device_and_distributed(...)`` result, a PPO update, a checkpoint written by rank 0 and
loaded by both)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seed_helpers import all_finite, changed, parameters_of

SCRIPT = Path(__file__).with_name("interface_document_distributed.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_distributed_block_under_torchrun_with_two_processes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METTA_RUN": "seed004", "DATA_DIR": str(tmp_path / "train_dir")}
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    proc = subprocess.run(
        [*launcher, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=220, cwd=tmp_path
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["world_size"], r1["world_size"], r0["is_master"], r1["is_master"]) == (2, 2, True, False)
    assert r0["wrapped"] == r1["wrapped"] == "DistributedDataParallel" and r0["device"] == "cpu"
    # Each rank built its own weights; the wrap made them rank 0's, and training kept them equal.
    assert r0["initial"] != r1["initial"] and r0["synced"] == r1["synced"] == r0["initial"]
    assert r0["trained"] == r1["trained"] != r0["synced"]
    assert r0["agent_step"] == r1["agent_step"] == 512 and r0["epoch"] == 2 and all_finite(r0["losses"])
    # Rank 0 wrote the checkpoint, both loaded it back (the weights were zeroed in between).
    assert (r0["wrote"], r1["wrote"]) == (True, False)
    assert (r1["loaded_step"], r1["loaded_epoch"]) == (512, 2) and r0["policy_path"] == r1["policy_path"]
    assert r0["after_load"] == r1["after_load"] == pytest.approx(r0["trained"], rel=1e-9)
    assert sorted(os.listdir(Path(r0["run_dir"]) / "checkpoints")) == ["model_0002.pt", "trainer_state_0002.ckpt"]


def test_environment_agent_optimizer_and_training_functions():
    import torch
    from metta.interface.agent import Agent
    from metta.interface.environment import Environment
    from metta.interface.training import Optimizer
    from metta.rl.trainer_config import TrainerConfig, PPOConfig
    from omegaconf import DictConfig

    # Simple environment
    env = Environment(num_agents=4, width=32, height=32)
    env.close()

    # With curriculum
    env = Environment(curriculum_path="/env/mettagrid/curriculum/navigation/bucketed")

    # Default CNN-LSTM agent
    agent = Agent(env, device="cuda")
    assert (agent.hidden_size, agent.core_num_layers) == (512, 1)

    # Custom config (filled in: the agent's settings)
    config = DictConfig({"agent": {"name": "fast", "clip_range": 0.1}})
    agent = Agent(env, config=config)
    assert agent.config.clip_range == 0.1 and agent.hidden_size == 128

    optimizer = Optimizer(
        optimizer_type="adam",  # or "muon"
        policy=agent,
        learning_rate=3e-4,
    )

    trainer_config = TrainerConfig(
        total_timesteps=10_000_000,
        batch_size=16384,
        ppo=PPOConfig(gamma=0.99, gae_lambda=0.95),
    )
    assert trainer_config.ppo.gamma == 0.99

    from metta.rl.rollout import perform_rollout_step
    from metta.stats import accumulate_rollout_stats
    from metta.rl.advantage import compute_advantage
    from metta.rl.losses import process_minibatch_update

    # Filled in: the buffer (sized from the agent), the device, the timer, the stats, a small config.
    from metta.common.profiling.stopwatch import Stopwatch
    from metta.rl.experience import Experience
    from metta.rl.losses import Losses

    device, timer, stats, losses, epoch = agent.device, Stopwatch(), {}, Losses(), 0
    trainer_config = TrainerConfig(batch_size=256, minibatch_size=64, bptt_horizon=16)
    experience = Experience(
        total_agents=env.num_agents,
        batch_size=256,
        bptt_horizon=16,
        minibatch_size=64,
        obs_space=env.single_observation_space,
        atn_space=env.single_action_space,
        device=device,
    )
    before = parameters_of(agent)

    # Rollout
    while not experience.ready_for_training:
        num_steps, info = perform_rollout_step(agent, env, experience, device, timer)

    # Process stats
    accumulate_rollout_stats(info, stats)

    # Train
    ppo, vtrace = trainer_config.ppo, trainer_config.vtrace
    advantages = compute_advantage(
        experience.values,
        experience.rewards,
        experience.dones,
        torch.ones_like(experience.values),
        torch.zeros_like(experience.values),
        ppo.gamma,
        ppo.gae_lambda,
        vtrace.vtrace_rho_clip,
        vtrace.vtrace_c_clip,
        device,
    )
    for minibatch in experience.iter_minibatches():
        loss = process_minibatch_update(
            agent, experience, minibatch, advantages, trainer_config, None, 0, losses, device
        )

        # Training step
        optimizer.step(loss, epoch)
    assert all_finite(losses.stats()) and changed(before, agent) and experience.hidden_size == 128
    env.close()


def test_utilities_import_and_single_process_distributed():
    from metta.interface.directories import (
        setup_run_directories,
        setup_device_and_distributed,
        save_experiment_config,
    )

    from metta.interface.training import (
        initialize_wandb,
        cleanup_wandb,
        cleanup_distributed,
        load_checkpoint,
        save_checkpoint,
    )

    from metta.interface.evaluation import (
        create_evaluation_config_suite,
        evaluate_policy_suite,
        generate_replay_simple,
    )
    from metta.interface import setup_distributed_vars

    # Without torchrun: one process, and the whole result is accepted where a device is.
    from metta.rl.policy_management import wrap_agent_distributed

    device = setup_device_and_distributed("cuda")
    is_master, world_size, rank = setup_distributed_vars()
    assert (is_master, world_size, rank) == (True, 1, 0) and device.world_size == 1
    module = torch.nn.Linear(2, 2)
    assert wrap_agent_distributed(module, device) is module
    assert all(
        callable(f)
        for f in (
            setup_run_directories,
            save_experiment_config,
            initialize_wandb,
            cleanup_wandb,
            cleanup_distributed,
            load_checkpoint,
            save_checkpoint,
            create_evaluation_config_suite,
            evaluate_policy_suite,
            generate_replay_simple,
        )
    )
