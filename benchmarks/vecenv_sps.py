"""Vectorizer throughput with a busy learner: serial vs multiprocessing (async) agent steps/s, one JSON line.

A real learner spends CPU time on every batch (policy forward, bookkeeping). The serial backend steps the
envs and then the learner works, one after the other; the multiprocessing backend with ``async_factor=2``
steps one half of the envs in a worker while the learner works on the other half, so on 2 cores the two
overlap. The "policy" here is a NumPy matmul per agent row, calibrated so that its time per agent equals
the env's step time per agent (``--busy 1.0``); ``--busy 0`` measures the vectorizer alone.

    python benchmarks/vecenv_sps.py [--num-envs 64] [--seconds 3] [--rounds 3] [--busy 1.0]
"""

from __future__ import annotations

import os

# One BLAS thread: the simulated learner must use one core, like a torch policy limited to one thread here.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HIDDEN = 64  # small, so the calibrated per-row cost has fine steps


class BusyPolicy:
    """Spends a fixed CPU time per agent row: ``repeats`` matmuls of (rows, HIDDEN) x (HIDDEN, HIDDEN)."""

    def __init__(self, max_rows: int, repeats: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.weight = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / np.sqrt(HIDDEN)
        self.hidden = rng.standard_normal((max_rows, HIDDEN)).astype(np.float32)
        self.scratch = np.empty_like(self.hidden)
        self.repeats = repeats
        # Pre-drawn random actions, cycled: drawing them is not what we measure.
        self.actions = [rng.integers(0, 3, size=(max_rows, 2)).astype(np.int32) for _ in range(16)]
        self.t = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        rows = obs.shape[0]
        h, out = self.hidden[:rows], self.scratch[:rows]
        for _ in range(self.repeats):
            np.matmul(h, self.weight, out=out)
        self.t += 1
        acts = self.actions[self.t % len(self.actions)][:rows]
        acts[:, 1] = obs[:, 0, 0] & 1  # touch the observations, as a policy would
        return acts


def matmul_seconds_per_row(repeats: int = 50, rows: int = 256) -> float:
    p = BusyPolicy(rows, repeats)
    obs = np.zeros((rows, 1, 3), np.uint8)
    p(obs)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.5:
        p(obs)
        n += 1
    return (time.perf_counter() - t0) / (n * rows * repeats)


def run(vecenv, policy, seconds: float, warmup_steps: int = 20) -> dict:
    vecenv.async_reset(0)
    for _ in range(warmup_steps):
        obs, *_ = vecenv.recv()
        vecenv.send(policy(obs))
    steps = 0
    t0 = time.perf_counter()
    env_wait = 0.0
    while True:
        w0 = time.perf_counter()
        obs, _, _, _, _, env_ids, _ = vecenv.recv()
        env_wait += time.perf_counter() - w0
        actions = policy(obs)
        w0 = time.perf_counter()
        vecenv.send(actions)
        env_wait += time.perf_counter() - w0
        steps += len(env_ids)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return {"agent_sps": round(steps / elapsed), "env_wait_frac": round(env_wait / elapsed, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=64, help="default-navigation envs (4 agents each)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="serial and multiprocessing alternate; medians")
    parser.add_argument("--busy", type=float, default=1.0, help="policy CPU time per agent / env step time per agent")
    args = parser.parse_args()

    from metta.interface import Environment

    n = args.num_envs
    load_before = os.getloadavg()[0]
    serial = Environment(num_envs=n, vectorization="serial", seed=0)
    mp_env = Environment(
        num_envs=n, batch_size=n // 2, async_factor=2, num_workers=2, vectorization="multiprocessing", seed=0
    )
    idle_policy = BusyPolicy(serial.num_agents, repeats=0)
    # Env step time per agent, measured on the serial backend with an idle policy; the busy policy matches it.
    env_s_per_agent = 1.0 / run(serial, idle_policy, 2.0)["agent_sps"]
    repeats = max(0, round(args.busy * env_s_per_agent / matmul_seconds_per_row()))
    policy = BusyPolicy(serial.num_agents, repeats)

    # Other processes on a shared 2-core machine come and go: alternate the backends and report medians.
    results: dict[str, list[dict]] = {"serial_idle": [], "mp_idle": [], "serial_busy": [], "mp_busy": []}
    for _ in range(args.rounds):
        results["serial_idle"].append(run(serial, idle_policy, args.seconds))
        results["mp_idle"].append(run(mp_env, idle_policy, args.seconds))
        results["serial_busy"].append(run(serial, policy, args.seconds))
        results["mp_busy"].append(run(mp_env, policy, args.seconds))
    serial.close()
    mp_env.close()

    def median(key: str) -> dict:
        runs = sorted(results[key], key=lambda r: r["agent_sps"])
        return {**runs[len(runs) // 2], "all_agent_sps": [r["agent_sps"] for r in results[key]]}

    out = {k: median(k) for k in results}
    speedups = sorted(b["agent_sps"] / a["agent_sps"] for a, b in zip(results["serial_busy"], results["mp_busy"]))
    print(
        json.dumps(
            {
                "benchmark": "vecenv_sps",
                "workload": {"env": "default_navigation", "num_envs": n, "agents": serial.num_agents},
                "policy": {"busy": args.busy, "matmul_repeats_per_row": repeats, "hidden": HIDDEN},
                "serial": {"idle": out["serial_idle"], "busy": out["serial_busy"]},
                "multiprocessing_2workers_async2": {"idle": out["mp_idle"], "busy": out["mp_busy"]},
                "busy_speedup_mp_over_serial": round(speedups[len(speedups) // 2], 2),
                "idle_ratio_mp_over_serial": round(out["mp_idle"]["agent_sps"] / out["serial_idle"]["agent_sps"], 2),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "loadavg_1min_before": round(load_before, 2),
                    "loadavg_1min_after": round(os.getloadavg()[0], 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
