#!/usr/bin/env python
"""Train with the components of metta.rl.components directly: your own loop, every step visible.

    python examples/direct_training_with_components.py                        # tiny defaults, seconds on a CPU
    python examples/direct_training_with_components.py --total-timesteps 200000 --num-envs 16 --batch-size 4096

Each iteration: RolloutCollector.collect() fills the buffer, PPOOptimizer.update() learns from it, StatsLogger
prints and records the metrics, TrainingCheckpointer saves the policy and trainer state. At the end the
PolicyEvaluator scores the policy on a small navigation suite. Everything lands in --run-dir; running it again
with the same --run-dir (and a larger --total-timesteps) continues from the newest checkpoint there.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from metta.agent.policy_store import PolicyStore
from metta.common.profiling.stopwatch import Stopwatch
from metta.interface import Agent, Environment, Optimizer
from metta.rl.components import PolicyEvaluator, PPOOptimizer, RolloutCollector, StatsLogger, TrainingCheckpointer
from metta.rl.epoch_metrics import epoch_metrics
from metta.rl.experience import make_experience
from metta.rl.intervals import crossed
from metta.rl.trainer_config import TrainerConfig
from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-timesteps", type=int, default=1536, help="agent steps to train for")
    parser.add_argument("--num-envs", type=int, default=8, help="envs (2 agents each)")
    parser.add_argument("--batch-size", type=int, default=512, help="agent steps per rollout")
    parser.add_argument("--minibatch-size", type=int, default=128)
    parser.add_argument("--bptt-horizon", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--checkpoint-interval", type=int, default=2, help="epochs between checkpoints")
    parser.add_argument(
        "--eval-max-steps", type=int, default=50, help="episode length of the final evaluation (0: skip)"
    )
    parser.add_argument("--run-dir", default="train_dir/direct_components")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    run_dir = os.path.abspath(args.run_dir)
    checkpoint_dir = os.path.join(run_dir, "checkpoints")

    # Plain objects: a config, an env, a policy, a buffer, an optimizer.
    config = TrainerConfig(
        total_timesteps=args.total_timesteps,
        batch_size=args.batch_size,
        minibatch_size=args.minibatch_size,
        bptt_horizon=args.bptt_horizon,
        ppo={"ent_coef": 0.01, "gamma": 0.99, "gae_lambda": 0.95},
        optimizer={"learning_rate": args.learning_rate},
    ).with_run_dir(run_dir)  # checkpoints/, replays/, torch_traces/ inside the run directory
    env = Environment(num_agents=2, width=16, height=16, num_envs=args.num_envs, seed=args.seed, device=args.device)
    policy = Agent(env, config="fast", device=args.device)
    experience = make_experience(env, policy, config, args.device)
    optimizer = Optimizer(
        "adam", policy, learning_rate=config.optimizer.learning_rate, max_grad_norm=config.ppo.max_grad_norm
    )
    policy_store = PolicyStore({"device": args.device, "trainer": {"checkpoint": {"checkpoint_dir": checkpoint_dir}}})

    # The components, each wrapping one piece of metta.rl. The checkpointer records the config, the curriculum
    # and the timer in every trainer state, and restores them with the policy and optimizer on resume.
    timer = Stopwatch()
    collector = RolloutCollector(env, policy, experience, args.device, timer)
    ppo = PPOOptimizer(policy, optimizer, args.device, config, timer=timer)
    checkpointer = TrainingCheckpointer(
        checkpoint_dir, policy_store, trainer_config=config, vecenv=env, stopwatch=timer
    )
    stats_logger = StatsLogger(run_dir, config.total_timesteps)

    # A run directory with a checkpoint continues from its newest good one.
    resumed = checkpointer.resume(policy, optimizer)
    agent_step, ppo.epoch = (resumed.agent_step, resumed.epoch) if resumed else (0, 0)
    if not timer.get_summary()["is_running"]:  # a resumed stopwatch is already running
        timer.start()
    print(
        f"training {env.num_agents} agents for {config.total_timesteps:,} agent steps from step {agent_step:,}; "
        f"run dir {run_dir}",
        flush=True,
    )
    while agent_step < config.total_timesteps:
        start, epoch_before, phase_before = time.perf_counter(), ppo.epoch, timer.get_all_elapsed()
        episode_stats, steps = collector.collect()
        ppo.update(experience, agent_step=agent_step + steps, batch_start_step=agent_step)
        agent_step += steps
        # The row every loop logs (overview/sps, overview/reward, losses/*, timing/frac/*, ...).
        metrics = epoch_metrics(
            episode_stats,
            ppo.losses,
            experience,
            optimizer,
            steps,
            time.perf_counter() - start,
            timer=timer,
            phase_before=phase_before,
        )
        stats_logger.log(ppo.epoch, agent_step, metrics)

        # The epoch advances by update_epochs per batch: a checkpoint is due when it crosses a multiple.
        if crossed(args.checkpoint_interval, epoch_before, ppo.epoch) or agent_step >= config.total_timesteps:
            checkpointer.save_policy(policy, ppo.epoch, {"agent_step": agent_step})
            checkpointer.save_trainer_state(agent_step, ppo.epoch, optimizer.state_dict(), run_dir)
    stats_logger.close()
    env.close()

    # Resuming would start here: the newest trainer state and its policy.
    checkpoint = checkpointer.load_trainer_state(run_dir)
    print(f"latest checkpoint: epoch {checkpoint.epoch}, agent_step {checkpoint.agent_step}, {checkpoint.policy_path}")

    if args.eval_max_steps > 0:
        suite = SimulationSuiteConfig(
            name="example",
            num_episodes=2,
            simulations={
                "navigation/terrain_small": SingleEnvSimulationConfig(
                    env="/env/mettagrid/navigation/evals/terrain_small",
                    num_episodes=2,
                    max_time_s=60,
                    env_overrides={"game.max_steps": args.eval_max_steps},
                )
            },
        )
        evaluator = PolicyEvaluator(suite, policy_store, args.device, stats_dir=os.path.join(run_dir, "stats"))
        scores = evaluator.evaluate(policy)
        print("evaluation:", ", ".join(f"{name} {score:.3f}" for name, score in scores.items()))
    print("done")


if __name__ == "__main__":
    main()
