"""Environment-only throughput: agent steps per second of MettaGridEnv on one core, printed as one JSON line.

Default workload (upstream's published perf workload): 20 agents on a 40x40 random map, 11x11 window,
200 tokens, random noop and move actions, one process. ``--workload navigation`` runs the navigation
bucketed curriculum (4 agents per env) with episode resets and map generation included.

    python benchmarks/env_sps.py [--workload perf|navigation] [--num-envs 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def perf_config(num_agents: int, size: int, max_steps: int):
    from metta.mettagrid.config import MettaGridConfig

    # Upstream's perf map: an open room with scattered walls and a few altars, agents placed at random.
    return MettaGridConfig.model_validate(
        {
            "game": {
                "num_agents": num_agents,
                "max_steps": max_steps,
                "map_builder": {
                    "type": "random",
                    "width": size - 2,
                    "height": size - 2,
                    "agents": num_agents,
                    "objects": {"wall": size * size // 20, "altar": 4},
                    "border_width": 1,
                },
            }
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["perf", "navigation"], default="perf")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--num-agents", type=int, default=20, help="agents per env (perf workload)")
    parser.add_argument("--size", type=int, default=40, help="map side (perf workload)")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from metta.mettagrid.env import MettaGridEnv

    if args.workload == "perf":
        source = perf_config(args.num_agents, args.size, args.max_steps)
        workload = {
            "name": "perf",
            "agents_per_env": args.num_agents,
            "map": f"{args.size}x{args.size} random",
            "actions": "random noop/move",
        }
    else:
        source = "/env/mettagrid/curriculum/navigation/bucketed"
        workload = {"name": "navigation_bucketed", "actions": "random noop/move/rotate/get_items", "resets": True}

    startup = time.perf_counter()
    if args.workload == "navigation":
        # Terrain sets are generated once per process on first use (upstream downloaded them instead);
        # generate them up front so the timed loop shows the steady state, and report the one-off cost.
        from metta.mettagrid.map.terrain import MAPS_PER_SET, NAVIGATION_TERRAIN_DIRS, base_map

        for terrain_dir in NAVIGATION_TERRAIN_DIRS:
            for index in range(MAPS_PER_SET):
                base_map(terrain_dir, index)
    env = MettaGridEnv(source, num_envs=args.num_envs, is_training=True)
    env.reset(seed=args.seed)
    startup = time.perf_counter() - startup
    rng = np.random.default_rng(args.seed)
    names = env.action_names
    if args.workload == "perf":
        allowed = [names.index("noop"), names.index("move")]
    else:
        allowed = [names.index(n) for n in ("noop", "move", "rotate", "get_items") if n in names]
    # Pre-generate actions so the timed loop measures the env, not the random number generator.
    n_batches = 64
    types = rng.choice(np.array(allowed, dtype=np.int32), size=(n_batches, env.num_agents))
    max_args = np.array(env.max_action_args, dtype=np.int32)[types]
    params = (rng.integers(0, 1 << 30, size=(n_batches, env.num_agents)) % (max_args + 1)).astype(np.int32)
    batches = np.stack([types, params], axis=-1).astype(np.int32)

    for i in range(args.max_steps + 100):  # warm up: compile, grow pools, finish the short first episodes
        env.step(batches[i % n_batches])
    steps = 0
    episodes = 0
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        for i in range(n_batches):
            _, _, _, _, infos = env.step(batches[i])
            episodes += len(infos)
        steps += n_batches
    elapsed = time.perf_counter() - start
    agent_steps = steps * env.num_agents
    workload.update(
        num_envs=args.num_envs, agents_per_env=env.agents_per_env, tokens=env.single_observation_space.shape[0]
    )
    print(
        json.dumps(
            {
                "benchmark": "env_sps",
                "agent_steps_per_second": round(agent_steps / elapsed),
                "env_steps_per_second": round(steps * args.num_envs / elapsed),
                "episodes_completed": episodes,
                "seconds": round(elapsed, 2),
                "startup_seconds": round(startup, 2),
                "workload": workload,
                "processes": 1,
                "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            }
        )
    )


if __name__ == "__main__":
    main()
