"""End-to-end training throughput of the default agent on the navigation curriculum, as one JSON line.

It runs the real loop (``rollout`` + ``train_ppo``, i.e. ``perform_rollout_step`` and
``process_minibatch_update``) and reports:

- ``agent_steps_per_second``: agent steps collected and trained on per second of wall time;
- ``phases``: fractions of wall time in env stepping (recv/send), policy forward during the rollout,
  advantage computation, learning (minibatch forward, loss, backward, optimizer step) and everything else;
- ``overhead_fraction``: the share of wall time outside env stepping and policy forward/backward;
- ``flops_per_agent_step``: policy FLOPs per agent step (rollout forward + training forward/backward per
  update epoch), counted by ``metta.agent.flops`` (sparse products by their entries, the LSTM analytically);
- ``compute_bound_agent_steps_per_second``: what the policy's compute alone allows, timed in this script on
  synthetic batches of the same shapes (inference on one env batch, forward+backward+step on one minibatch).

    python benchmarks/train_sps.py [--num-envs 64] [--batch-size 32768] [--minibatch-size 2048] [--update-epochs 2]

The defaults are run.py's CPU defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curriculum", default="/env/mettagrid/curriculum/navigation/bucketed")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32768)
    parser.add_argument("--minibatch-size", type=int, default=2048)
    parser.add_argument("--bptt-horizon", type=int, default=16)
    parser.add_argument("--update-epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=4, help="timed rollout+train iterations after one warm-up")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from metta.agent.metta_agent import make_policy
    from metta.agent.policy_state import PolicyState
    from metta.common.profiling.stopwatch import Stopwatch
    from metta.interface.environment import Environment
    from metta.rl.experience import make_experience
    from metta.rl.functional_trainer import rollout, train_ppo
    from metta.rl.losses import Losses
    from metta.rl.optimizer import Optimizer
    from metta.rl.trainer_config import TrainerConfig

    torch.manual_seed(args.seed)
    cfg = TrainerConfig(
        total_timesteps=10**9,
        batch_size=args.batch_size,
        minibatch_size=args.minibatch_size,
        bptt_horizon=args.bptt_horizon,
        update_epochs=args.update_epochs,
    )
    env = Environment(curriculum_path=args.curriculum, num_envs=args.num_envs, seed=args.seed, device="cpu")
    policy = make_policy(env)
    experience = make_experience(env, policy, cfg, "cpu")
    optimizer = Optimizer("adam", policy, learning_rate=cfg.optimizer.learning_rate, max_grad_norm=cfg.ppo.max_grad_norm)
    losses = Losses()

    def iteration(agent_step: int, epoch: int, timer: Stopwatch | None) -> tuple[int, int]:
        agent_step, _ = rollout(policy, env, experience, "cpu", agent_step, timer)
        epoch = train_ppo(policy, optimizer, experience, "cpu", losses, epoch, cfg, agent_step=agent_step, timer=timer)
        return agent_step, epoch

    agent_step, epoch = iteration(0, 0, None)  # warm-up: numba caches, terrain sets, allocator
    timer = Stopwatch()
    start_step = agent_step
    timer.start()
    for _ in range(args.iterations):
        agent_step, epoch = iteration(agent_step, epoch, timer)
    wall = timer.stop()
    steps = agent_step - start_step
    env.close()

    t = {name: timer.get_elapsed(name) for name in ("_rollout.env", "_rollout.forward", "_train.advantage", "_train.learn")}
    phases = {
        "env": t["_rollout.env"] / wall,
        "forward": t["_rollout.forward"] / wall,
        "advantage": t["_train.advantage"] / wall,
        "learn": t["_train.learn"] / wall,
    }
    phases["other"] = max(0.0, 1.0 - sum(phases.values()))
    overhead = 1.0 - (phases["env"] + phases["forward"] + phases["learn"])

    # The compute bound: the same policy work on synthetic inputs of the same shapes, nothing else.
    n = env.agents_per_batch
    obs_shape = env.single_observation_space.shape
    inference_obs = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (n, *obs_shape), dtype=np.uint8))
    inference_obs[:, 20:] = 255  # mostly empty slots, like real observations
    segments = cfg.minibatch_size // cfg.bptt_horizon
    rows = inference_obs[torch.arange(segments) % n]  # a minibatch may have more segments than one env batch has agents
    train_obs = rows.unsqueeze(1).expand(segments, cfg.bptt_horizon, *obs_shape).contiguous()
    train_actions = torch.zeros((segments, cfg.bptt_horizon, 2), dtype=torch.int32)

    def timed(fn, repeats: int) -> float:
        fn()
        begin = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - begin) / repeats

    def infer() -> None:
        with torch.no_grad():
            policy(inference_obs, PolicyState())

    def learn() -> None:
        _, logprob, entropy, value, _ = policy(train_obs, PolicyState(), action=train_actions)
        loss = -(logprob.mean() + 0.01 * entropy.mean()) + value.pow(2).mean()
        optimizer.step(loss, 0, 1)

    infer_s = timed(infer, 10)
    learn_s = timed(learn, 3)
    per_agent_step = infer_s / n + learn_s / cfg.minibatch_size * cfg.update_epochs
    compute_bound = 1.0 / per_agent_step

    try:
        from metta.agent.flops import counted_flops, lstm_forward_flops

        lstm = lstm_forward_flops(policy)
        infer_flops = counted_flops(infer) / n + lstm
        learn_flops = counted_flops(learn) / cfg.minibatch_size + 3 * lstm
        flops = infer_flops + learn_flops * cfg.update_epochs
    except Exception:  # noqa: BLE001 - FLOP counting is informative only
        flops = None

    sps = steps / wall
    print(
        json.dumps(
            {
                "benchmark": "train_sps",
                "agent_steps_per_second": round(sps),
                "phases": {k: round(v, 4) for k, v in phases.items()},
                "overhead_fraction": round(overhead, 4),
                "flops_per_agent_step": flops,
                "compute_bound_agent_steps_per_second": round(compute_bound),
                "fraction_of_compute_bound": round(sps / compute_bound, 3),
                "agent_steps": steps,
                "seconds": round(wall, 2),
                "config": {
                    "curriculum": args.curriculum,
                    "num_envs": args.num_envs,
                    "agents": env.num_agents,
                    "batch_size": cfg.batch_size,
                    "minibatch_size": cfg.minibatch_size,
                    "bptt_horizon": cfg.bptt_horizon,
                    "update_epochs": cfg.update_epochs,
                    "agent": "fast (default)",
                },
                "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
            }
        )
    )


if __name__ == "__main__":
    main()
