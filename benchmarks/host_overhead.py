"""The host's work per minibatch update and per rollout step, counted in torch ops and device reads: one JSON line.

On a GPU the learner is bound by the host launching kernels (some 5-20 us per op), not by the device, so the
number of ops a minibatch update or a rollout step dispatches is its cost; counted on a CPU it is the same
number. This script runs the real loop (``rollout`` and ``train_ppo``) on the navigation curriculum with the
GPU sizes' shapes shrunk to run in a minute on a CPU (bptt 64, rows of real episodes, so episode starts fall
inside rows as navigation makes them) and reports, for the CPU code paths and for the GPU code paths run on
the CPU (``--paths``; ``metta.common.code_paths.gpu_forms_everywhere``, so the GPU's rollout step runs eagerly,
as it does on CUDA without ``cuda_graphs``):

- ``minibatch``: ops, scalar reads and host syncs per minibatch update (``train_ppo``'s learn phase: the
  minibatch's loss, backward and optimizer step), and host ms per minibatch (the learn phase's wall time; on
  a CPU that includes the arithmetic);
- ``update_extra``: what one update (one epoch) adds beyond its minibatches' learn phases: advantages, the
  minibatches' slicing, statistics, explained variance;
- ``rollout_step``: per step of a rollout (everything but the env's own stepping), with ``forward`` the
  inference part; ``host_ms`` the step's wall time without the env; on CUDA also ``rollout_step_graph``, the
  same with the step replayed as a CUDA graph;
- ``inference``: one forward pass for ``--inference-agents`` agents (ops, host ms).

Counts come from ``metta.common.profiling.DispatchCounter`` (see it for what a scalar read and a host sync
are); timings come from separate, uncounted runs and are noisy on a shared machine, counts are not. With
``--device cuda`` the counted runs also set ``torch.cuda.set_sync_debug_mode("warn")`` and list every
synchronizing call by the line that made it (``*_syncs_by_line``).

    python benchmarks/host_overhead.py [--paths cpu,gpu] [--num-envs 128] [--batch-size 32768]
        [--minibatch-size 16384] [--bptt-horizon 64] [--first-conv dense]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import time
import warnings

import torch

from metta.agent.agent_config import AGENT_CONFIGS
from metta.common.code_paths import gpu_forms_everywhere
from metta.common.profiling.dispatch_counter import DispatchCounter
from metta.common.profiling.stopwatch import Stopwatch


def per(counts: dict[str, int], n: int) -> dict[str, float]:
    return {k: round(v / n, 1) for k, v in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curriculum", default="/env/mettagrid/curriculum/navigation/bucketed")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (the GPU's forms for real, with sync listing)")
    parser.add_argument("--paths", default="cpu,gpu", help="on a CPU, the forms to measure: cpu, gpu or both")
    parser.add_argument("--agent", default="fast", choices=sorted(AGENT_CONFIGS))
    parser.add_argument("--first-conv", default="dense", choices=["auto", "sparse", "bag", "dense"])
    parser.add_argument("--num-envs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32768)
    parser.add_argument("--minibatch-size", type=int, default=16384)
    parser.add_argument("--bptt-horizon", type=int, default=64)
    parser.add_argument("--warmup-rollouts", type=int, default=2, help="rollouts and updates before measuring")
    parser.add_argument("--inference-agents", type=int, default=4096)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--top-ops", type=int, default=0, help="also list the N most frequent ops of each count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from metta.agent.metta_agent import make_policy
    from metta.agent.policy_state import PolicyState
    from metta.interface.environment import Environment
    from metta.rl.experience import make_experience
    from metta.rl.functional_trainer import rollout, train_ppo
    from metta.rl.losses import Losses
    from metta.rl.optimizer import Optimizer
    from metta.rl.trainer_config import TrainerConfig

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cfg = TrainerConfig(
        total_timesteps=10**12,
        batch_size=args.batch_size,
        minibatch_size=args.minibatch_size,
        bptt_horizon=args.bptt_horizon,
        update_epochs=1,
    )
    env = Environment(curriculum_path=args.curriculum, num_envs=args.num_envs, seed=args.seed, device=str(device))
    policy = make_policy(env, config=args.agent, device=device)
    if args.first_conv != "auto":
        policy.token_conv.product = args.first_conv
    experience = make_experience(env, policy, cfg, device)
    optimizer = Optimizer("adam", policy, learning_rate=cfg.optimizer.learning_rate, max_grad_norm=0.5)
    losses = Losses()
    minibatches = experience.num_minibatches

    agent_step = 0
    for _ in range(args.warmup_rollouts):  # episodes desynchronise; the optimizer's state is made
        agent_step, _ = rollout(policy, env, experience, device, agent_step)
        train_ppo(policy, optimizer, experience, device, losses, 0, cfg, agent_step=agent_step)
    agent_step, _ = rollout(policy, env, experience, device, agent_step)
    starts = experience.dones.bool()[:, 1:]
    rows_per_mb = experience.minibatch_segments
    columns = [
        int(starts[i : i + rows_per_mb].any(0).sum()) for i in range(0, experience.segments, rows_per_mb)
    ]  # distinct steps with a start inside, per block of minibatch rows
    episode_starts = {
        "inside_rows": int(starts.sum()),
        "rows_with_one": int(starts.any(1).sum()),
        "rows": experience.segments,
        "distinct_steps_per_minibatch_rows": round(sum(columns) / len(columns), 1),
    }

    def contexts(path: str):
        return gpu_forms_everywhere() if path == "gpu" else contextlib.nullcontext()

    cuda = device.type == "cuda"
    # On a CPU both forms can run (the GPU's eagerly); on a GPU the device's own forms run for real.
    paths = ["gpu"] if cuda else [p for p in args.paths.split(",") if p]

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    @contextlib.contextmanager
    def counted(syncs: collections.Counter):
        """A DispatchCounter; on CUDA also every synchronizing call torch reports, by the line that made it."""
        counter = DispatchCounter(record_ops=args.top_ops > 0)
        if not cuda:
            with counter:
                yield counter
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with counter:
                    yield counter
            finally:
                torch.cuda.set_sync_debug_mode(0)
        for w in caught:
            if "synchroniz" in str(w.message):
                syncs[f"{w.filename.split('/metta/')[-1]}:{w.lineno}"] += 1

    results: dict[str, dict] = {}
    for path in paths:
        with contexts(path):
            syncs: collections.Counter = collections.Counter()
            with counted(syncs) as counter:
                train_ppo(policy, optimizer, experience, device, losses, 0, cfg, agent_step=agent_step, timer=counter)
            learn = counter.phase("_train.learn")
            timer = Stopwatch()
            synchronize()
            started = time.perf_counter()
            train_ppo(policy, optimizer, experience, device, losses, 0, cfg, agent_step=agent_step, timer=timer)
            synchronize()
            update_s = time.perf_counter() - started
            results[path] = {
                "minibatch": {
                    **per(learn, minibatches),
                    "host_ms": round(timer.get_elapsed("_train.learn") / minibatches * 1000, 1),
                },
                "update_extra": {k: v - learn[k] for k, v in counter.totals().items()},
                "update_ms": round(update_s * 1000, 1),
            }
            if cuda:
                results[path]["update_syncs_by_line"] = dict(syncs)
            if args.top_ops:
                results[path]["update_top_ops"] = dict(counter.op_names.most_common(args.top_ops))
    for path in paths:
        # On CUDA the rollout step runs as a graph replay (cuda_graphs) and eagerly; elsewhere eagerly.
        for graphs in (True, False) if cuda else (False,):
            experience.cuda_graphs = graphs
            experience.device_steps.clear()
            name = "rollout_step_graph" if graphs else "rollout_step"
            with contexts(path):
                agent_step, _ = rollout(policy, env, experience, device, agent_step)  # builds (captures) the steps
                syncs = collections.Counter()
                with counted(syncs) as counter:
                    agent_step, _ = rollout(policy, env, experience, device, agent_step, timer=counter)
                steps = experience.batch_size // env.agents_per_batch
                env_counts = counter.phase("_rollout.env")
                step_counts = {k: v - env_counts[k] for k, v in counter.totals().items()}
                timer = Stopwatch()
                started = time.perf_counter()
                agent_step, _ = rollout(policy, env, experience, device, agent_step, timer=timer)
                synchronize()
                wall = time.perf_counter() - started
                results[path][name] = {
                    **per(step_counts, steps),
                    "forward": per(counter.phase("_rollout.forward"), steps),
                    "host_ms": round((wall - timer.get_elapsed("_rollout.env")) / steps * 1000, 2),
                    "agents": env.agents_per_batch,
                }
                if cuda:
                    results[path][name]["syncs_by_line"] = dict(syncs)
                if args.top_ops:
                    results[path][name + "_top_ops"] = dict(counter.op_names.most_common(args.top_ops))
        with contexts(path):
            n = args.inference_agents
            flat_obs = experience.obs.view(-1, *experience.obs.shape[2:])
            obs = flat_obs[torch.arange(n, device=flat_obs.device) % flat_obs.shape[0]].to(device)
            h = torch.zeros(policy.core_num_layers, n, policy.hidden_size, device=device)

            def infer(obs=obs, h=h):
                with torch.no_grad():
                    policy(obs, PolicyState(lstm_h=h, lstm_c=h.clone()))

            counter = DispatchCounter()
            with counter:
                infer()
            infer()
            synchronize()
            started = time.perf_counter()
            for _ in range(5):
                infer()
            synchronize()
            results[path]["inference"] = {
                **counter.totals(),
                "host_ms": round((time.perf_counter() - started) / 5 * 1000, 2),
                "agents": n,
            }
    env.close()
    print(
        json.dumps(
            {
                "benchmark": "host_overhead",
                "paths": results,
                "episode_starts": episode_starts,
                "config": {
                    "curriculum": args.curriculum,
                    "agent": args.agent,
                    "first_conv": args.first_conv,
                    "num_envs": args.num_envs,
                    "agents": env.num_agents,
                    "batch_size": cfg.batch_size,
                    "minibatch_size": cfg.minibatch_size,
                    "bptt_horizon": cfg.bptt_horizon,
                    "minibatches_per_epoch": minibatches,
                },
                "machine": {
                    "cpu": platform.machine(),
                    "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                },
            }
        )
    )


if __name__ == "__main__":
    main()
