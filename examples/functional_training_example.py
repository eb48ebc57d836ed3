#!/usr/bin/env python
"""Functional training with custom losses: functional_training_loop plus a curiosity-style and a
diversity-style loss, and a custom step that adds a metric.

    python examples/functional_training_example.py                         # tiny defaults, seconds on a CPU
    python examples/functional_training_example.py --total-timesteps 100000 --num-envs 16 --batch-size 4096

A custom loss is any function ``fn(policy, obs, actions, rewards, values, advantages) -> scalar tensor``. It is
added to every minibatch's PPO loss and logged as ``losses/custom/<function name>`` (see metrics.jsonl in
--run-dir). ``values`` are the current policy's predictions (with gradient); ``advantages`` are the ones the
policy loss uses; ``obs``/``actions``/``rewards`` are the minibatch's ``[segments, bptt, ...]`` tensors.
"""

from __future__ import annotations

import argparse
import os

import torch

from metta.agent.policy_state import PolicyState
from metta.agent.policy_store import PolicyStore
from metta.interface import Agent, Environment
from metta.interface.environment import default_env_config
from metta.mettagrid.curriculum.core import SingleTaskCurriculum
from metta.rl.functional_trainer import default_training_step, functional_training_loop
from metta.rl.trainer_config import PPOConfig, TrainerConfig

CURIOSITY_COEF = 0.01
DIVERSITY_COEF = 0.01


def curiosity_loss(policy, obs, actions, rewards, values, advantages):
    """Curiosity-style: keep the policy exploratory where the critic was surprised (large |advantage|).

    Minimizing ``-(surprise * entropy)`` raises the entropy of the action distribution most in the states whose
    outcome differed most from the value prediction.
    """
    _, _, entropy, _, _ = policy(obs, PolicyState(), action=actions)  # a second forward pass, from zero LSTM state
    surprise = advantages.abs().reshape(-1)
    weight = (surprise / (surprise.mean() + 1e-8)).detach()
    return -CURIOSITY_COEF * (weight * entropy).mean()


def diversity_loss(policy, obs, actions, rewards, values, advantages):
    """Diversity-style: keep the batch's overall action distribution spread out, so that agents (and steps)
    do not all collapse onto the same few actions; the entropy of the mean action distribution is maximized."""
    _, _, _, _, full_log_probs = policy(obs, PolicyState(), action=actions)
    marginal = full_log_probs.exp().mean(dim=0)
    marginal_entropy = -(marginal * torch.log(marginal + 1e-8)).sum()
    return -DIVERSITY_COEF * marginal_entropy


def step_with_reward_rate(state, components, config, experience):
    """A custom step: the default one, plus the reward per agent step of this rollout."""
    metrics = default_training_step(state, components, config, experience)
    metrics["overview/reward_per_step"] = float(experience.rewards.mean())
    return metrics


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-timesteps", type=int, default=1536, help="agent steps to train for")
    parser.add_argument("--num-envs", type=int, default=8, help="envs (2 agents each)")
    parser.add_argument("--batch-size", type=int, default=512, help="agent steps per rollout")
    parser.add_argument("--minibatch-size", type=int, default=128)
    parser.add_argument("--bptt-horizon", type=int, default=8)
    parser.add_argument("--checkpoint-interval", type=int, default=2, help="epochs between checkpoints")
    parser.add_argument("--run-dir", default="train_dir/functional_example")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    run_dir = os.path.abspath(args.run_dir)

    env_config = default_env_config(num_agents=2, width=16, height=16)
    curriculum = SingleTaskCurriculum("tiny_navigation", env_config)
    # The policy is sized for the env; the loop builds its own vecenv from the curriculum.
    sizing_env = Environment(env_config=env_config, num_envs=1, seed=args.seed)
    policy = Agent(sizing_env, config="fast", device=args.device)
    sizing_env.close()

    trainer_config = TrainerConfig(
        total_timesteps=args.total_timesteps,
        batch_size=args.batch_size,
        minibatch_size=args.minibatch_size,
        bptt_horizon=args.bptt_horizon,
        optimizer={"learning_rate": 1e-3},
        async_factor=1,  # one batch of envs, stepped in this process (serial vectorization: one worker)
        checkpoint={"checkpoint_interval": args.checkpoint_interval, "wandb_checkpoint_interval": 0},
        simulation={"evaluate_interval": 0},
    )
    ppo_config = PPOConfig(ent_coef=0.01, gamma=0.99, gae_lambda=0.95)
    policy_store = PolicyStore(
        {"device": args.device, "trainer": {"checkpoint": {"checkpoint_dir": os.path.join(run_dir, "checkpoints")}}}
    )

    state = functional_training_loop(
        config=trainer_config,
        ppo_config=ppo_config,
        policy=policy,
        curriculum=curriculum,
        policy_store=policy_store,
        step_fn=step_with_reward_rate,
        custom_losses=[curiosity_loss, diversity_loss],
        device=args.device,
        num_envs=args.num_envs,
        seed=args.seed,
        run_dir=run_dir,
    )
    losses = {k: round(v, 5) for k, v in state.metrics.items() if k.startswith("losses/custom/")}
    print(f"final state: epoch {state.epoch}, agent_step {state.agent_step}, custom losses {losses}")
    print(f"latest policy: {state.policy_record.file_path}")


if __name__ == "__main__":
    main()
