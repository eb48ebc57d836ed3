"""Hashes of observations and rewards along fixed random trajectories, as one JSON line.

Run it before and after a change meant only to make the env faster: equal hashes mean the change left every
observation and reward bit-for-bit the same (the perf map, the navigation curriculum with its resets and map
placement, and the simple env with every action type).

    python benchmarks/trajectory_hash.py [--steps 1500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()

    from env_sps import perf_config

    from metta.mettagrid.env import MettaGridEnv

    workloads = {
        "perf": (perf_config(20, 40, 200), 4, ("noop", "move")),
        "navigation": ("/env/mettagrid/curriculum/navigation/bucketed", 8, ("noop", "move", "rotate", "get_items")),
        "simple": ("/env/mettagrid/curriculum/simple", 4, None),  # every enabled action type
    }
    hashes = {}
    for name, (source, num_envs, action_names) in workloads.items():
        env = MettaGridEnv(source, num_envs=num_envs, is_training=True)
        env.reset(seed=3)
        rng = np.random.default_rng(1)
        max_args = np.array(env.max_action_args)
        allowed = (
            np.arange(len(max_args))
            if action_names is None
            else np.array([env.action_names.index(a) for a in action_names])
        )
        digest = hashlib.sha256()
        for _ in range(args.steps):
            types = rng.choice(allowed, env.num_agents)
            actions = np.stack([types, rng.integers(0, 1 << 20, env.num_agents) % (max_args[types] + 1)], 1)
            obs, rewards, _, _, _ = env.step(actions.astype(np.int32))
            digest.update(obs.tobytes())
            digest.update(rewards.tobytes())
        hashes[name] = digest.hexdigest()[:16]
    print(json.dumps({"benchmark": "trajectory_hash", "steps": args.steps, "hashes": hashes}))


if __name__ == "__main__":
    main()
