#!/usr/bin/env python
"""Training from a structured config (seed 001): a preset, a few overrides, a YAML round trip, then training.

    python examples/structured_config_training.py                         # the cpu_smoke preset: seconds
    python examples/structured_config_training.py --preset small_fast --total-steps 200000
    python examples/structured_config_training.py --config train_dir/structured_example/training_config.yaml

The run directory gets ``training_config.yaml`` (the complete config: edit it and pass it back with --config),
``metrics.jsonl`` and ``checkpoints/``. Running again with the same run directory resumes.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from metta.agent.agent_config import AgentConfig
from metta.agent.policy_store import PolicyStore
from metta.common.device import resolve_device
from metta.common.profiling.stopwatch import Stopwatch
from metta.common.stats_logger import StatsLogger
from metta.interface import (
    Agent,
    Environment,
    Optimizer,
    cleanup_wandb,
    initialize_wandb,
    load_checkpoint,
    save_checkpoint,
    setup_run_directories,
)
from metta.rl.epoch_metrics import epoch_metrics
from metta.rl.experience import make_experience
from metta.rl.functional_trainer import rollout, train_ppo
from metta.rl.losses import Losses
from metta.train.train_config import PRESETS, TrainingConfig


def build_config(args: argparse.Namespace) -> TrainingConfig:
    """A preset with a few fields changed; every assignment is validated on the spot."""
    if args.config:
        return TrainingConfig.from_yaml(args.config)
    config = PRESETS[args.preset]()
    config.experiment_name = "structured_example"
    config.agent = AgentConfig(name="simple_cnn", hidden_size=64)  # the fast CNN with a 64-wide LSTM
    config.trainer.ppo.ent_coef = 0.02
    config.trainer.optimizer.learning_rate = 5e-4
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu_smoke")
    parser.add_argument("--config", default=None, help="a TrainingConfig YAML file (instead of --preset)")
    parser.add_argument("--total-steps", type=int, default=None, help="override trainer.total_timesteps")
    parser.add_argument("--run-dir", default=None, help="override run_dir (default {data_dir}/{experiment_name})")
    args = parser.parse_args()

    config = build_config(args)
    if args.total_steps is not None:
        config.trainer.total_timesteps = args.total_steps
    if args.run_dir is not None:
        config.run_dir = args.run_dir

    # Directories first: the checkpoint and replay paths of the trainer config point into the run directory.
    data_dir, run_name = os.path.split(os.path.abspath(config.resolved_run_dir()))
    dirs = setup_run_directories(run_name, data_dir)
    config.trainer.checkpoint.checkpoint_dir = dirs.checkpoint_dir
    config.trainer.simulation.replay_dir = dirs.replay_dir

    # Save the complete config as YAML and train from what was read back: the file alone reproduces the run.
    yaml_path = f"{dirs.run_dir}/training_config.yaml"
    config.to_yaml(yaml_path)
    loaded = TrainingConfig.from_yaml(yaml_path)
    assert loaded == config, "the YAML round trip changed the config"
    config = loaded
    print(f"config saved to {yaml_path}")

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    trainer = config.trainer

    env = Environment(**config.env_kwargs())
    policy = Agent(env, config=config.agent, device=str(device))
    optimizer = Optimizer.from_config(policy, trainer)  # trainer.optimizer, clipped at trainer.ppo.max_grad_norm
    experience = make_experience(env, policy, trainer, device)
    policy_store = PolicyStore({"device": str(device), "run": dirs.run_name, "run_dir": dirs.run_dir}, wandb_run=None)
    wandb_run, wandb_ctx = initialize_wandb(
        dirs.run_name,
        dirs.run_dir,
        enabled=config.wandb.enabled,
        project=config.wandb.project,
        entity=config.wandb.entity,
        config=config.to_dict(),
        tags=config.wandb.tags,
    )
    stats_logger = StatsLogger(dirs.run_dir, trainer.total_timesteps, wandb_run=wandb_run)
    losses = Losses()
    timer = Stopwatch()
    agent_step, epoch, _ = load_checkpoint(dirs.checkpoint_dir, policy, optimizer, vecenv=env)

    timer.start()
    while agent_step < trainer.total_timesteps:
        steps_before, seconds_before, phase_before = agent_step, timer.get_elapsed(), timer.get_all_elapsed()
        agent_step, stats = rollout(policy, env, experience, device, agent_step, timer)
        epoch = train_ppo(
            policy,
            optimizer,
            experience,
            device,
            losses,
            epoch,
            trainer,
            agent_step=agent_step,
            timer=timer,
            batch_start_step=steps_before,
        )

        # The row every loop logs (overview/sps, overview/reward, losses/*, timing/frac/*, ...).
        metrics = epoch_metrics(
            stats,
            losses,
            experience,
            optimizer,
            agent_step - steps_before,
            timer.get_elapsed() - seconds_before,
            timer=timer,
            phase_before=phase_before,
        )
        stats_logger.log(epoch, agent_step, metrics)
        save_checkpoint(
            epoch,
            agent_step,
            policy,
            optimizer,
            policy_store,
            dirs.checkpoint_dir,
            trainer.checkpoint.checkpoint_interval,
            trainer_config=trainer,
            vecenv=env,
            stopwatch=timer,
            keep_last_n=config.keep_checkpoints,
            metadata={"training_config": config.to_dict()},
        )

    timer.stop()
    save_checkpoint(
        epoch,
        agent_step,
        policy,
        optimizer,
        policy_store,
        dirs.checkpoint_dir,
        trainer.checkpoint.checkpoint_interval,
        force_save=True,
        final=True,
        trainer_config=trainer,
        vecenv=env,
        stopwatch=timer,
        keep_last_n=config.keep_checkpoints,
        metadata={"training_config": config.to_dict()},
    )
    stats_logger.close()
    env.close()
    cleanup_wandb(wandb_ctx)
    print(f"done: epoch {epoch}, agent step {agent_step}; run directory {dirs.run_dir}")


if __name__ == "__main__":
    main()
