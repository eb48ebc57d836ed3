#!/usr/bin/env python
"""Functional training in one screen (seed 000): every object is created explicitly, and the training loop is
a plain while loop over ``rollout()`` and ``train_ppo()``.

    python demo.py                                   # 60,000 agent steps on the CPU, about half a minute
    python demo.py --total-steps 100000 --run-dir train_dir/my_demo
    python demo.py --ppo-config ppo.yaml             # PPO settings from YAML (PPOConfig fields, e.g. gamma: 0.95)

It trains the default (fast) CNN-LSTM agent on a task small enough to learn in that budget,
``/env/mettagrid/altar_room``: one agent in a small room must walk to an altar and take its hearts within 24
steps. Every epoch prints the SPS, the losses and the mean episode reward, which rises from a random policy's
few hundredths to most of a heart per episode; the closing line compares the first and last five epochs
(measured on a shared 2-core CPU: 0.016 -> 0.731 for seed 0, 0.031 -> 0.941 for seed 1, each in about 17 s of
CPU time). Navigation on the terrain maps, the production task, takes millions of steps: run.py. The demo writes a
complete checkpoint every 5 epochs (and at the end) into ``{run_dir}/checkpoints``; running it again with the same
``--run-dir`` resumes from the newest checkpoint (and trains further when --total-steps is larger).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from metta.agent.metta_agent import make_policy
from metta.agent.policy_store import PolicyStore
from metta.common.profiling.stopwatch import Stopwatch
from metta.interface import load_checkpoint, save_checkpoint, setup_run_directories
from metta.mettagrid.curriculum.loader import curriculum_from_config_path
from metta.mettagrid.vecenv import make_vecenv
from metta.rl.epoch_metrics import epoch_metrics
from metta.rl.experience import Experience
from metta.rl.functional_trainer import rollout, train_ppo
from metta.rl.losses import Losses
from metta.rl.optimizer import Optimizer
from metta.rl.trainer_config import PPOConfig, TrainerConfig
from metta.train.train_config import load_yaml_config


def demo_trainer_config(total_steps: int) -> TrainerConfig:
    """Small batches (a 60,000-step run has ~60 epochs) and PPO settings that learn the altar room in them: four
    minibatches per batch, a high learning rate, and a short horizon for 24-step episodes."""
    return TrainerConfig(
        total_timesteps=total_steps,
        batch_size=1024,
        minibatch_size=256,
        bptt_horizon=8,
        async_factor=1,
        curriculum="/env/mettagrid/altar_room",
        ppo={"clip_coef": 0.1, "ent_coef": 0.01, "gamma": 0.95, "gae_lambda": 0.9},
        optimizer={"learning_rate": 3e-3},
        checkpoint={"checkpoint_interval": 5, "wandb_checkpoint_interval": 0},
        simulation={"evaluate_interval": 0},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-steps", type=int, default=60_000, help="agent steps to train for (default 60000)")
    parser.add_argument("--run-dir", default=None, help="default: train_dir/demo_<timestamp>")
    parser.add_argument(
        "--ppo-config", default=None, help="a YAML file of PPOConfig fields (replaces the demo's PPO settings)"
    )
    parser.add_argument("--num-envs", type=int, default=64, help="envs of one agent each (default 64)")
    parser.add_argument("--checkpoint-every", type=int, default=5, help="epochs between checkpoints (default 5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the demo's small minibatches gain little from more, and on a busy "
        "2-core machine extra threads made it ~5x slower)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # ------------------------------------------------------------------ config (pydantic, from code or YAML)
    trainer_cfg = demo_trainer_config(args.total_steps)
    if args.ppo_config:
        trainer_cfg.ppo = load_yaml_config(args.ppo_config, PPOConfig)
    trainer_cfg.checkpoint.checkpoint_interval = args.checkpoint_every
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    if args.run_dir:
        data_dir, run_name = os.path.split(os.path.abspath(args.run_dir))
        dirs = setup_run_directories(run_name, data_dir)
    else:
        dirs = setup_run_directories(time.strftime("demo_%Y%m%d_%H%M%S"))

    # ------------------------------------------------------------------ objects, created explicitly
    curriculum = curriculum_from_config_path(trainer_cfg.curriculum)
    vecenv = make_vecenv(curriculum, "serial", num_envs=args.num_envs)
    vecenv.async_reset(args.seed)
    policy = make_policy(vecenv, "fast", device)  # MettaAgent(...) + initialize_to_environment(...)
    experience = Experience(
        total_agents=vecenv.num_agents,
        batch_size=trainer_cfg.batch_size,
        bptt_horizon=trainer_cfg.bptt_horizon,
        minibatch_size=trainer_cfg.minibatch_size,
        obs_space=vecenv.single_observation_space,
        atn_space=vecenv.single_action_space,
        device=device,
        hidden_size=policy.hidden_size,
        num_lstm_layers=policy.core_num_layers,
    )
    optimizer = Optimizer(
        "adam", policy, learning_rate=trainer_cfg.optimizer.learning_rate, max_grad_norm=trainer_cfg.ppo.max_grad_norm
    )
    policy_store = PolicyStore({"device": str(device), "run": dirs.run_name, "run_dir": dirs.run_dir}, wandb_run=None)
    losses = Losses()
    timer = Stopwatch()
    agent_step, epoch, resumed_from = load_checkpoint(dirs.checkpoint_dir, policy, optimizer, vecenv=vecenv)
    if resumed_from:
        print(f"resumed from {resumed_from} at epoch {epoch}, agent step {agent_step}")
    print(f"training {vecenv.num_agents} agents for {trainer_cfg.total_timesteps} steps; run directory {dirs.run_dir}")

    # ------------------------------------------------------------------ the training loop
    rewards: list[float] = []  # each epoch's mean episode reward, for the closing line
    timer.start()
    while agent_step < trainer_cfg.total_timesteps:
        steps_before, t0 = agent_step, time.perf_counter()
        agent_step, stats = rollout(policy, vecenv, experience, device, agent_step, timer)
        epoch = train_ppo(
            policy, optimizer, experience, device, losses, epoch, trainer_cfg, agent_step=agent_step, timer=timer
        )

        # The row every loop logs (metta.rl.epoch_metrics): overview/sps, overview/reward, losses/*, ...
        m = epoch_metrics(stats, losses, experience, optimizer, agent_step - steps_before, time.perf_counter() - t0)
        reward = ""
        if "overview/reward" in m:
            rewards.append(m["overview/reward"])
            reward = f"  reward {m['overview/reward']:.3f} ({m['overview/episodes']:.0f} episodes)"
        print(
            f"epoch {epoch:3d}  step {agent_step:7d}  {m['overview/sps']:7.0f} SPS  policy_loss "
            f"{m['losses/policy_loss']:+.4f}"
            f"  value_loss {m['losses/value_loss']:.4f}  entropy {m['losses/entropy']:.3f}{reward}"
        )

        record = save_checkpoint(
            epoch,
            agent_step,
            policy,
            optimizer,
            policy_store,
            dirs.checkpoint_dir,
            trainer_cfg.checkpoint.checkpoint_interval,
            trainer_config=trainer_cfg,
            vecenv=vecenv,
            stopwatch=timer,
        )
        if record is not None:
            print(f"  checkpoint: {record.file_path}")

    timer.stop()
    save_checkpoint(
        epoch,
        agent_step,
        policy,
        optimizer,
        policy_store,
        dirs.checkpoint_dir,
        trainer_cfg.checkpoint.checkpoint_interval,
        force_save=True,
        final=True,
        trainer_config=trainer_cfg,
        vecenv=vecenv,
        stopwatch=timer,
    )
    vecenv.close()
    if len(rewards) >= 2:
        n = min(5, len(rewards) // 2)
        first, last = sum(rewards[:n]) / n, sum(rewards[-n:]) / n
        print(f"mean episode reward: {first:.3f} in the first {n} epochs, {last:.3f} in the last {n}")
    print(
        f"done: epoch {epoch}, agent step {agent_step}, {timer.get_elapsed():.1f}s; checkpoints in "
        f"{dirs.checkpoint_dir}"
    )


if __name__ == "__main__":
    main()
