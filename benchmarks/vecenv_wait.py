"""How long a learner waits for the vecenv, with and without terrain maps built before the first step: one JSON line.

The navigation curriculum in multiprocessing workers (async), and a stand-in learner that busy-waits
``--spin-ms`` per batch (what its forward pass would cost) between ``recv`` and ``send``. For each spin: the
``recv`` wait per batch (p50, p90, p99 ms) and agent steps/s. Two vecenvs, each with a terrain cache of its
own that starts empty: one builds its maps lazily, the first time an episode needs one (inside the timed
window), the other with ``prebuild_maps`` (each worker builds its share at start-up, ``start_s``).

    python benchmarks/vecenv_wait.py [--num-envs 2048] [--num-workers 16] [--spin-ms 1,2,3.5] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure(vecenv, spin_s: float, seconds: float, rng: np.random.Generator) -> dict:
    waits = []
    steps = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        w0 = time.perf_counter()
        _, _, _, _, _, env_ids, _ = vecenv.recv()
        waits.append(time.perf_counter() - w0)
        spin(spin_s)
        actions = np.stack([rng.integers(0, 3, len(env_ids)), rng.integers(0, 2, len(env_ids))], 1).astype(np.int32)
        vecenv.send(actions)
        steps += len(env_ids)
    ms = np.array(waits) * 1000
    return {
        "recv_wait_ms": {q: round(float(np.percentile(ms, p)), 3) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))},
        "agent_steps_per_second": round(steps / (time.perf_counter() - began)),
        "batches": len(waits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curriculum", default="/env/mettagrid/curriculum/navigation/bucketed")
    parser.add_argument("--num-envs", type=int, default=2048)
    parser.add_argument("--num-workers", type=int, default=16)
    parser.add_argument("--async-factor", type=int, default=2)
    parser.add_argument("--spin-ms", default="1,2,3.5")
    parser.add_argument("--seconds", type=float, default=10.0, help="per spin value")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from metta.mettagrid.vecenv import make_vecenv, worker_cpus

    spins = [float(s) for s in args.spin_ms.split(",")]
    rng = np.random.default_rng(args.seed)
    out = {}
    for prebuilt in (False, True):
        with tempfile.TemporaryDirectory(prefix="metta-terrain-") as cache:
            os.environ["METTA_TERRAIN_CACHE"] = cache  # empty: both start cold; the workers inherit it
            began = time.perf_counter()
            vecenv = make_vecenv(
                args.curriculum,
                "multiprocessing",
                num_envs=args.num_envs,
                batch_size=args.num_envs // args.async_factor,
                num_workers=args.num_workers,
                is_training=True,
                seed=args.seed,
                prebuild_maps=prebuilt,
            )
            try:
                vecenv.async_reset(args.seed)
                start_s = time.perf_counter() - began
                out["prebuilt_maps" if prebuilt else "lazy_maps"] = {
                    "start_s": round(start_s, 2),
                    **{f"spin_{s}ms": measure(vecenv, s / 1000, args.seconds, rng) for s in spins},
                }
            finally:
                vecenv.close()
    print(
        json.dumps(
            {
                "benchmark": "vecenv_wait",
                **out,
                "config": {
                    "curriculum": args.curriculum,
                    "num_envs": args.num_envs,
                    "num_workers": args.num_workers,
                    "async_factor": args.async_factor,
                    "pinned_cpus": worker_cpus(args.num_workers),
                    "cpus": os.cpu_count(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
