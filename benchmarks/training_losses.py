"""The losses of a short fixed-seed training run on the navigation curriculum, as one JSON line.

Run it before and after a change meant only to make training faster: the losses of every update should agree
within float rounding (an exact match is not expected where the change reorders arithmetic, e.g. a fused
optimizer step or a closed form in place of a loop).

    python benchmarks/training_losses.py [--updates 4]
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curriculum", default="/env/mettagrid/curriculum/navigation/bucketed")
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--minibatch-size", type=int, default=1024)
    parser.add_argument("--bptt-horizon", type=int, default=64)
    parser.add_argument("--update-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread: reductions add in one order

    from metta.agent.metta_agent import make_policy
    from metta.interface.environment import Environment
    from metta.rl.experience import make_experience
    from metta.rl.functional_trainer import rollout, train_ppo
    from metta.rl.losses import Losses
    from metta.rl.optimizer import Optimizer
    from metta.rl.trainer_config import TrainerConfig

    torch.manual_seed(args.seed)
    cfg = TrainerConfig(
        total_timesteps=10**12,
        batch_size=args.batch_size,
        minibatch_size=args.minibatch_size,
        bptt_horizon=args.bptt_horizon,
        update_epochs=args.update_epochs,
    )
    env = Environment(curriculum_path=args.curriculum, num_envs=args.num_envs, seed=args.seed, device="cpu")
    policy = make_policy(env, device="cpu")
    experience = make_experience(env, policy, cfg, "cpu")
    optimizer = Optimizer.from_config(policy, cfg)
    losses = Losses()
    updates = []
    agent_step, epoch = 0, 0
    for _ in range(args.updates):
        agent_step, _ = rollout(policy, env, experience, "cpu", agent_step)
        epoch = train_ppo(policy, optimizer, experience, "cpu", losses, epoch, cfg, agent_step=agent_step)
        updates.append({k: float(f"{v:.7g}") for k, v in losses.stats().items()})
    env.close()
    print(
        json.dumps({"benchmark": "training_losses", "seed": args.seed, "agent_steps": agent_step, "updates": updates})
    )


if __name__ == "__main__":
    main()
