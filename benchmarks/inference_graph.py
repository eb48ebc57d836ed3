"""A rollout step's device work for one env batch, eager vs replayed as a CUDA graph, as one JSON line.

The GPU form of the rollout step (``metta.rl.rollout.DeviceStep``: upload, episode resets, the fast agent's
forward, buffer writes, action download) for ``--agents`` agents (default 4096 and 8192), on navigation
observations; the env itself is left out. For each size: ms per step (wall, the step ends with the actions on
the host) and torch ops dispatched per step, eagerly and as a graph replay (CUDA only; on a CPU the graph
entries are null).

    python benchmarks/inference_graph.py [--device cuda] [--agents 4096,8192] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--agents", default="4096,8192")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from metta.agent.metta_agent import make_policy
    from metta.common.code_paths import gpu_forms_everywhere
    from metta.common.profiling.dispatch_counter import DispatchCounter
    from metta.mettagrid.env import MettaGridEnv
    from metta.rl.experience import Experience
    from metta.rl.rollout import device_step

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    env = MettaGridEnv("/env/mettagrid/curriculum/navigation/bucketed", num_envs=8, seed=args.seed)
    observations, _ = env.reset(args.seed)
    policy = make_policy(env, device=device)
    results = {}
    for n in (int(a) for a in args.agents.split(",")):
        o = np.ascontiguousarray(observations[np.arange(n) % len(observations)])
        r = np.zeros(n, dtype=np.float32)
        d = np.zeros(n, dtype=np.bool_)
        t = np.zeros(n, dtype=np.bool_)
        d[:: max(1, n // 16)] = True  # a few episode starts, as in a real batch
        sizes = {}
        for graphs in (False, True):
            if graphs and device.type != "cuda":
                sizes["graph"] = None
                continue
            experience = Experience(
                total_agents=n,
                batch_size=n * 64,
                bptt_horizon=64,
                obs_space=env.single_observation_space,
                atn_space=env.single_action_space,
                device=device,
                cuda_graphs=graphs,
            )
            with gpu_forms_everywhere():
                step = device_step(policy, experience, slice(0, n), o)
                for _ in range(5):  # warm-up (and the capture)
                    step(o, r, d, t)
                counter = DispatchCounter()
                with counter:
                    step(o, r, d, t)
                began = time.perf_counter()
                for _ in range(args.steps):
                    step(o, r, d, t)
                ms = (time.perf_counter() - began) * 1000 / args.steps
            sizes["graph" if graphs else "eager"] = {"ms_per_step": round(ms, 3), "ops": counter.totals()["ops"]}
        results[str(n)] = sizes
    print(
        json.dumps(
            {
                "benchmark": "inference_graph",
                "agents": results,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "agent": "fast",
            }
        )
    )


if __name__ == "__main__":
    main()
