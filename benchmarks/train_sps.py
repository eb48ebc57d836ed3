"""End-to-end training throughput of an agent (``--agent``, default fast: upstream's) on the navigation
curriculum, as one JSON line.

It runs the real loop (``rollout`` + ``train_ppo``, i.e. ``perform_rollout_step`` and
``process_minibatch_update``) and reports:

- ``agent_steps_per_second``: agent steps collected and trained on per second of wall time;
- ``phases``: fractions of wall time in env stepping (recv/send), policy forward during the rollout (up to
  the actions' arrival on the host), advantage computation, learning (minibatch forward, loss, backward,
  optimizer step, up to the device finishing the update) and everything else;
- ``overhead_fraction``: the share of wall time outside env stepping and policy forward/backward;
- ``flops_per_agent_step``: policy FLOPs per agent step (rollout forward + training forward/backward per
  update epoch), counted by ``metta.agent.flops`` (sparse products by their entries, the LSTM analytically);
- ``compute_bound_agent_steps_per_second``: what the policy's compute alone allows, timed in this script on
  synthetic batches of the same shapes (inference on one env batch, forward+backward+step on one minibatch).

    python benchmarks/train_sps.py [--num-envs 64] [--batch-size 32768] [--minibatch-size 2048] [--update-epochs 2]
    python benchmarks/train_sps.py --device cuda --num-envs 2048 --vectorization multiprocessing --num-workers 16 \\
        --async-factor 2 --batch-size 524288 --minibatch-size 16384 --bptt-horizon 64 --update-epochs 1 [--compile]

The defaults are run.py's CPU defaults. ``--compile`` runs the policy under ``torch.compile`` (``--compile-mode``);
the first iterations, which compile, are the warm-up and are not timed. The curriculum's terrain sets are built
into the disk cache first (``--no-prebuild-maps`` leaves them to the first episodes that need them, inside the
timed window when the cache is cold), and on CUDA the rollout step runs as a CUDA graph (``--no-cuda-graphs``:
eagerly).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from metta.agent.agent_config import AGENT_CONFIGS


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile(policy, env, experience, optimizer, losses, cfg, device, agent_step, epoch) -> None:
    """Torch profiler tables (by self time on the device and on the host) of one rollout and one update."""
    import sys

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from metta.rl.functional_trainer import rollout, train_ppo

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, fn in (
        ("rollout", lambda: rollout(policy, env, experience, device, agent_step)),
        (
            "train_ppo",
            lambda: train_ppo(policy, optimizer, experience, device, losses, epoch, cfg, agent_step=agent_step),
        ),
    ):
        with torch_profile(activities=activities) as prof:
            fn()
            synchronize(device)
        for key in (["self_cuda_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]:
            print(f"===== profile {name} by {key}", file=sys.stderr)
            print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curriculum", default="/env/mettagrid/curriculum/navigation/bucketed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--agent", default="fast", choices=sorted(AGENT_CONFIGS))
    parser.add_argument(
        "--first-conv",
        default="auto",
        choices=["auto", "sparse", "bag", "dense"],
        help="the agent's first convolution: auto (sparse product on a CPU, the dense components on a GPU)",
    )
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--vectorization", default="serial", choices=["serial", "multiprocessing"])
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--async-factor", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32768)
    parser.add_argument("--minibatch-size", type=int, default=2048)
    parser.add_argument("--bptt-horizon", type=int, default=16)
    parser.add_argument("--update-epochs", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the policy")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--iterations", type=int, default=4, help="timed rollout+train iterations after the warm-up")
    parser.add_argument(
        "--warmup-iterations", type=int, default=1, help="untimed iterations first (numba, compile, allocator)"
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads in the learner process")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print torch profiler tables of rollout steps and minibatch updates to stderr",
    )
    parser.add_argument(
        "--prebuild-maps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="build the curriculum's terrain sets into the disk cache first, in parallel (not timed)",
    )
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run the GPU's rollout step eagerly")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from metta.agent.metta_agent import make_policy
    from metta.agent.policy_state import PolicyState
    from metta.common.profiling.stopwatch import Stopwatch
    from metta.interface.environment import Environment
    from metta.rl.experience import make_experience
    from metta.rl.functional_trainer import rollout, train_ppo
    from metta.rl.losses import Losses
    from metta.rl.optimizer import Optimizer
    from metta.rl.policy_management import compile_policy
    from metta.rl.trainer_config import TrainerConfig

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cfg = TrainerConfig(
        total_timesteps=10**12,
        batch_size=args.batch_size,
        minibatch_size=args.minibatch_size,
        bptt_horizon=args.bptt_horizon,
        update_epochs=args.update_epochs,
        cuda_graphs=not args.no_cuda_graphs,
    )
    maps_seconds = None
    if args.prebuild_maps:
        from metta.mettagrid.env import make_curriculum
        from metta.mettagrid.map.terrain import build_terrain_sets, terrain_sets_in

        started = time.perf_counter()
        build_terrain_sets(terrain_sets_in(make_curriculum(args.curriculum)), processes=os.cpu_count() or 1)
        maps_seconds = time.perf_counter() - started
    started = time.perf_counter()
    env = Environment(
        curriculum_path=args.curriculum,
        num_envs=args.num_envs,
        seed=args.seed,
        device=str(device),
        vectorization=args.vectorization,
        num_workers=args.num_workers,
        async_factor=args.async_factor,
        batch_size=args.num_envs // args.async_factor,
    )
    env_start_seconds = time.perf_counter() - started
    policy = make_policy(env, config=args.agent, device=device)
    if args.first_conv != "auto":
        policy.token_conv.product = args.first_conv
    eager_policy = policy
    if args.compile:
        compile_policy(policy, args.compile_mode)
    experience = make_experience(env, policy, cfg, device)
    optimizer = Optimizer(
        "adam", policy, learning_rate=cfg.optimizer.learning_rate, max_grad_norm=cfg.ppo.max_grad_norm
    )
    losses = Losses()

    def iteration(agent_step: int, epoch: int, timer: Stopwatch | None) -> tuple[int, int]:
        agent_step, _ = rollout(policy, env, experience, device, agent_step, timer)
        epoch = train_ppo(policy, optimizer, experience, device, losses, epoch, cfg, agent_step=agent_step, timer=timer)
        return agent_step, epoch

    started = time.perf_counter()
    agent_step, epoch = 0, 0
    for _ in range(args.warmup_iterations):
        agent_step, epoch = iteration(agent_step, epoch, None)
    synchronize(device)
    warmup_seconds = time.perf_counter() - started
    timer = Stopwatch()
    start_step = agent_step
    timer.start()
    for _ in range(args.iterations):
        agent_step, epoch = iteration(agent_step, epoch, timer)
    synchronize(device)
    wall = timer.stop()
    steps = agent_step - start_step
    if args.profile:
        profile(policy, env, experience, optimizer, losses, cfg, device, agent_step, epoch)
    env.close()

    t = {
        name: timer.get_elapsed(name)
        for name in ("_rollout.env", "_rollout.forward", "_train.advantage", "_train.learn")
    }
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
    segments = experience.minibatch_segments
    rows = inference_obs[torch.arange(segments) % n]  # a minibatch may have more segments than one env batch has agents
    train_obs = rows.unsqueeze(1).expand(segments, cfg.bptt_horizon, *obs_shape).contiguous().to(device)
    inference_obs = inference_obs.to(device)
    train_actions = torch.zeros((segments, cfg.bptt_horizon, 2), dtype=torch.int32, device=device)

    def timed(fn, repeats: int) -> float:
        fn()
        synchronize(device)
        begin = time.perf_counter()
        for _ in range(repeats):
            fn()
        synchronize(device)
        return (time.perf_counter() - begin) / repeats

    def infer(model=policy) -> None:
        with torch.no_grad():
            model(inference_obs, PolicyState())

    def learn(model=policy) -> None:
        _, logprob, entropy, value, _ = model(train_obs, PolicyState(), action=train_actions)
        loss = -(logprob.mean() + 0.01 * entropy.mean()) + value.pow(2).mean()
        optimizer.step(loss, 0, 1)

    infer_s = timed(infer, 10)
    learn_s = timed(learn, 3)
    per_agent_step = infer_s / n + learn_s / experience.minibatch_size * cfg.update_epochs
    compute_bound = 1.0 / per_agent_step

    flops = None
    if device.type == "cpu" and not args.compile:
        try:
            from metta.agent.flops import counted_flops, lstm_forward_flops

            lstm = lstm_forward_flops(eager_policy)
            infer_flops = counted_flops(lambda: infer(eager_policy)) / n + lstm
            learn_flops = counted_flops(lambda: learn(eager_policy)) / experience.minibatch_size + 3 * lstm
            flops = infer_flops + learn_flops * cfg.update_epochs
        except Exception:  # noqa: BLE001 - FLOP counting is informative only
            flops = None

    sps = steps / wall
    machine = {
        "cpu": platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
        machine["gpu_memory_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
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
                "inference_ms": round(infer_s * 1000, 3),
                "minibatch_learn_ms": round(learn_s * 1000, 3),
                "agent_steps": steps,
                "seconds": round(wall, 2),
                "warmup_seconds": round(warmup_seconds, 2),
                "env_start_seconds": round(env_start_seconds, 2),
                "maps_prebuild_seconds": None if maps_seconds is None else round(maps_seconds, 2),
                "config": {
                    "device": str(device),
                    "curriculum": args.curriculum,
                    "agent": args.agent,
                    "first_conv": args.first_conv,
                    "compile": args.compile_mode if args.compile else False,
                    "num_envs": args.num_envs,
                    "agents": env.num_agents,
                    "agents_per_batch": n,
                    "vectorization": args.vectorization,
                    "num_workers": args.num_workers,
                    "async_factor": args.async_factor,
                    "batch_size": cfg.batch_size,
                    "minibatch_size": cfg.minibatch_size,
                    "bptt_horizon": cfg.bptt_horizon,
                    "update_epochs": cfg.update_epochs,
                    "cuda_graphs": cfg.cuda_graphs,
                    "prebuild_maps": args.prebuild_maps,
                },
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
